"""The body limit holds however a request is framed: a chunked body over
FLOWKIT_API_MAX_BODY_BYTES gets 413 and creates nothing, and the connection goes on; a body
cut short (chunked, or of its Content-Length) is 400 and does nothing."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest

import flowkit
from tests import workflows as wf
from tests.api.conftest import API_KEY
from tests.api.helpers import Gunicorn
from tests.test_waits import paused

LIMIT = 64 * 1024  # the api fixture's FLOWKIT_API_MAX_BODY_BYTES


def chunked_post(conn: http.client.HTTPConnection, path: str, body: bytes,
                 chunk: int = 8192) -> tuple[int, dict]:
    """POST ``body`` with Transfer-Encoding: chunked (no Content-Length), on ``conn``."""
    conn.putrequest("POST", path)
    conn.putheader("Authorization", f"Bearer {API_KEY}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for start in range(0, len(body), chunk):
        piece = body[start:start + chunk]
        conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def padded(document: dict, size: int) -> bytes:
    """Valid JSON of ``size`` bytes: the document, then whitespace."""
    text = json.dumps(document).encode()
    return text + b" " * (size - len(text))


@pytest.fixture(params=["werkzeug", "gunicorn"])
def server_url(request, api, flowkit_env, tmp_path):
    if request.param == "werkzeug":
        yield api.url
        return
    web = Gunicorn(flowkit_env, tmp_path / "gunicorn.log", FLOWKIT_API_KEYS=API_KEY,
                   FLOWKIT_API_MAX_BODY_BYTES=str(LIMIT)).start()
    try:
        yield web.url
    finally:
        web.stop()


def runs_of(workflow: str) -> int:
    return len(flowkit.list_runs(workflow=workflow, limit=1000))


@pytest.mark.parametrize("body", [
    padded({"n": 1}, LIMIT + 1),  # valid JSON past the limit: would start a run
    b"{" * (LIMIT + 1),  # not JSON either: still too large first
    padded({"n": 1}, 4 * LIMIT),
], ids=["valid-json", "invalid-json", "four-times"])
def test_a_chunked_body_over_the_limit_is_413_and_creates_no_run(server_url, store, body):
    before = runs_of("simple")
    host = urlsplit(server_url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=20)
    status, error = chunked_post(conn, "/workflows/simple/runs", body)
    assert status == 413 and error["error"]["code"] == "payload_too_large"
    assert runs_of("simple") == before
    # the same connection answers the next request
    status, run = chunked_post(conn, "/workflows/simple/runs", padded({"n": 2}, 100))
    assert status == 202 and run["input"] == {"n": 2, "fail_times": 2}
    conn.close()


def test_a_chunked_body_within_the_limit_starts_a_run(server_url, store):
    host = urlsplit(server_url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=20)
    status, run = chunked_post(conn, "/workflows/simple/runs", padded({"n": 3}, LIMIT))
    assert status == 202 and flowkit.get_run(run["id"]).wait(20).output == {"n": 8}
    conn.close()


@pytest.mark.parametrize("chunks", [
    b"zz\r\nabc\r\n0\r\n\r\n",  # a chunk size that is no number
    b"3\r\nabcXX0\r\n\r\n",  # a chunk not ended by CRLF
], ids=["bad-size", "no-crlf"])
def test_a_malformed_chunked_body_is_400_without_credentials_or_a_logged_error(
        server_url, store, chunks, tmp_path):
    """The server's de-chunking errors reached the catch-all: 500 internal_error and a
    traceback in the log, for anyone, before any credential was read."""
    host = urlsplit(server_url)
    with socket.create_connection((host.hostname, host.port), timeout=20) as sock:
        sock.sendall(b"POST /events/k HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        response = http.client.HTTPResponse(sock)
        response.begin()
        error = json.loads(response.read())["error"]
        # and the connection closes, saying so: gunicorn dropped the header (hop-by-hop),
        # said keep-alive, and a request sent next on it got no answer
        assert closes(response)
        assert sock.recv(1) == b""
    assert response.status == 400 and error["code"] == "bad_request"
    assert "chunked body is malformed or ends early" in error["message"]
    log = tmp_path / "gunicorn.log"
    assert "unexpected error" not in (log.read_text() if log.exists() else "")


def test_a_body_too_large_to_drain_is_refused_and_the_client_goes_on(server_url, store):
    """Past 16 x the limit flowkit stops reading and closes the connection, saying so (gunicorn
    dropped the header as hop-by-hop and said keep-alive); the client's next request goes
    on a new one."""
    before = runs_of("simple")
    host = urlsplit(server_url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=20)
    conn.putrequest("POST", "/workflows/simple/runs")
    conn.putheader("Authorization", f"Bearer {API_KEY}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    piece = b" " * 65536
    for _ in range(18):  # 18 x the limit: past what flowkit reads to keep a connection
        conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 413
    assert closes(response)  # gunicorn's said keep-alive
    response.read()
    assert runs_of("simple") == before
    status, run = chunked_post(conn, "/workflows/simple/runs", padded({"n": 2}, 100))
    assert status == 202 and run["input"]["n"] == 2
    conn.close()


def closes(response: http.client.HTTPResponse) -> bool:
    """Whether the response says ``Connection: close`` (Werkzeug's server says it twice)."""
    return {v.strip() for v in (response.getheader("Connection") or "").split(",")} == {"close"}


def length_post(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, dict]:
    """POST ``body`` with its Content-Length, on ``conn``."""
    conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {API_KEY}",
                                                    "Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read() or b"{}")


def test_a_body_with_its_length_over_the_limit_is_413_and_the_connection_goes_on(
        server_url, store):
    """gunicorn read 64 KiB of the refused body, then closed the connection it had answered
    as kept alive: the client's next request on it failed."""
    host = urlsplit(server_url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=20)
    status, error = length_post(conn, "/workflows/simple/runs", padded({"n": 1}, 4 * LIMIT))
    assert status == 413 and error["error"]["code"] == "payload_too_large"
    status, run = length_post(conn, "/workflows/simple/runs", padded({"n": 2}, 100))
    assert status == 202 and run["input"]["n"] == 2
    conn.close()


def test_a_body_a_view_ignores_is_read_and_the_connection_goes_on(flowkit_env, worker,
                                                                 store, tmp_path):
    """A cancel reads no body: past gunicorn's 64 KiB drain the connection closed after a
    keep-alive answer, and the next request on it failed."""
    web = Gunicorn(flowkit_env, tmp_path / "gunicorn.log", FLOWKIT_API_KEYS=API_KEY,
                   FLOWKIT_API_MAX_BODY_BYTES=str(16 * LIMIT)).start()
    try:
        host = urlsplit(web.url)
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=20)
        status, run = length_post(conn, "/workflows/napping/runs?delay=3600",
                                  padded({"seconds": 1}, 100))
        assert status == 202
        status, cancelled = length_post(conn, f"/runs/{run['id']}/cancel",
                                        padded({"why": "x"}, 8 * LIMIT))
        assert status == 200 and cancelled["state"] == "cancelled"
        conn.request("GET", f"/runs/{run['id']}", headers={"Authorization": f"Bearer {API_KEY}"})
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["id"] == run["id"]
        conn.close()
    finally:
        web.stop()


@pytest.mark.parametrize("path", ["/runs/01X/cancel", "/workflows/simple/runs"])
def test_a_body_declared_and_not_sent_does_not_hold_the_answer(server_url, path):
    """The body left unread was read before the answer: a client that declared one and
    sent nothing (or a slow one) got no answer, a 401 or a 413 included."""
    host = urlsplit(server_url)
    with socket.create_connection((host.hostname, host.port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host.netloc}\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {2 * LIMIT}\r\n\r\n".encode())
        sock.settimeout(5)
        answer = sock.recv(4096)
    assert answer.startswith((b"HTTP/1.1 401", b"HTTP/1.1 413")), answer[:200]


def cut_short_post(url: str, path: str, declared: int, sent: bytes) -> tuple[int, dict]:
    """POST ``sent`` under a Content-Length of ``declared`` bytes, then end the sending side
    (what the kernel does for a client killed or cut off mid-upload) and read the answer."""
    host = urlsplit(url)
    with socket.create_connection((host.hostname, host.port), timeout=20) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host.netloc}\r\nAuthorization: Bearer "
                     f"{API_KEY}\r\nContent-Type: application/json\r\nContent-Length: "
                     f"{declared}\r\n\r\n".encode() + sent)
        sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert closes(response)  # gunicorn's said keep-alive
        return response.status, json.loads(response.read())


def test_an_event_cut_short_of_its_length_is_400_and_delivers_nothing(server_url, store):
    """What arrived of a body cut short was read as the whole body when it parsed: an event
    meant to carry 12345 woke the waiting run with 12."""
    key = f"payment:cut-{urlsplit(server_url).port}"
    run = wf.payment.start({"order": key.partition(":")[2]})
    paused(run)
    status, answer = cut_short_post(server_url, f"/events/{key}", 5, b"12")  # meant: 12345
    assert status == 400 and answer["error"]["code"] == "bad_request"
    assert "ended after 2 of its 5 bytes (Content-Length)" in answer["error"]["message"]
    assert flowkit.get_run(run.id).state == "waiting"
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {API_KEY}"},
                      timeout=20) as client:  # the client sends it again, whole
        sent = client.post(f"/events/{key}", json=12345)
    assert sent.status_code == 202 and sent.json() == {"woken": 1}
    assert run.result(20)["paid"] == 12345


def test_a_start_cut_short_of_its_length_is_400_and_starts_nothing(server_url, store):
    before = runs_of("simple")
    status, answer = cut_short_post(server_url, "/workflows/simple/runs", 100, b'{"n": 1}')
    assert status == 400 and answer["error"]["code"] == "bad_request"
    assert "ended after 8 of its 100 bytes (Content-Length)" in answer["error"]["message"]
    assert runs_of("simple") == before


@pytest.mark.parametrize("encoding, body", [
    ("gzip", gzip.compress(b'{"n": 1}')),  # read as text: "not valid JSON"
    ("gzip", b'{"n": 1}'),  # labelled gzip, not compressed: it was taken as it was
    ("br, gzip", b'{"n": 1}'),
], ids=["compressed", "mislabelled", "two-codings"])
def test_a_compressed_body_is_415_saying_to_send_it_uncompressed(client, store, encoding,
                                                                  body):
    before = runs_of("simple")
    response = client.post("/workflows/simple/runs", content=body, headers={
        "Content-Type": "application/json", "Content-Encoding": encoding})
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert error["message"] == (f"A body sent with 'Content-Encoding: {encoding}' is not read "
                                "here: send it uncompressed, without Content-Encoding.")
    assert response.headers["Accept-Encoding"] == "identity"
    assert runs_of("simple") == before
    plain = client.post("/workflows/simple/runs", json={"n": 1},
                        headers={"Content-Encoding": "identity"})
    assert plain.status_code == 202, plain.text
