"""Recovery under load, read back from the runs' event streams (bench/recovery.py's loaded
mode and tests/chaos/test_loaded_recovery.py share it).

For every worker SIGKILLed at a known time, each step attempt it held shows up as
``superseded`` in a ``run.restarted``; the time from the kill to that step's next
``step.started`` is its recovery. A restart "between steps" (no step was in flight) is
counted apart: once the run's next message is in the broker it must not happen at all; one
whose worker was killed within KILL_WINDOW of checkpointing its last step is genuine (it
died before it could hand the next message off), the others are spurious.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from flowkit.events import Event

#: A worker killed this soon after checkpointing a step may not have handed off the next.
KILL_WINDOW = 1.0


@dataclass
class Recovery:
    #: seconds from each kill to the next attempt of each step the killed worker held
    seconds: list[float] = field(default_factory=list)
    restarts: int = 0
    between_steps: int = 0
    #: "between steps" restarts whose holder was killed within KILL_WINDOW seconds of
    #: checkpointing its last step: it died before it could hand the next message off
    genuine_between_steps: int = 0

    def add(self, history: list[Event], kills: dict[str, float]) -> None:
        """``kills``: worker name (the node name before ``@``) -> when it was SIGKILLed."""
        for i, event in enumerate(history):
            if event.type != "run.restarted":
                continue
            self.restarts += 1
            if "between steps" in event.data.get("reason", ""):
                self.between_steps += 1
                done = next((e for e in reversed(history[:i]) if e.type == "step.completed"),
                            None)
                holder = self._holder(history[:i], done)
                killed = kills.get(holder) if holder else None
                if done and killed is not None and 0 <= killed - done.data["ts"] < KILL_WINDOW:
                    self.genuine_between_steps += 1
            for gone in event.data.get("superseded", ()):
                name = str(gone.get("worker", "")).partition("@")[0]
                if name not in kills:
                    continue
                again = next((e for e in history[i:] if e.type == "step.started"
                              and e.data["step"] == gone["step"]
                              and e.data["attempt"] > gone["attempt"]), None)
                if again is not None:
                    self.seconds.append(again.data["ts"] - kills[name])

    @staticmethod
    def _holder(before: list[Event], done: Event | None) -> str | None:
        """The worker name that ran the step ``done`` completed (its last step.started)."""
        if done is None:
            return None
        started = next((e for e in reversed(before) if e.type == "step.started"
                        and e.data["step"] == done.data["step"]), None)
        return str(started.data.get("worker", "")).partition("@")[0] if started else None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def worst(self) -> float:
        return max(self.seconds) if self.seconds else float("nan")

    @property
    def spurious_share(self) -> float:
        """Restarts "between steps" that no kill right after a checkpoint explains."""
        spurious = self.between_steps - self.genuine_between_steps
        return spurious / self.restarts if self.restarts else 0.0
