"""Fixtures of the LLM tests: two fake OpenAI-compatible servers and two LLM worker processes.

The servers run in this process (tests steer their faults and read what they
saw); the workers are real ``celery worker`` processes running tests.llm.app on
the ``llm-tests`` queue, with the servers' URLs in their environment.
"""

from __future__ import annotations

import pytest

from flowkit.testing import FakeLLMServer, WorkerProcess
from tests.conftest import ROOT


@pytest.fixture(scope="session")
def llm_servers():
    primary, backup = FakeLLMServer().start(), FakeLLMServer().start()
    yield primary, backup
    primary.stop()
    backup.stop()


@pytest.fixture(scope="session")
def llm_env(flowkit_env, llm_servers, tmp_path_factory) -> dict[str, str]:
    primary, backup = llm_servers
    return {
        **flowkit_env,
        "TEST_LLM_PRIMARY": primary.base_url,
        "TEST_LLM_BACKUP": backup.base_url,
        # small batches so a short test reply still streams as several chunks
        "FLOWKIT_LLM_STREAM_FLUSH_CHARS": "12",
    }


@pytest.fixture(scope="session")
def llm_workers(llm_env):
    """Two worker processes sharing the LLM queue (and, through Redis, the rate budgets)."""
    workers = [
        WorkerProcess("tests.llm.app", name=name, queues=("llm-tests",), env=llm_env, cwd=ROOT)
        for name in ("llm-a", "llm-b")
    ]
    for proc in workers:
        proc.start()
    yield workers
    for proc in workers:
        proc.terminate(20)


@pytest.fixture
def servers(llm_servers, llm_env, monkeypatch):
    """Both fake servers reset to quick, fault-free answers (and their URLs in this process)."""
    monkeypatch.setenv("TEST_LLM_PRIMARY", llm_env["TEST_LLM_PRIMARY"])
    monkeypatch.setenv("TEST_LLM_BACKUP", llm_env["TEST_LLM_BACKUP"])
    for server in llm_servers:
        server.reset()
    yield llm_servers
    for server in llm_servers:
        server.reset()


@pytest.fixture
def llm(store, servers, llm_workers):
    """A clean flowkit store, reset servers and the LLM workers running."""
    import tests.llm.workflows  # noqa: F401 - the workflows this process starts

    return servers
