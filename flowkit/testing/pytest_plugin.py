"""pytest fixtures to test your own workflows on real parts: a private Redis and a worker.

Load it before your conftest.py imports anything of yours, with pytest's ``-p``::

    # pyproject.toml
    [tool.pytest.ini_options]
    addopts = "-p flowkit.testing.pytest_plugin"

Before pytest imports your conftest.py and test modules (your workflows' Celery app reads
its settings when it is made), it starts a private ``redis-server`` (AOF on, in a temporary
directory; ``FLOWKIT_TEST_REDIS_URL=redis://host:port`` uses yours instead) and points
``FLOWKIT_REDIS_URL`` (database 1) and ``FLOWKIT_BROKER_URL`` (database 0) at it, so no
test reaches the Redis of your ``flowkit dev`` or of production, and it stops the server at
the end; a Redis of yours that live flowkit workers use stops the session before any
test empties it. Without ``-p`` (``pytest_plugins = ["flowkit.testing.pytest_plugin"]`` in a
conftest.py) the same happens once that conftest.py has been imported: import your
workflows in your tests and fixtures, not at its top.

Its LLM is a local fake, an OpenAI-compatible server on a free port:
``flowkit.llm.client_from_env()`` answers from it (``FLOWKIT_LLM_FAKE_URL`` points there,
and ``OPENAI_API_KEY`` is dropped for the session, so no test reaches OpenAI and spends
money); ``FLOWKIT_TEST_REAL_LLM=1`` keeps your environment's instead. It called nothing
(a bare connection error), unless a ``flowkit dev`` ran beside the tests.

Fixtures:

- ``flowkit_llm`` (session): the fake LLM server (``FakeLLMServer``: ``configure(...)`` its
  answers and faults), or None with ``FLOWKIT_TEST_REAL_LLM``.
- ``flowkit_worker`` (session): a Celery worker in threads of the test process, on that
  Redis, consuming every queue your workflows route to; runs your tests start run there.
- ``flowkit_store``: flowkit's store, its database emptied before the test.

A run's step runs in the worker's threads, so its exceptions, prints and breakpoints are
your test process's. Steps still go through the broker, checkpoints and events as in
production (no eager mode).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from ..errors import ConfigError
from .redis import LocalRedis
from .worker import InThreadWorker

#: The variable naming a Redis of your own for the tests (``redis://host:port``: its
#: databases 0 and 1 are used, whatever database it names).
TEST_REDIS_URL = "FLOWKIT_TEST_REDIS_URL"
#: Set (1, true) to keep the environment's LLM (OPENAI_API_KEY): the tests then spend money.
TEST_REAL_LLM = "FLOWKIT_TEST_REAL_LLM"
_STASH = pytest.StashKey[LocalRedis | None]()
_LLM_STASH = pytest.StashKey[Any]()


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: Any, args: Any) -> None:
    _point_at_test_redis(early_config)


def pytest_configure(config: pytest.Config) -> None:
    _point_at_test_redis(config)  # loaded from a conftest.py: the hook above came too early


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_STASH, None)
    if server is not None:
        server.close()
    llm = config.stash.get(_LLM_STASH, None)
    if llm is not None:
        llm.stop()


def _point_at_test_redis(config: pytest.Config) -> None:
    if _STASH in config.stash:
        return
    own = os.environ.get(TEST_REDIS_URL)
    try:
        server = None if own else LocalRedis(appendonly=True).start()
    except ConfigError:  # its words named FLOWKIT_REDIS_URL, which this plugin sets itself
        raise pytest.UsageError(
            "flowkit's pytest plugin runs a private redis-server, which is not installed: "
            f"run `apt-get install redis-server`, or set {TEST_REDIS_URL}=redis://host:port "
            "to a Redis of yours no deployment uses.") from None
    config.stash[_STASH] = server
    _point_at_fake_llm(config)
    store, broker = urls_for_tests(own or f"redis://127.0.0.1:{server.port}")
    os.environ["FLOWKIT_REDIS_URL"], os.environ["FLOWKIT_BROKER_URL"] = store, broker
    from .. import config as settings

    settings.reset()


def _point_at_fake_llm(config: pytest.Config) -> None:
    if os.environ.get(TEST_REAL_LLM, "").strip().lower() in ("1", "true", "yes", "on"):
        config.stash[_LLM_STASH] = None
        return
    from .fake_openai import FakeLLMServer

    llm = FakeLLMServer().start()
    config.stash[_LLM_STASH] = llm
    os.environ["FLOWKIT_LLM_FAKE_URL"] = llm.base_url
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        os.environ.pop(name, None)


@pytest.fixture(scope="session")
def flowkit_llm(pytestconfig: pytest.Config) -> Any:
    """The session's fake LLM server (None with FLOWKIT_TEST_REAL_LLM)."""
    return pytestconfig.stash.get(_LLM_STASH, None)


def urls_for_tests(url: str) -> tuple[str, str]:
    """The store's and the broker's URLs on the Redis at ``url``: its databases 1 (the
    store, which ``flowkit_store`` empties) and 0, whatever database ``url`` names (``/5``
    became database 51), its query (TLS options, a timeout) kept."""
    base = urlsplit(url)
    return urlunsplit(base._replace(path="/1")), urlunsplit(base._replace(path="/0"))


@pytest.fixture(scope="session")
def _flowkit_redis_unused() -> None:
    """Stop the session before it touches a Redis of yours (``FLOWKIT_TEST_REDIS_URL``)
    that flowkit workers other than a test session's use: in its database 1 their runs'
    store would be emptied; in its database 0 (``flowkit dev``'s and the default URL's
    store and broker) they take steps from the tests' broker, and the tests' worker
    theirs. Only database 1 was looked at: a ``flowkit dev`` on database 0 took the tests'
    steps, and a test failed 75 s later saying its run had failed."""
    if not os.environ.get(TEST_REDIS_URL):
        return  # a private server: nothing else is on it
    from ..engine.control import live_workers
    from ..store import get_store
    from ..store.store import Store
    from ..urls import redacted

    store = get_store()
    broker = Store(store.settings.replace(redis_url=urls_for_tests(os.environ[TEST_REDIS_URL])[1]))
    for db, where, why in ((1, store, "which the tests empty, and would take the tests' steps"),
                           (0, broker, "where the tests send their steps: it would take them, "
                                       "and the tests' worker its runs'")):
        others = sorted(str(worker["name"]) for worker in live_workers(where)
                        if not str(worker["name"]).startswith(f"{SESSION_WORKER}@"))
        if others:
            pytest.exit(
                f"{TEST_REDIS_URL} ({redacted(os.environ[TEST_REDIS_URL])}) is in use: "
                f"flowkit worker {', '.join(others[:3])}{' and others' if len(others) > 3 else ''} "
                f"beats into its database {db}, {why}. Give the tests a Redis no deployment "
                f"or `flowkit dev` uses, or unset {TEST_REDIS_URL} for a private one.",
                returncode=pytest.ExitCode.USAGE_ERROR)


#: The node name of the session's worker (``pytest@<host>``).
SESSION_WORKER = "pytest"


@pytest.fixture(scope="session")
def flowkit_worker(_flowkit_redis_unused: None) -> Iterator[InThreadWorker]:
    """A worker in this process's threads for the whole session, consuming every queue
    the registered workflows route to."""
    from ..cli.routing import routed_queues
    from ..engine.broker import get_app
    from ..worker import create_celery_app

    app = get_app()
    if "flowkit.reaper" not in app.tasks:  # a producer's app: no worker's tasks
        app = create_celery_app("tests")
    with InThreadWorker(app, queues=routed_queues(), name=SESSION_WORKER) as worker:
        yield worker


@pytest.fixture
def flowkit_store(_flowkit_redis_unused: None) -> Any:
    """flowkit's store, its database emptied first."""
    from ..store import get_store

    store = get_store()
    store.redis.flushdb()
    return store
