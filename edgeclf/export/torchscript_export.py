"""TorchScript export: ``torch.jit.trace`` (default) or ``torch.jit.script`` of the eval model.

The module is saved with ``torch.jit.save(..., _extra_files={"edgeclf.meta": metadata_json})``;
:func:`read_torchscript_metadata` reads it back. Tracing records the model at the
bundle's fixed input size (``spec.crop_size``); the batch axis stays free (timm's
``Conv2dSame`` pads depend only on H and W). torch 2.13 marks ``torch.jit`` as
deprecated; the warnings are silenced here, and the format stays useful for
LibTorch deployments until torch removes it.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgeclf._io import atomic_write_bytes
from edgeclf.export.formats import Produced
from edgeclf.preprocess import PreprocessSpec

__all__ = ["META_FILE", "export", "export_torchscript", "read_torchscript_metadata"]

META_FILE = "edgeclf.meta"


def export_torchscript(
    model: nn.Module, spec: PreprocessSpec, path: Path, metadata_json: str, method: str = "trace"
) -> dict[str, Any]:
    """Trace (or script) the eval-mode ``model`` and save it at ``path`` with the metadata."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    example = torch.zeros(1, 3, spec.crop_size, spec.crop_size, dtype=torch.float32, device=device)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit deprecation and tracer warnings
        if method == "script":
            module = torch.jit.script(model)
        else:
            module = torch.jit.trace(model, example, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(module, buf, _extra_files={META_FILE: metadata_json})
    atomic_write_bytes(path, buf.getvalue())
    return {"method": method, "torch_version": torch.__version__, "input_size": spec.crop_size}


def read_torchscript_metadata(path: Path) -> str | None:
    """The ``edgeclf.meta`` extra file of a saved TorchScript module (None if absent or empty)."""
    extra = {META_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    value = extra[META_FILE]
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return text or None


def export(
    *,
    model: nn.Module,
    spec: PreprocessSpec,
    work_dir: Path,
    out_dir: Path,
    precision: str,
    calibration_images: Any,
    metadata_json: str,
    options: dict[str, Any],
    fp32_onnx: Path | None,
) -> Produced:
    """Format adapter for :func:`edgeclf.export.exporters.export_artifact` (``torchscript``)."""
    name = "model.ts"
    details = export_torchscript(model, spec, work_dir / name, metadata_json, str(options.get("method", "trace")))
    return Produced(file=name, details=details)
