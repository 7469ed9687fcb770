"""The DBOS baseline of the benchmarks, in a process of its own (DBOS is a singleton with
threads of its own): DBOS 3.4 on SQLite, its default synchronous setting (an fsync per
step's commit), no Postgres. Install with ``pip install -e '.[peers]'``.

``python -m bench.peer_dbos STEPS ROUNDS STARTS`` prints one RESULT line:
``ms_per_step`` (median over ROUNDS of a STEPS-step workflow of no-op steps, started
with ``start_workflow``), ``start_p50_ms`` (``start_workflow`` -> its first step running)
and ``result_p50_ms`` (a 1-step workflow, ``start_workflow(...).get_result()``), each
over STARTS starts.
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def figures(steps: int, rounds: int, starts: int, measure: str = "time"
            ) -> dict[str, float] | None:
    """The RESULT figures of a DBOS run in a child process; None when DBOS is not installed.
    ``measure="bytes"``: the growth of its database file per run of ``steps`` steps, over
    ``starts`` runs."""
    if importlib.util.find_spec("dbos") is None:
        print("DBOS is not installed: pip install -e '.[peers]' to compare with it")
        return None
    out = subprocess.run([sys.executable, "-m", "bench.peer_dbos", str(steps), str(rounds),
                          str(starts), measure], capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parent.parent, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return {k: float(v) for k, v in (pair.split("=") for pair in line.split()[1:])}


def main(steps: int, rounds: int, starts: int, measure: str = "time") -> int:
    from dbos import DBOS

    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "dbos.sqlite"
        DBOS(config={"name": "flowkit-bench", "run_admin_server": False,
                     "system_database_url": f"sqlite:///{database}"})
        began: list[float] = []

        @DBOS.step()
        def noop(value):
            return value

        @DBOS.step()
        def first(value):
            began.append(time.perf_counter())
            return value

        @DBOS.workflow()
        def chain(value):
            for _ in range(steps):
                value = noop(value)
            return value

        @DBOS.workflow()
        def one(value):
            return first(value)

        DBOS.launch()
        if measure == "bytes":
            try:
                for _ in range(starts):  # the same input as flowkit's run
                    DBOS.start_workflow(chain, {"n": 1, "text": "hello"}).get_result()
                grown_from = _size(database)
                for _ in range(starts):
                    DBOS.start_workflow(chain, {"n": 1, "text": "hello"}).get_result()
                grown = (_size(database) - grown_from) / starts
            finally:
                DBOS.destroy()
            print(f"RESULT bytes_per_run={grown:.0f}")
            return 0
        try:
            DBOS.start_workflow(chain, 0).get_result()  # warm up
            DBOS.start_workflow(one, 0).get_result()
            per_step = []
            for _ in range(rounds):
                t = time.perf_counter()
                DBOS.start_workflow(chain, 0).get_result()
                per_step.append((time.perf_counter() - t) * 1000 / steps)
            to_step, to_result = [], []
            for _ in range(starts):
                began.clear()
                t = time.perf_counter()
                handle = DBOS.start_workflow(one, 0)
                handle.get_result()
                to_result.append((time.perf_counter() - t) * 1000)
                to_step.append((began[0] - t) * 1000)
        finally:
            DBOS.destroy()
    print(f"RESULT ms_per_step={statistics.median(per_step):.3f} "
          f"start_p50_ms={statistics.median(to_step):.3f} "
          f"result_p50_ms={statistics.median(to_result):.3f}")
    return 0


def _size(database: Path) -> int:
    """The database's bytes, its write-ahead log included (checkpointed first)."""
    import sqlite3

    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, size = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
    return (pages - free) * size


if __name__ == "__main__":
    sys.exit(main(*(int(a) for a in sys.argv[1:4]), *sys.argv[4:5]))
