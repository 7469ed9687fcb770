"""Every Store method that talks to Redis is guarded (:func:`flowkit.store.connection.guarded`):
Redis out of reach is StoreUnavailable (a 503, "cannot reach Redis"), never redis-py's
ConnectionError (a 500, a traceback). One method lost its guard when another was added
above it, and ``get_run`` of a running run then failed that way."""

from __future__ import annotations

import inspect

from flowkit.store import Store


def test_every_store_method_that_reaches_redis_is_guarded():
    unguarded = []
    for name, member in vars(Store).items():
        fn = member.fget if isinstance(member, property) else member
        # private helpers run inside the guarded methods that call them
        if name.startswith("_") or not inspect.isfunction(fn) or hasattr(fn, "__wrapped__"):
            continue
        source = inspect.getsource(fn)
        if "self.redis." in source or "self._run_script(" in source:
            unguarded.append(name)
    assert unguarded == []
