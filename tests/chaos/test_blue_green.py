"""Blue/green deploy: runs stay on the version (queue) that started them, also when the
reaper restarts them; new runs go to the new colour."""

from __future__ import annotations

import flowkit
from flowkit import config
from flowkit.engine import broker
from tests.chaos.conftest import _restore_app, open_gate, waiting
from tests.chaos.workflows import colour


def test_runs_finish_on_their_own_colour_across_a_crash(store, chaos_env, deployment):
    blue_env = {"FLOWKIT_DEFAULT_QUEUE": "blue", "CHAOS_VERSION": "1"}
    green_env = {"FLOWKIT_DEFAULT_QUEUE": "green", "CHAOS_VERSION": "2"}
    blue = deployment.worker("blue", start=False, **blue_env)
    blue.args[blue.args.index("--queues") + 1] = "blue"
    blue.start()
    green = deployment.worker("green", start=False, **green_env)
    green.args[green.args.index("--queues") + 1] = "green"
    green.start()
    deployment.beat(**blue_env)  # one beat for both colours: restarts go to each run's queue

    previous = broker._app
    try:
        settings = config.get_settings()
        flowkit.create_celery_app("starter", settings.replace(default_queue="blue"))
        colour.version = "1"
        old = colour.start({"n": 0, "chunks": 1, "pause": 0.01})  # blue is live
        assert waiting(old)["worker"].startswith("blue@")

        flowkit.create_celery_app("starter", settings.replace(default_queue="green"))
        colour.queue, colour.version = "green", "2"  # the deploy: new runs go to green
        new = colour.start({"n": 0, "chunks": 1, "pause": 0.01})
        assert waiting(new)["worker"].startswith("green@")
    finally:
        colour.queue, colour.version = None, "1"
        _restore_app(previous)

    blue.kill()  # the old colour crashes mid-step; a new blue worker comes up
    blue2 = deployment.worker("blue2", start=False, **blue_env)
    blue2.args[blue2.args.index("--queues") + 1] = "blue"
    blue2.start()
    assert waiting(old, timeout=30)["worker"].startswith("blue2@")
    open_gate(old)
    open_gate(new)
    for run, queue, version, prefix in ((old, "blue", "1", "blue"), (new, "green", "2", "green@")):
        done = run.wait(30)
        assert done.state == "succeeded", done.error
        assert (done.queue, done.version) == (queue, version)
        workers = {e.data["worker"] for e in run.events() if e.type == "step.started"}
        assert all(w.startswith(prefix) for w in workers), workers
