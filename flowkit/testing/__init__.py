"""Real parts for tests and demos: a private redis-server, celery worker processes (or a
worker in this process's threads), and a local OpenAI-compatible server.

    from flowkit.testing import LocalRedis, WorkerProcess, InThreadWorker, FakeLLMServer
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .redis import LocalRedis, free_port
from .worker import InThreadWorker, WorkerProcess

if TYPE_CHECKING:
    from .fake_openai import FakeLLMServer

__all__ = ["FakeLLMServer", "InThreadWorker", "LocalRedis", "WorkerProcess", "free_port"]


def __getattr__(name: str) -> Any:
    # imported when first used: imported here, ``python -m flowkit.testing.fake_openai``
    # found the module loaded already and printed runpy's RuntimeWarning before serving
    if name == "FakeLLMServer":
        from .fake_openai import FakeLLMServer

        return FakeLLMServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
