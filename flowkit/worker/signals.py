"""The worker's signals: refuse bad settings (and warn of a Redis that would lose work), name the worker
(and say when another live worker has its name), start heartbeats, drain,
record each message of a run handed to the broker, serve metrics (FLOWKIT_METRICS_PORT),
hand back a step its code does not define (:mod:`.unknown`);
and beat's: store the schedules its code declares when it starts.

Connected by :func:`connect` (``create_celery_app`` calls it), once per process.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time

from celery import bootsteps, signals
from celery.concurrency.prefork import TaskPool as Prefork
from celery.concurrency.solo import TaskPool as Solo

from .. import metrics
from ..config import get_settings, is_amqp
from ..engine import doctor, drain, heartbeat, publish, schedules
from ..engine.broker import check_queues, reaper_queue
from ..engine.doctor import broker_address, served
from ..engine.handoff import handoffs
from ..errors import ConfigError
from ..store import get_store
from .checks import check_broker_timeout
from .load import node_load
from .unknown import UnknownStep, hand_back

log = logging.getLogger("flowkit.worker")


def refuse_bad_config(sender=None, **_) -> None:
    _refuse_unless_sound("worker")


def refuse_bad_beat_config(sender=None, **_) -> None:
    """Beat checks what a worker does as it starts: it ended a refused broker password in a
    1,100-line traceback, and looped for ever on refused sentinel credentials or a
    Cluster URL with a database, where a worker said each in one line and exited 2."""
    _refuse_unless_sound("beat")


def _refuse_unless_sound(who: str) -> None:
    """Say what the startup checks find; exit 2 in one line on a setting to fix."""
    settings = get_settings()
    try:
        if who == "worker":  # how long the broker lets a step's message go unacknowledged
            doctor.say(check_broker_timeout(settings), who, log)
        doctor.say(doctor.startup_findings(settings.redis_url), who, log)
        doctor.say(doctor.broker_startup_findings(settings.broker, settings.redis_url), who, log)
        schedules.check_declared()
    except ConfigError as exc:
        # beat has redirected sys.stderr into its log by now ("[...: WARNING/MainProcess]")
        stream = sys.stderr if who == "worker" else sys.__stderr__
        print(f"flowkit: {who} refuses to start: {exc}", file=stream, flush=True)
        raise SystemExit(2) from None


def declare_schedules(sender=None, **_) -> None:
    """Beat starts: make the stored declared schedules its code's
    (:func:`flowkit.engine.schedules.store_declared`), in a thread that tries again while
    Redis is away, so beat starts and fires what is stored either way."""
    threading.Thread(target=_declare, name="flowkit-schedules", daemon=True).start()


def _declare() -> None:
    pause = 1.0
    while True:
        try:
            schedules.store_declared()
            return
        except Exception as exc:  # Redis away, say: the schedules keep what was stored
            log.warning("flowkit: could not store the declared schedules (%s); again in %gs",
                        exc, pause)
            time.sleep(pause)
            pause = min(pause * 2, 30.0)


def consume_reaper_queue(sender=None, **_) -> None:
    # every worker, whatever its --queues, takes beat's housekeeping from its own queue
    # (engine.broker.reaper_queue): after Celery selected the queues, before it consumes
    if sender is not None:
        sender.app.amqp.queues.select_add(reaper_queue(sender.app.conf.task_default_queue))


def refuse_refused_queues(sender=None, **_) -> None:
    # on RabbitMQ, a queue that exists with other arguments than flowkit declares would
    # close the consumer's channel over and over: say which and how to fix it, once
    if sender is None or not is_amqp(sender.app.conf.broker_url or ""):
        return
    try:
        check_queues(sender.app, list((sender.app.amqp.queues.consume_from or {}).values()))
    except ConfigError as exc:
        print(f"flowkit: worker refuses to start: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def name_worker(sender=None, **_) -> None:
    # before the pool forks, so prefork children's leases also carry the node name
    if sender:
        heartbeat.node_name = str(sender)
    # its children inherit the pipe to it, and beat through it
    heartbeat.heartbeat.start_keeper()


def worker_ready(sender=None, **_) -> None:
    if sender is not None and getattr(sender, "hostname", None):
        heartbeat.node_name = sender.hostname
    pool = getattr(sender, "pool", None)
    channel = getattr(getattr(sender, "task_consumer", None), "channel", None)
    drain.arm(not isinstance(pool, Prefork), restore=lambda: restore_unacked(sender),
              # a solo pool runs the step inside the consumer's loop, which takes no message
              # meanwhile (one unacknowledged at a time) and stops only after the step
              consuming=None if isinstance(pool, Solo) else lambda: consuming(sender),
              brpop_timeout=float(getattr(channel, "brpop_timeout", None) or 1.0),
              children=(lambda: pool.info["processes"]) if isinstance(pool, Prefork) else None)
    heartbeat.heartbeat.ensure_running()
    drain_on_restart()
    if sender is not None:
        watch_for_a_namesake(heartbeat.node_name)
        info = node_info(sender)
        node_load.ready(info["concurrency"], reaper_queue(sender.app.conf.task_default_queue),
                        queues=lambda: consumed_queues(sender))
        heartbeat.heartbeat.node_load = node_load
        heartbeat.announce(info)
    # What the worker built to start (modules, classes, the SDK's thousands of types) lives
    # as long as the process: frozen, the collector's full passes walk only what steps
    # allocate. On a gevent worker with hundreds of LLM calls in flight, walking the startup
    # heap took about a quarter of its CPU (bench/llm_fanout.py).
    gc.freeze()


def drain_on_restart() -> None:
    """Where Celery made SIGHUP restart the worker (one without a terminal: under every
    process manager), drain first (:func:`flowkit.engine.drain.restart`)."""
    from celery import platforms

    handler = platforms.signals["SIGHUP"]
    if getattr(handler, "__name__", "") == "restart_worker_sig_handler":
        platforms.signals["SIGHUP"] = drain.restart


def watch_for_a_namesake(node: str) -> None:
    """Log an ERROR if another live worker beats under this node name. Two workers of one
    name (two copies of one Procfile line or systemd unit on a host) are one to Celery's
    remote control: ``flowkit drain`` of that name stops both and hands over both's steps
    (a SIGTERM drain tells its own steps by their processes). Celery says nothing of it
    without mingle. What the node record says before this worker announces itself
    names the other's pid; that process beating after this one started means it lives (a
    worker restarted under its own name stops beating: its record is no namesake). In a
    thread: a live worker beats within an interval, a dead one never again."""
    try:
        before = [w for w in get_store().nodes_seen_since(0) if w["name"] == node]
    except Exception:  # noqa: BLE001 - Redis away: a warning, not a reason to stop
        return
    pid = before[0].get("pid") if before else None
    if not isinstance(pid, int) or pid == os.getpid():
        return
    threading.Thread(target=_namesake, args=(node, pid, time.time()),
                     name="flowkit-namesake", daemon=True).start()


def _namesake(node: str, pid: int, since: float) -> None:
    settings = get_settings()
    deadline = time.monotonic() + settings.heartbeat_lapse
    while time.monotonic() < deadline:
        time.sleep(settings.heartbeat_interval)
        try:
            seen = dict(get_store().workers_seen_since(since))
        except Exception:  # noqa: BLE001 - Redis away: nothing to say
            return
        if f"{node}:{pid}" in seen:
            log.error("flowkit: another live worker beats as node %s (pid %d): two workers of "
                      "one name are one to Celery's remote control, so `flowkit drain %s` "
                      "stops both and hands over both's running steps, and `celery inspect` "
                      "mixes their answers; give each its own --hostname (cpu1@%%h, cpu2@%%h)",
                      node, pid, node)
            return


def node_info(consumer) -> dict:
    """What /healthz, ``flowkit workers`` and ``flowkit doctor`` show of this worker: the
    queues it consumes, its pool and size, its broker visibility timeout, and what its code
    serves (flowkit and workflow versions, the queues they route to, the longest step)."""
    controller = getattr(consumer, "controller", None)
    pool = getattr(consumer, "pool", None)
    conf = consumer.app.conf
    return {
        "queues": consumed_queues(consumer),
        "pool": type(pool).__module__.rpartition(".")[2] if pool is not None else None,
        "concurrency": getattr(controller, "concurrency", None),
        "visibility_timeout": (conf.broker_transport_options or {}).get("visibility_timeout"),
        # where it takes messages from (password hidden): a shell or web process sending
        # to another broker is told by the doctor, not left with runs queued for 5 minutes
        "broker": broker_address(get_settings().broker),
        **served(conf.task_default_queue),
    }


def consumed_queues(consumer) -> list[str]:
    """The queues the worker consumes now: ``flowkit drain`` (Celery's cancel_consumer)
    takes a queue out of them while the worker lives on. The reaper's queue is every
    worker's: it says nothing about this one."""
    return sorted(set(consumer.app.amqp.queues.consume_from or ())
                  - {reaper_queue(consumer.app.conf.task_default_queue)})


def prepare_metrics(sender=None, instance=None, **_) -> None:
    # before the pool forks: a prefork pool's children must count in files (flowkit.metrics)
    pool = getattr(instance, "pool_cls", None)
    metrics.prepare_worker(isinstance(pool, type) and issubclass(pool, Prefork))


def serve_metrics(**_) -> None:
    metrics.serve_worker()


def child_exiting(pid=None, **_) -> None:
    if pid:
        metrics.child_exited(pid)


def stop_metrics(**_) -> None:
    metrics.stop_worker()


def child_started(**_) -> None:
    heartbeat.heartbeat.ensure_running()


def consuming(consumer) -> bool:
    """Whether Celery's consumer may still take messages: its loop (synloop on gevent,
    asynloop on threads) runs while its blueprint is RUN, and Celery stops the blueprint
    only after the loop ended, before it waits for the pool."""
    blueprint = getattr(consumer, "blueprint", None)
    return blueprint is not None and blueprint.state == bootsteps.RUN


def restore_unacked(consumer) -> None:
    """Put the messages this worker received and did not acknowledge back in their queues,
    as kombu's Redis transport does when its channel closes: a drain that hands steps over
    ends the process with ``os._exit``, which closes nothing. Among them may be a message
    the handover itself sent (a run's resume), taken by this worker's consumer in its last
    second of consuming: unrestored, it waited for the visibility timeout. The handed-over
    steps' own messages come back too and are dropped as stale (their runs restarted).
    RabbitMQ needs none of this: it requeues a closed connection's deliveries itself."""
    channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
    qos = getattr(channel, "qos", None)
    if qos is not None and hasattr(qos, "restore_unacked_once"):
        qos.restore_unacked_once()


def shutting_down(sig=None, how=None, **_) -> None:
    # inside Celery's signal handler (gevent: in the event loop): drain.begin only sets events
    drain.begin(how)


def shut_down(**_) -> None:
    # Celery's warm shutdown ended (a handed-over step stopping can end it): a handover
    # under way sends its messages before the process exits
    drain.finish_handover()


def handed_off(sender=None, body=None, routing_key=None, **_) -> None:
    """A message of a run's canvas went to the broker (after_task_publish): the run's
    progress now waits in the queue, not in this worker, which the reaper must know before
    it takes "nothing in flight" for a worker lost between steps."""
    if not str(sender or "").startswith("flowkit.") or publish.capturing():
        return  # captured: a start's first message, which a queued run needs no record of
    kwargs = body[1] if isinstance(body, (list, tuple)) and len(body) > 1 else None
    if not isinstance(kwargs, dict) or "run_id" not in kwargs or "gen" not in kwargs:
        return
    # written in the background (engine.handoff); a queue's routing key is its name
    handoffs.add(kwargs["run_id"], kwargs["gen"], routing_key)


class AckOfAClosedChannel(logging.Filter):
    """Celery logs an ack (or a reject) the broker's connection could no longer take (RabbitMQ closed the
    channel of a step held past its ``consumer_timeout``; a reconnect) as CRITICAL, with a
    traceback: paged for, though flowkit expects it. The broker delivers the message again and
    the worker that takes it drops it (its step ran, or is leased): one WARNING line says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (record.levelno == logging.CRITICAL and isinstance(record.msg, str)
                and record.msg.startswith(("Couldn't ack", "Couldn't reject"))):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg += (" (the broker delivers the message again, and flowkit drops that "
                           "copy: its step runs once)")
            record.exc_info = record.exc_text = None
        return True


def connect() -> None:
    """Connect the handlers (the dispatch uids keep a second call from adding them twice)."""
    acks = logging.getLogger("celery.worker.request")  # where Celery acks a task's message
    if not any(isinstance(f, AckOfAClosedChannel) for f in acks.filters):
        acks.addFilter(AckOfAClosedChannel())
    unknown = logging.getLogger("celery.worker.consumer.consumer")  # its unknown tasks
    if not any(isinstance(f, UnknownStep) for f in unknown.filters):
        unknown.addFilter(UnknownStep())
    signals.worker_init.connect(refuse_bad_config, dispatch_uid="flowkit.refuse_bad_config")
    signals.worker_init.connect(consume_reaper_queue, dispatch_uid="flowkit.reaper_queue")
    signals.worker_init.connect(refuse_refused_queues, dispatch_uid="flowkit.refused_queues")
    signals.celeryd_after_setup.connect(name_worker, dispatch_uid="flowkit.name_worker")
    signals.worker_ready.connect(worker_ready, dispatch_uid="flowkit.worker_ready")
    signals.task_received.connect(node_load.received, dispatch_uid="flowkit.received")
    signals.worker_process_init.connect(child_started, dispatch_uid="flowkit.child_started")
    signals.worker_shutting_down.connect(shutting_down, dispatch_uid="flowkit.shutting_down")
    signals.worker_shutdown.connect(shut_down, dispatch_uid="flowkit.shut_down")
    signals.after_task_publish.connect(handed_off, dispatch_uid="flowkit.handed_off")
    signals.celeryd_after_setup.connect(prepare_metrics, dispatch_uid="flowkit.prepare_metrics")
    signals.worker_ready.connect(serve_metrics, dispatch_uid="flowkit.serve_metrics")
    signals.worker_process_shutdown.connect(child_exiting, dispatch_uid="flowkit.child_exiting")
    signals.worker_shutdown.connect(stop_metrics, dispatch_uid="flowkit.stop_metrics")
    signals.beat_init.connect(refuse_bad_beat_config, dispatch_uid="flowkit.refuse_bad_beat")
    signals.beat_init.connect(declare_schedules, dispatch_uid="flowkit.declare_schedules")
    signals.task_unknown.connect(hand_back, dispatch_uid="flowkit.hand_back")
