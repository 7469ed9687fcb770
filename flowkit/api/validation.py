"""A workflow's input held to the JSON Schema the API publishes for it (see
:mod:`flowkit.schemas`): what the document promises is what the server accepts."""

from __future__ import annotations

from typing import Any

import marshmallow

from ..schemas import json_errors, json_schema
from .errors import ApiError


def check_input(schema: marshmallow.Schema | None, body: Any) -> None:
    """Raise a 400 with field messages when ``body`` breaks the published schema."""
    fields = json_errors(json_schema(schema), body)
    if fields:
        raise ApiError(400, "validation_error", "Invalid workflow input.", fields)
