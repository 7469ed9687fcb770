"""``flowkit trace RUN_ID``: a run's trace as a tree (steps, their attempts, their LLM calls)
with totals: tokens, cost, and where the time went.

The spans are the trace the API serves (``GET /runs/<id>/trace``); ``--json`` prints them
with the totals. A step tried once shows its calls right under it; a step tried more than
once shows each attempt, with its calls under the attempt.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Group
from rich.text import Text
from rich.tree import Tree

from ..engine import control
from ..engine.control import canonical_run_id
from .output import add_json_option, emit, human_duration, human_time
from .render import plural, short, show

_STYLE = {"ok": "green", "succeeded": "green", "error": "red", "failed": "red",
          "running": "cyan", "paused": "magenta", "waiting": "magenta",
          "cancelled": "yellow", "superseded": "yellow", "abandoned": "yellow"}


def totals(spans: list[dict[str, Any]], now: float | None = None) -> dict[str, Any]:
    """What a run spent: steps, attempts, LLM calls, tokens, cost (None when no call's price
    is known; ``unpriced_calls`` of the calls paid for have none, an unpriced model's or a
    stream read only in part) and seconds (the run's, its attempts', its calls')."""
    now = time.time() if now is None else now
    attempts = [s for s in spans if s.get("kind") == "step"]
    calls = [s for s in spans if s.get("kind") == "llm"]
    paid = [c for c in calls if not c.get("cached")]
    costs = [c["cost"] for c in paid if c.get("cost") is not None]
    run = next((s for s in spans if s.get("kind") == "workflow"), None)
    run_seconds = None
    if run is not None:
        run_seconds = run.get("duration") if run.get("end") else round(now - run["start"], 6)
    return {
        "steps": len({s["step"] for s in attempts}),
        "attempts": len(attempts),
        "failed_attempts": sum(s.get("status") == "error" for s in attempts),
        "llm_calls": len(calls),
        "cached_calls": len(calls) - len(paid),
        "prompt_tokens": sum(c.get("prompt_tokens") or 0 for c in paid),
        "completion_tokens": sum(c.get("completion_tokens") or 0 for c in paid),
        "total_tokens": sum((c.get("prompt_tokens") or 0) + (c.get("completion_tokens") or 0)
                            for c in paid),
        "cost": round(sum(costs), 8) if costs else None,
        # a failed call without usage was not billed: its cost is none, not unknown
        "unpriced_calls": sum(c.get("cost") is None and (
            c.get("status") != "error" or c.get("prompt_tokens") is not None) for c in paid),
        "run_seconds": run_seconds,
        "step_seconds": round(sum(_seconds(s, now) for s in attempts), 6),
        "llm_seconds": round(sum(c.get("duration") or 0 for c in calls), 6),
    }


def _status(span: dict[str, Any]) -> Text:
    status = span.get("status") or "?"
    return Text(status, style=_STYLE.get(status, ""))


def _line(*parts: Any) -> Text:
    out = Text()
    for part in parts:
        if part in (None, ""):
            continue
        if out:
            out.append("  ")
        out.append(part if isinstance(part, Text) else str(part))
    return out


def _seconds(span: dict[str, Any], now: float) -> float:
    """A span's time: its duration, or, still running, its time so far (it counted 0)."""
    if span.get("duration") is not None:
        return span["duration"]
    return max(0.0, now - span["start"]) if _running(span) else 0.0


def _running(span: dict[str, Any]) -> bool:
    return span.get("status") == "running" and isinstance(span.get("start"), (int, float))


def _took(span: dict[str, Any]) -> str | None:
    if span.get("duration") is not None:
        return human_duration(span["duration"])
    if _running(span):  # as flowkit runs says it: "2.23s so far"
        return f"{human_duration(_seconds(span, time.time()))} so far"
    return None


def _call_line(call: dict[str, Any]) -> Text:
    tokens = None
    if call.get("prompt_tokens") is not None:
        tokens = f"{call['prompt_tokens']} -> {call.get('completion_tokens') or 0} tokens"
    extra = []
    if call.get("cached"):
        extra.append("cached")
    if call.get("retries"):
        extra.append("1 retry" if call["retries"] == 1 else f"{call['retries']} retries")
    if call.get("failovers"):
        extra.append(f"after {plural(len(call['failovers']), 'failover')}")
    model = f"{call.get('model')}" + (f" ({call['provider']})" if call.get("provider") else "")
    return _line(f"{call.get('kind')} {call.get('operation') or call.get('name') or ''}".strip(),
                 model, _status(call), _took(call), tokens,
                 f"${call['cost']:.6f}" if call.get("cost") is not None else None,
                 ", ".join(extra), short(call["error"], 100) if call.get("error") else None)


def _step_name(span: dict[str, Any]) -> str:
    """The step key, with its component when the key does not say it (``0:t.add_one``)."""
    key, name = span["step"], span.get("name")
    return key if not name or key.endswith(name) else f"{key} ({name})"


def _attempt_line(span: dict[str, Any], with_step: bool) -> Text:
    head = _step_name(span) if with_step else f"attempt {span.get('attempt')}"
    return _line(head, _status(span), _took(span), span.get("worker"),
                 short(span.get("error") or span.get("reason") or "", 100) or None)


def trace_tree(run_id: str, spans: list[dict[str, Any]], sums: dict[str, Any]) -> Group:
    run = next((s for s in spans if s.get("kind") == "workflow"), {})
    root = Tree(_line(Text(f"{run.get('name')} v{run.get('version')}", style="bold"),
                      _status({"status": run.get("state") or run.get("status")}),
                      _took(run), f"started {human_time(run.get('start'))}", f"run {run_id}"))
    children: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        if span.get("parent"):
            children.setdefault(span["parent"], []).append(span)
    steps: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        if span.get("kind") == "step":
            steps.setdefault(span["step"], []).append(span)
    for _key, attempts in sorted(steps.items(), key=lambda kv: min(a["start"] for a in kv[1])):
        attempts.sort(key=lambda a: a.get("attempt") or 0)
        if len(attempts) == 1:
            node = root.add(_attempt_line(attempts[0], with_step=True))
            parents = [(node, attempts[0])]
        else:
            last = attempts[-1]
            node = root.add(_line(_step_name(last), _status(last),
                                  plural(len(attempts), "attempt")))
            parents = [(node.add(_attempt_line(a, with_step=False)), a) for a in attempts]
        for parent, attempt in parents:
            for call in sorted(children.get(attempt["id"], ()), key=lambda c: c.get("start", 0)):
                parent.add(_call_line(call))
    return Group(root, Text(""), Text(totals_line(sums)))


def totals_line(sums: dict[str, Any]) -> str:
    parts = [f"{plural(sums['steps'], 'step')}, {plural(sums['attempts'], 'attempt')}"
             + (f" ({sums['failed_attempts']} failed)" if sums["failed_attempts"] else ""),
             plural(sums["llm_calls"], "LLM call")
             + (f" ({sums['cached_calls']} cached)" if sums["cached_calls"] else "")]
    if sums["llm_calls"]:
        parts.append(f"{sums['total_tokens']} tokens ({sums['prompt_tokens']} prompt, "
                     f"{sums['completion_tokens']} completion)")
        unpriced = sums.get("unpriced_calls") or 0
        if sums["cost"] is None:
            parts.append("cost unknown")
        else:  # a sum of the known costs read as the whole cost
            parts.append(f"cost ${sums['cost']:.6f}" + (
                f" and {plural(unpriced, 'call')} of unknown cost" if unpriced else ""))
    parts.append(f"time {human_duration(sums['run_seconds'])} (steps "
                 f"{human_duration(sums['step_seconds'])}, LLM {human_duration(sums['llm_seconds'])})")
    return "Totals: " + "; ".join(parts)


def trace(args: argparse.Namespace) -> int:
    control.get_run(args.run_id)  # an unknown run: one line saying so (exit 1)
    spans = control.trace(args.run_id)
    sums = totals(spans)
    if args.json:
        emit(args, {"run": args.run_id, "totals": sums, "spans": spans})
    else:
        show(trace_tree(args.run_id, spans, sums))
    return 0


def register(subs) -> None:
    p = subs.add_parser("trace", help="show a run's trace: steps, attempts, LLM calls, totals")
    p.add_argument("run_id", metavar="RUN_ID", type=canonical_run_id)
    add_json_option(p)
    p.set_defaults(func=trace)
