"""Small file helpers shared by every stage: hashing and crash-safe writes.

Every artifact edgeclf writes goes through :func:`atomic_write_bytes` so an
interrupted run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

_CHUNK = 1 << 20
_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file ordinary permissions
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def canonical_json(obj: Any) -> str:
    """Canonical JSON: UTF-8, sorted keys, fixed separators, trailing newline."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, canonical_json(obj))


def read_document(
    path: str | os.PathLike[str],
    model: Any,
    remedy: str,
    loads: Any = json.loads,
    parse_errors: tuple[type[BaseException], ...] = (ValueError,),
) -> Any:
    """Read ``path`` (``loads``: JSON by default) into the pydantic ``model``, or raise one
    :class:`~edgeclf.errors.ConfigError` that names the file, the field and ``remedy`` (what to do)."""
    from pydantic import ValidationError

    from edgeclf.errors import ConfigError

    try:
        raw = loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, *parse_errors) as e:
        raise ConfigError(f"{path}: cannot be read ({type(e).__name__}: {e}); {remedy}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping (a JSON object) at the top level; {remedy}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise ConfigError(
            f"{path}: {where}: {err['msg']}; the file is damaged or from another edgeclf version ({remedy})"
        ) from None
