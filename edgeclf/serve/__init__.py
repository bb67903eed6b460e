"""Serving: ``edgeclf serve`` and :func:`create_app` (an ASGI app over the C runtime), and
``edgeclf triton`` (:func:`edgeclf.serve.triton.write_repository`, a Triton model repository).

The HTTP app needs the ``serve`` extra (FastAPI, uvicorn); it is imported on first use, so the
Triton writer works without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ERROR_CODES", "ApiError", "MicroBatcher", "ServeOptions", "create_app"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgeclf.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'edgeclf.serve' has no attribute {name!r}")
