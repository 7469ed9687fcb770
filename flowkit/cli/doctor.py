"""``flowkit doctor``: check a deployment and say what to fix (the checks: flowkit.engine.doctor).

Exit code 0 when no check fails (warnings allowed), 1 when one does. ``-A`` (or
``FLOWKIT_APP``) names the app whose workflows' queues must have a consumer; without
either the doctor tries the default app, and when that does not import it still checks
the queues the live workers' own workflows route to (a warning says so).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from rich.text import Text

from ..config import is_amqp
from ..engine import doctor
from ..engine.broker import QUEUES_REFUSED_FIX, get_app, queues_refused, refused_queues
from ..workflow import workflows
from .app import add_app_option, app_module_name, load_app
from .output import add_json_option, emit
from .render import plural, show, writes_unicode
from .routing import routed_queues
from .usage import UsageError

_MARK = {doctor.OK: ("✓", "green"), doctor.WARNING: ("!", "yellow"), doctor.FAILURE: ("✗", "red")}
#: The marks for a stdout that cannot write the others (PYTHONIOENCODING=ascii, Latin-1).
_ASCII_MARK = {doctor.OK: "+", doctor.WARNING: "!", doctor.FAILURE: "x"}


def _app_findings(args: argparse.Namespace) -> tuple[bool, list[doctor.Finding]]:
    """Import the app: an app named on purpose must import (exit 2 otherwise); the default
    one may be missing (the doctor runs from anywhere)."""
    named = bool(getattr(args, "app", None) or os.environ.get("FLOWKIT_APP"))
    try:
        load_app(args)
    except UsageError as exc:
        if named:
            raise
        return False, [doctor.Finding(
            "app", doctor.WARNING,
            f"Did not import an app ({exc}); checked the queues the live workers' own "
            "workflows route to.",
            "Pass -A your.module (or set FLOWKIT_APP) to check your workflows' queues too.")]
    return True, [doctor.Finding("app", doctor.OK, f"Imported {app_module_name(args)}: "
                                 f"{plural(len(workflows()), 'workflow')}.")]


def _queue_findings(app: Any) -> list[doctor.Finding]:
    """On RabbitMQ, whether it declares the app's queues as flowkit does (a worker refuses
    to start otherwise): a queue made without ``x-max-priority`` refused every start with a
    406 while the doctor passed the broker. Declared as a worker would (made if missing)."""
    if not is_amqp(app.conf.broker_url or ""):
        return []
    names = routed_queues()
    try:
        refused = refused_queues(app, [app.amqp.queues[name] for name in names])
    except Exception as exc:  # noqa: BLE001 - the broker's own check said what it could
        return [doctor.Finding("broker.queues", doctor.WARNING, f"Could not declare the "
                               f"queues {', '.join(names)} ({exc}).", "Run flowkit doctor again.")]
    if refused:
        return [doctor.Finding("broker.queues", doctor.FAILURE, queues_refused(refused),
                               QUEUES_REFUSED_FIX)]
    return [doctor.Finding("broker.queues", doctor.OK, f"RabbitMQ takes the queues "
                           f"{', '.join(names)} as flowkit declares them.")]


def report(data: dict[str, Any], ascii_only: bool = False) -> list[Text]:
    lines = []
    for finding in data["findings"]:
        mark, style = _MARK.get(finding["level"], ("?", ""))
        if ascii_only:
            mark = _ASCII_MARK.get(finding["level"], "?")
        line = Text()
        line.append(f"{mark} {finding['check']:<26}", style=style)
        line.append(finding["message"])
        lines.append(line)
        if finding["level"] != doctor.OK and finding.get("fix"):
            lines.append(Text(f"  {'':<26}fix: {finding['fix']}", style="dim"))
    failures, warnings = data["failures"], data["warnings"]
    if failures:
        summary = f"{plural(failures, 'failure')}, {plural(warnings, 'warning')}: fix the failures."
    elif warnings:
        summary = f"No failure; {plural(warnings, 'warning')} to look at."
    else:
        summary = "All is well."
    lines += [Text(""), Text(summary, style="bold")]
    return lines


def run_doctor(args: argparse.Namespace) -> int:
    imported, found = _app_findings(args)
    app = get_app()
    found += doctor.examine(workflows().values() if imported else None,
                            app.conf.task_default_queue, app.conf.broker_url)
    if imported and any(f.check == "broker" and f.ok for f in found):
        found += _queue_findings(app)
    data = {
        "ok": all(f.ok for f in found),
        "failures": sum(f.level == doctor.FAILURE for f in found),
        "warnings": sum(f.level == doctor.WARNING for f in found),
        "findings": [f.to_dict() for f in found],
    }
    if args.json:
        emit(args, data)
    else:
        show(*report(data, ascii_only=not writes_unicode()))
    return 0 if data["ok"] else 1


def register(subs) -> None:
    p = subs.add_parser(
        "doctor", help="check a deployment (Redis, beat, workers, queues) and say what to fix",
        description="Check the deployment and say what to fix. Exit code 1 when a check "
                    "fails (warnings leave it 0).")
    add_app_option(p)
    add_json_option(p)
    p.set_defaults(func=run_doctor)
