"""The Celery app of the reference deployment (Procfile: worker, beat): it imports the
workflow modules ``FLOWKIT_WORKFLOW_MODULES`` names (comma-separated, ``examples`` by
default), as the web process (``api/app.py``) does. It imported ``examples`` alone, so a
workflow the web served from another module reached workers that did not know it: they
dropped its steps ("unregistered task") and the run failed as WorkflowNotFound."""

import os

import flowkit

MODULES = [m.strip() for m in os.environ.get("FLOWKIT_WORKFLOW_MODULES", "examples").split(",")
           if m.strip()]

app = flowkit.create_celery_app("flowkit", imports=MODULES)
