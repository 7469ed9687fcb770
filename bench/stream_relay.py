"""Stream relay: emit -> WebSocket latency with 1, 100 and 1,000 subscribers, and events/s.

Starts its own Redis, a worker and the reference web process (gunicorn, api/gunicorn.conf.py)
and measures, beside the raw Redis figure on the same machine:

* latency from a component's ``emit`` to a WebSocket client receiving it (p50/p99), with 1,
  100 and 1,000 clients following the same run (raw: XADD -> a blocking XREAD per reader);
* the relay's events/s into one WebSocket subscriber following a run live while events are
  appended as fast as Redis takes them (raw: one client XREADing the same stream live).

The clients must not be what is measured: they are single-threaded asyncio programs (aiohttp's
WebSocket client, redis-py's asyncio client for the raw baseline), split over
``CLIENT_PROCESSES`` processes, each timestamp taken on receipt with ``time.time()`` against the
one carried in the event. Relay and raw baseline use the very same client layout, so their
ratio is the relay's own cost.

The last line is machine-readable: ``RESULT p50_ms_100=.. p99_ms_100=.. subscribers_held=..
events_per_s=.. p50_ratio_1=.. p50_ratio_100=.. p99_ratio_100=..`` (each figure the median of
``ROUNDS`` rounds; a ratio is the relay's figure over raw Redis's, of the same rounds). The
line before it checks the targets of issue #16: p50 at 1 subscriber <= 1.2x raw, at 100
<= 0.5x raw, p99 at 100 <= raw's, 1,000 subscribers held. This module is also the
worker's Celery app (the bench workflows) and, with ``clients`` as first argument, the client
program.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import flowkit

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"
GATE = "bench:gate:{}"
TERMINAL = ("run.succeeded", "run.failed", "run.cancelled")
#: Subscribers of one measurement are spread over this many client processes.
CLIENT_PROCESSES = 2
#: Subscribers of one client process connecting at the same time.
CONNECTING = 20
#: Each latency and throughput figure is the median of this many rounds.
ROUNDS = int(os.environ.get("ROUNDS", "3"))


@flowkit.component(name="bench.ticker")
def ticker(data: dict) -> dict:
    """Waits for the bench to open its gate, then emits ``events`` timestamps ``interval`` apart."""
    ctx = flowkit.context()
    redis = flowkit.store.get_store().redis
    while redis.blpop(GATE.format(ctx.run_id), timeout=1) is None:
        pass
    for i in range(data["events"]):
        flowkit.emit({"i": i, "t": time.time()})
        time.sleep(data["interval"])
    return {"events": data["events"]}


@flowkit.component(name="bench.idle")
def idle(data: dict) -> dict:
    """Holds the run open until the bench opens its gate (events are appended directly)."""
    redis = flowkit.store.get_store().redis
    while redis.blpop(GATE.format(flowkit.context().run_id), timeout=1) is None:
        pass
    return {}


ticking = flowkit.Workflow("bench_ticking", [ticker])
idling = flowkit.Workflow("bench_idling", [idle])
celery_app = flowkit.create_celery_app("bench-relay", imports=["bench.stream_relay"])


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the client program (``python -m bench.stream_relay clients ...``) ------------------------


class Tally:
    """What one client process saw: latencies, events per subscriber, first/last arrival."""

    def __init__(self, subscribers: int) -> None:
        self.latencies: list[float] = []
        self.counts: list[int] = []
        self.first_at = self.last_at = 0.0
        self.waiting = subscribers

    def ready(self) -> None:
        """One subscriber is following; once all are, tell the bench to start emitting."""
        self.waiting -= 1
        if self.waiting == 0:
            print("ready", flush=True)

    def received(self, sent_at: float | None) -> None:
        now = time.time()
        self.last_at = time.perf_counter()
        if not self.first_at:
            self.first_at = self.last_at
        if sent_at is not None:
            self.latencies.append((now - sent_at) * 1000)


async def follow_websocket(session, url: str, tally: Tally, ramp: asyncio.Semaphore) -> int:
    """One WebSocket subscriber until the run's terminal event; returns the chunks it got.

    At most ``ramp``'s worth of subscribers are connecting at once: a burst of 1,000
    handshakes exhausts the web process's Redis pool (see the README's api section)."""
    import aiohttp

    chunks, following = 0, False
    await ramp.acquire()
    try:
        async with session.ws_connect(url, headers={"Authorization": f"Bearer {API_KEY}"},
                                      max_msg_size=0) as ws:
            async for message in ws:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    break
                event = json.loads(message.data)
                if not following:  # the run's first event: this subscriber is registered
                    following = True
                    ramp.release()
                    tally.ready()
                if event["type"] == "step.output":
                    chunks += 1
                    chunk = event["chunk"]
                    tally.received(chunk.get("t") if isinstance(chunk, dict) else None)
                elif event["type"] in TERMINAL:
                    break
    except (TimeoutError, aiohttp.ClientError) as exc:  # counts as a subscriber not held
        print(f"subscriber error: {exc!r}", file=sys.stderr, flush=True)
        if not following:
            ramp.release()
            tally.ready()  # it never will be: the others must not wait for it
    return chunks


async def follow_redis(url: str, key: str, expect: int, tally: Tally) -> int:
    """The raw baseline: one connection in a blocking ``XREAD`` loop on ``key``."""
    import redis.asyncio

    conn = redis.asyncio.Redis.from_url(url, decode_responses=True)
    cursor, chunks, following = "0-0", 0, False
    while chunks < expect:
        for _, entries in await conn.xread({key: cursor}, block=5000, count=1000) or ():
            for entry_id, fields in entries:
                cursor = entry_id
                event = json.loads(fields["e"])
                if not following:  # the stream's first entry is the bench's hello
                    following = True
                    tally.ready()
                    continue
                chunks += 1
                chunk = event["chunk"]
                tally.received(chunk.get("t") if isinstance(chunk, dict) else None)
    await conn.aclose()
    return chunks


async def run_clients(kind: str, target: str, subscribers: int, expect: int) -> Tally:
    import aiohttp

    tally = Tally(subscribers)
    if kind == "ws":
        ramp = asyncio.Semaphore(CONNECTING)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            counts = await asyncio.gather(
                *(follow_websocket(session, target, tally, ramp) for _ in range(subscribers)),
                return_exceptions=True)
    else:
        url, _, key = target.rpartition("#")
        counts = await asyncio.gather(
            *(follow_redis(url, key, expect, tally) for _ in range(subscribers)),
            return_exceptions=True)
    for count in counts:
        if isinstance(count, BaseException):
            print(f"subscriber error: {count!r}", file=sys.stderr, flush=True)
    tally.counts = [c if isinstance(c, int) else -1 for c in counts]
    return tally


def clients_main(kind: str, target: str, subscribers: int, expect: int) -> int:
    tally = asyncio.run(run_clients(kind, target, subscribers, expect))
    print(json.dumps({"latencies": tally.latencies, "counts": tally.counts,
                      "first_at": tally.first_at, "last_at": tally.last_at}), flush=True)
    return 0


class Clients:
    """``subscribers`` subscribers spread over client processes (ws: a WebSocket URL; redis:
    ``<redis url>#<stream key>``), each expecting ``expect`` chunks."""

    def __init__(self, kind: str, target: str, subscribers: int, expect: int,
                 processes: int = CLIENT_PROCESSES) -> None:
        shares = [subscribers // processes + (i < subscribers % processes) for i in range(processes)]
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "bench.stream_relay", "clients", kind, target,
                              str(n), str(expect)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
            for n in shares if n]

    def wait_ready(self) -> None:
        """Returns once every subscriber received its first event (it is registered)."""
        for proc in self.procs:
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"client process ended before its subscribers followed: {line!r}")

    def results(self) -> tuple[list[float], list[int], float]:
        """Latencies, chunks per subscriber, and events/s over the first-to-last arrival."""
        latencies, counts, spans = [], [], []
        for proc in self.procs:
            doc = json.loads(proc.stdout.readline())
            proc.wait(30)
            latencies += doc["latencies"]
            counts += doc["counts"]
            spans.append(doc["last_at"] - doc["first_at"])
        return latencies, counts, max(spans)


# -- the bench ------------------------------------------------------------------------------


class Web:
    """The reference web process: gunicorn with api/gunicorn.conf.py, serving this module."""

    def __init__(self, env: dict[str, str]) -> None:
        from flowkit.testing import free_port

        self.port = free_port()
        self.env = {**os.environ, **env, "FLOWKIT_WEB_BIND": f"127.0.0.1:{self.port}",
                    "FLOWKIT_API_KEYS": API_KEY, "FLOWKIT_WORKFLOW_MODULES": "bench.stream_relay"}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Web:
        import httpx

        # Its log goes to a file: a pipe nobody reads would stall it once full.
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bench-web-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "api/gunicorn.conf.py", "api.app:app"],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)  # gunicorn is still binding; nothing to await on
        raise RuntimeError(f"web process did not start; see {self.log.name}")

    def __exit__(self, *exc) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
        if "Traceback" in Path(self.log.name).read_text():
            print(f"the web process logged errors: see {self.log.name}", flush=True)
        else:
            os.unlink(self.log.name)


def start_run(web: Web, workflow: str, body: dict) -> str:
    import httpx

    response = httpx.post(f"http://127.0.0.1:{web.port}/workflows/{workflow}/runs", json=body,
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    response.raise_for_status()
    return response.json()["id"]


def relay_latency(web: Web, subscribers: int, events: int, interval: float) -> tuple[list[float], int]:
    """emit -> WebSocket latencies of every chunk, and how many subscribers got every chunk."""
    from flowkit.store import get_store

    run_id = start_run(web, "bench_ticking", {"events": events, "interval": interval})
    clients = Clients("ws", f"ws://127.0.0.1:{web.port}/runs/{run_id}/stream", subscribers, events)
    clients.wait_ready()
    get_store().redis.rpush(GATE.format(run_id), 1)
    latencies, counts, _ = clients.results()
    return latencies, sum(1 for c in counts if c == events)


def _appender(redis_url: str, key: str):
    """A function appending one entry shaped like the core's emit, its chunk carrying the time."""
    import redis

    conn = redis.Redis.from_url(redis_url)

    def append(i: int) -> None:
        chunk = {"i": i, "t": time.time()}
        conn.xadd(key, {"e": json.dumps({"type": "step.output", "ts": chunk["t"], "step": "0:x",
                                         "attempt": 1, "chunk": chunk})})
    return append


def raw_latency(redis_url: str, readers: int, events: int, interval: float) -> list[float]:
    """XADD -> XREAD BLOCK latency, one connection per reader, the same client processes."""
    key = f"bench:raw:{readers}:{time.time_ns()}"
    append = _appender(redis_url, key)
    append(-1)  # the hello each reader waits for before the bench starts
    clients = Clients("redis", f"{redis_url}#{key}", readers, events)
    clients.wait_ready()
    for i in range(events):
        append(i)
        time.sleep(interval)
    return clients.results()[0]


def _append_bulk(redis_url: str, key: str, doc: str, events: int) -> None:
    """``events`` copies of ``doc`` appended as fast as Redis takes them (pipelined)."""
    import redis

    conn = redis.Redis.from_url(redis_url)
    for start in range(0, events, 1000):
        pipe = conn.pipeline(transaction=False)
        for _ in range(min(1000, events - start)):
            pipe.xadd(key, {"e": doc})
        pipe.execute()


def relay_throughput(web: Web, events: int) -> float:
    """Events/s into one WebSocket subscriber while events are appended as fast as Redis takes them."""
    from flowkit.store import get_store

    store = get_store()
    run_id = start_run(web, "bench_idling", {})
    clients = Clients("ws", f"ws://127.0.0.1:{web.port}/runs/{run_id}/stream", 1, events, 1)
    clients.wait_ready()
    doc = json.dumps({"type": "step.output", "ts": 0, "run": run_id, "step": "0:bench.idle",
                      "attempt": 1, "chunk": "x" * 40})
    _append_bulk(store.settings.redis_url, store.keys.events(run_id), doc, events)
    store.redis.rpush(GATE.format(run_id), 1)
    _, counts, span = clients.results()
    assert counts == [events], f"subscriber got {counts}/{events}"
    return (events - 1) / span


def raw_throughput(redis_url: str, events: int) -> float:
    """Events/s into one raw XREAD client following the stream live, the same client program."""
    key = f"bench:raw:throughput:{time.time_ns()}"
    _appender(redis_url, key)(-1)
    clients = Clients("redis", f"{redis_url}#{key}", 1, events, 1)
    clients.wait_ready()
    _append_bulk(redis_url, key, json.dumps({"type": "step.output", "chunk": "x" * 40}), events)
    return (events - 1) / clients.results()[2]


def main() -> int:
    from flowkit import config
    from flowkit.testing import LocalRedis, WorkerProcess

    quick = bool(os.environ.get("QUICK"))
    plan = ((1, 200, 0.01), (100, 100, 0.02)) + (() if quick else ((1000, 30, 0.1),))
    with LocalRedis() as server:
        env = {"FLOWKIT_REDIS_URL": server.url, "PYTHONPATH": str(ROOT)}
        os.environ.update(env)
        config.reset()
        with WorkerProcess("bench.stream_relay:celery_app", name="bench-relay", env=env,
                           cwd=str(ROOT), concurrency=4), Web(env) as web:
            figures: dict[int, dict[str, list[float]]] = {}
            for subs, events, interval in plan:
                mine = figures[subs] = {k: [] for k in ("p50", "p99", "raw50", "raw99", "held")}
                for _ in range(ROUNDS):
                    relay_ms, held_now = relay_latency(web, subs, events, interval)
                    raw_ms = raw_latency(server.url, subs, events, interval)
                    for name, value in (("p50", pct(relay_ms, .5)), ("p99", pct(relay_ms, .99)),
                                        ("raw50", pct(raw_ms, .5)), ("raw99", pct(raw_ms, .99)),
                                        ("held", held_now)):
                        mine[name].append(value)
                    print(f"{subs:>5} subscribers: relay p50 {mine['p50'][-1]:6.2f} ms  p99 "
                          f"{mine['p99'][-1]:7.2f} ms | raw XADD->XREAD p50 {mine['raw50'][-1]:6.2f}"
                          f" ms  p99 {mine['raw99'][-1]:7.2f} ms | clients that got every event: "
                          f"{held_now}/{subs}", flush=True)
            n = 100_000
            relay_eps, raw_eps = [], []
            for _ in range(ROUNDS):
                relay_eps.append(relay_throughput(web, n))
                raw_eps.append(raw_throughput(server.url, n))
                print(f"one subscriber, {n} events: relay {relay_eps[-1]:,.0f} events/s | raw "
                      f"XREAD {raw_eps[-1]:,.0f} events/s", flush=True)
    med = {subs: {k: statistics.median(v) for k, v in f.items()} for subs, f in figures.items()}
    print(f"medians of {ROUNDS} rounds:")
    for subs, m in med.items():
        print(f"{subs:>5} subscribers: relay p50/p99 {m['p50']:.2f}/{m['p99']:.2f} ms | raw "
              f"{m['raw50']:.2f}/{m['raw99']:.2f} ms | p50 ratio x{m['p50'] / m['raw50']:.2f} | "
              f"held {min(figures[subs]['held']):.0f}/{subs} (worst round)")
    eps, raw = statistics.median(relay_eps), statistics.median(raw_eps)
    print(f"one subscriber: relay {eps:,.0f} events/s | raw {raw:,.0f} events/s | ratio {eps / raw:.2f}")
    held = int(min(figures[1000]["held"])) if 1000 in figures else 0
    p50, p99 = med[100]["p50"], med[100]["p99"]
    r1 = med[1]["p50"] / med[1]["raw50"]
    r100, r99 = p50 / med[100]["raw50"], p99 / med[100]["raw99"]

    def verdict(met: bool) -> str:
        return "met" if met else "NOT met"

    print(f"targets: p50 x{r1:.2f} raw at 1 subscriber (<= 1.2: {verdict(r1 <= 1.2)}), "
          f"x{r100:.2f} at 100 (<= 0.5: {verdict(r100 <= 0.5)}); p99 x{r99:.2f} raw at 100 "
          f"(<= 1: {verdict(r99 <= 1)}); 1000 held ({held}"
          f"{'' if 1000 in figures else ', not run: QUICK'})")
    print(f"RESULT p50_ms_100={p50:.2f} p99_ms_100={p99:.2f} subscribers_held={held} "
          f"events_per_s={eps:.0f} p50_ratio_1={r1:.2f} p50_ratio_100={r100:.2f} "
          f"p99_ratio_100={r99:.2f}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["clients"]:
        kind, target, subscribers, expect = sys.argv[2:6]
        sys.exit(clients_main(kind, target, int(subscribers), int(expect)))
    sys.exit(main())
