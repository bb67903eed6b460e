"""``export_artifact``: one (format, precision) of a model into a bundle folder, by its exporter.

The dispatcher sits above the exporters: it imports each of them, and they import only the
shared helpers and format specs of :mod:`edgeclf.export.formats` (no cycle).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgeclf.errors import ConfigError
from edgeclf.export import onnx_export, openvino_export, quantize, tensorrt_export, torchscript_export
from edgeclf.export.formats import (
    Artifact,
    Produced,
    _publish,
    artifact_file_name,
    one_line,
    stdout_to_stderr,
    validate_request,
)
from edgeclf.preprocess import PreprocessSpec

log = logging.getLogger("edgeclf.export")


#: Each (format, precision)'s exporter; the exporters import formats' helpers, never this module.
def _ort_int8(*, out_dir: Path, precision: str, **kw: Any) -> Produced:
    """ONNX Runtime int8 (the quantiser takes the fp32 ONNX and the calibration images; no out_dir)."""
    return quantize.export_ort_int8(**kw)


_EXPORTERS: dict[tuple[str, str | None], Callable[..., Produced]] = {
    ("onnx", "int8"): _ort_int8,
    ("onnx", None): onnx_export.export,
    ("torchscript", None): torchscript_export.export,
    ("openvino", None): openvino_export.export,
    ("tensorrt", None): tensorrt_export.export,
}


def _dispatch(fmt: str, precision: str) -> Callable[..., Produced]:
    exporter = _EXPORTERS.get((fmt, precision)) or _EXPORTERS.get((fmt, None))
    if exporter is None:
        raise ConfigError(f"unknown export format {fmt!r}")  # validate_request ran first: unreachable
    return exporter


def export_artifact(
    fmt: str,
    precision: str,
    model: nn.Module,
    spec: PreprocessSpec,
    out_dir: Path,
    calibration_images: Sequence[np.ndarray] | None,
    metadata_json: str,
    options: dict[str, Any] | None = None,
    fp32_onnx: Path | None = None,
) -> Artifact:
    """Export ``model`` as ``fmt`` at ``precision`` into ``out_dir``.

    Args:
        fmt: A key of :data:`FORMATS`.
        precision: One of ``FORMATS[fmt].precisions``.
        model: The eager classifier (taken to eval mode for the export, mode restored after).
        spec: Preprocessing; fixes the input size (``spec.crop_size``) and the calibration preprocessing.
        out_dir: Bundle folder (created if missing).
        calibration_images: Decoded H x W x 3 uint8 RGB images, needed for int8 (all of them are used).
        metadata_json: The bundle manifest JSON, embedded where the format allows
            (ONNX ``metadata_props["edgeclf.meta"]``, OpenVINO ``rt_info["edgeclf.meta"]``,
            TorchScript extra file ``edgeclf.meta``).
        options: Format options; see ``FORMATS[fmt].options_for(precision)``.
        fp32_onnx: An fp32 ONNX model already exported (by this function) to start from,
            for ONNX int8, OpenVINO and TensorRT; exported on the fly when ``None``.

    Returns:
        The :class:`Artifact`; ``status`` is ``"export_failed"`` (with a one-line
        ``error``) when the exporter raised, ``"skipped"`` when the format cannot be
        built on this machine (TensorRT without TensorRT).

    Raises:
        ConfigError: Unsupported format, precision or option, int8 without
            calibration images, or invalid ``metadata_json`` (before any work).
    """
    fspec = validate_request(fmt, precision, options, calibration_images, metadata_json)
    options = dict(options or {})
    if fp32_onnx is not None and not Path(fp32_onnx).is_file():
        raise ConfigError(f"fp32 ONNX model {fp32_onnx} does not exist; export onnx fp32 first or pass None")
    if fmt != "tensorrt":
        ok, reason = fspec.available(precision)
        if not ok:
            raise ConfigError(f"cannot export {fmt} {precision}: {reason}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exporter = _dispatch(fmt, precision)
    planned = artifact_file_name(fmt, precision)
    log.info("exporting %s %s", fmt, precision)
    start = time.perf_counter()
    modes = {module: module.training for module in model.modules()}
    work = Path(tempfile.mkdtemp(prefix=f".export-{fmt}-{precision}-", dir=out_dir))
    try:
        model.eval()
        with stdout_to_stderr():
            produced: Produced = exporter(
                model=model,
                spec=spec,
                work_dir=work,
                out_dir=out_dir,
                precision=precision,
                calibration_images=calibration_images,
                metadata_json=metadata_json,
                options=options,
                fp32_onnx=Path(fp32_onnx) if fp32_onnx is not None else None,
            )
        _publish(work, out_dir, [*produced.extra_files, *([produced.file] if produced.status == "ok" else [])])
    except Exception as e:  # noqa: BLE001 — every failure becomes a recorded, readable status
        seconds = round(time.perf_counter() - start, 3)
        log.warning("%s %s export failed: %s", fmt, precision, one_line(e))
        log.debug("traceback:\n%s", traceback.format_exc())
        return Artifact(fmt, precision, planned, [], fspec.runtime, "export_failed", one_line(e), seconds, {})
    finally:
        for module, training in modes.items():
            module.training = training
        shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - start
    if produced.status == "ok":
        log.info("exported %s %s -> %s in %.1f s", fmt, precision, produced.file, seconds)
    else:
        log.warning("%s %s %s: %s", fmt, precision, produced.status, produced.error)
    return Artifact(
        format=fmt,
        precision=precision,
        file=produced.file,
        extra_files=list(produced.extra_files),
        runtime=fspec.runtime,
        status=produced.status,
        error=produced.error,
        export_seconds=round(seconds, 3),
        details=produced.details,
    )


__all__ = ["export_artifact"]
