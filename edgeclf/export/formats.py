"""Export formats declared as data, and the one wrapper every export goes through.

A format is a :class:`FormatSpec`: its name, the runtime that executes it, its file
suffix, the precisions it can be exported at and the option keys it accepts. The
table :data:`FORMATS` is the single source of truth: the CLI lists it, the bundle
manifest names its entries, and :func:`validate_request` checks a request against
it before any work starts.

:func:`edgeclf.export.exporters.export_artifact` is the only entry point. It validates the request (raising
:class:`~edgeclf.errors.ConfigError` for an unknown format, precision or option,
before any work), then runs the format's exporter inside a private staging folder
in ``out_dir``, times it, logs to ``logging.getLogger("edgeclf.export")`` and turns
any failure into ``Artifact(status="export_failed", error=<one line>)``. Files move
from the staging folder into ``out_dir`` (``os.replace``, the side files first, the
main file last) only when the exporter finishes, so an interrupted or failed export
leaves nothing half-written behind.

File names inside a bundle are fixed by format and precision
(:func:`artifact_file_name`): ``model.onnx``, ``model.int8.onnx``, ``model.ts``,
``model.fp32.xml`` (+ ``.bin``), ``model.fp16.xml``, ``model.int8.xml``, and for
TensorRT ``model.<precision>.trt<major.minor>-<gpu>.engine``.

Third-party exporters and quantisers print progress on stdout (ONNX Runtime's
entropy calibrator, NNCF's progress bars, torch.onnx's dynamo exporter). The CLI
promises one JSON document on stdout with ``--json``, so every export runs with
stdout redirected to stderr (Python-level and, where possible, file descriptor 1).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeclf.errors import ConfigError

__all__ = [
    "FORMATS",
    "Artifact",
    "FormatSpec",
    "Produced",
    "artifact_file_name",
    "validate_request",
]

log = logging.getLogger("edgeclf.export")

Status = Literal["ok", "export_failed", "skipped"]

# The longest error message kept in an Artifact: one readable line, not a traceback.
_MAX_ERROR_CHARS = 400

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
OPENVINO_PRESETS = ("performance", "mixed")
#: NNCF bias correction after int8 calibration: ``full`` (BiasCorrection, layer by layer on the
#: calibration images; the default) or ``fast`` (FastBiasCorrection, NNCF's own default).
OPENVINO_BIAS_CORRECTION = ("full", "fast")
ONNX_EXPORTERS = ("auto", "torchscript", "dynamo")
TORCHSCRIPT_METHODS = ("trace", "script")
# ONNX opset floor: 17 is the first opset with LayerNormalization and the newest that
# TensorRT 8.5/8.6 (JetPack 5) parse; the exporter default. Higher opsets are accepted.
MIN_ONNX_OPSET = 17
# Highest opset asked of the exporter; ONNX Runtime 1.16+ and OpenVINO 2023+ read it.
MAX_ONNX_OPSET = 21


TRT_NOT_INSTALLED = "TensorRT is not installed on this machine"
NO_GPU = "TensorRT is installed but no CUDA GPU is visible"


def gpu_name() -> str | None:
    """Name of CUDA device 0 (as ``torch.cuda`` reports it), or None without a GPU."""
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:  # noqa: BLE001 — a broken CUDA install means "no GPU" here
        return None
    return None


def tensorrt_available() -> tuple[bool, str]:
    """``(True, "")`` when engines can be built here, else ``(False, reason)``."""
    if importlib.util.find_spec("tensorrt") is None:
        return False, TRT_NOT_INSTALLED
    try:
        import tensorrt  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"tensorrt cannot be imported: {e}"
    if gpu_name() is None:
        return False, NO_GPU
    return True, ""


def _missing(*modules: str) -> str | None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return module
    return None


@dataclass(frozen=True)
class FormatSpec:
    """One export format, as data.

    Attributes:
        name: Format name used on the command line and in the manifest.
        runtime: The runtime that executes the artifact.
        suffix: Suffix of the main file (OpenVINO also writes a ``.bin`` beside the ``.xml``).
        precisions: Precisions this format can be exported at.
        options: Option keys accepted at every precision.
        int8_options: Option keys accepted only when ``precision == "int8"``.
        requires: Python modules the exporter needs (checked by :meth:`available`).
        int8_requires: Extra modules needed for int8 export.
    """

    name: str
    runtime: str
    suffix: str
    precisions: tuple[str, ...]
    options: tuple[str, ...] = ()
    int8_options: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    int8_requires: tuple[str, ...] = ()

    def options_for(self, precision: str) -> tuple[str, ...]:
        """Option keys accepted at ``precision``."""
        return self.options + (self.int8_options if precision == "int8" else ())

    def available(self, precision: str | None = None) -> tuple[bool, str]:
        """``(True, "")`` when this machine can export the format (at ``precision``), else ``(False, reason)``.

        TensorRT also needs a CUDA GPU; without TensorRT the exporter still runs and
        returns a ``skipped`` artifact with the ``trtexec`` command to run on the device.
        """
        if self.name == "tensorrt":
            return tensorrt_available()
        needed = self.requires + (self.int8_requires if precision == "int8" else ())
        missing = _missing(*needed)
        if missing is not None:
            return False, f"{missing} is not installed (needed for {self.name} export)"
        return True, ""


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec
    for spec in (
        FormatSpec(
            name="onnx",
            runtime="onnxruntime",
            suffix=".onnx",
            precisions=("fp32", "int8"),
            options=("opset", "exporter", "slim"),
            int8_options=("calibration_method", "keep_float", "reduce_range"),
            requires=("onnx", "onnxruntime"),
            int8_requires=(),
        ),
        FormatSpec(
            name="torchscript",
            runtime="torch",
            suffix=".ts",
            precisions=("fp32",),
            options=("method",),
            requires=("torch",),
        ),
        FormatSpec(
            name="openvino",
            runtime="openvino",
            suffix=".xml",
            precisions=("fp32", "fp16", "int8"),
            options=("opset", "exporter", "slim"),
            int8_options=("preset", "keep_float", "bias_correction"),
            requires=("openvino", "onnx", "onnxruntime"),
            int8_requires=("nncf",),
        ),
        FormatSpec(
            name="tensorrt",
            runtime="tensorrt",
            suffix=".engine",
            precisions=("fp32", "fp16", "int8"),
            options=("opset", "exporter", "slim", "max_batch", "opt_batch", "workspace_mb"),
            requires=("tensorrt",),
        ),
    )
}


@dataclass
class Artifact:
    """The outcome of exporting one (format, precision).

    ``file`` and ``extra_files`` are names inside ``out_dir``. Files exist only for
    what was actually written: ``file`` exists when ``status == "ok"``; for other
    statuses it is the name the artifact would have had. ``extra_files`` lists only
    files that were written and left in ``out_dir`` (OpenVINO's ``.bin``; for a
    skipped TensorRT export the calibration batch ``.npy`` and the ONNX model the
    ``trtexec`` command reads).
    """

    format: str
    precision: str
    file: str
    extra_files: list[str]
    runtime: str
    status: Status
    error: str | None
    export_seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (for the manifest)."""
        d = asdict(self)
        d["details"] = json.loads(json.dumps(self.details, default=str))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Artifact:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Produced:
    """What a format exporter hands back to :func:`export_artifact` (names inside its work dir)."""

    file: str
    extra_files: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    status: Status = "ok"
    error: str | None = None


def artifact_file_name(fmt: str, precision: str) -> str:
    """The main file name of ``fmt`` at ``precision`` inside a bundle (TensorRT: the generic name)."""
    if fmt == "onnx":
        return "model.onnx" if precision == "fp32" else f"model.{precision}.onnx"
    if fmt == "torchscript":
        return "model.ts"
    if fmt == "openvino":
        return f"model.{precision}.xml"
    if fmt == "tensorrt":
        return f"model.{precision}.engine"
    raise ConfigError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")


def _check_int(key: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"option {key} must be an integer {bound}, got {value!r}")


def _check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"option {key} must be one of {', '.join(choices)}; got {value!r}")


def _validate_option_values(fmt: str, options: Mapping[str, Any]) -> None:
    for key, value in options.items():
        if key == "opset":
            _check_int(key, value, MIN_ONNX_OPSET, MAX_ONNX_OPSET)
        elif key == "exporter":
            _check_choice(key, value, ONNX_EXPORTERS)
        elif key in ("slim", "reduce_range"):
            if not isinstance(value, bool):
                raise ConfigError(f"option {key} must be true or false, got {value!r}")
        elif key == "calibration_method":
            _check_choice(key, value, CALIBRATION_METHODS)
        elif key == "keep_float":
            if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"option keep_float must be a list of node names, got {value!r}")
        elif key == "method":
            _check_choice(key, value, TORCHSCRIPT_METHODS)
        elif key == "preset":
            _check_choice(key, value, OPENVINO_PRESETS)
        elif key == "bias_correction":
            _check_choice(key, value, OPENVINO_BIAS_CORRECTION)
        elif key in ("max_batch", "opt_batch"):
            _check_int(key, value, 1, 4096)
        elif key == "workspace_mb":
            _check_int(key, value, 16)
    if "opt_batch" in options and options["opt_batch"] > options.get("max_batch", 32):
        raise ConfigError(f"option opt_batch ({options['opt_batch']}) must not exceed max_batch ({options.get('max_batch', 32)})")


def validate_request(
    fmt: str,
    precision: str,
    options: Mapping[str, Any] | None = None,
    calibration_images: Sequence[np.ndarray] | None = None,
    metadata_json: str | None = None,
) -> FormatSpec:
    """Check a request against :data:`FORMATS`; raise :class:`ConfigError` with the fix if it is not supported.

    Checks the format, the precision, the option keys and values, that int8 has
    calibration images and that ``metadata_json`` (when given) is a JSON object.
    Does no work and imports no exporter.
    """
    spec = FORMATS.get(fmt)
    if spec is None:
        raise ConfigError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if precision not in spec.precisions:
        raise ConfigError(f"{fmt} cannot be exported at precision {precision!r}; it supports {', '.join(spec.precisions)}")
    options = dict(options or {})
    accepted = spec.options_for(precision)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        where = f"{fmt} {precision}"
        hint = f"accepted: {', '.join(accepted)}" if accepted else "it takes no options"
        raise ConfigError(f"option(s) {', '.join(unknown)} not supported for {where}; {hint}")
    _validate_option_values(fmt, options)
    if precision == "int8" and not calibration_images:
        raise ConfigError(f"{fmt} int8 export needs calibration images (got none)")
    if metadata_json is not None:
        try:
            parsed = json.loads(metadata_json)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"metadata_json is not valid JSON: {e}") from None
        if not isinstance(parsed, dict):
            raise ConfigError("metadata_json must be a JSON object (the bundle manifest)")
    return spec


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, cut to a readable length."""
    msg = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


#: Where the export's third-party output goes (set by :func:`third_party_log`); None: stderr.
_THIRD_PARTY_LOG: contextvars.ContextVar[Path | None] = contextvars.ContextVar("edgeclf_third_party_log", default=None)
#: The libraries whose own log records go to the log file with their prints.
_CHATTY_LOGGERS = ("nncf", "onnxruntime", "openvino")


@contextlib.contextmanager
def third_party_log(path: Path | None) -> Iterator[None]:
    """For the duration, :func:`stdout_to_stderr` sends the quantizers' and converters' chatter
    (ONNX Runtime's "Collecting tensor data and making histogram ...", NNCF's progress and INFO
    lines) to ``path`` (appended) instead of the user's terminal."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    token = _THIRD_PARTY_LOG.set(Path(path) if path is not None else None)
    try:
        yield
    finally:
        _THIRD_PARTY_LOG.reset(token)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Keep third-party output off stdout (Python and C level) for the duration: into the export's
    log file when :func:`third_party_log` names one (stderr too, then), else onto stderr."""
    import logging

    log_path = _THIRD_PARTY_LOG.get()
    sink = open(log_path, "a", encoding="utf-8") if log_path is not None else None  # noqa: SIM115
    target = sink if sink is not None else sys.stderr
    saved: list[tuple[int, int]] = []
    try:
        for stream in (sys.stdout, sys.stderr) if sink is not None else (sys.stdout,):
            stream.flush()
        for fd in (1, 2) if sink is not None else (1,):
            saved.append((fd, os.dup(fd)))
            os.dup2(target.fileno(), fd)
    except (OSError, ValueError, AttributeError):  # no real fds (embedded interpreters)
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        saved = []
    handlers: list[tuple[logging.Logger, logging.Handler, bool, list[logging.Handler]]] = []
    if sink is not None:
        for name in _CHATTY_LOGGERS:
            lg = logging.getLogger(name)
            h = logging.StreamHandler(sink)
            # the library's own handlers (NNCF's writes to the stdout it saw at import) are set
            # aside for the duration: the sink is the only place its lines go
            handlers.append((lg, h, lg.propagate, lg.handlers[:]))
            lg.handlers = [h]
            lg.propagate = False
    try:
        with (
            contextlib.redirect_stdout(target),
            contextlib.redirect_stderr(target) if sink is not None else contextlib.nullcontext(),
        ):
            yield
    finally:
        for lg, h, propagate, before in handlers:
            added = [x for x in lg.handlers if x is not h and x not in before]
            lg.handlers = before + added
            lg.propagate = propagate
            for x in lg.handlers:
                # a handler made while the streams pointed at the sink (a library imported inside
                # this block) would write to it once it is closed: point it at stderr instead
                if isinstance(x, logging.StreamHandler) and x.stream is sink:
                    x.setStream(sys.stderr)
        try:
            sys.stdout.flush()
            target.flush()
        except (OSError, ValueError):
            pass
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        if sink is not None:
            sink.close()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _publish(work: Path, out_dir: Path, names: Sequence[str]) -> None:
    """Move ``names`` from ``work`` into ``out_dir`` (side files first, main file last)."""
    for name in names:
        src = work / name
        if not src.is_file():
            raise FileNotFoundError(f"exporter did not write {name}")
        _fsync(src)
    moved: list[Path] = []
    try:
        for name in names:
            os.replace(work / name, out_dir / name)
            moved.append(out_dir / name)
    except BaseException:
        for path in moved:  # all or nothing
            path.unlink(missing_ok=True)
        raise
