"""Client-side helpers for the API tests: WebSocket and SSE readers."""

from __future__ import annotations

import json

import httpx
import httpx_sse
import websocket

TERMINAL = ("run.succeeded", "run.failed", "run.cancelled")


def ws_connect(url: str, token: str | None = None, after: str | None = None,
               key: str | None = None) -> websocket.WebSocket:
    params = []
    if after:
        params.append(f"after={after}")
    if token:
        params.append(f"token={token}")
    full = url + ("?" + "&".join(params) if params else "")
    header = [f"Authorization: Bearer {key}"] if key else []
    return websocket.create_connection(full, timeout=20, header=header)


def ws_read(sock: websocket.WebSocket, stop=None) -> list[dict]:
    """Events until the server closes after the terminal event, or until ``stop(events)``."""
    got: list[dict] = []
    while True:
        try:
            message = sock.recv()
        except websocket.WebSocketConnectionClosedException:
            return got
        if not message:  # close frame
            return got
        got.append(json.loads(message))
        if stop is not None and stop(got):
            return got


def sse_read(client: httpx.Client, path: str, headers: dict | None = None, stop=None) -> list[dict]:
    """SSE events of ``path`` until the server ends the stream, or until ``stop(events)``."""
    got: list[dict] = []
    with httpx_sse.connect_sse(client, "GET", path, headers=headers or {}) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for sse in source.iter_sse():
            if not sse.data:
                continue  # a keep-alive comment: EventSource dispatches nothing for it
            event = json.loads(sse.data)
            assert sse.id == event["id"]
            got.append(event)
            if stop is not None and stop(got):
                break
    return got


def start(client: httpx.Client, workflow: str, body: dict, prefix: str = "", **kwargs) -> dict:
    response = client.post(f"{prefix}/workflows/{workflow}/runs", json=body, **kwargs)
    assert response.status_code in (200, 202), response.text
    return response.json()
