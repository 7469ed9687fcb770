"""One TLS context per process for the HTTP clients flowkit makes for providers.

Loading the certificate store (certifi's CAs, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``) takes
about 30 ms. A provider keeps several connection pools (``FLOWKIT_LLM_CONNECTION_POOLS``),
and each HTTP client the SDK builds loads the store again: a provider took about a second
to make. A context is safe to share between clients and threads once built.
"""

from __future__ import annotations

import functools
import ssl

import httpx2


@functools.lru_cache(maxsize=1)
def ssl_context() -> ssl.SSLContext:
    """The TLS settings httpx would use, made once per process."""
    return httpx2.create_ssl_context()
