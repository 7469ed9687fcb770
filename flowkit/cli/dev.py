"""``flowkit dev``: the whole deployment of the user's own project on this machine, in one
command, reloaded as the code changes.

A new user's first minutes otherwise go on starting Redis, an LLM endpoint, a worker on
the right queues (the default queue alone leaves ``.queue("llm")`` steps queued for
ever), beat, and a production-grade web server that holds WebSockets and ends streams
when it restarts (gunicorn with flowkit's settings, not ``flask run``). This command
starts them all under one supervisor (:mod:`.supervisor`):

- a private ``redis-server`` on a free port, unless ``FLOWKIT_REDIS_URL`` is set;
- the local OpenAI-compatible server (``flowkit.testing.fake_openai``), unless
  ``OPENAI_API_KEY`` is set;
- one worker consuming every queue the workflows route to (:mod:`.devworker`);
- celery beat (the reaper, timers, schedules);
- the web app on gunicorn with flowkit's packaged settings: the user's Flask app
  (``--web myapp:app``, with ``FlowKit(app)`` mounted), else flowkit's own app serving
  the workflows (:mod:`flowkit.api.devapp`).

It prints the URLs and the ``export`` lines that point the CLI of another terminal at
this deployment; a Python file changed under the project restarts the worker and the
web app (watchfiles); Ctrl-C, SIGTERM or SIGHUP stops everything, the private Redis
last, and exits with 128 + the signal's number. The API runs open (no credentials:
``FLOWKIT_API_OPEN=true``) on the loopback interface, as a local dev server does,
unless ``FLOWKIT_API_KEYS`` or ``FLOWKIT_API_OPEN`` is set.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from ..config import get_settings, reset
from ..defaults import DEV_API_PREFIX_VARIABLE
from ..engine.control import live_workers
from ..errors import ConfigError, FlowkitError, StoreUnavailable
from ..store import get_store, no_primary, sentinels_refused
from ..store.server import probe
from ..urls import reached, redacted
from ..workflow import workflows
from .app import DEFAULT_APP, add_app_option, app_module_name, load_app, require_flowkit_app
from .routing import routed_queues
from .supervisor import Child, ChildFailed, Stopped, Supervisor
from .usage import CodeError, UsageError, whole_number

#: Seconds the worker, beat, web app and LLM server have to stop after SIGTERM, past
#: FLOWKIT_DRAIN_GRACE (see :func:`_grace`).
STOP_GRACE = 10.0
#: Seconds a reloaded worker and web app have to stop before SIGKILL, past the drain: a
#: running step is handed over to the next worker after FLOWKIT_DRAIN_GRACE (3 s in dev,
#: see below).
RELOAD_GRACE = 5.0
#: Seconds everything has to come up at start (a reloaded child has no deadline: a file
#: saved half-way may break it until the next save).
START_TIMEOUT = 90.0
#: Milliseconds of quiet after a file change before reloading (an editor saving several
#: files, a ``git checkout``: one reload).
DEBOUNCE_MS = 300
#: The local OpenAI-compatible server's program (``-m`` would warn: flowkit.testing
#: imports the module before running it).
FAKE_LLM_SERVER = "from flowkit.testing.fake_openai import main; main()"
#: The children restarted when code changes, and waited for: the two that import the
#: user's code and serve it.
RELOADED = ("worker", "web")
#: Restarted too, not waited for: beat stores the schedules the code declares as it starts
#: (a schedule added, changed or removed in the code was not, until dev restarted).
RESTARTED = ("beat",)


def register(subs: argparse._SubParsersAction) -> None:
    parser = subs.add_parser(
        "dev", help="run your project's whole deployment locally, reloading on changes",
        description="Start a private Redis (unless FLOWKIT_REDIS_URL is set), a local "
                    "OpenAI-compatible server (unless OPENAI_API_KEY is set), a worker on "
                    "every queue your workflows use, beat, and the web app; reload the "
                    "worker and the web app when a Python file changes; Ctrl-C stops all.",
    )
    add_app_option(parser)
    parser.add_argument("--web", metavar="MODULE:APP", default=None,
                        help="your Flask app with FlowKit(app) mounted (default: flowkit's "
                             "own web app serving your workflows)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface the web app listens on (default: %(default)s)")
    parser.add_argument("--port", type=_port, default=8000,
                        help="port of the web app; a free one if it is taken "
                             "(default: %(default)s)")
    parser.add_argument("--concurrency", type=_concurrency, default=8,
                        help="steps the worker runs at once (default: %(default)s)")
    parser.add_argument("--no-reload", action="store_true",
                        help="do not restart the worker and web app when code changes")
    parser.set_defaults(func=dev)


# Checked by argparse, before anything starts: a bad --port crashed socket.bind, and a
# bad --concurrency was found only by the worker, once Redis and the rest were up.
# (0, "any port", would leave no URL to print.)
_port = whole_number(1, 65535, "{text} is not a port: pass one from 1 to 65535")
_concurrency = whole_number(1, None, "{text} is not a number of steps to run at once: "
                                     "pass 1 or more")


def dev(args: argparse.Namespace) -> int:
    app_name = app_module_name(args)
    if app_name == DEFAULT_APP and not Path(DEFAULT_APP.replace(".", "/") + ".py").exists():
        raise UsageError("name the module of your workflows: flowkit dev -A myapp.flows "
                         "(or set FLOWKIT_APP).")
    project = Path.cwd()
    environ = dict(os.environ)  # as started: what a start after a fix starts from
    env: dict[str, str] = {"FLOWKIT_APP": app_name}
    notes = _api_access(env)
    # dev reloads: a step running when the code changes is handed over after 3 s
    if not os.environ.get("FLOWKIT_DRAIN_GRACE"):
        env["FLOWKIT_DRAIN_GRACE"] = "3"
    os.environ.update(env)
    reset()
    # the command line's own mistakes first: a --host it cannot listen on is no code to fix
    port = args.port if _port_free(args.host, args.port) else _free_port(args.host)
    try:
        load_app(args)  # a wrong -A is one line now, not a crash in every child
        require_flowkit_app(args)
        queues = routed_queues()
        prefix, api_open = _web_api(args.web)
    except CodeError as exc:
        if args.no_reload:
            raise
        _start_again_after_a_fix(exc, project, environ)
    if not api_open:
        notes = ["the API requires credentials (your app's settings): the CLI needs "
                 "FLOWKIT_API_KEY"]
    if port != args.port:
        notes.append(f"port {args.port} is taken; the web app listens on {port}")

    supervisor = Supervisor()
    tmp = tempfile.mkdtemp(prefix="flowkit-dev-")
    code = 0
    with supervisor.signals():
        try:
            supervisor.say(f"starting {app_name} from {project}")
            _start_backing_services(supervisor, env, tmp)
            os.environ.update(env)
            reset()
            web_url = f"http://{_display_host(args.host)}:{port}"
            api_url = web_url + prefix
            _add_app_children(supervisor, args, app_name, env, tmp, port, api_url, project)
            for name in ("worker", "beat", "web"):
                supervisor.start(name)
            supervisor.wait_ready(["worker", "web"], START_TIMEOUT)
            served = _web_workflows(api_url)
            supervisor.banner(_banner(app_name, env, api_url, queues,
                                      notes + _unserved(served) + _other_devs(port), api_open,
                                      reload=not args.no_reload, served=served))
            if not args.no_reload:
                _watch(supervisor, project)
            _serve(supervisor, reload=not args.no_reload)
        except Stopped as stop:
            supervisor.say(f"{stop.name} received; stopping everything")
            code = 128 + stop.signum
        except ChildFailed as exc:
            supervisor.say(f"{exc}; stopping everything")
            code = 1
        finally:
            supervisor.stop_all(_grace(STOP_GRACE))
            if environ.get("FLOWKIT_REDIS_URL"):  # their Redis outlives dev (a private one not)
                _forget_worker(port)
            shutil.rmtree(tmp, ignore_errors=True)
            supervisor.say("stopped")
    return code


def _start_again_after_a_fix(broken: CodeError, project: Path, environ: dict[str, str]
                             ) -> NoReturn:
    """The code is broken as dev starts: say so, wait for a Python file under ``project`` to
    change, then start again as a new process (a fresh interpreter: nothing of the broken
    import stays behind). Dev exited here, and had to be started again by hand after the fix,
    unlike a reload, which waits for the next edit. Ctrl-C stops the wait (exit code 130)."""
    from watchfiles import PythonFilter, watch

    print(f"flowkit dev: {broken}", file=sys.stderr)
    # an empty batch each 0.2 s without changes: the first says the watch is on, so that a
    # fix saved as the line below shows is seen
    batches = watch(project, watch_filter=PythonFilter(), debounce=DEBOUNCE_MS,
                    rust_timeout=200, yield_on_timeout=True)
    changes = next(batches)
    print(f"flowkit dev: waiting for a change to a Python file under {project} "
          "(Ctrl-C stops)", file=sys.stderr, flush=True)
    while not changes:
        changes = next(batches)
    print(f"flowkit dev: {_listed(_changed(project, changes))} changed; starting again",
          file=sys.stderr, flush=True)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def _changed(project: Path, changes: set[tuple[Any, str]]) -> list[str]:
    """A batch of watchfiles' changes as the files changed, relative to ``project``."""
    return sorted({os.path.relpath(path, project) for _, path in changes})


def _listed(paths: list[str]) -> str:
    """Changed files for a line: three, then how many more."""
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _node(port: int) -> str:
    """The dev worker's node name: one per ``flowkit dev`` (by its web port), so that two
    sharing a Redis are two workers to ``flowkit workers``, not one. It matches
    ``defaults.DEV_NODE_PATTERN``: a run with no live worker says to fix the code."""
    return f"dev-{port}@%h"


def _forget_worker(port: int) -> None:
    """Take dev's stopped worker out of the user's Redis: a run started there after dev
    stopped said "flowkit dev's worker is down ...; it starts again when you save a fix",
    and no save started anything. Redis gone meanwhile: nothing to tell."""
    with contextlib.suppress(StoreUnavailable, ConfigError):
        get_store().forget_node(_node(port).replace("%h", socket.gethostname()))


def _other_devs(port: int) -> list[str]:
    """A note naming the workers of other ``flowkit dev``s on this Redis (a terminal that
    kept another one's exports): runs go to either, on either's code."""
    ours = _node(port).partition("@")[0] + "@"
    others = sorted(w["name"] for w in live_workers()
                    if w["name"].startswith("dev") and not w["name"].startswith(ours))
    if not others:
        return []
    return [f"another flowkit dev's worker ({', '.join(others)}) serves this Redis too: runs "
            "go to either, on either's code (unset FLOWKIT_REDIS_URL for a private Redis)"]


def _api_access(env: dict[str, str]) -> list[str]:
    """Open the API for local development unless the user chose its credentials."""
    if os.environ.get("FLOWKIT_API_KEYS") or os.environ.get("FLOWKIT_API_OPEN"):
        return []
    env["FLOWKIT_API_OPEN"] = "true"
    return ["the API takes requests without credentials (FLOWKIT_API_OPEN=true: local "
            "development only, for localhost, 127.0.0.1 and [::1]; set FLOWKIT_API_KEYS to "
            "require keys, as another machine reaching --host 0.0.0.0 needs)"]


def _web_api(web: str | None) -> tuple[str, bool]:
    """Where flowkit's API is mounted in the web app and whether it is open: as
    ``FlowKit(app, ...)`` set it up in the user's app (imported here as gunicorn will
    import it; its ``app.config`` wins over the environment), else as configured."""
    settings = get_settings()
    default = (settings.api_url_prefix.rstrip("/"), settings.api_open)
    if not web:
        return default
    module_name, _, attribute = web.partition(":")
    if not module_name.strip():  # ":app": importing '' failed, and dev waited for an edit
        raise UsageError(f"--web {web}: no module before the ':'; give the module of your "
                         "Flask app as for gunicorn (--web myapp:app).")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # no such module (a typo), or the user's module raised
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing is not None and (module_name == missing
                                    or module_name.startswith(missing + ".")):
            # a typo on the command line, which no edit of a file fixes: dev waited for one
            raise UsageError(f"--web {web}: no module {module_name!r} here; give the module "
                             "of your Flask app as for gunicorn (--web myapp:app, or --web "
                             "'myapp:create_app()' for a factory), from the project's root.") from None
        raise CodeError(f"--web {web}: importing {module_name!r} failed ({type(exc).__name__}: "
                        f"{exc}); fix it, or leave --web out to serve flowkit's own app.") from None
    name = (attribute or "app").partition("(")[0].strip()
    if not hasattr(module, name):
        factories = [f for f in ("create_app", "make_app", "app_factory")
                     if callable(getattr(module, f, None))]
        hint = (f" (a factory: --web '{module_name}:{factories[0]}()')" if factories else "")
        raise UsageError(f"--web {web}: module {module_name!r} has no {name!r}{hint}.")
    try:
        if "(" in attribute:  # an app factory ("module:create_app()"): made as gunicorn makes
            # it (the prefix FlowKit(app) got is known only then: the banner named the
            # default one, and `flowkit run` at its FLOWKIT_URL met a 404)
            from gunicorn.util import import_app  # only here: every CLI call imports dev

            flask_app = import_app(web)
        else:
            flask_app = getattr(module, name)
    except Exception as exc:  # the user's module (or factory) raised
        raise CodeError(f"--web {web}: importing {module_name!r} failed ({type(exc).__name__}: "
                         f"{exc}); fix it, or leave --web out to serve flowkit's own app.") from None
    api = getattr(flask_app, "extensions", {}).get("flowkit")
    if api is None:
        raise CodeError(f"--web {web}: no Flask app with flowkit mounted there; call "
                         "FlowKit(app) in it, or leave --web out to serve flowkit's own app.")
    return api.url_prefix.rstrip("/"), bool(api.options.open)


def _start_backing_services(supervisor: Supervisor, env: dict[str, str], tmp: str) -> None:
    """The private Redis and the local LLM server, each unless the user has their own."""
    ready = []
    if os.environ.get("FLOWKIT_REDIS_URL"):
        _their_redis_answers(os.environ["FLOWKIT_REDIS_URL"])
    else:
        exe = shutil.which("redis-server")
        if exe is None:
            raise UsageError("redis-server is not installed: install it (apt-get install "
                             "redis-server, brew install redis) or set FLOWKIT_REDIS_URL.")
        redis_port = _free_port("127.0.0.1")
        supervisor.add(Child(
            "redis", [exe, "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", tmp,
                      # AOF as production runs it: a worker restarted by a reload finds
                      # every run, and no startup check warns of data at risk
                      "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                      "--protected-mode", "yes",
                      "--loglevel", "warning"],
            probe=lambda: _redis_answers(redis_port), last=True,
        ))
        env["FLOWKIT_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
        # broker and results go with it: a URL of another Redis would split the deployment
        env["FLOWKIT_BROKER_URL"] = env["FLOWKIT_RESULT_BACKEND"] = ""
        ready.append("redis")
        supervisor.start("redis")
    if not os.environ.get("OPENAI_API_KEY"):
        llm_port = _free_port("127.0.0.1")
        # a separate program: the library never imports its test parts (setup.cfg)
        supervisor.add(Child(
            "llm", [sys.executable, "-c", FAKE_LLM_SERVER, "--port", str(llm_port),
                    "--latency", "0.05", "--token-latency", "0.01"],
            ready_line="listening on",
        ))
        env["FLOWKIT_LLM_FAKE_URL"] = f"http://127.0.0.1:{llm_port}/v1"
        ready.append("llm")
        supervisor.start("llm")
    supervisor.wait_ready(ready, START_TIMEOUT)
    where = redacted(env.get("FLOWKIT_REDIS_URL") or os.environ["FLOWKIT_REDIS_URL"])
    supervisor.say(f"redis at {where}" + ("" if "redis" in ready else " (FLOWKIT_REDIS_URL)"))
    if "llm" in ready:
        supervisor.say(f"local OpenAI-compatible server at {env['FLOWKIT_LLM_FAKE_URL']} "
                       "(set OPENAI_API_KEY to use OpenAI)")
    else:
        supervisor.say("LLM calls go to OpenAI (OPENAI_API_KEY is set)")


def _their_redis_answers(url: str) -> None:
    """Check the user's Redis once, at once: one that is down made the worker and web app
    retry for FLOWKIT_REDIS_RETRY_SECONDS, and dev say "not ready" 90 s later. Refusals
    and sentinels without a primary go on to the CLI's own words for them."""
    try:
        probe(url)
    except StoreUnavailable as exc:
        if sentinels_refused(exc) is not None or no_primary(exc, url):
            raise
        raise FlowkitError(f"cannot reach Redis at {reached(url)} (FLOWKIT_REDIS_URL): start "
                           "it, or unset FLOWKIT_REDIS_URL for a private Redis that flowkit "
                           "dev starts and stops.") from None


def _add_app_children(supervisor: Supervisor, args: argparse.Namespace, app_name: str,
                      env: dict[str, str], tmp: str, port: int, api_url: str,
                      project: Path) -> None:
    cwd = str(project)
    supervisor.add(Child(
        "worker", [sys.executable, "-m", "flowkit.cli.devworker", "-A", app_name,
                   "--concurrency", str(args.concurrency), "--hostname", _node(port)],
        env=env, cwd=cwd, ready_line=r"@\S+ ready\.$",
        # beat's sweeps, every few seconds, would drown the steps' lines
        quiet=r"Task flowkit\.(reaper|retention)\[",
    ))
    supervisor.add(Child(
        "beat", [sys.executable, "-m", "flowkit.cli.devworker", "-A", app_name,
                 "--beat", f"{tmp}/beat-schedule"],
        env=env, cwd=cwd,
    ))
    # the user's app through devapp too: an import error is one line, not gunicorn's traceback
    target = (f"flowkit.api.devapp:user_app({args.web!r})" if args.web
              else "flowkit.api.devapp:create_app()")
    supervisor.add(Child(
        "web", [sys.executable, "-m", "gunicorn", "-c", "python:flowkit.api.gunicorn_config",
                "--bind", f"{_bracketed(args.host)}:{port}", "--graceful-timeout", "5",
                "--access-logfile", "-", target],
        env={**env, "FLOWKIT_WEB_CONTROL_SOCKET": f"{tmp}/gunicorn.ctl",
             DEV_API_PREFIX_VARIABLE: urlsplit(api_url).path.rstrip("/")}, cwd=cwd,
        probe=lambda: _http_answers(api_url + "/healthz"),
    ))


def _serve(supervisor: Supervisor, reload: bool) -> None:
    """Act on events until a stop signal (which raises Stopped). A child that exits is
    started again at the next change when dev reloads it (beat too: it said "restart flowkit
    dev to get it back", and came back at the next save; with --no-reload, none is)."""
    reloading: set[str] = set()
    while True:
        event = supervisor.next_event(3600.0)
        if event is None:
            continue
        kind = event[0]
        if kind == "changed":
            _reload(supervisor, event[1])
            reloading = set(RELOADED)
        elif kind == "ready":
            child = event[1]
            if supervisor.handle(event) and child.name in reloading:
                reloading.discard(child.name)
                supervisor.say(f"{child.name} reloaded")
        elif kind == "exited":
            _, child, proc = event
            if proc is child.proc and proc.returncode is not None:
                if child.last:
                    raise ChildFailed(f"{child.name} exited with code {proc.returncode}")
                restarts = reload and child.name in (*RELOADED, *RESTARTED)
                supervisor.say(f"{child.name} exited with code {proc.returncode}; " + (
                    "it starts again when a Python file changes" if restarts
                    else "the rest runs on without it (restart flowkit dev to get it back)"))


def _reload(supervisor: Supervisor, paths: list[str]) -> None:
    supervisor.say(f"reload: {_listed(paths)} changed; restarting worker, web and beat")
    supervisor.stop((*RELOADED, *RESTARTED), _grace(RELOAD_GRACE))
    for name in ("worker", "beat"):  # Celery's banner once, not at every reload
        child = supervisor.children[name]
        if "--quiet" not in child.argv:
            child.argv = [*child.argv, "--quiet"]
    for name in (*RELOADED, *RESTARTED):
        supervisor.start(name)


def _watch(supervisor: Supervisor, project: Path) -> None:
    """Post ("changed", paths) for every batch of Python files changed under ``project``
    (watchfiles skips .venv, .git, __pycache__ and the like; flowkit the project's
    virtualenvs of other names too)."""
    from watchfiles import PythonFilter, watch

    only_code = PythonFilter(ignore_paths=virtualenvs(project))

    def run() -> None:
        for changes in watch(project, watch_filter=only_code, debounce=DEBOUNCE_MS,
                             raise_interrupt=False):
            supervisor.events.put(("changed", _changed(project, changes)))

    threading.Thread(target=run, daemon=True, name="watch").start()


def _web_workflows(api_url: str) -> list[str] | None:
    """The workflows the web app serves, as its API lists them; None when it will not say
    (credentials this process does not hold: keys set in the app's own config)."""
    keys = [k.strip() for k in os.environ.get("FLOWKIT_API_KEYS", "").split(",") if k.strip()]
    headers = {"Authorization": f"Bearer {keys[0]}"} if keys else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(api_url + "/workflows",
                                                           headers=headers), timeout=5.0) as r:
            return sorted(wf["name"] for wf in json.load(r)["workflows"])
    except (OSError, ValueError, KeyError, TypeError):  # URLError and HTTPError are OSErrors
        return None


def _unserved(served: list[str] | None) -> list[str]:
    """A note when the worker runs workflows the web app does not serve: a --web app that
    does not import the module of the workflows answers 404 to their starts."""
    missing = sorted(set(workflows()) - set(served)) if served is not None else []
    if not missing:
        return []
    return [f"the web app does not serve {', '.join(missing)}: import the module that "
            "declares them where the web app is built, or the API answers 404 to them"]


def _banner(app_name: str, env: dict[str, str], api_url: str, queues: list[str],
            notes: list[str], api_open: bool, reload: bool = True,
            served: list[str] | None = None) -> list[str]:
    names = ", ".join(served if served is not None else sorted(workflows())) or "none yet"
    lines = [
        "",
        f"flowkit dev: {app_name} is up",
        f"  API        {api_url}  (workflows: {names})",
        *([f"  dashboard  {api_url}{get_settings().api_ui_path}  (runs, workers, a run's "
           "steps)"] if get_settings().api_ui else []),
        f"  OpenAPI    {api_url}/openapi.json",
        f"  health     {api_url}/healthz",
        f"  metrics    {api_url}/metrics  (Prometheus)",
        f"  watch page {api_url}/runs/RUN_ID/watch  (a run's live page)",
        f"  queues     {', '.join(queues)} (one worker consumes them all)",
        *(f"  note       {note}" for note in notes),
        "",
        "  In another terminal, the CLI and your scripts talk to this deployment after:",
        f"    export FLOWKIT_APP={app_name}",
        f"    export FLOWKIT_REDIS_URL={env.get('FLOWKIT_REDIS_URL') or os.environ['FLOWKIT_REDIS_URL']}",
    ]
    if env.get("FLOWKIT_LLM_FAKE_URL"):
        lines.append(f"    export FLOWKIT_LLM_FAKE_URL={env['FLOWKIT_LLM_FAKE_URL']}")
    lines.append(f"    export FLOWKIT_URL={api_url}")
    if not api_open:
        lines.append("    export FLOWKIT_API_KEY=<one of your API keys>")
    changes = ("Python files changed here reload the worker and the web app; " if reload
               else "Code changes need a restart (--no-reload); ")
    lines += [f"    {_example_run()}", "", f"  {changes}Ctrl-C stops everything.", ""]
    return lines


def _example_run() -> str:
    """``flowkit run`` of the first workflow, with its required input fields to fill in."""
    if not workflows():
        return "flowkit run WORKFLOW -i key=value --follow"
    name, wf = sorted(workflows().items())[0]
    fields = wf.input_schema.fields if wf.input_schema is not None else {}
    required = [f for f, spec in fields.items() if spec.required]
    items = "".join(f" -i {f}=..." for f in required)
    return f"flowkit run {name}{items} --follow"


# -- ports and probes ---------------------------------------------------------------------


def _port_free(host: str, port: int) -> bool:
    try:
        _bind(host, port)
    except OSError:
        return False
    return True


def _free_port(host: str) -> int:
    try:
        return _bind(host, 0)
    except OSError as exc:  # not an address of this machine
        raise UsageError(f"--host {host}: cannot listen there ({exc.strerror}); give an "
                         "address of this machine, e.g. 127.0.0.1 or 0.0.0.0.") from None


def _bind(host: str, port: int) -> int:
    """The port a socket bound on ``host`` gets (``port``, or any free one for 0); ``""``
    is every IPv4 interface, as for ``bind``."""
    try:
        [(family, *_), *_] = socket.getaddrinfo(host or "0.0.0.0", port,
                                                type=socket.SOCK_STREAM,
                                                flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: no such address ({exc.strerror}); give an address "
                         "of this machine, e.g. 127.0.0.1 or 0.0.0.0.") from None
    with socket.socket(family) as s:
        # as gunicorn binds: a port whose last connection lingers in TIME_WAIT (a restart
        # right after Ctrl-C) is free to listen on; one that something listens on is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return s.getsockname()[1]


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0") else _bracketed(host)


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # IPv6, as URLs and gunicorn's --bind write it


def _redis_answers(port: int) -> bool:
    """PING over a socket: only the store may import redis (setup.cfg)."""
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")


def _http_answers(url: str) -> bool:
    """Whether the web app answers at all (any status: it serves)."""
    try:
        with urllib.request.urlopen(url, timeout=5.0):  # the first request imports a lot
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _grace(margin: float) -> float:
    """How long a worker has to stop before SIGKILL: its drain (FLOWKIT_DRAIN_GRACE, 3 s in
    dev unless set) and ``margin`` for its hand-over. A drain set longer (the deploy
    recipes' 30 s, exported in the shell) was cut at 8 s: the step in flight was not handed
    over, the reaper counted a crash, and a few saves during one step failed its run."""
    try:
        return get_settings().drain_grace + margin
    except ConfigError:
        return 3.0 + margin


def virtualenvs(project: Path) -> list[Path]:
    """The virtualenvs at the top of ``project`` (a ``pyvenv.cfg`` in them), whatever their
    name: watchfiles skips ``.venv`` alone, and a ``pip install`` into ``venv/`` restarted
    the worker and the web app."""
    try:
        return sorted(child for child in project.iterdir()
                      if child.is_dir() and (child / "pyvenv.cfg").is_file())
    except OSError:  # an unreadable directory: nothing more to skip
        return []
