"""The store on a Redis reached over a unix socket or TLS, as the Configuration table
offers it: the broker and result backend default to the store's URL, so Celery reads it
too. Both failed at start (a ``unix://`` URL is no Celery transport; a ``rediss://`` one
without ``?ssl_cert_reqs=`` Celery refused), while ``flowkit doctor`` passed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest
import redis

from flowkit.testing.redis import free_port
from tests.conftest import ROOT

pytestmark = pytest.mark.long  # a redis-server, a worker process and a CLI run each


@pytest.fixture(scope="module")
def socket_and_tls_redis(tmp_path_factory):
    """One redis-server listening on a unix socket and on a TLS port (its own certificate,
    which the clients are given as their CA), no plain TCP port."""
    where = tmp_path_factory.mktemp("transports")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    sock, tls_port = where / "redis.sock", free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server"), "--port", "0", "--unixsocket", str(sock),
         "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", "--dir", str(where),
         "--save", "", "--logfile", str(where / "redis.log")])
    client = redis.Redis(unix_socket_path=str(sock))
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except (redis.ConnectionError, FileNotFoundError):
            assert time.monotonic() < deadline, (where / "redis.log").read_text()
            time.sleep(0.05)  # the server is still starting: it has no readiness signal
    yield {"sock": sock, "tls_port": tls_port, "cert": cert}
    proc.kill()
    proc.wait(10)


@pytest.mark.parametrize("form", ["unix", "rediss"])
def test_a_run_goes_end_to_end_on_a_socket_or_tls_store_that_is_the_broker_too(
        form, socket_and_tls_redis, flowkit_env, start_worker):
    found = socket_and_tls_redis
    db = 3 if form == "unix" else 4
    url = (f"unix://{found['sock']}?db={db}" if form == "unix" else
           f"rediss://127.0.0.1:{found['tls_port']}/{db}?ssl_ca_certs={found['cert']}")
    env = {**flowkit_env, "FLOWKIT_REDIS_URL": url, "FLOWKIT_BROKER_URL": "",
           "FLOWKIT_RESULT_BACKEND": ""}
    start_worker(f"on-{form}", env_overrides=env)
    run = subprocess.run([sys.executable, "-m", "flowkit.cli", "run", "simple", "-i", "n=1",
                          "-A", "tests.workflows"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout.splitlines()[-3:] == ["{", '  "n": 4', "}"], run.stdout
    # the database the URL names holds the runs and the broker's queues
    keys = {k.decode() for k in redis.Redis(unix_socket_path=str(found["sock"]), db=db).scan_iter()}
    assert any(":run:" in k for k in keys), sorted(keys)[:20]
    assert any(k.startswith("_kombu.binding.") for k in keys), sorted(keys)[:20]
