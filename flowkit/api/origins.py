"""Refusing cross-site requests: forged writes (CSRF) and hijacked WebSockets.

A browser attaches a site's cookies to the requests any other site's page makes to it.
The API's own credentials are not cookies, but the host app's ``authorize`` callback may
read a cookie session, and ``FLOWKIT_API_OPEN`` asks for nothing: a page on another site
could then start, cancel, retry or answer runs (a form or a ``fetch`` POST), or read a
run's stream over a WebSocket, which browsers open to any site, cookies included, with no
CORS check. So a browser request from another site is refused, 403 ``cross_site``, when
it can change something (any method but GET, HEAD and OPTIONS) or opens a WebSocket:

- its ``Origin`` names another host than the request's ``Host``, and is not one of
  ``FLOWKIT_API_TRUSTED_ORIGINS``; the scheme is not compared, as behind a TLS proxy the
  app sees ``http`` where the page is ``https`` (``Origin: null``, a sandboxed or local
  page, is another site);
- it has no ``Origin`` and its ``Sec-Fetch-Site`` is ``cross-site``.

A request with an API key or a run token is not concerned either: a page of another site
holds neither (a browser attaches cookies by itself, never a bearer header or a token in
the URL), so the host app's own pages elsewhere may use them (with CORS, its to grant). A
client that is not a browser (curl, the CLI, a service) sends neither header. Reads stay
open to other sites' pages: the browser does not let them see the answer without CORS,
which the API does not grant. A JSON body must also come as ``Content-Type:
application/json`` (:func:`flowkit.api.requests.json_body`), which an HTML form cannot send.

Open mode (``FLOWKIT_API_OPEN``) has one more way in: through DNS rebinding, a page of any
site can reach a local server under the site's own name, same-origin with it. So open
mode answers requests addressed to a loopback name only (:func:`check_open_host`).
"""

from __future__ import annotations

import ipaddress

from flask import Request

from .errors import ApiError

#: Methods that only read: a cross-site page cannot see their answers.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = (":80", ":443")


def check_same_site(request: Request, trusted: tuple[str, ...]) -> None:
    """Refuse a browser's write or WebSocket handshake that another site's page made."""
    handshake = request.headers.get("Upgrade", "").lower() == "websocket"
    if request.method in SAFE_METHODS and not handshake:
        return
    origin = request.headers.get("Origin")
    if origin is not None:
        if origin.lower() in trusted or _host_of(origin) == _bare(request.host):
            return
    elif request.headers.get("Sec-Fetch-Site", "").lower() != "cross-site":
        return
    raise ApiError(403, "cross_site", f"A page of another site ({origin or 'unknown origin'}) "
                   "may not change runs or open their streams here; if it is your own app's, "
                   "add its origin to FLOWKIT_API_TRUSTED_ORIGINS (e.g. "
                   "https://app.example.com), or serve it from this host (behind a proxy, "
                   "forward the Host header).")


def _host_of(origin: str) -> str | None:
    _, sep, rest = origin.partition("://")
    return _bare(rest) if sep and rest and "/" not in rest else None


def _bare(host: str) -> str:
    """``host[:port]`` lowercased, without a default port (``Origin`` never has one)."""
    host = host.lower()
    for port in _DEFAULT_PORTS:
        if host.endswith(port):
            return host[: -len(port)]
    return host


def check_open_host(request: Request, trusted: tuple[str, ...]) -> None:
    """Refuse an open-mode request addressed to a name that is not this machine's loopback
    (``localhost``, ``127.0.0.1``, ``[::1]``) nor a trusted origin's host, and one addressed
    to a loopback name from another machine: any client but a browser writes the ``Host``
    it likes, and a server bound to 0.0.0.0 took ``Host: localhost`` from the network."""
    host = _hostname(request.host)
    if host == "localhost" or host.endswith(".localhost") or _is_loopback(host):
        if _local_peer(request.remote_addr):
            return
        raise ApiError(403, "forbidden", f"FLOWKIT_API_OPEN answers connections from this "
                       f"machine only, not from {request.remote_addr}; use an API key "
                       "(FLOWKIT_API_KEYS).")
    if any(_hostname(origin.partition("://")[2]) == host for origin in trusted):
        return
    if not host:  # werkzeug reads a Host it cannot parse ("localhost:abc") as none
        sent = request.headers.get("Host")
        shown = repr(sent if sent is None or len(sent) <= 60 else sent[:57] + "...")
        raise ApiError(403, "forbidden", f"FLOWKIT_API_OPEN answers requests to localhost, "
                       f"127.0.0.1 or [::1] only, and this one's Host header, {shown}, names "
                       "no host it can read; send a Host such as localhost:8000, or use an "
                       "API key (FLOWKIT_API_KEYS).")
    raise ApiError(403, "forbidden", f"FLOWKIT_API_OPEN answers requests to localhost, "
                   f"127.0.0.1 or [::1] only, not to {host!r} (a page of another site can "
                   "reach a local server under its own name); use an API key "
                   "(FLOWKIT_API_KEYS), or add this host's origin to "
                   "FLOWKIT_API_TRUSTED_ORIGINS.")


def _hostname(host: str) -> str:
    """``host[:port]`` (or ``[v6]:port``) without the port, lowercased."""
    host = host.lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _local_peer(address: str | None) -> bool:
    """Whether the connection comes from this machine: a loopback address (an IPv4 one
    mapped into IPv6 too, as a dual-stack bind sees it), or a unix socket (no address)."""
    if not address:
        return True
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
