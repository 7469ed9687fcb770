"""The component cache: same component, version and input -> stored output."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .store import Store


def cache_key(store: Store, component: str, version: str, args: Any) -> str:
    canonical = json.dumps(args, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return store.keys.cache(component, version, digest)


def get(store: Store, key: str) -> str | None:
    return store.redis.get(key)


def put(store: Store, key: str, output_json: str, ttl: float) -> None:
    store.redis.set(key, output_json, px=int(ttl * 1000))
