"""``/schedules``: runs started at every tick of a cron line or an interval (full access)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask_sock import Sock
from werkzeug.routing import PathConverter

from ...engine import control
from ...errors import ConfigError, ValidationError
from ...schemas import schema_errors
from .. import schemas
from ..errors import ApiError
from ..requests import access, json_body
from ..state import state


class ScheduleId(PathConverter):
    """A schedule id in a path, slashes included (a cron line's default id keeps its own:
    ``report@*/5_*_*_*_*``), short of a trailing ``/pause`` or ``/resume``: those name the
    actions, so ``/schedules/x/pause`` is only ever the pause of ``x``."""

    regex = r"[^/].*?(?<!/pause)(?<!/resume)"


_BODY = schemas.ScheduleBody()
_WHY = "Schedules belong to no owner (their runs neither)"


def register(bp: Blueprint, sock: Sock) -> None:
    bp.record_once(lambda setup: setup.app.url_map.converters.setdefault(
        "schedule_id", ScheduleId))
    bp.get("/schedules")(list_schedules)
    bp.post("/schedules")(create_schedule)
    bp.get("/schedules/<schedule_id:schedule_id>")(get_schedule)
    bp.delete("/schedules/<schedule_id:schedule_id>")(delete_schedule)
    bp.post("/schedules/<schedule_id:schedule_id>/pause")(pause_schedule)
    bp.post("/schedules/<schedule_id:schedule_id>/resume")(resume_schedule)


def list_schedules():
    access().require_full(_WHY)
    return {"schedules": control.schedules.list(store=state().store)}


def create_schedule():
    access().require_full(_WHY)
    body = json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "validation_error", "Invalid schedule.",
                       {"_schema": ["A JSON object: workflow, cron or every, input, ..."]})
    wf = None
    if isinstance(body.get("workflow"), str):
        try:  # 404 for a workflow this API does not serve, said under the body's field
            wf = state().workflow(body["workflow"])
        except ApiError as exc:
            raise ApiError(exc.status, exc.code, exc.message, {"workflow": [exc.message]}) from None
    # held to its published JSON Schema as a workflow's input is: marshmallow alone takes
    # "every": "60" and "catchup": "yes"; its own words win where it has some
    errors = schema_errors(_BODY, body)
    if wf is not None and body.get("input") is not None:
        # the input as POST /workflows/<name>/runs holds it (marshmallow alone would store
        # 2.5 for an integer as 2, and every tick would start that run)
        refused = schema_errors(wf.input_schema, body["input"])
        if refused:
            errors["input"] = refused
    try:
        spec = _BODY.load(body)
    except schemas.ValidationError as exc:
        errors.update(exc.messages)
    if errors:
        raise ApiError(400, "validation_error", "Invalid schedule.", errors)
    try:
        created = control.schedules.create(spec.pop("workflow"), store=state().store, **spec)
    except ValidationError as exc:  # the input its runs would start with: under "input"
        said = exc.fields if "input" in body else {"_schema": [
            "Required: the workflow's input (a JSON object), which each run it starts takes."]}
        raise ApiError(400, "validation_error", "Invalid schedule.", {"input": said}) from None
    except ConfigError as exc:  # a cron line or time zone the scheduler cannot read
        said = str(exc)
        field = "timezone" if "time zone" in said else "cron" if "cron" in said else "_schema"
        raise ApiError(400, "validation_error", "Invalid schedule.", {field: [said]}) from None
    return jsonify(created), 201


def get_schedule(schedule_id: str):
    access().require_full(_WHY)
    return control.schedules.get(schedule_id, store=state().store)


def delete_schedule(schedule_id: str):
    access().require_full(_WHY)
    control.schedules.delete(schedule_id, store=state().store)
    return "", 204


def pause_schedule(schedule_id: str):
    access().require_full(_WHY)
    return control.schedules.pause(schedule_id, store=state().store)


def resume_schedule(schedule_id: str):
    access().require_full(_WHY)
    return control.schedules.resume(schedule_id, store=state().store)
