"""How runs and workflows look in the API's JSON."""

from __future__ import annotations

from typing import Any

from flask import url_for

from ..engine.control import Run
from ..schemas import json_schema
from ..workflow import Workflow
from .state import state


def run_urls(run_id: str) -> dict[str, str]:
    bp = state().blueprint
    return {
        "self": url_for(f"{bp}.get_run", run_id=run_id),
        "output": url_for(f"{bp}.get_output", run_id=run_id),
        "events": url_for(f"{bp}.get_events", run_id=run_id),
        # relative like the others (url_for would make it absolute with a ws:// scheme)
        "stream": url_for(f"{bp}.get_run", run_id=run_id) + "/stream",
        "watch": url_for(f"{bp}.watch", run_id=run_id),
    }


def run_json(run: Run) -> dict[str, Any]:
    return {**run.to_dict(), "urls": run_urls(run.id)}


def workflow_json(wf: Workflow) -> dict[str, Any]:
    return {
        "name": wf.name,
        "version": wf.version,
        "description": wf.description,
        "input_schema": json_schema(wf.input_schema),
        "output_schema": json_schema(wf.output_schema),
        "runs_url": url_for(f"{state().blueprint}.start_run", name=wf.name),
    }
