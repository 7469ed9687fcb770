"""Worker app of bench/memory.py: 10 no-op steps."""

import flowkit

app = flowkit.create_celery_app("bench-memory", imports=["bench.memory_app"])


@flowkit.component(name="bench.pass_on")
def pass_on(data: dict) -> dict:
    return data


ten_steps = flowkit.Workflow("bench.ten_steps", [pass_on] * 10)
