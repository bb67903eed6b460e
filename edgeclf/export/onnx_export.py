"""ONNX fp32 export: torch -> ONNX (opset 17, dynamic batch) -> onnxslim -> metadata.

The graph has one input ``input`` (N x 3 x crop x crop float32, NCHW, batch dynamic)
and one output ``logits`` (N x C float32). The bundle manifest JSON is embedded in
``metadata_props`` under the key :data:`META_KEY` (``edgeclf.meta``).

Exporter choice: the legacy TorchScript-based exporter (``torch.onnx.export(...,
dynamo=False)``) is the default, with the torch.export-based ("dynamo") exporter as
a fallback (``options["exporter"]``: ``auto`` | ``torchscript`` | ``dynamo``). Reasons
(torch 2.13, timm 1.0):

* The dynamo exporter only implements opset >= 18; asked for 17 it exports 18 and
  its down-conversion fails ("No Adapter To Version 17 for Pad"), so its models are
  opset 18, which TensorRT 8.5/8.6 (JetPack 5) cannot parse.
* Both are numerically exact on timm's ``Conv2dSame`` (TF "same" padding,
  tf_efficientnet_lite*). Traced as it is, the legacy exporter writes that padding as
  runtime shape arithmetic (Shape/Gather/Ceil/Sub/Max + Pad, 629 nodes for lite0), and
  onnxslim folded it wrongly wherever a stride-2 layer meets an odd size (lite2 at its
  native 260 px: a 32 x 32 map where eager has 33 x 33), so every lite1/lite2 export at
  native size kept the slow unslimmed graph. The trace therefore runs under
  :func:`edgeclf._onnx_match.static_same_padding`: H and W are fixed, so the pads are
  constants, and onnxslim folds them into the Conv ``pads`` (94 nodes for lite0, the same
  as the dynamo graph). Only the batch axis is dynamic.

onnxslim runs after export (node counts before/after are recorded); if it fails, or
its model disagrees with the eager model on a random batch, the unslimmed model is
kept and the reason recorded. Quantising an unslimmed legacy graph needs care (the
padding arithmetic must not be quantised); :mod:`edgeclf.export.quantize` handles it.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgeclf._io import atomic_write_bytes
from edgeclf._onnx_match import static_same_padding
from edgeclf.errors import ConfigError
from edgeclf.export.formats import MIN_ONNX_OPSET, Produced, one_line
from edgeclf.preprocess import PreprocessSpec

__all__ = [
    "INPUT_NAME",
    "META_KEY",
    "OUTPUT_NAME",
    "export",
    "export_onnx_fp32",
    "onnx_opset",
    "read_onnx_metadata",
    "save_onnx",
    "set_onnx_metadata",
]

log = logging.getLogger("edgeclf.export")

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
META_KEY = "edgeclf.meta"
DEFAULT_OPSET = MIN_ONNX_OPSET
# Largest |ONNX Runtime - eager| logit difference on a random batch accepted from the
# slimmed graph before falling back to the unslimmed one. fp32 kernels differ only in
# summation order (~1e-6 on logits of O(1)); 1e-3 flags a wrong graph, not rounding.
SLIM_SANITY_ATOL = 1e-3
# Batch size of the random sanity input: > 1 so the dynamic batch axis is exercised.
_SANITY_BATCH = 2


def set_onnx_metadata(model_proto: Any, metadata_json: str, key: str = META_KEY) -> None:
    """Set ``metadata_props[key] = metadata_json`` (replacing any earlier value)."""
    keep = [p for p in model_proto.metadata_props if p.key != key]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(keep)
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = key, metadata_json


def read_onnx_metadata(path: Path, key: str = META_KEY) -> str | None:
    """The ``metadata_props`` value under ``key`` of the ONNX file at ``path`` (None if absent)."""
    import onnx

    model_proto = onnx.load(str(path), load_external_data=False)
    for prop in model_proto.metadata_props:
        if prop.key == key:
            return str(prop.value)
    return None


def onnx_opset(model_proto: Any) -> int:
    """The default-domain opset of a model."""
    return int(next((o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx")), 0))


def save_onnx(model_proto: Any, path: Path) -> None:
    """Serialise a (< 2 GB) model to ``path`` atomically."""
    atomic_write_bytes(path, model_proto.SerializeToString())


def _example_input(model: nn.Module, spec: PreprocessSpec, batch: int = 1) -> torch.Tensor:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    return torch.zeros(batch, 3, spec.crop_size, spec.crop_size, dtype=torch.float32, device=device)


def _export_torchscript_based(model: nn.Module, x: torch.Tensor, opset: int) -> Any:
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings(), static_same_padding():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def _export_dynamo(model: nn.Module, x: torch.Tensor, opset: int) -> Any:
    # The dynamo exporter implements opset >= 18 only; asking for 17 just logs a failed
    # down-conversion, so ask for what it can do and record the opset it wrote.
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (x,),
            dynamo=True,
            opset_version=max(opset, 18),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    model_proto = program.model_proto
    # Name the batch dimension the same way the legacy exporter does.
    for value in (*model_proto.graph.input, *model_proto.graph.output):
        dim = value.type.tensor_type.shape.dim
        if dim and not dim[0].HasField("dim_value"):
            dim[0].dim_param = "batch"
    return model_proto


def _ort_logits(model_proto: Any, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(model_proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], dtype=np.float32)


def export_onnx_fp32(
    model: nn.Module,
    spec: PreprocessSpec,
    path: Path,
    metadata_json: str,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    slim: bool = True,
) -> dict[str, Any]:
    """Export the eval-mode ``model`` to an fp32 ONNX file at ``path``; return the details.

    Details: ``exporter``, ``opset``, ``nodes_before``/``nodes_after`` (slimming),
    ``slim`` (``"onnxslim <version>"`` or ``"skipped: <reason>"``),
    ``random_input_max_abs_diff`` (ONNX Runtime vs eager on a random batch), and
    ``exporter_fallback_reason`` when the legacy exporter failed and dynamo was used.
    """
    import onnx

    if opset < MIN_ONNX_OPSET:
        raise ConfigError(f"ONNX opset must be >= {MIN_ONNX_OPSET}, got {opset}")
    details: dict[str, Any] = {}
    x = _example_input(model, spec)
    with torch.no_grad():
        if exporter in ("auto", "torchscript"):
            try:
                model_proto = _export_torchscript_based(model, x, opset)
                details["exporter"] = "torchscript"
            except Exception as e:
                if exporter == "torchscript":
                    raise
                log.warning("legacy ONNX exporter failed (%s); trying the dynamo exporter", one_line(e))
                details["exporter_fallback_reason"] = one_line(e)
                model_proto = _export_dynamo(model, x, opset)
                details["exporter"] = "dynamo"
        else:
            model_proto = _export_dynamo(model, x, opset)
            details["exporter"] = "dynamo"
        rng = np.random.default_rng(0)
        probe = rng.standard_normal((_SANITY_BATCH, 3, spec.crop_size, spec.crop_size)).astype(np.float32)
        eager = model(torch.from_numpy(probe).to(x.device)).float().cpu().numpy()

    onnx.checker.check_model(model_proto)
    details["opset"] = onnx_opset(model_proto)
    details["nodes_before"] = len(model_proto.graph.node)
    final = model_proto
    if slim:
        try:
            import onnxslim

            slimmed = onnxslim.slim(model_proto)
            if slimmed is None:
                raise RuntimeError("onnxslim returned no model")
            onnx.checker.check_model(slimmed)
            diff = float(np.max(np.abs(_ort_logits(slimmed, probe) - eager)))
            if not diff <= SLIM_SANITY_ATOL:
                raise RuntimeError(f"slimmed model differs from eager by {diff:.3g} on a random batch")
            final = slimmed
            details["slim"] = f"onnxslim {getattr(onnxslim, '__version__', '?')}"
        except Exception as e:  # noqa: BLE001 — the unslimmed model is still correct
            log.warning("onnxslim failed, keeping the unslimmed model: %s", one_line(e))
            details["slim"] = f"skipped: {one_line(e)}"
    else:
        details["slim"] = "skipped: disabled by option slim=false"
    details["nodes_after"] = len(final.graph.node)
    details["random_input_max_abs_diff"] = float(np.max(np.abs(_ort_logits(final, probe) - eager)))
    set_onnx_metadata(final, metadata_json)
    onnx.checker.check_model(final)
    save_onnx(final, path)
    return details


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
    """Format adapter for :func:`edgeclf.export.exporters.export_artifact` (``onnx`` fp32; int8 is
    :func:`edgeclf.export.quantize.export_ort_int8`)."""
    name = "model.onnx"
    details = export_onnx_fp32(
        model,
        spec,
        work_dir / name,
        metadata_json,
        opset=int(options.get("opset", DEFAULT_OPSET)),
        exporter=str(options.get("exporter", "auto")),
        slim=bool(options.get("slim", True)),
    )
    return Produced(file=name, details=details)


def fp32_onnx_for(
    model: nn.Module,
    spec: PreprocessSpec,
    work_dir: Path,
    metadata_json: str,
    options: dict[str, Any],
    fp32_onnx: Path | None,
) -> tuple[Path, dict[str, Any]]:
    """The fp32 ONNX to build from: ``fp32_onnx`` if given, else one exported into ``work_dir``."""
    if fp32_onnx is not None:
        return Path(fp32_onnx), {"source_onnx": Path(fp32_onnx).name}
    path = work_dir / "source.fp32.onnx"
    details = export_onnx_fp32(
        model,
        spec,
        path,
        metadata_json,
        opset=int(options.get("opset", DEFAULT_OPSET)),
        exporter=str(options.get("exporter", "auto")),
        slim=bool(options.get("slim", True)),
    )
    return path, {"source_onnx": "exported on the fly", "source_onnx_details": details}
