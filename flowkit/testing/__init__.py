"""Real parts for tests and demos: a private redis-server, celery worker processes (or a
worker in this process's threads), and a local OpenAI-compatible server.

    from flowkit.testing import LocalRedis, WorkerProcess, InThreadWorker, FakeLLMServer
"""

from .fake_openai import FakeLLMServer
from .redis import LocalRedis, free_port
from .worker import InThreadWorker, WorkerProcess

__all__ = ["FakeLLMServer", "InThreadWorker", "LocalRedis", "WorkerProcess", "free_port"]
