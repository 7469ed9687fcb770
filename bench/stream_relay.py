"""Stream relay: emit -> WebSocket latency with 1, 100 and 1,000 subscribers, and events/s.

Starts its own Redis, a worker and the reference web process (gunicorn, api/gunicorn.conf.py)
and measures, beside the raw Redis figure on the same machine:

* latency from a component's ``emit`` to a WebSocket client receiving it (p50/p99), with 1,
  100 and 1,000 clients following the same run (raw: XADD -> a blocking XREAD per reader);
* the relay's events/s into one WebSocket subscriber following a run live while events are
  appended as fast as Redis takes them (raw: one client XREADing the same stream).

The last line is machine-readable: ``RESULT p50_ms_100=.. p99_ms_100=.. subscribers_held=..
events_per_s=..``. This module is also the worker's Celery app (the bench workflow).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import flowkit

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"
GATE = "bench:gate:{}"


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


class Web:
    """The reference web process: gunicorn with api/gunicorn.conf.py, serving this module."""

    def __init__(self, env: dict[str, str]) -> None:
        from flowkit.local import free_port

        self.port = free_port()
        self.env = {**os.environ, **env, "FLOWKIT_WEB_BIND": f"127.0.0.1:{self.port}",
                    "FLOWKIT_API_KEYS": API_KEY, "FLOWKIT_WORKFLOW_MODULES": "bench.stream_relay"}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Web:
        import httpx

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "api/gunicorn.conf.py", "api.app:app"],
            cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)  # gunicorn is still binding; nothing to await on
        raise RuntimeError(f"web process did not start: {self.proc.stderr.read()}")

    def __exit__(self, *exc) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(30)


class Subscriber(threading.Thread):
    """A WebSocket client following one run; records emit->receive latency of each chunk."""

    def __init__(self, url: str) -> None:
        import websocket

        super().__init__(daemon=True)
        self.sock = websocket.create_connection(
            url, header=[f"Authorization: Bearer {API_KEY}"], timeout=120,
            skip_utf8_validation=True)
        self.latencies: list[float] = []
        self.chunks = 0
        self.done = threading.Event()
        self.first_at = self.last_at = 0.0

    def run(self) -> None:
        try:
            while True:
                message = self.sock.recv()
                if not message:
                    return
                event = json.loads(message)
                if event["type"] == "step.output":
                    now = time.time()
                    self.chunks += 1
                    if self.chunks == 1:
                        self.first_at = time.perf_counter()
                    self.last_at = time.perf_counter()
                    if isinstance(event["chunk"], dict) and "t" in event["chunk"]:
                        self.latencies.append((now - event["chunk"]["t"]) * 1000)
                elif event["type"] in ("run.succeeded", "run.failed", "run.cancelled"):
                    return
        except Exception as exc:  # a dropped socket counts as a subscriber not held
            print(f"subscriber error: {exc!r}", flush=True)
        finally:
            self.done.set()
            self.sock.close()


def start_run(web: Web, workflow: str, body: dict) -> str:
    import httpx

    response = httpx.post(f"http://127.0.0.1:{web.port}/workflows/{workflow}/runs", json=body,
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    response.raise_for_status()
    return response.json()["id"]


def relay_latency(web: Web, subscribers: int, events: int, interval: float) -> tuple[list[float], int]:
    from flowkit.store import get_store

    run_id = start_run(web, "bench_ticking", {"events": events, "interval": interval})
    url = f"ws://127.0.0.1:{web.port}/runs/{run_id}/stream"
    clients = [Subscriber(url) for _ in range(subscribers)]
    for client in clients:
        client.start()
    get_store().redis.rpush(GATE.format(run_id), 1)
    for client in clients:
        client.done.wait(180)
    held = sum(1 for c in clients if c.chunks == events)
    return [ms for c in clients for ms in c.latencies], held


def raw_latency(redis_url: str, readers: int, events: int, interval: float) -> list[float]:
    """XADD -> XREAD BLOCK latency, one connection per reader, nothing in between."""
    import redis

    key = f"bench:raw:{readers}"
    latencies: list[float] = []
    lock = threading.Lock()
    ready = threading.Barrier(readers + 1)

    def reader() -> None:
        conn = redis.Redis.from_url(redis_url, decode_responses=True)
        cursor, got, mine = "0-0", 0, []
        ready.wait()
        while got < events:
            for _, entries in conn.xread({key: cursor}, block=2000, count=1000) or ():
                for entry_id, fields in entries:
                    mine.append((time.time() - float(fields["t"])) * 1000)
                    cursor, got = entry_id, got + 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=reader, daemon=True) for _ in range(readers)]
    for t in threads:
        t.start()
    ready.wait()
    producer = redis.Redis.from_url(redis_url)
    for _ in range(events):
        producer.xadd(key, {"t": repr(time.time())})
        time.sleep(interval)
    for t in threads:
        t.join(120)
    return latencies


class BulkSubscriber(Subscriber):
    """The same client on wsproto, reading the socket in large chunks (a lighter client,
    so the figure is the relay's rather than websocket-client's per-frame reads)."""

    def __init__(self, url: str) -> None:
        import socket

        from wsproto import ConnectionType, WSConnection
        from wsproto.events import Request

        threading.Thread.__init__(self, daemon=True)
        host, _, rest = url[len("ws://"):].partition("/")
        name, _, port = host.partition(":")
        self.sock = socket.create_connection((name, int(port)), timeout=120)
        self.conn = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.conn.send(Request(
            host=host, target="/" + rest,
            extra_headers=[(b"authorization", f"Bearer {API_KEY}".encode())])))
        self.latencies, self.chunks, self.done = [], 0, threading.Event()
        self.first_at = self.last_at = 0.0

    def run(self) -> None:
        from wsproto.events import AcceptConnection, CloseConnection, TextMessage

        text, ended = "", False
        try:
            while not ended:
                data = self.sock.recv(1 << 20)
                if not data:
                    return
                self.conn.receive_data(data)
                for event in self.conn.events():
                    if isinstance(event, AcceptConnection):
                        continue
                    if isinstance(event, CloseConnection):
                        ended = True
                        break
                    if isinstance(event, TextMessage):
                        text += event.data
                        if not event.message_finished:
                            continue
                        kind = json.loads(text)["type"]
                        text = ""
                        if kind == "step.output":
                            self.chunks += 1
                            self.last_at = time.perf_counter()
                            if self.chunks == 1:
                                self.first_at = self.last_at
        finally:
            self.done.set()
            self.sock.close()


def relay_throughput(web: Web, events: int) -> float:
    """Events/s into one WebSocket subscriber while events are appended as fast as Redis takes them."""
    from flowkit.store import get_store

    store = get_store()
    run_id = start_run(web, "bench_idling", {})
    client = BulkSubscriber(f"ws://127.0.0.1:{web.port}/runs/{run_id}/stream")
    client.start()
    doc = json.dumps({"type": "step.output", "ts": 0, "run": run_id, "step": "0:bench.idle",
                      "attempt": 1, "chunk": "x" * 40})
    key = store.keys.events(run_id)
    for start in range(0, events, 1000):  # the same entries the core's emit writes, pipelined
        pipe = store.redis.pipeline(transaction=False)
        for _ in range(min(1000, events - start)):
            pipe.xadd(key, {"e": doc})
        pipe.execute()
    store.redis.rpush(GATE.format(run_id), 1)
    client.done.wait(120)
    assert client.chunks == events, f"subscriber got {client.chunks}/{events}"
    return (events - 1) / (client.last_at - client.first_at)


def raw_throughput(redis_url: str, events: int) -> float:
    import redis

    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    key = "bench:raw:throughput"
    doc = json.dumps({"type": "step.output", "chunk": "x" * 40})
    for start in range(0, events, 1000):
        pipe = conn.pipeline(transaction=False)
        for _ in range(min(1000, events - start)):
            pipe.xadd(key, {"e": doc})
        pipe.execute()
    t, cursor, got = time.perf_counter(), "0-0", 0
    while got < events:
        for _, entries in conn.xread({key: cursor}, count=1000) or ():
            for entry_id, fields in entries:
                json.loads(fields["e"])
                cursor, got = entry_id, got + 1
    return events / (time.perf_counter() - t)


def main() -> int:
    from flowkit import config
    from flowkit.local import LocalRedis
    from flowkit.testing import WorkerProcess

    with LocalRedis() as server:
        env = {"FLOWKIT_REDIS_URL": server.url, "PYTHONPATH": str(ROOT)}
        os.environ.update(env)
        config.reset()
        with WorkerProcess("bench.stream_relay:celery_app", name="bench-relay", env=env,
                           cwd=str(ROOT), concurrency=4), Web(env) as web:
            rows = []
            held = 0
            for subs, events, interval in ((1, 200, 0.01), (100, 100, 0.02)) if os.environ.get("QUICK") else ((1, 200, 0.01), (100, 100, 0.02), (1000, 30, 0.1)):
                relay_ms, held_now = relay_latency(web, subs, events, interval)
                raw_ms = raw_latency(server.url, subs, events, interval)
                rows.append((subs, relay_ms, raw_ms, held_now))
                if subs == 1000:
                    held = held_now
                print(f"{subs:>5} subscribers: relay p50 {pct(relay_ms, .5):6.2f} ms  p99 "
                      f"{pct(relay_ms, .99):7.2f} ms | raw XADD->XREAD p50 {pct(raw_ms, .5):6.2f} ms"
                      f"  p99 {pct(raw_ms, .99):7.2f} ms | clients that got every event: "
                      f"{held_now}/{subs}", flush=True)
            n = 100_000
            relay_eps = relay_throughput(web, n)
            raw_eps = raw_throughput(server.url, n)
            print(f"one subscriber, {n} events: relay {relay_eps:,.0f} events/s | raw XREAD "
                  f"{raw_eps:,.0f} events/s | ratio {relay_eps / raw_eps:.2f}", flush=True)
    _, relay100, raw100, _ = rows[1]
    p50, p99 = pct(relay100, .5), pct(relay100, .99)
    print(f"targets: p50 <= 5 ms ({p50:.2f}), p99 <= 50 ms ({p99:.2f}) at 100 subscribers; "
          f"1000 held ({held}); >= 20000 events/s ({relay_eps:,.0f})")
    print(f"RESULT p50_ms_100={p50:.2f} p99_ms_100={p99:.2f} subscribers_held={held} "
          f"events_per_s={relay_eps:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
