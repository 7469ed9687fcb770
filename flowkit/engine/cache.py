"""The component cache: same component, version and input -> the stored output (JSON)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..store import Store


@dataclass(frozen=True)
class CacheKey:
    component: str
    version: str
    digest: str


def key(component: str, version: str, args: Any) -> CacheKey:
    canonical = json.dumps(args, sort_keys=True, separators=(",", ":"), default=str)
    return CacheKey(component, version, hashlib.sha256(canonical.encode()).hexdigest())


def get(store: Store, k: CacheKey) -> str | None:
    return store.cache_get(k.component, k.version, k.digest)


def put(store: Store, k: CacheKey, output_json: str, ttl: float) -> None:
    store.cache_put(k.component, k.version, k.digest, output_json, ttl)
