"""The Celery app bench/step_overhead.py runs: flowkit no-op steps and raw no-op tasks."""

import flowkit

app = flowkit.create_celery_app("bench-overhead", imports=["bench.overhead_app"])
STEPS = 50


@flowkit.component(name="bench.noop")
def noop(value):
    return value


@app.task(name="bench.raw_noop")
def raw_noop(value=None):
    return value


chain_workflow = flowkit.Workflow("bench-chain", [noop] * STEPS)
