"""The Celery app of the LLM test workers: flowkit's tasks plus the LLM test workflows."""

import flowkit

app = flowkit.create_celery_app("flowkit-llm-tests", imports=["tests.llm.workflows"])
