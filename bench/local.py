"""What the benchmarks run on: a private Redis, one worker process of the bench's own app
and, when asked, the reference web process (gunicorn), all stopped afterwards."""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: The API key of the benches' web process.
API_KEY = "bench-key"


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (p50, p99) of ``values``."""
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


@contextmanager
def deployment(app: str, *, concurrency: int = 4, web: bool = False) -> Iterator[dict[str, Any]]:
    """``{"env", "worker", "web"}`` of a private deployment of the Celery app module ``app``
    (a threads worker); this process is configured to use its Redis."""
    from flowkit import config
    from flowkit.testing import LocalRedis, WorkerProcess

    with LocalRedis() as server, tempfile.TemporaryDirectory() as tmp:
        env = {"FLOWKIT_REDIS_URL": f"redis://127.0.0.1:{server.port}/1",
               "FLOWKIT_BROKER_URL": f"redis://127.0.0.1:{server.port}/0",
               "PYTHONPATH": str(ROOT), "FLOWKIT_API_KEYS": API_KEY}
        os.environ.update(env)
        config.reset()
        worker = WorkerProcess(app, name="bench", env=env, cwd=str(ROOT), pool="threads",
                               concurrency=concurrency).start()
        server_proc = None
        try:
            if web:
                from tests.api.helpers import Gunicorn

                server_proc = Gunicorn(env, Path(tmp) / "web.log", FLOWKIT_WORKFLOW_MODULES=app)
                server_proc.start()
            yield {"env": env, "worker": worker, "web": server_proc}
        finally:
            if server_proc is not None:
                server_proc.stop()
            worker.terminate()
