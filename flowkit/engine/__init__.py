"""The compute plane and the door to it: how runs execute, recover and are controlled.

``control`` is the door the API, the CLI and Python callers use (start, cancel, retry,
resume, read); ``executor``, ``fanout`` and ``canvas`` run steps in workers;
``heartbeat``, ``reaper`` and ``drain`` keep runs alive through crashes and deploys;
``trace`` records spans; ``broker`` is the Celery app messages travel with.
"""
