"""gunicorn settings of the web process (``gunicorn -c api/gunicorn.conf.py api.app:app``).

The settings ship in the package, so that any app serving flowkit's API can use them
(``gunicorn -c python:flowkit.api.gunicorn_config yourapp:app``); see
:mod:`flowkit.api.gunicorn_config` for what they are and why.
"""

from flowkit.api.gunicorn_config import *  # noqa: F403 - gunicorn reads this module's names
