"""flowkit's API plane: REST over workflows and runs, live streams over WebSocket and SSE."""

from .blueprint import create_blueprint
from .errors import ApiError
from .extension import FlowKit

__all__ = ["ApiError", "FlowKit", "create_blueprint"]
