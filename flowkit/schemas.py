"""Schemas of JSON that crosses flowkit's edges: workflow inputs and outputs, and the values
a paused step waits for.

A schema is written with marshmallow (a ``Schema`` class or instance, or a dict of
fields); it is published as JSON Schema (``GET /workflows/<name>``, OpenAPI, a
``run.waiting`` event), and JSON received from outside is held to that published form
(:func:`json_errors`) as well as to marshmallow's own loading, which is laxer with JSON
(an Integer field takes ``"7"`` or ``2.5``, and makes ``2`` of it). Every start is held to
both, whether it comes over the API, the CLI or ``workflow.start()``: the CLI's local path
and ``start()`` once made 7 of a 7.9 the API refused.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from typing import Any

import marshmallow
from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from . import defaults
from .errors import ConfigError, ValidationError

SchemaLike = type[marshmallow.Schema] | marshmallow.Schema | dict | None


def as_schema(schema: SchemaLike, what: str) -> marshmallow.Schema | None:
    """A marshmallow Schema instance from what a user wrote (None stays None)."""
    if schema is None:
        return None
    if isinstance(schema, marshmallow.Schema):
        return schema
    if isinstance(schema, type) and issubclass(schema, marshmallow.Schema):
        return schema()
    if isinstance(schema, dict):
        for name, value in schema.items():  # {"a": int} dropped the field without a word
            if not isinstance(name, str) or not isinstance(value, marshmallow.fields.Field):
                raise ConfigError(
                    f"Schema {what}: field {name!r} is {value!r}; a dict schema maps names to "
                    "marshmallow fields, like {'n': fields.Integer(required=True)}.")
        return marshmallow.Schema.from_dict(schema, name=what)()
    raise ConfigError(f"{what} must be a marshmallow Schema (class or instance) or a dict of fields.")


def plugin() -> MarshmallowPlugin:
    """apispec's marshmallow converter, nested schemas inlined (a schema stands alone)."""
    converter = MarshmallowPlugin(schema_name_resolver=lambda schema: None)
    APISpec(title="flowkit", version="1", openapi_version="3.0.3", plugins=[converter])
    return converter


@lru_cache(maxsize=256)
def _json_schema_of(schema: marshmallow.Schema) -> dict[str, Any]:
    return plugin().converter.schema2jsonschema(schema)


def json_schema(schema: marshmallow.Schema | None) -> dict[str, Any] | None:
    """The JSON Schema (OpenAPI 3.0 dialect) of a marshmallow schema; None for none."""
    return None if schema is None else copy.deepcopy(_json_schema_of(schema))


def json_errors(published: dict[str, Any] | None, value: Any) -> dict[str, list[str]]:
    """Field messages for ``value`` against a published JSON Schema ({} when it meets it):
    a missing required field under its own name, ``_schema`` for what concerns the value
    as a whole."""
    if published is None:
        return {}
    # Imported here: it is a tenth of `import flowkit` (every CLI command, every worker
    # start), and only a run started with a published JSON Schema needs it.
    import jsonschema

    return _errors(jsonschema.Draft4Validator(_plain(copy.deepcopy(published))), value)


def schema_errors(schema: marshmallow.Schema | None, value: Any) -> dict[str, list[str]]:
    """:func:`json_errors` of ``value`` against ``schema``'s published JSON Schema, its
    validator built once per schema (a start checks every input with it)."""
    if schema is None:
        return {}
    return _errors(_validator_of(schema), value)


@lru_cache(maxsize=256)
def _validator_of(schema: marshmallow.Schema) -> Any:
    import jsonschema

    return jsonschema.Draft4Validator(_plain(copy.deepcopy(_json_schema_of(schema))))


def _errors(validator: Any, value: Any) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for error in sorted(validator.iter_errors(value), key=lambda e: list(map(str, e.path))):
        if error.path:
            fields.setdefault(str(error.path[0]), []).append(_message(error))
        elif error.validator == "required":  # a missing field's message goes under its name,
            # worded as marshmallow words it
            for name in _missing(error.validator_value, error.instance):
                fields.setdefault(name, []).append("Missing data for required field.")
        elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
            for name in _unknown(error.schema, error.instance):  # as marshmallow words it too
                fields.setdefault(name, []).append("Unknown field.")
        else:
            fields.setdefault("_schema", []).append(_message(error))
    return fields


def _message(error: Any) -> str:
    """jsonschema's message, with a wrong type said in JSON's words (``null is not of type
    boolean``), not Python's (``None is not of type 'boolean'``) for a client that sent JSON."""
    if error.validator != "type":
        return error.message
    expected = error.validator_value
    names = expected if isinstance(expected, list) else [expected]
    try:
        shown = json.dumps(error.instance, ensure_ascii=False)
    except (TypeError, ValueError):
        return error.message
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{shown} is not of type {' or '.join(map(str, names))}"


def _unknown(schema: Any, instance: dict) -> list[str]:
    known = schema.get("properties", {}) if isinstance(schema, dict) else {}
    return [str(name) for name in instance if name not in known]


def _missing(required: Any, instance: Any) -> list[str]:
    if not isinstance(instance, dict) or not isinstance(required, list):
        return []
    return [str(name) for name in required if name not in instance]


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


def check_input_name(name: Any) -> str:
    """``name`` if it can name an input: 1 to INPUT_NAME_MAX_CHARS characters without ``/``
    (``POST /runs/<id>/input/<name>`` must reach it); the wait and every sender check it."""
    most = defaults.INPUT_NAME_MAX_CHARS
    if not (isinstance(name, str) and 1 <= len(name) <= most and "/" not in name):
        said = f"{len(name)} characters" if isinstance(name, str) and len(name) > most \
            else repr(name)  # a 100,000-character name was echoed whole, twice
        message = f"An input's name is 1 to {most} characters without '/', not {said}."
        raise ValidationError({"name": [message]}, message)
    return name


def check_event_key(key: Any) -> str:
    """``key`` if it can name an event: 1 to EVENT_KEY_MAX_CHARS characters of text, the
    same rule for the wait, the Python sender, the CLI and ``POST /events/<key>``."""
    most = defaults.EVENT_KEY_MAX_CHARS
    if not isinstance(key, str) or not 1 <= len(key) <= most:
        said = f"{len(key)} characters" if isinstance(key, str) else type(key).__name__
        raise ValidationError({"key": [f"1 to {most} characters."]},
                              f"Invalid event key: 1 to {most} characters of text, not {said}.")
    return key
