"""flowkit on RabbitMQ: real ``rabbitmq-server`` nodes as the broker, real worker processes.

Runs with every shape (chain, parallel, fan-out, an agent loop) succeed; a worker
SIGKILLed mid-step is recovered as on Redis; and a step that outlives the broker's
``consumer_timeout`` (lowered to seconds here) neither kills its worker (Celery's default:
``Unrecoverable error: PreconditionFailed``) nor runs twice.
"""

from __future__ import annotations

import os
import subprocess

import kombu
import pytest

from flowkit import config
from flowkit.engine import doctor
from flowkit.store import get_store
from flowkit.testing import WorkerProcess
from flowkit.testing.rabbitmq import SERVER, LocalRabbitMQ
from tests.chaos.conftest import (
    Deployment,
    _restore_app,
    _use_app,
    open_gate,
    reruns,
    side_effects,
    wait_for,
    waiting,
)
from tests.chaos.test_sigkill import detection_bound
from tests.chaos.workflows import held, long_run, tick
from tests.conftest import ROOT

HOLD = "1:chaos.hold"
#: the lowered delivery acknowledgement timeout of the last test's broker, in seconds
CONSUMER_TIMEOUT = 2.0


def _rabbitmq(**options) -> LocalRabbitMQ:
    if not os.path.exists(SERVER):
        if os.environ.get("CI"):
            pytest.fail("rabbitmq-server is missing on CI: `apt-get install rabbitmq-server`.")
        pytest.skip("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
    return LocalRabbitMQ(**options).start()


@pytest.fixture(scope="module")
def rabbitmq():
    server = _rabbitmq()
    yield server
    server.close()


def _on(server: LocalRabbitMQ, chaos_env, tmp_path, monkeypatch):
    """The test process and its deployment's workers and beat, all on ``server``."""
    settings = config.get_settings().replace(broker_url=server.url, default_queue="chaos")
    monkeypatch.setattr(config, "_settings", settings)
    previous = _use_app(settings)
    deployment = Deployment({**chaos_env, "FLOWKIT_BROKER_URL": server.url}, tmp_path)
    return deployment, previous


@pytest.fixture
def on_rabbitmq(rabbitmq, store, chaos_env, tmp_path, monkeypatch):
    deployment, previous = _on(rabbitmq, chaos_env, tmp_path, monkeypatch)
    yield deployment
    deployment.stop()
    _restore_app(previous)


def test_a_run_of_every_shape_succeeds_on_rabbitmq(on_rabbitmq):
    worker = on_rabbitmq.worker("a")
    run = long_run.start({"n": 0, "chunks": 1, "pause": 0.01})
    done = run.wait(60)
    assert done.state == "succeeded", done.error
    # 3 steps, the parallel block's first branch (1 step), the fan-out (1 each), 3 steps
    assert done.output["n"] == 8
    assert reruns(run) == 0
    started = side_effects(run, "started")
    assert set(started.values()) == {1}, started  # every step once
    # work ran in 3 + (1 + 2) + 3 + 3 steps: the parallel branches and fan-out items too
    assert sum(1 for step in started if "chaos.work" in step) == 12
    assert worker.alive()
    # chords joined through the store's Redis: an amqp:// URL is no result backend
    assert config.get_settings().backend == config.get_settings().redis_url


def test_a_sigkilled_worker_is_recovered_on_rabbitmq(on_rabbitmq):
    a = on_rabbitmq.worker("a")
    on_rabbitmq.beat()
    run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
    first = waiting(run)
    assert first["worker"].startswith("a@")
    on_rabbitmq.worker("b")
    a.kill()

    second = waiting(run, timeout=detection_bound() + 20)
    assert second["attempt"] == 2 and second["worker"].startswith("b@")
    open_gate(run)
    done = run.wait(30)
    assert done.state == "succeeded", done.error
    assert done.output["n"] == 3 and done.restarts == 1
    assert side_effects(run, "finished") == {"0:chaos.work": 1, HOLD: 1, "2:chaos.work": 1}
    assert reruns(run) == 0


@pytest.mark.long  # mostly waiting out the consumer timeout: beside the rest
def test_a_step_longer_than_the_consumer_timeout_keeps_its_worker_and_runs_once(
    store, chaos_env, tmp_path, monkeypatch,
):
    server = _rabbitmq(consumer_timeout=CONSUMER_TIMEOUT)
    deployment, previous = _on(server, chaos_env, tmp_path, monkeypatch)
    try:
        a = deployment.worker("a", concurrency=2)
        run = held.start({"n": 0, "chunks": 1, "pause": 0.01})
        assert waiting(run)["attempt"] == 1
        # the broker gives up on the unacknowledged delivery and closes the channel ...
        wait_for(lambda: "PRECONDITION_FAILED - delivery acknowledgement" in a.output(),
                 30, "RabbitMQ to close the channel of the long step's delivery")
        # ... the worker reconnects, and the redelivered message finds the step leased
        wait_for(lambda: f"step {HOLD} of run {run.id} not run" in a.output(), 30,
                 "the redelivered message to be dropped as a duplicate")
        open_gate(run)
        done = run.wait(30)
        assert done.state == "succeeded", done.error
        assert a.alive(), a.output()[-3000:]
        assert "Unrecoverable error" not in a.output()
        # the step's ack met the closed channel: said as expected, not CRITICAL (paged for)
        assert "Couldn't ack" in a.output() and "CRITICAL" not in a.output(), a.output()[-3000:]
        assert "flowkit drops that copy: its step runs once" in a.output()
        assert side_effects(run, "started") == {"0:chaos.work": 1, HOLD: 1, "2:chaos.work": 1}
        assert done.restarts == 0 and reruns(run) == 0
        # a worker started after it still works on the same broker
        again = held.start({"n": 0, "chunks": 1, "pause": 0.01})
        waiting(again)
        open_gate(again)
        assert again.wait(30).state == "succeeded"
    finally:
        deployment.stop()
        _restore_app(previous)
        server.close()


def test_a_higher_priority_run_is_served_first_on_rabbitmq(on_rabbitmq):
    # the queue exists (a worker declared it, with x-max-priority) but nobody consumes it
    on_rabbitmq.worker("declarer").terminate()
    low = [tick.start({"n": 0, "chunks": 1, "pause": 0.01}) for _ in range(3)]
    high = tick.start({"n": 0, "chunks": 1, "pause": 0.01}, priority=9)
    on_rabbitmq.worker("a", concurrency=1)
    done = [run.wait(30) for run in (*low, high)]
    assert [d.state for d in done] == ["succeeded"] * 4
    started = [float(get_store().get_run(run.id)["started_at"]) for run in (*low, high)]
    assert started[-1] < min(started[:-1]), "the priority 9 run started after priority 0 runs"


def test_a_queue_declared_otherwise_refuses_the_worker_with_the_fix(rabbitmq, chaos_env):
    with kombu.Connection(rabbitmq.url) as conn:  # as an older flowkit declared it
        kombu.Queue("chaos-plain").bind(conn.channel()).declare()
    worker = WorkerProcess(
        "tests.chaos.app", name="plain", queues=("chaos-plain",), cwd=ROOT,
        env={**chaos_env, "FLOWKIT_BROKER_URL": rabbitmq.url},
    )
    with pytest.raises(RuntimeError, match="exited with 2") as refused:
        worker.start()
    assert "refuses to declare queue(s) chaos-plain" in str(refused.value)
    assert "inequivalent arg 'x-max-priority'" in str(refused.value)
    assert "rabbitmqctl delete_queue" in str(refused.value)
    assert "Traceback" not in str(refused.value)
    # the doctor says it too (it passed the broker while every start was refused, a 406)
    import json  # noqa: PLC0415
    import sys  # noqa: PLC0415

    checked = subprocess.run(
        [sys.executable, "-m", "flowkit.cli", "doctor", "-A", "tests.chaos.app", "--json"],
        env={**os.environ, **chaos_env, "FLOWKIT_BROKER_URL": rabbitmq.url,
             "FLOWKIT_DEFAULT_QUEUE": "chaos-plain"},
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in checked.stderr, checked.stderr
    [queues] = [f for f in json.loads(checked.stdout)["findings"] if f["check"] == "broker.queues"]
    assert queues["level"] == "failure", queues
    assert queues["message"].startswith("RabbitMQ refuses to declare queue(s) chaos-plain as "
                                        "flowkit does (with x-max-priority"), queues
    assert "rabbitmqctl delete_queue" in queues["fix"]


def test_a_worker_refuses_to_start_when_rabbitmq_refuses_its_credentials(rabbitmq, chaos_env):
    """It stayed up, retrying six times a second with a CRITICAL traceback every few (627
    log lines in 25 s), a healthy unit to systemd."""
    wrong = rabbitmq.url.replace("guest:guest@", "guest:wrong@")
    worker = WorkerProcess("tests.chaos.app", name="refused", queues=("chaos-refused",),
                           cwd=ROOT, env={**chaos_env, "FLOWKIT_BROKER_URL": wrong})
    with pytest.raises(RuntimeError, match="exited with 2") as refused:
        worker.start()
    said = str(refused.value)
    assert (f"worker refuses to start: the Celery broker at amqp://***@127.0.0.1:{rabbitmq.port}"
            in said), said
    assert "refused flowkit (" in said and "ACCESS_REFUSED" in said, said
    assert "fix the user, password or vhost in FLOWKIT_BROKER_URL" in said
    assert "Traceback" not in said and "wrong" not in said


def test_the_doctor_speaks_of_rabbitmqs_consumer_timeout_not_of_redis():
    [ok] = doctor.consumer_timeout(120.0)
    assert ok.level == doctor.OK and "RabbitMQ" in ok.message and "visibility" not in ok.message
    # it cannot read the broker's own setting, and says what it compared with instead
    assert "default consumer_timeout (1800s" in ok.message and "cannot be read" in ok.message
    [warning] = doctor.consumer_timeout(2 * 3600.0)
    assert warning.level == doctor.WARNING
    assert "consumer_timeout = 7260000" in warning.fix
    [found] = doctor.broker_timeout("amqp://guest@localhost//", [{"longest_step": 60.0}], 10)
    assert found.check == "consumer-timeout"
    [found] = doctor.broker_timeout("redis://localhost/0", [{"name": "w@h", "longest_step": 60.0,
                                                             "visibility_timeout": 10}], 10)
    assert found.check == "visibility-timeout" and found.level == doctor.FAILURE


def test_a_wrong_password_is_one_line_from_the_cli_and_the_web_start_and_a_503_from_the_api(
        rabbitmq, store, chaos_env, monkeypatch):
    """RabbitMQ answers a wrong password (or vhost) and refuses: it was AccessRefused's
    traceback from ``flowkit run`` and a 500 from the API, where an unreachable broker
    is one line and a 503. The web process refuses to start on it (it started without a
    word and answered every start 503); an API whose broker refuses it later (a password
    rotated under it) answers 503 saying so."""
    from tests.api.conftest import make_app, serve  # noqa: PLC0415
    from tests.test_cli_bad_input import APP, cli, one_line  # noqa: PLC0415
    from tests.test_startup_checks import gunicorn  # noqa: PLC0415

    wrong = rabbitmq.url.replace("guest:guest@", "guest:wrong@")
    env = {**os.environ, **chaos_env, "FLOWKIT_BROKER_URL": wrong}
    result = cli("run", "simple", "-i", "n=1", *APP, env=env)
    said = one_line(result)
    assert result.returncode == 2
    assert said.startswith("flowkit run: the Celery broker at amqp://***@127.0.0.1:"), said
    assert "refused flowkit: " in said and "ACCESS_REFUSED" in said, said
    assert "fix the user, password or vhost in FLOWKIT_BROKER_URL" in said
    assert said.endswith("do not start it again."), said

    web = subprocess.run(gunicorn(env), env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert web.returncode == 2 and "Traceback" not in web.stderr, web.stderr[-2000:]
    assert ("flowkit web refuses to start: the Celery broker at amqp://***@127.0.0.1:"
            in web.stderr and "ACCESS_REFUSED" in web.stderr), web.stderr[-2000:]

    settings = config.get_settings().replace(broker_url=wrong)
    monkeypatch.setattr(config, "_settings", settings)
    previous = _use_app(settings)  # this process sends through the refused broker
    try:
        for served in serve(make_app()):
            with served.client() as client:
                answer = client.post("/workflows/chaos.tick/runs",
                                     json={"n": 1, "chunks": 1, "pause": 0})
    finally:
        _restore_app(previous)
    assert answer.status_code == 503, answer.text
    assert "Retry-After" not in answer.headers  # waiting would not help
    error = answer.json()["error"]
    assert error["code"] == "broker_refused"
    assert error["message"].startswith("flowkit's Celery broker refused this server (its "
                                       "credentials, vhost or queue settings): the operator "
                                       "must fix FLOWKIT_BROKER_URL. Run ")


def test_the_doctor_checks_a_rabbitmq_broker_answers_and_takes_flowkits_credentials(rabbitmq):
    """With RabbitMQ stopped it said "All is well", then blamed beat."""
    from flowkit.testing import free_port  # noqa: PLC0415

    [ok] = doctor.amqp_broker(rabbitmq.url)
    assert ok.level == doctor.OK and ok.message.startswith("Broker RabbitMQ 3.")
    [refused] = doctor.amqp_broker(rabbitmq.url.replace("guest:guest@", "guest:wrong@"))
    assert refused.level == doctor.FAILURE and "ACCESS_REFUSED" in refused.message
    assert not refused.message.endswith(".."), refused.message  # the broker's own ends in one
    assert refused.fix.startswith("Fix the user, password or vhost in FLOWKIT_BROKER_URL")
    [down] = doctor.amqp_broker(f"amqp://guest:guest@127.0.0.1:{free_port()}//", timeout=1)
    assert down.level == doctor.FAILURE and "does not answer" in down.message
    assert "guest:guest" not in down.message  # the password is not shown


@pytest.mark.parametrize("said", ["Couldn't ack %r, reason:%r", "Couldn't reject %r, reason: %r"])
def test_an_ack_or_reject_the_closed_channel_refused_is_a_warning_not_critical(said):
    """Celery logs both as CRITICAL with a traceback; flowkit expects them (a copy delivered
    again is dropped), so nothing should page anyone."""
    import logging  # noqa: PLC0415

    from flowkit.worker.signals import AckOfAClosedChannel  # noqa: PLC0415

    try:
        raise ConnectionError("connection already closed")
    except ConnectionError:
        import sys  # noqa: PLC0415

        record = logging.LogRecord("celery.worker.request", logging.CRITICAL, __file__, 1, said,
                                   (7, ConnectionError()), sys.exc_info())
    assert AckOfAClosedChannel().filter(record)
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage().endswith("flowkit drops that copy: its step runs once)")
