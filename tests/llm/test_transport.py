"""Requests through aiohttp on the process's event loop: the SDK's types and the SDK's errors.

The sync client sends a non-streaming request through the SDK's async twin over aiohttp
on the process's loop (Provider.transport "auto"); these tests call the real fake
server from this process and check what a caller sees: the same return types, and the
same exceptions as over httpx for a refused connection, a dropped one and a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ParsedChatCompletion
from pydantic import BaseModel

from flowkit import coroutines
from flowkit.config import get_settings
from flowkit.coroutines import on_process_loop
from flowkit.errors import ConfigError
from flowkit.llm import AsyncOpenAI, OpenAI, Provider, RetryPolicy
from flowkit.llm.connections import sync_pools
from flowkit.llm.transport import Transport

MODEL = "gpt-4o-mini"
ONCE = RetryPolicy(attempts=1)
MESSAGES = [{"role": "user", "content": "hello there"}]


class Title(BaseModel):
    title: str


def client_of(url: str, **kwargs) -> OpenAI:
    return OpenAI(api_key="sk-transport-test", base_url=url, name="primary", retry=ONCE, **kwargs)


def transport_on_loop(client: OpenAI) -> object:
    """The HTTP transport under the provider's SDK client of the process's event loop."""
    async def sdk():
        return client.providers[0].async_sdk_client()

    return on_process_loop(sdk)._client._transport


def test_a_sync_call_goes_through_aiohttp_and_returns_the_sdks_types(servers):
    primary, _ = servers
    client = client_of(primary.base_url)

    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    parsed = client.chat.completions.parse(model=MODEL, messages=MESSAGES, response_format=Title)
    embedded = client.embeddings.create(model="text-embedding-3-small", input="hello")

    assert type(reply) is ChatCompletion and reply.usage.completion_tokens == 3
    assert isinstance(parsed, ParsedChatCompletion)
    assert isinstance(parsed.choices[0].message.parsed, Title)
    assert type(embedded) is openai.types.CreateEmbeddingResponse and embedded.data[0].embedding
    assert isinstance(transport_on_loop(client), Transport)
    assert [r["status"] for r in primary.stats.requests] == [200, 200, 200]


def test_a_stream_is_read_by_the_caller_from_the_sync_sdk(servers):
    primary, _ = servers
    chunks = client_of(primary.base_url).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, stream=True)

    assert isinstance(chunks._stream, openai.Stream)  # the sync SDK's, under the traced stream
    received = list(chunks)  # read by the caller as the chunks come
    assert received and all(type(c) is ChatCompletionChunk for c in received)
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert len(text.split()) == 4


def test_a_refused_connection_is_a_connection_error_not_a_timeout(servers):
    primary, _ = servers
    primary.set_down(True)

    with pytest.raises(openai.APIConnectionError) as err:
        client_of(primary.base_url).chat.completions.create(model=MODEL, messages=MESSAGES)

    assert not isinstance(err.value, openai.APITimeoutError)


def test_a_dropped_connection_is_a_connection_error_not_a_timeout(servers):
    primary, _ = servers
    primary.configure(rate_drop=1.0)

    with pytest.raises(openai.APIConnectionError) as err:
        client_of(primary.base_url).chat.completions.create(model=MODEL, messages=MESSAGES)

    assert not isinstance(err.value, openai.APITimeoutError)
    assert [r["status"] for r in primary.stats.requests] == ["drop"]


def test_a_slow_answer_is_still_a_timeout(servers):
    primary, _ = servers
    primary.configure(latency=3.0)

    with pytest.raises(openai.APITimeoutError):
        client_of(primary.base_url, timeout=0.3).chat.completions.create(
            model=MODEL, messages=MESSAGES)


def test_a_status_error_keeps_the_providers_message(servers):
    primary, _ = servers
    primary.configure(models=(MODEL,))

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client_of(primary.base_url).chat.completions.create(model="no-such-model", messages=MESSAGES)


def test_a_sync_call_from_async_code_is_sent_by_the_sync_sdk_without_waiting_for_a_loop(servers):
    """A sync client called (blocking) inside a coroutine: its own thread's loop is busy
    running the caller, so it must not wait for an event loop."""
    primary, _ = servers
    client = client_of(primary.base_url)

    async def caller() -> ChatCompletion:
        return client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)

    reply = asyncio.run(caller())

    assert type(reply) is ChatCompletion and reply.usage.completion_tokens == 2


def test_transport_httpx_keeps_every_request_on_the_sdks_httpx_client(servers):
    primary, _ = servers
    client = client_of(primary.base_url, transport="httpx")

    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)

    assert type(reply) is ChatCompletion
    assert client.providers[0].uses_aiohttp() is False
    assert not isinstance(transport_on_loop(client), Transport)  # the async client's: httpx


def test_a_provider_given_its_own_http_client_keeps_it(servers):
    primary, _ = servers
    own = openai.OpenAI(api_key="sk-own", base_url=primary.base_url,
                        http_client=openai.DefaultHttpxClient())

    assert Provider.from_client(own).uses_aiohttp() is False
    assert Provider("p", base_url=primary.base_url, api_key="k").uses_aiohttp() is True


def test_a_provider_given_its_own_http_client_sends_every_request_through_it(servers):
    """Its connection pools were default HTTP clients: 31 requests in 32 left the user's
    proxies and certificates behind."""
    primary, _ = servers
    own = openai.OpenAI(api_key="sk-own", base_url=primary.base_url,
                        http_client=openai.DefaultHttpxClient())
    provider = Provider.from_client(own)
    assert {id(provider.sdk_client()._client) for _ in range(64)} == {id(own._client)}


def test_a_provider_loads_the_certificate_store_once_not_once_per_pool(monkeypatch):
    """Each pool's HTTP client loaded it again: about a second to make a provider."""
    import ssl

    Provider("warm", base_url="http://127.0.0.1:1/v1", api_key="k")  # the process's context
    loads = []
    original = ssl.SSLContext.load_verify_locations
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations",
                        lambda self, *a, **kw: loads.append(1) or original(self, *a, **kw))
    provider = Provider("p", base_url="http://127.0.0.1:1/v1", api_key="k")
    assert len({id(provider.sdk_client()) for _ in range(64)}) > 1  # several pools
    assert len(loads) <= 1  # the SDK's own client; every pool shares the process's context


def test_an_unknown_transport_is_refused():
    with pytest.raises(ConfigError, match="transport"):
        Provider("p", base_url="http://127.0.0.1:1/v1", api_key="k", transport="curl")


def connections_to(port: int) -> int:
    """This process's open TCP connections to ``port`` (the client's end: the fake server
    runs in this process too, and its ends have ``port`` as their local port)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # an fd closed while listed
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01" and fields[9] in inodes:
                    count += 1  # 01: ESTABLISHED
    return count


CALLS = 200


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts sockets in /proc")
def test_clients_made_per_call_share_the_processs_connections(servers):
    """Each flowkit client (every with_options()/copy(), every OpenAI() or AsyncOpenAI()
    made in a step) opened an aiohttp session of its own on the process's loop, held
    until exit: a connection per step, until the worker hit 'Too many open files'."""
    primary, _ = servers
    client = client_of(primary.base_url)

    def derived() -> None:
        client.with_options(timeout=30).chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=1)

    def fresh() -> None:
        client_of(primary.base_url).chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=1)

    async def fresh_async() -> None:
        made = AsyncOpenAI(api_key="sk-transport-test", base_url=primary.base_url, retry=ONCE)
        await made.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)

    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    on_process_loop(fresh_async)
    before = connections_to(primary.port)
    closed_at_exit = len(coroutines._shared.get(("at_exit", os.getpid()), []))
    for way, call in (("with_options", derived), ("OpenAI()", fresh),
                      ("AsyncOpenAI()", lambda: on_process_loop(fresh_async))):
        for _ in range(CALLS):
            call()  # an async one on the process's loop, as an async step's call
        # one call after another needs one connection; a few more at most (a keep-alive
        # the server closed as the next call began)
        assert connections_to(primary.port) <= before + 4, f"{CALLS} calls through {way}"
    assert len([r for r in primary.stats.requests if r["status"] == 200]) == 3 * CALLS + 2
    # nothing is kept per client until exit either (a session each, and its connection)
    assert len(coroutines._shared.get(("at_exit", os.getpid()), [])) == closed_at_exit


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks")
def test_a_forked_child_does_not_use_its_parents_http_clients(servers):
    """A prefork worker's children: a connection the parent opened must not carry the
    requests of two processes, so the shared HTTP clients are the process's own."""
    primary, _ = servers
    client = client_of(primary.base_url)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    provider = client.providers[0]

    async def http_of_loop() -> object:
        return provider.async_sdk_client()._client

    for _ in client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1,
                                            stream=True):
        pass  # a stream goes through the provider's sync SDK clients, which it keeps
    pools = get_settings().llm_connection_pools  # every one, taken in turn
    parents = [*sync_pools(primary.base_url, 2), on_process_loop(http_of_loop),
               *(provider.sdk_client()._client for _ in range(pools))]
    child = os.fork()
    if child == 0:  # the child: its own clients, and a call through them answered
        try:
            ours = [*sync_pools(primary.base_url, 2), on_process_loop(http_of_loop),
                    *(provider.sdk_client()._client for _ in range(pools))]
            reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
            shared = any(mine is theirs for mine in ours for theirs in parents)
            os._exit(0 if not shared and reply.choices[0].message.content else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
