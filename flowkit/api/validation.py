"""A workflow's input checked against the JSON Schema the API publishes for it.

marshmallow's own loading is lenient with JSON (an Integer field takes ``"7"`` and
``2.5``): a request is first held to the published schema (``GET /workflows/<name>``,
OpenAPI), so what the document promises is what the server accepts. Field messages go in
``error.fields``, as marshmallow's do.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

import jsonschema
import marshmallow

from .errors import ApiError
from .openapi import json_schema


def check_input(schema: marshmallow.Schema | None, body: Any) -> None:
    """Raise a 400 with field messages when ``body`` breaks the published schema."""
    if schema is None:
        return
    errors = sorted(_validator(schema).iter_errors(body), key=lambda e: list(map(str, e.path)))
    if not errors:
        return
    fields: dict[str, list[str]] = {}
    for error in errors:
        field = str(error.path[0]) if error.path else "_schema"
        fields.setdefault(field, []).append(error.message)
    raise ApiError(400, "validation_error", "Invalid workflow input.", fields)


@lru_cache(maxsize=256)
def _validator(schema: marshmallow.Schema) -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(_plain(copy.deepcopy(json_schema(schema))))


def _plain(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` as JSON Schema's ``type: [..., "null"]``."""
    if isinstance(node, dict):
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        for value in node.values():
            _plain(value)
    elif isinstance(node, list):
        for item in node:
            _plain(item)
    return node
