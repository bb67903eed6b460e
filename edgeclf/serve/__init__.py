"""Serving: ``edgeclf serve`` and :func:`create_app` (an ASGI app over the C runtime)."""

from edgeclf.serve.app import ERROR_CODES, ApiError, MicroBatcher, ServeOptions, create_app

__all__ = ["ERROR_CODES", "ApiError", "MicroBatcher", "ServeOptions", "create_app"]
