"""Worker and web processes check the store's Redis as they start: they warn loudly of
settings that lose work (AOF off, an evicting maxmemory-policy) and refuse to start, in one
line and at once, when Redis refuses their credentials."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from flowkit.engine.doctor import startup_findings
from flowkit.testing import LocalRedis, WorkerProcess, free_port
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.integration

REFUSED = "flowkit's Redis refused its credentials"


@pytest.fixture
def risky_redis():
    """No AOF, and an eviction policy with a memory limit: the two settings that lose runs."""
    with LocalRedis() as server:
        admin = redis.Redis(port=server.port)
        admin.config_set("maxmemory", "100mb")
        admin.config_set("maxmemory-policy", "allkeys-lru")
        yield server


@pytest.fixture
def locked_redis():
    with LocalRedis(appendonly=True) as server:
        redis.Redis(port=server.port).config_set("requirepass", "right")
        yield server


@pytest.fixture
def http_port():
    """An HTTP server where Redis was meant (a port mix-up): it answers a Redis command with
    an HTTP error, which redis-py's parser cannot read."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


NOT_REDIS = "answered as no Redis does"


def test_a_server_that_is_no_redis_is_said_in_one_line_everywhere(flowkit_env, http_port):
    """The web process's start, ``flowkit doctor`` and every CLI command printed a 60-line
    traceback of redis-py's parser ("Protocol error, got 'H' as reply type byte")."""
    env = {**env_for(flowkit_env, f"redis://127.0.0.1:{http_port}/0"),
           "FLOWKIT_REDIS_RETRY_SECONDS": "1"}
    web = subprocess.run(gunicorn(env), env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert web.returncode == 2 and "Traceback" not in web.stderr, web.stderr
    assert (f"flowkit web refuses to start: The server at redis://127.0.0.1:{http_port}/0 "
            f"{NOT_REDIS}") in web.stderr
    cli = [sys.executable, "-m", "flowkit.cli"]
    doctor = subprocess.run([*cli, "doctor", "-A", "tests.app"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr, doctor.stderr
    assert "✗ redis" in doctor.stdout and NOT_REDIS in unwrapped(doctor.stdout), doctor.stdout
    runs = subprocess.run([*cli, "runs"], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert runs.returncode == 2 and "Traceback" not in runs.stderr, runs.stderr
    assert runs.stderr.startswith(f"flowkit runs: flowkit's Redis (FLOWKIT_REDIS_URL) {NOT_REDIS}")
    assert len(runs.stderr.strip().splitlines()) == 1


@pytest.fixture
def replica_redis():
    """A Redis replicating another: read-only, as an old primary is once a failover demoted it."""
    with LocalRedis() as primary, LocalRedis() as replica:
        redis.Redis(port=replica.port).replicaof("127.0.0.1", primary.port)
        yield replica, primary


def test_a_store_url_at_a_replica_is_refused_in_one_line_everywhere(flowkit_env, replica_redis):
    """The doctor passed and the processes started "ready"; then every write failed: the API
    answered 500, the CLI a 61-line ReadOnlyError traceback, the worker one at each beat."""
    replica, primary = replica_redis
    env = {**env_for(flowkit_env, replica.url), "FLOWKIT_REDIS_RETRY_SECONDS": "1"}
    said = (f"FLOWKIT_REDIS_URL reaches a replica of the Redis at 127.0.0.1:{primary.port} "
            "(read-only; a failover may have demoted it): point it at the primary, or at your "
            "sentinels (redis+sentinel://host:port,.../service/db), which follow a failover.")
    started = worker(env)
    assert started.returncode == 2 and "Traceback" not in started.stderr, started.stderr[-2000:]
    assert [line for line in started.stderr.splitlines() if "refuses to start" in line] == [
        f"flowkit: worker refuses to start: {said}"]
    web = subprocess.run(gunicorn(env), env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert web.returncode == 2 and f"flowkit web refuses to start: {said}" in web.stderr, (
        web.stderr[-2000:])
    doctor = subprocess.run([sys.executable, "-m", "flowkit.cli", "doctor", "-A", "tests.app"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr, doctor.stderr
    assert "✗ redis" in doctor.stdout
    assert "reaches a replica of the Redis at" in unwrapped(doctor.stdout), doctor.stdout


def test_a_worker_refuses_to_start_when_its_broker_refuses_its_credentials(
        flowkit_env, locked_redis):
    """Only the store was checked: the worker stayed up and retried the broker for ever (on
    RabbitMQ six times a second, tracebacks and all), a healthy unit to systemd."""
    env = {**env_for(flowkit_env, flowkit_env["FLOWKIT_REDIS_URL"]),
           "FLOWKIT_BROKER_URL": f"redis://:wrong@127.0.0.1:{locked_redis.port}/0"}
    started = worker(env)
    assert started.returncode == 2 and "Traceback" not in started.stderr, started.stderr[-2000:]
    [line] = [line for line in started.stderr.splitlines() if "refuses to start" in line]
    assert line.startswith(f"flowkit: worker refuses to start: the Celery broker at "
                           f"redis://***@127.0.0.1:{locked_redis.port}/0 refused its credentials "
                           "(invalid username-password pair"), line
    assert line.endswith("put the password in FLOWKIT_BROKER_URL, as "
                         "redis://:PASSWORD@host:port/db (redis://USER:PASSWORD@... for an ACL "
                         "user).")
    assert "wrong" not in line  # the password is not shown


@pytest.mark.parametrize("refused", ["FLOWKIT_BROKER_URL", "FLOWKIT_REDIS_URL"])
def test_beat_refuses_to_start_in_one_line_on_refused_credentials(
        flowkit_env, locked_redis, tmp_path, refused):
    """Beat ran none of the worker's checks: a refused broker ended it in a 1,100-line
    traceback, refused sentinel credentials looped for ever."""
    wrong = f"redis://:wrong@127.0.0.1:{locked_redis.port}/0"
    env = {**env_for(flowkit_env, flowkit_env["FLOWKIT_REDIS_URL"]), refused: wrong}
    beat = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.app", "beat",
                           "--schedule", str(tmp_path / "schedule")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert beat.returncode == 2 and "Traceback" not in beat.stderr, beat.stderr[-2000:]
    [line] = [line for line in beat.stderr.splitlines() if "refuses to start" in line]
    said = ("flowkit: beat refuses to start: the Celery broker at " if refused.endswith("BROKER_URL")
            else f"flowkit: beat refuses to start: {REFUSED} (")
    assert line.startswith(said), line
    assert "wrong" not in line


def unwrapped(text: str) -> str:
    """The doctor's report with its lines joined: it wraps at the terminal's width, which a
    longer port number or a narrower terminal moves (one phrase split across two lines)."""
    return " ".join(text.split())


def env_for(flowkit_env: dict, store_url: str) -> dict:
    return {**os.environ, **flowkit_env, "FLOWKIT_REDIS_URL": store_url}


def test_a_worker_warns_of_a_redis_that_would_lose_work(flowkit_env, risky_redis):
    worker = WorkerProcess("tests.app", name="risky", queues=("startup-checks",),
                           env=env_for(flowkit_env, risky_redis.url), cwd=ROOT)
    with worker:
        log = worker.output()
    assert "flowkit worker: DATA AT RISK AOF is off" in log
    assert "maxmemory-policy is allkeys-lru with maxmemory 104857600 bytes" in log
    assert "Fix: CONFIG SET maxmemory-policy noeviction" in log


def test_a_worker_on_a_well_kept_redis_says_nothing(flowkit_env, locked_redis):
    url = f"redis://:right@127.0.0.1:{locked_redis.port}/0"
    worker = WorkerProcess("tests.app", name="kept", queues=("startup-checks",),
                           env=env_for(flowkit_env, url), cwd=ROOT)
    with worker:
        log = worker.output()
    assert "ready" in log
    assert "flowkit worker:" not in log


def test_a_worker_refuses_to_start_on_refused_credentials(flowkit_env, locked_redis):
    url = f"redis://:wrong@127.0.0.1:{locked_redis.port}/0"
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.app", "worker", "--pool", "threads",
         "--queues", "startup-checks", "--without-gossip", "--without-mingle"],
        env=env_for(flowkit_env, url), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "refuses to start" in line]
    assert lines == [f"flowkit: worker refuses to start: {REFUSED} (invalid username-password "
                     "pair or user is disabled.): put the password in FLOWKIT_REDIS_URL, as "
                     "redis://:PASSWORD@host:port/db (redis://USER:PASSWORD@... for an ACL user; "
                     "redis+sentinel://:PASSWORD@host:port,.../service/db through sentinels)."]


@pytest.fixture
def sentinel(tmp_path):
    """Start one sentinel that monitors no service (``requirepass``: with that password)."""
    started: list[subprocess.Popen] = []

    def start(requirepass: str | None = None) -> int:
        port = free_port()
        conf = tmp_path / "sentinel.conf"
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                        + (f"requirepass {requirepass}\n" if requirepass else ""))
        started.append(subprocess.Popen([shutil.which("redis-server"), str(conf), "--sentinel"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        wait_until(lambda: _listens(port), 10, "the sentinel to listen")
        return port

    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)


def _listens(port: int) -> bool:
    try:
        redis.Redis(port=port, socket_timeout=1).ping()
    except redis.AuthenticationError:
        return True  # it asks for its password: it listens
    except redis.ConnectionError:
        return False
    except redis.ResponseError:  # NOAUTH
        return True
    return True


def worker(env: dict) -> subprocess.CompletedProcess:
    """A worker that stops once it has started: what it said before it took messages."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.app", "worker", "--pool", "threads",
         "--queues", "startup-checks", "--without-gossip", "--without-mingle"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_sentinel_service_name_they_do_not_monitor_is_said_as_such_as_a_process_starts(
        sentinel):
    """A worker or web process said "Redis ... does not answer yet ... Start it" while every
    sentinel answered, as the CLI and the doctor no longer do."""
    url = f"redis+sentinel://127.0.0.1:{sentinel()}/nosuchservice/0"
    [finding] = startup_findings(url)
    assert (finding.level, finding.message, finding.fix) == (
        "warning", f"The sentinels of {url} name no primary of that service that is up.",
        "Check the service name in FLOWKIT_REDIS_URL (redis-cli -p 26379 SENTINEL MASTERS lists "
        "those they monitor), or wait for a failover to end.")


@pytest.mark.long  # mostly waiting (5-9 s): beside the rest (scripts/test)
def test_a_worker_refuses_to_start_when_the_sentinels_refuse_their_credentials(
        flowkit_env, sentinel):
    """It said "does not answer yet ... Start it", said it was ready, and logged a traceback
    at each heartbeat; refused data credentials already stopped it (no wait fixes either)."""
    url = f"redis+sentinel://127.0.0.1:{sentinel('sentinel-secret')}/flowkit/0"
    result = worker({**env_for(flowkit_env, url), "FLOWKIT_REDIS_RETRY_SECONDS": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [line for line in result.stderr.splitlines() if "refuses to start" in line]
    assert line.startswith(f"flowkit: worker refuses to start: the sentinels of {url} refused "
                           "their credentials (")
    assert line.endswith("give their password as ?sentinel_password=... in FLOWKIT_REDIS_URL "
                         "(redis+sentinel://:DATA_PASSWORD@host:port,host:port/service/db"
                         "?sentinel_password=SENTINEL_PASSWORD; the sentinels' is their "
                         "requirepass), or, when those addresses are your Redis servers rather "
                         "than their sentinels (a sentinel listens on 26379 by default), list "
                         "the sentinels'.")


def gunicorn(env: dict) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", "python:flowkit.api.gunicorn_config",
            "--bind", f"127.0.0.1:{free_port()}", "api.app:app"]


def test_the_web_process_refuses_to_start_on_refused_credentials(flowkit_env, locked_redis):
    env = env_for(flowkit_env, f"redis://:wrong@127.0.0.1:{locked_redis.port}/0")
    result = subprocess.run(gunicorn(env), env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert f"flowkit web refuses to start: {REFUSED}" in result.stderr


def test_the_web_process_refuses_to_start_when_its_broker_refuses_it(flowkit_env, locked_redis):
    """It started without a word, its /healthz said ok, and it answered every start 503."""
    env = {**env_for(flowkit_env, flowkit_env["FLOWKIT_REDIS_URL"]),
           "FLOWKIT_BROKER_URL": f"redis://:wrong@127.0.0.1:{locked_redis.port}/0"}
    result = subprocess.run(gunicorn(env), env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert (f"flowkit web refuses to start: the Celery broker at redis://***@127.0.0.1:"
            f"{locked_redis.port}/0 refused its credentials (") in result.stderr


def test_a_database_the_redis_lacks_is_one_line_as_the_web_process_and_a_worker_start(
        flowkit_env):
    """/99: the web process's start was a 60-line traceback, and a worker retried for ever."""
    url = flowkit_env["FLOWKIT_REDIS_URL"].rsplit("/", 1)[0] + "/99"
    said = (f"the database index in FLOWKIT_REDIS_URL={url} is out of range for that Redis "
            "server (Redis has 16, 0-15, unless `databases` in redis.conf says more); use one it "
            "has, e.g. redis://host:port/0.")
    env = env_for(flowkit_env, url)
    web = subprocess.run(gunicorn(env), env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert web.returncode == 2 and "Traceback" not in web.stderr, web.stderr[-2000:]
    assert f"flowkit web refuses to start: {said}" in web.stderr
    started = worker(env)
    assert started.returncode == 2 and "Traceback" not in started.stderr, started.stderr[-2000:]
    assert [line for line in started.stderr.splitlines() if "refuses to start" in line] == [
        f"flowkit: worker refuses to start: {said}"]


def test_the_web_process_warns_of_a_redis_that_would_lose_work(flowkit_env, risky_redis):
    env = {**env_for(flowkit_env, risky_redis.url), "FLOWKIT_WEB_CONTROL_SOCKET": "off"}
    proc = subprocess.Popen(gunicorn(env), env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stderr:  # the checks run before gunicorn listens
            seen.append(line)
            if "Listening at" in line:
                break
    finally:
        stop(proc)
    log = "".join(seen)
    assert "flowkit web: DATA AT RISK AOF is off" in log
    assert "maxmemory-policy is allkeys-lru" in log


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL past gunicorn's own graceful_timeout (30 s): a fresh-clone run
    once saw the web process, stopped as it began to listen, outlast a 30 s wait, which
    failed a test about what it said when it started."""
    proc.terminate()
    try:
        proc.communicate(timeout=45)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)


def test_a_worker_refuses_to_start_on_a_cron_line_celery_cannot_read(flowkit_env):
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.bad_schedule_app", "worker", "--pool",
         "threads", "--queues", "startup-checks", "--without-gossip", "--without-mingle"],
        env={**os.environ, **flowkit_env}, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "refuses to start" in line]
    assert lines == ["flowkit: worker refuses to start: Workflow 'badly-scheduled': schedule "
                     "'never': invalid cron line '99 * * * *': Invalid end range: 99 > 59."]


@pytest.mark.parametrize("source, says", [
    ("import json\nx = undefined_name + 1\n",
     "raised NameError: name 'undefined_name' is not defined (at brokenflows.py:2)"),
    ("def f(:\n", "raised SyntaxError: invalid syntax (at brokenflows.py:1)"),
])
def test_flowkit_devs_web_app_says_in_one_line_that_the_code_does_not_import(
        flowkit_env, tmp_path, source, says):
    """gunicorn printed its whole traceback (40 lines through its arbiter and importlib),
    where the dev worker said it in one line."""
    (tmp_path / "brokenflows.py").write_text(source)
    env = {**flowkit_env, "FLOWKIT_APP": "brokenflows", "FLOWKIT_API_OPEN": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "python:flowkit.api.gunicorn_config", "--bind",
         f"127.0.0.1:{free_port()}", "flowkit.api.devapp:create_app()"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert f"flowkit dev web: importing 'brokenflows' {says}" in result.stderr, result.stderr


CLUSTER_BROKER = ("FLOWKIT_BROKER_URL is the Redis Cluster of FLOWKIT_REDIS_URL "
                  "(redis+cluster://127.0.0.1:1), and Celery cannot use a Redis Cluster: set "
                  "FLOWKIT_BROKER_URL to a plain Redis (redis://host:port/0) or RabbitMQ "
                  "(amqp://...).")


def test_a_cluster_store_with_no_broker_of_its_own_is_refused_in_one_line_as_processes_start(
        flowkit_env):
    """Celery's command printed a 50-line "Unable to load celery application" traceback around
    the line that matters; the web process started, then answered every start with a 500.
    The URLs are refused before any is reached: no cluster is needed to say so."""
    env = env_for(flowkit_env, "redis+cluster://127.0.0.1:1")
    for name in ("FLOWKIT_BROKER_URL", "FLOWKIT_RESULT_BACKEND"):
        env.pop(name, None)
    started = worker(env)
    assert started.returncode == 2, started.stderr[-2000:]
    assert started.stderr == f"flowkit: worker refuses to start: {CLUSTER_BROKER}\n"
    beat = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.app", "beat"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert beat.returncode == 2, beat.stderr[-2000:]
    assert beat.stderr == f"flowkit: beat refuses to start: {CLUSTER_BROKER}\n"
    web = subprocess.run(gunicorn(env), env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert web.returncode == 2 and "Traceback" not in web.stderr, web.stderr[-2000:]
    assert f"flowkit web refuses to start: {CLUSTER_BROKER}" in web.stderr
