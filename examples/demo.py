"""The demo: everything flowkit runs, on this machine, for one content-generation run.

Starts a private redis-server (unless FLOWKIT_REDIS_URL is set), a local
OpenAI-compatible server (unless OPENAI_API_KEY is set), a worker, beat and the
web app; starts the ``content`` workflow over HTTP and prints its events live from
a WebSocket (dropping it once and resuming from the last event id), then stops
everything it started. ``python -m examples.demo --help``.

Stopping: when the run ends, or on SIGINT (Ctrl-C), SIGTERM or SIGHUP at any moment
(with ``--keep`` too), the demo stops every process it started and then exits (128 + the
signal's number after a signal): the web app, beat and the worker get SIGTERM and stop
their own children (gunicorn's workers, a prefork pool); whatever is left of their
process groups after ``GRACE`` seconds (3 if Ctrl-C already stopped the private
redis-server) gets SIGKILL; then Redis. The same signal again
while it waits kills what is left at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The signals that stop the demo and everything it started.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: Seconds the web app, beat and the worker have to stop after SIGTERM, before SIGKILL.
GRACE = 20.0
#: The same once the private redis-server has exited (Ctrl-C in a terminal reaches it too,
#: in the demo's process group): a worker cannot finish its step without Redis.
GRACE_WITHOUT_REDIS = 3.0


class Stopped(BaseException):
    """Raised in the main thread by a stop signal (a BaseException, as KeyboardInterrupt
    is, so that no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


class _Hurry(BaseException):
    """A stop signal again while ``stop()`` waits: kill what is left now."""


class Services:
    """The processes of the demo deployment; ``stop()`` ends all that were started."""

    def __init__(self) -> None:
        self.redis = None
        self.llm = None
        self.worker = None
        self.procs: list[subprocess.Popen] = []
        self.tmp = tempfile.mkdtemp(prefix="flowkit-demo-")
        self.web_url: str | None = None
        self.stopping = False  # set by the first stop signal, or by stop()
        self._waiting = False  # stop() waits for the processes to exit

    def on_signal(self, signum: int, frame: object) -> None:
        """The handler of STOP_SIGNALS: the first one stops the demo (``Stopped`` ends what
        the main thread was doing, then ``stop()`` runs); one more while ``stop()`` waits
        cuts the wait short; any other is ignored, so nothing interrupts the stopping."""
        if not self.stopping:
            self.stopping = True
            raise Stopped(signum)
        if self._waiting:
            self._waiting = False
            raise _Hurry(signum)

    def start(self, env: dict[str, str]) -> None:
        from flowkit import config
        from flowkit.testing import LocalRedis, WorkerProcess, free_port

        if not env.get("FLOWKIT_REDIS_URL"):
            # known to stop() before it starts (a signal may come); ended by the kernel with
            # the demo, were it killed (SIGKILL: no handler of ours runs)
            self.redis = LocalRedis(ends_with_us=True)
            self.redis.start()
            env["FLOWKIT_REDIS_URL"] = self.redis.url
            say(f"redis    private redis-server at {self.redis.url}")
        else:
            say(f"redis    using FLOWKIT_REDIS_URL={env['FLOWKIT_REDIS_URL']}")
        if env.get("OPENAI_API_KEY"):
            say(f"llm      OpenAI (model {env.get('FLOWKIT_LLM_MODEL') or 'default'})")
        else:
            from flowkit.testing import FakeLLMServer

            self.llm = FakeLLMServer(latency=0.2, token_latency=0.02)
            self.llm.start()
            env["FLOWKIT_LLM_FAKE_URL"] = self.llm.base_url
            say(f"llm      local OpenAI-compatible server at {self.llm.base_url} "
                "(set OPENAI_API_KEY to use OpenAI)")
        os.environ.update(env)
        config.reset()  # settings read before the private Redis existed are stale
        self.worker = WorkerProcess(
            "workers.celery_app", name="demo", env=env, cwd=str(ROOT), concurrency=8,
            queues=("flowkit", "llm"), ends_with_us=True,
        )
        self.worker.start()
        say(f"worker   celery worker pid {self.worker.pid} (threads pool, 8 slots)")
        beat = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
                "--schedule", f"{self.tmp}/beat-schedule", "--loglevel", "WARNING"]
        self.procs.append(self._spawn(beat, env, "beat"))
        say(f"beat     celery beat pid {self.procs[-1].pid} (the reaper, every "
            f"{os.environ.get('FLOWKIT_REAPER_INTERVAL', '3')}s)")
        if (ROOT / "api" / "app.py").exists():
            port = free_port()
            web = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "api" / "gunicorn.conf.py"),
                   "--bind", f"127.0.0.1:{port}", "api.app:app"]
            self.procs.append(self._spawn(web, env, "web"))
            self.web_url = f"http://127.0.0.1:{port}"
            wait_http(self.web_url + "/healthz")
            say(f"web      gunicorn pid {self.procs[-1].pid} at {self.web_url}")

    def _spawn(self, args: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        from flowkit.orphans import orphan_guarded

        log = open(f"{self.tmp}/{name}.log", "w")  # noqa: SIM115 - lives as long as the process
        # ended by the kernel if the demo is killed (SIGKILL: no handler of ours runs)
        return subprocess.Popen(orphan_guarded(args), env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        """Stop everything started, whatever interrupted ``start()`` or the run.

        The web app, beat and the worker get SIGTERM (each stops its own children), then
        up to GRACE seconds to exit (GRACE_WITHOUT_REDIS once the private redis-server has
        exited); SIGKILL goes to whatever is left of their process groups (a leader that
        did not exit, children it left behind). Then Redis, the local LLM server, and any
        other child of this process (one started as the signal came, before the demo held
        its handle)."""
        self.stopping = True
        groups = [p for p in (*self.procs, self.worker and self.worker.proc) if p is not None]
        for proc in groups:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # the leader: gunicorn, beat, the worker
        hurried = False
        try:
            self._waiting = True
            self._wait_for(groups)
            self._waiting = False
        except _Hurry as again:
            hurried = True
            tell(f"flowkit demo: {signal.Signals(again.args[0]).name} again; killing what is left")
        for proc in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the rest of its process group
            proc.wait()
        if self.redis:
            self.redis.stop(kill=hurried)
            self.redis.close()
        if self.llm:
            self.llm.stop()
        _kill_other_children()

    def _wait_for(self, groups: list[subprocess.Popen]) -> None:
        """Wait until the processes exited, up to GRACE seconds, or GRACE_WITHOUT_REDIS
        seconds after the private redis-server is seen to have exited."""
        deadline = time.monotonic() + GRACE
        redis = self.redis.proc if self.redis else None
        for proc in groups:
            while (remaining := deadline - time.monotonic()) > 0:
                if redis is not None and redis.poll() is not None:
                    redis = None
                    deadline = min(deadline, time.monotonic() + GRACE_WITHOUT_REDIS)
                    tell(f"  redis-server has exited: the others get {GRACE_WITHOUT_REDIS:.0f}s "
                         "to stop, then SIGKILL")
                    continue
                try:
                    proc.wait(min(remaining, 0.5))  # a slice: see Redis go in the meantime
                    break
                except subprocess.TimeoutExpired:
                    pass


def _kill_other_children() -> None:
    """SIGKILL any child process this one still has (and its group, if it leads one): a
    process whose Popen a signal interrupted has no handle to stop it by."""
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited meanwhile
        _state, ppid, pgid = text[text.rindex(")") + 2:].split()[:3]
        if int(ppid) != me:
            continue
        pid = int(stat.parent.name)
        with contextlib.suppress(ProcessLookupError):
            if int(pgid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def wait_http(url: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)  # the server is still binding its port
    raise SystemExit(f"flowkit demo: the web app did not answer at {url} within {timeout}s")


def say(text: str) -> None:
    print(f"  {text}", flush=True)


def tell(text: str) -> None:
    """Print while stopping: a closed terminal (SIGHUP) or pipe must not keep it from stopping."""
    with contextlib.suppress(OSError):
        print(text, flush=True)


def show(event: dict, t0: float, lines: dict[str, str]) -> None:
    """Print one event. Output chunks gather into a line per step, printed when full."""
    kind = event["type"]
    step = event.get("step", "")
    if kind == "step.output":
        lines[step] = lines.get(step, "") + str(event["chunk"])
        if len(lines[step]) >= 72:
            print(f"             {step:24} > {lines.pop(step).strip()}", flush=True)
        return
    if step in lines and kind in ("step.completed", "step.retrying", "step.failed"):
        print(f"             {step:24} > {lines.pop(step).strip()}", flush=True)
    stamp = f"[{time.monotonic() - t0:6.2f}s]"
    detail = {
        "step.started": lambda: f"attempt {event.get('attempt')} on {event.get('worker', '?')}",
        "step.progress": lambda: f"{event.get('message')} {fraction(event)}",
        "step.retrying": lambda: f"attempt {event.get('attempt')} failed: {event.get('error')}",
        "step.completed": lambda: f"in {event.get('duration')}s",
        "run.restarted": lambda: event.get("reason", ""),
        "run.failed": lambda: event.get("error", {}).get("message", ""),
    }.get(kind, lambda: "")()
    print(f"  {stamp} {kind:15} {step} {detail}".rstrip(), flush=True)


def fraction(event: dict) -> str:
    f = event.get("fraction")
    return f"({f:.0%})" if f is not None else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    parser.add_argument("--topic", default="durable AI workflows")
    parser.add_argument("--sections", type=int, default=3)
    parser.add_argument("--keep", action="store_true",
                        help="keep the services running until Ctrl-C or SIGTERM")
    args = parser.parse_args(argv)

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Local development only: the demo's API takes requests without credentials.
    env.setdefault("FLOWKIT_API_OPEN", "true")
    services = Services()
    previous = {signum: signal.signal(signum, services.on_signal) for signum in STOP_SIGNALS}
    stopping = "flowkit demo: stopping everything it started"
    try:
        print("flowkit demo: starting a local deployment", flush=True)
        code = run(args, env, services)
    except Stopped as stop:
        stopping = f"\nflowkit demo: {stop.name} received; stopping everything it started"
        code = 128 + stop.signum
    finally:
        services.stopping = True  # from here on a stop signal only hurries stop()
        tell(stopping)
        services.stop()
        tell("flowkit demo: stopped everything it started")
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code


def run(args: argparse.Namespace, env: dict[str, str], services: Services) -> int:
    """Start the services, run the workflow, and with ``--keep`` wait for a stop signal."""
    services.start(env)
    if env["FLOWKIT_API_OPEN"] == "true":
        say("note     FLOWKIT_API_OPEN=true: the demo's API needs no credentials "
            "(never in production)")
    brief = {"topic": args.topic, "sections": args.sections}
    final = follow_over_http(services.web_url, brief)
    print(f"\nflowkit demo: run {final['state']}", flush=True)
    if final["state"] == "succeeded":
        output = final["output"]
        print(f"  {output['sections']} sections, {output['words']} words:\n")
        print("    " + output["article"][:400].replace("\n", "\n    ") + " ...\n")
    if args.keep:
        print(f"services keep running; watch page: {services.web_url}{final['watch']}; "
              f"dashboard: {services.web_url}/ui; "
              f"Ctrl-C (or kill {os.getpid()}) stops them", flush=True)
        print("\n".join(cli_exports(env, services.web_url)), flush=True)
        while True:
            signal.pause()  # until a stop signal raises Stopped
    return 0 if final["state"] == "succeeded" else 1


def cli_exports(env: dict[str, str], web: str) -> list[str]:
    """What another terminal exports for the CLI to reach this deployment, as ``flowkit
    dev`` prints it (over HTTP, and on the same Redis)."""
    from flowkit.config import parse_bool

    names = ["FLOWKIT_REDIS_URL", "FLOWKIT_LLM_FAKE_URL"]
    keys = [k.strip() for k in env.get("FLOWKIT_API_KEYS", "").split(",") if k.strip()]
    open_api = parse_bool(env.get("FLOWKIT_API_OPEN") or "false", "FLOWKIT_API_OPEN")
    return [
        "",
        "  In another terminal, the CLI talks to it after:",
        f"    cd {shlex.quote(str(ROOT))}",
        "    export FLOWKIT_APP=workers.celery_app",
        *(f"    export {name}={env[name]}" for name in names if env.get(name)),
        f"    export FLOWKIT_URL={web}",
        # an API the demo was told to close takes the CLI's requests with a key
        *([f"    export FLOWKIT_API_KEY={shlex.quote(keys[0])}"] if keys and not open_api else []),
        "  then: .venv/bin/flowkit runs   (or run, follow, workers; --help lists them)",
    ]


def follow_over_http(web: str, brief: dict) -> dict:
    """Start the run with POST, follow it over WebSocket, drop the socket once mid-run and
    resume from the last event id, as a browser does after a refresh."""
    import httpx
    import websocket

    created = httpx.post(f"{web}/workflows/content/runs", json=brief, timeout=10)
    created.raise_for_status()
    run = created.json()
    token = run["token"]
    print(f"\nflowkit demo: POST /workflows/content/runs -> {created.status_code}, run {run['id']}")
    print(f"  watch it in a browser: {web}{run['urls']['watch']}?token={token}\n", flush=True)
    ws_url = web.replace("http://", "ws://") + run["urls"]["stream"]
    t0, lines, cursor, dropped = time.monotonic(), {}, None, False
    while True:
        url = ws_url + (f"?after={cursor}" if cursor else "")
        sock = websocket.create_connection(url, timeout=60, header=[f"Authorization: Bearer {token}"])
        try:
            for message in iter(sock.recv, ""):
                event = json.loads(message)
                cursor = event["id"]
                show(event, t0, lines)
                if event["type"] in ("run.succeeded", "run.failed", "run.cancelled"):
                    record = httpx.get(f"{web}{run['urls']['self']}", timeout=10,
                                       headers={"Authorization": f"Bearer {token}"}).json()
                    return {**record, "watch": run["urls"]["watch"] + f"?token={token}"}
                if not dropped and event["type"] == "step.completed":
                    dropped = True
                    print(f"  -- demo: dropping the WebSocket; resuming after event {cursor} --",
                          flush=True)
                    break
        finally:
            sock.close()


if __name__ == "__main__":
    sys.exit(main())
