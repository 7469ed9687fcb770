"""The reference web process: a Flask app mounting flowkit's API (see api/app.py)."""
