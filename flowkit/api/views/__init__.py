"""The API's views, one module per resource; each has ``register(bp, sock)``."""
