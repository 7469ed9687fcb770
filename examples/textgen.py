"""A deterministic local text generator: the demo's writer when no LLM is configured."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterator

WORDS = ["durable", "workflows", "keep", "long", "running", "agents", "honest", "across", "crashes", "deploys", "and", "flaky", "providers", "while", "users", "watch", "every", "step", "arrive", "live", "and", "resume", "after", "a", "refresh"]


def generate(prompt: str, words: int = 40, delay: float = 0.01) -> Iterator[str]:
    """Yield ``words`` tokens derived from ``prompt`` (same prompt, same text)."""
    rng = random.Random(hashlib.sha256(prompt.encode()).digest())
    for _ in range(words):
        time.sleep(delay)  # stands in for a model's per-token latency
        yield rng.choice(WORDS) + " "
