"""A reaper in a process of its own: ``python -m tests.chaos.sweeper <go-key>``.

It says it is ready (``<go-key>:ready``), waits for the test to push to ``<go-key>``
so that several sweepers start at the same instant, sweeps once and prints the
report as JSON.
"""

import json
import sys

import tests.chaos.app  # noqa: F401 - the Celery app a restart enqueues on
import tests.chaos.workflows  # noqa: F401 - the workflows a restart re-enqueues
from flowkit.engine.reaper import sweep
from flowkit.store import get_store

go = sys.argv[1]
redis = get_store().redis
redis.rpush(f"{go}:ready", 1)
redis.blpop(go, timeout=30)
print(json.dumps(sweep()), flush=True)
