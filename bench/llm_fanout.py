"""Benchmark: a workflow fanning out 1,000 LLM calls of 1 s simulated latency each.

Everything is private to the run: a redis-server (flowkit.testing.LocalRedis), the
fake OpenAI-compatible server (its own process, 1 s before each answer) and the
Celery workers. The figures, measured in the same run:

- ``wall``: the fan-out as flowkit recommends it for LLM calls, on the I/O pool
  (gevent, see ``--pool``) with ``fan_out(ask, batch=50)`` (env ``BENCH_BATCH``): 50 calls
  per Celery task, each call still its own checkpointed step. From ``Workflow.start``
  to the run's end;
- ``per_item``: the same with one Celery task per call (``fan_out(ask)``);
- ``ideal``: the simulated latency (1 s), the floor of any schedule;
- ``raw``: the same 1,000 calls made straight through the openai SDK from
  1,000 greenlets in one process, no flowkit, no Celery (the raw baseline);
- ``raw aiohttp``: the same calls through the SDK's ``AsyncOpenAI`` over aiohttp (the
  transport flowkit's client sends with, see flowkit.llm.transport) from one asyncio
  loop in one process: what the SDK alone costs on the path flowkit takes;
- ``prefork``: a default prefork Celery worker (one process per core) running
  the same calls, one task each. It serves 2 calls a second here, so it runs a sample of
  ``--prefork-calls`` and the figure for 1,000 calls is extrapolated from it
  (the schedule is throughput-bound: time grows linearly with the calls).

Each figure is the median of ``--rounds`` fan-outs (raw: as many rounds, same warm-up).

    .venv/bin/python bench/llm_fanout.py [--calls 1000] [--pool gevent] [--procs 2] [--rounds 5]

Where the time goes: ``BENCH_DETAIL=1`` prints the CPU seconds of each worker, the LLM
server and Redis, the Redis commands per call, and when the server answered the first
and last call (``BENCH_DETAIL=2`` adds how many cores the workers kept busy, per 0.1 s);
``BENCH_PROFILE=<dir>`` records py-spy profiles of the workers during the measured
fan-outs (``BENCH_PROFILE_RATE``, samples a second); ``BENCH_TIMELINE=1`` prints when the
steps started and completed (``=2``: when each batch began, and on which worker).
``BENCH_TRANSPORT=httpx`` has the workers' client send over the SDK's httpx instead of
aiohttp (Provider.transport), to compare.

The last line is machine-readable:
``RESULT calls=1000 wall_s=<> ideal_s=<> prefork_s=<> per_item_s=<> raw_s=<> raw_aiohttp_s=<>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

from celery import signals

import flowkit
import flowkit.llm
from flowkit import component, fan_out

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "bench.llm_fanout"
LATENCY = 1.0
POOLS = flowkit.get_settings().llm_connection_pools


def make_app():
    """flowkit's Celery app (its broker pool sized by FLOWKIT_CONNECTION_POOL_SIZE for I/O pools)."""
    return flowkit.create_celery_app("flowkit-bench-llm", imports=[MODULE])


@signals.after_setup_logger.connect
def quiet_task_logs(**_) -> None:
    """Per-call INFO lines (Celery: task received, succeeded; httpx: one per request) cost
    3,000 log lines per fan-out. The harness runs workers at INFO to see them get ready;
    the Procfile's I/O worker runs at Celery's default level, WARNING, which drops these."""
    for name in ("celery.app.trace", "celery.worker.strategy", "httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)


app = make_app()
_client = None


def client() -> flowkit.llm.OpenAI:
    """One client per worker process (its connection pool is shared by all the greenlets)."""
    global _client
    if _client is None:
        # BENCH_TRANSPORT=httpx: the SDK over httpx, as before aiohttp (see Provider.transport)
        _client = flowkit.llm.client_from_env(transport=os.environ.get("BENCH_TRANSPORT") or None)
    return _client


@component(name="bench.prompts")
def prompts(data: dict) -> list:
    return [f"question {i}" for i in range(data["n"])]


@component(name="bench.ask")
def ask(prompt: str) -> int:
    reply = client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], max_tokens=4
    )
    return reply.usage.completion_tokens


@component(name="bench.nap")
def nap(prompt: str) -> int:
    """The same step without the LLM call: 1 s of sleep (what flowkit and Celery cost alone)."""
    time.sleep(LATENCY)
    return 4


@component(name="bench.total")
def total(tokens: list) -> dict:
    return {"calls": len(tokens), "tokens": sum(tokens)}


BATCH = int(os.environ.get("BENCH_BATCH", "50"))
batched = flowkit.Workflow("bench_llm_batched", [prompts, fan_out(ask, batch=BATCH), total])
fanout = flowkit.Workflow("bench_llm_fanout", [prompts, fan_out(ask), total])
napping = flowkit.Workflow("bench_nap_fanout", [prompts, fan_out(nap), total])


# -- the harness ---------------------------------------------------------------------------


def start_fake_server(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowkit.testing.fake_openai", "--port", str(port),
         "--latency", str(LATENCY), "--completion-tokens", "4"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # it prints its URL once it listens
    if "listening" not in line:
        raise RuntimeError(f"fake LLM server did not start: {line!r}")
    return proc


def server_stats(port: int, last: int = 0) -> dict:
    import json

    query = f"?last={last}" if last else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/stats{query}", timeout=10) as resp:
        return json.load(resp)


def run_workflow(calls: int, timeout: float, workflow: flowkit.Workflow) -> float:
    started = time.perf_counter()
    run = workflow.start({"n": calls})
    result = run.result(timeout=timeout)
    elapsed = time.perf_counter() - started
    if result["calls"] != calls:
        raise RuntimeError(f"expected {calls} answers, got {result}")
    if os.environ.get("BENCH_TIMELINE"):
        timeline(run)
    return elapsed


def timeline(run) -> None:
    """Where the time went: first and last event of each kind, relative to the run's creation."""
    evs = run.events()
    t0 = evs[0].data["ts"]
    seen: dict[str, list[float]] = {}
    for e in evs:
        kind = f"{e.type} {e.data.get('step', '').split('[')[0]}"
        seen.setdefault(kind, []).append(e.data["ts"] - t0)
    for kind, ts in sorted(seen.items(), key=lambda kv: kv[1][0]):
        print(f"  {kind:45s} n={len(ts):5d} first={ts[0]:.3f} last={ts[-1]:.3f}")
    if os.environ.get("BENCH_TIMELINE") == "2":  # when each batch began, and where
        begun: dict[int, tuple[float, str]] = {}
        for e in evs:
            step = e.data.get("step", "")
            if e.type == "step.started" and "[" in step:
                index = int(step.split("[")[1].split("]")[0])
                begun.setdefault(index // BATCH, (e.data["ts"] - t0, str(e.data.get("worker"))))
        print("  batches began: " + " ".join(f"{t:.2f}@{w[-1:]}" for t, w in sorted(begun.values())))


def with_workers(
    env: dict, pool: str, procs: int, concurrency: int, calls: int, timeout: float,
    server_pid: int, workflows: list[flowkit.Workflow], rounds: int = 1, warmup: int = 0,
) -> dict[str, list[float]]:
    """Wall times of ``rounds`` fan-outs of ``calls`` by each workflow (interleaved) on
    fresh workers, after a warm-up fan-out of ``warmup`` calls (imports, first connections)."""
    from flowkit.testing import WorkerProcess

    workers = [
        WorkerProcess(MODULE, name=f"bench-{pool}-{i}", pool=pool, concurrency=concurrency,
                      env=env, cwd=ROOT)
        for i in range(procs)
    ]
    try:
        for w in workers:
            w.start(timeout=60)
        for workflow in workflows:
            run_workflow(warmup or min(calls, 4 * procs), timeout, workflow)
        walls: dict[str, list[float]] = {wf.name: [] for wf in workflows}
        for _ in range(rounds):
            for workflow in workflows:
                profilers = profile(workers, f"{pool}-{workflow.name}")
                detail = Detail({w.name: w.pid for w in workers} | {"llm server": server_pid})
                started = time.time()
                walls[workflow.name].append(run_workflow(calls, timeout, workflow))
                detail.report(calls, started)
                for p in profilers:
                    p.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
                    p.wait(30)
        if os.environ.get("BENCH_NAP"):  # where the time goes: the same fan-out without the SDK
            nap = run_workflow(calls, timeout, napping)
            print(f"  one task per call, sleep instead of LLM call: {nap:.2f} s")
        return walls
    except BaseException:
        for w in workers:
            print(f"--- last output of {w.name}:\n" + "\n".join(list(w.lines)[-30:]), file=sys.stderr)
        raise
    finally:
        for w in workers:
            w.terminate(30)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and its live children (a prefork pool's)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Detail:
    """With BENCH_DETAIL=1: CPU time per process and the Redis commands of the measured run."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.on = bool(os.environ.get("BENCH_DETAIL"))
        self.pids = pids
        if self.on:
            import redis

            self.r = redis.Redis.from_url(os.environ["FLOWKIT_REDIS_URL"])
            self.pids["redis"] = int(self.r.info("server")["process_id"])
            self.r.config_resetstat()
            self.cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
            self.samples: list[tuple[float, float]] = []  # (time, CPU of the workers)
            self.sampling = True
            import threading

            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        """The workers' CPU every 0.1 s (BENCH_DETAIL=2 prints how busy they were)."""
        workers = [pid for name, pid in self.pids.items() if name.startswith("bench-")]
        while self.sampling:
            self.samples.append((time.time(), sum(cpu_seconds(pid) for pid in workers)))
            time.sleep(0.1)

    def report(self, calls: int, started: float) -> None:
        if not self.on:
            return
        self.sampling = False
        if os.environ.get("BENCH_DETAIL") == "2":
            busy = [f"{(c1 - c0) / (t1 - t0):.1f}" for (t0, c0), (t1, c1)
                    in zip(self.samples, self.samples[1:], strict=False) if t0 >= started - 0.1]
            print("  workers' cores busy per 0.1 s: " + " ".join(busy))
        first, last = server_stats(int(os.environ["FLOWKIT_LLM_FAKE_URL"].rsplit(":", 1)[1]
                                       .split("/")[0]), calls)["arrived"]
        print(f"  requests reached the server from {first - started:.2f} s to {last - started:.2f} s")
        for name, pid in self.pids.items():
            used = cpu_seconds(pid) - self.cpu[name]
            print(f"  cpu {name:16s} {used:6.2f} s ({used / calls * 1000:.2f} ms per call)")
        stats = self.r.info("commandstats")
        total = sum(v["calls"] for v in stats.values())
        print(f"  redis commands: {total / calls:.1f} per call")
        for name, v in sorted(stats.items(), key=lambda kv: -kv[1]["calls"])[:15]:
            print(f"    {name.partition('_')[2]:20s} {v['calls'] / calls:6.2f}/call  "
                  f"{v['usec_per_call']:.1f} us")


def profile(workers: list, pool: str) -> list[subprocess.Popen]:
    """With BENCH_PROFILE=<dir>, py-spy samples each worker during the measured run
    (``pip install py-spy``; raw collapsed stacks, one file per worker)."""
    out = os.environ.get("BENCH_PROFILE")
    if not out:
        return []
    os.makedirs(out, exist_ok=True)
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return [
        subprocess.Popen([spy, "record", "--pid", str(w.pid), "--rate", os.environ.get("BENCH_PROFILE_RATE", "250"), "--format", "raw", "--gil",
                          "--nonblocking", "-o", os.path.join(out, f"{pool}-{i}.txt")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i, w in enumerate(workers)
    ]


def raw_baseline(calls: int, url: str, rounds: int, warmup: int) -> list[float]:
    """The same calls through the openai SDK from greenlets in a child process (no flowkit),
    ``rounds`` times after the same warm-up as the workers get."""
    code = f"""
from gevent import monkey; monkey.patch_all()
import time, gevent, openai
# as many connection pools as flowkit uses: one pool slows down quadratically
cs = [openai.OpenAI(api_key="fake", base_url={url!r}, max_retries=0) for _ in range({POOLS})]
def one(i):
    cs[i % len(cs)].chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": str(i)}}], max_tokens=4)
gevent.joinall([gevent.spawn(one, i) for i in range({warmup})], raise_error=True)
for _ in range({rounds}):
    t = time.perf_counter()
    gevent.joinall([gevent.spawn(one, i) for i in range({calls})], raise_error=True)
    print(time.perf_counter() - t)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [float(line) for line in out.stdout.split()]


def raw_aiohttp_baseline(calls: int, url: str, rounds: int, warmup: int) -> list[float]:
    """The same calls through the openai SDK's async client over aiohttp (the transport
    flowkit's client uses), from one asyncio loop in a child process: no flowkit, no Celery."""
    code = f"""
import asyncio, time, openai
async def main():
    c = openai.AsyncOpenAI(api_key="fake", base_url={url!r}, max_retries=0,
                           http_client=openai.DefaultAioHttpClient())
    async def one(i):
        await c.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": str(i)}}], max_tokens=4)
    await asyncio.gather(*[one(i) for i in range({warmup})])
    for _ in range({rounds}):
        t = time.perf_counter()
        await asyncio.gather(*[one(i) for i in range({calls})])
        print(time.perf_counter() - t)
    await c.close()
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [float(line) for line in out.stdout.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--pool", default="gevent", choices=["gevent", "threads"])
    parser.add_argument("--procs", type=int, default=2, help="I/O worker processes (one per core)")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="greenlets/threads per I/O worker (default: all the calls)")
    parser.add_argument("--prefork-calls", type=int, default=20)
    parser.add_argument("--skip-prefork", action="store_true")
    parser.add_argument("--skip-raw", action="store_true", help="(for quick experiments)")
    parser.add_argument("--skip-per-item", action="store_true", help="(for quick experiments)")
    parser.add_argument("--rounds", type=int, default=5, help="fan-outs measured; medians reported")
    parser.add_argument("--warmup", type=int, default=0,
                        help="calls in the warm-up fan-out (default: --calls, so every HTTP and "
                             "Redis connection pool has grown to its steady size)")
    args = parser.parse_args()

    from flowkit.testing import LocalRedis, free_port

    with LocalRedis() as redis_server:
        port = free_port()
        env = {
            "FLOWKIT_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/1",
            "FLOWKIT_BROKER_URL": f"redis://127.0.0.1:{redis_server.port}/0",
            "FLOWKIT_LLM_FAKE_URL": f"http://127.0.0.1:{port}/v1",
            "OPENAI_API_KEY": "",
            "PYTHONPATH": ROOT,
        }
        os.environ.update(env)
        flowkit.config.reset()
        global app
        app = make_app()  # again, now on the private Redis
        server = start_fake_server(port)
        try:
            warmup = args.warmup or args.calls
            raw = raw_aio = float("nan")
            if not args.skip_raw:
                raws = raw_baseline(args.calls, env["FLOWKIT_LLM_FAKE_URL"], args.rounds, warmup)
                raw = statistics.median(raws)
                print(f"raw: {args.calls} calls from greenlets via the openai SDK: median {raw:.2f} s "
                      f"({', '.join(f'{r:.2f}' for r in raws)})", flush=True)
                raws = raw_aiohttp_baseline(args.calls, env["FLOWKIT_LLM_FAKE_URL"], args.rounds, warmup)
                raw_aio = statistics.median(raws)
                print(f"raw aiohttp: {args.calls} calls from one asyncio loop via the openai SDK's "
                      f"AsyncOpenAI over aiohttp: median {raw_aio:.2f} s "
                      f"({', '.join(f'{r:.2f}' for r in raws)})", flush=True)
            # room for every call in every process: a worker whose slots are all taken
            # stops polling the broker and notices the next step up to a second late
            per_proc = args.concurrency or args.calls
            measured = [batched] if args.skip_per_item else [batched, fanout]
            walls = with_workers(env, args.pool, args.procs, per_proc, args.calls, 300, server.pid,
                                 measured, args.rounds, warmup)
            wall = statistics.median(walls[batched.name])
            per_item = statistics.median(walls[fanout.name]) if not args.skip_per_item else float("nan")
            for workflow, label in ((batched, f"batch={BATCH}"), (fanout, "one task per call")):
                if workflow.name in walls:
                    times = walls[workflow.name]
                    print(f"flowkit, {label}: {args.calls} calls on {args.procs} {args.pool} "
                          f"worker(s) x {per_proc}: median {statistics.median(times):.2f} s "
                          f"({', '.join(f'{w:.2f}' for w in times)})", flush=True)
            prefork = float("nan")
            if not args.skip_prefork:
                cores = os.cpu_count() or 2
                sample = with_workers(env, "prefork", 1, cores, args.prefork_calls, 300, server.pid,
                                      [fanout])[fanout.name][0]
                prefork = sample * args.calls / args.prefork_calls
                print(f"prefork: {args.prefork_calls} calls on the default prefork worker "
                      f"(concurrency {cores}): {sample:.2f} s -> {prefork:.0f} s for {args.calls} "
                      "(extrapolated)", flush=True)
            stats = server_stats(port)
            print(f"fake server: {stats}", flush=True)
        finally:
            server.terminate()
            server.wait(10)

    print(f"ratio: wall / ideal = {wall / LATENCY:.2f}; wall / raw = {wall / raw:.2f}; "
          f"wall / raw aiohttp = {wall / raw_aio:.2f}; prefork / wall = {prefork / wall:.0f}x")
    print(f"RESULT calls={args.calls} wall_s={wall:.2f} ideal_s={LATENCY:.2f} prefork_s={prefork:.1f} "
          f"per_item_s={per_item:.2f} raw_s={raw:.2f} raw_aiohttp_s={raw_aio:.2f}")


if __name__ == "__main__":
    main()

