"""flowkit's version (one place: the package metadata and the API's OpenAPI document read it)."""

__version__ = "0.1.0"
