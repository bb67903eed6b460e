"""OpenVINO IR export (fp32 / fp16 / int8) from the fp32 ONNX model.

Conversion starts from the fp32 ONNX file (``openvino.convert_model``) so the IR
sees exactly the graph ONNX Runtime runs; input ``input`` keeps its dynamic batch,
output ``logits``.

* fp32: ``openvino.save_model(model, xml, compress_to_fp16=False)``. Note that
  ``save_model`` *defaults* to ``compress_to_fp16=True``; it is always passed explicitly.
* fp16: the same with ``compress_to_fp16=True`` (weights stored as fp16, decompressed
  at load; compute precision is chosen by the runtime, see :mod:`edgeclf.export.runners`).
* int8: ``nncf.quantize`` with ``nncf.Dataset`` over the preprocessed calibration
  images, ``preset`` ``performance`` (default: symmetric activations and weights) or
  ``mixed`` (asymmetric activations), ``subset_size`` = number of images,
  ``options["keep_float"]`` (ONNX node names) as ``nncf.IgnoredScope(names=...)``
  over the OpenVINO operations they became (a biased Conv ``X`` becomes
  ``X/WithoutBiases`` + ``X``), and ``options["bias_correction"]``: ``full`` (default:
  ``fast_bias_correction=False``, NNCF's layer-by-layer BiasCorrection, which re-fits each
  quantized layer's bias on the calibration images so the shift int8 rounding adds to its
  mean output is undone downstream) or ``fast`` (NNCF's own default, one statistics pass).
  Full correction costs about 10 s more on a small CNN and is what lets a depthwise
  network (EfficientNet-lite) keep every layer in int8 and still pass its agreement gate:
  on a trashnet-150 lite2 model, 0.989 top-1 agreement with fp32 against 0.976 with ``fast``.
  Saved uncompressed.

The bundle manifest JSON is stored in the model's ``rt_info`` under the key
:data:`RT_INFO_KEY` = ``"edgeclf.meta"`` (the same key as ONNX ``metadata_props``):
``model.set_rt_info(metadata_json, "edgeclf.meta")``; read it back with
``core.read_model(xml).get_rt_info("edgeclf.meta").astype(str)`` (Python) or
``model->get_rt_info<std::string>("edgeclf.meta")`` (C++). An IR converted from an
ONNX file that carried the metadata also holds OpenVINO's own copy under
``rt_info["framework"]["edgeclf.meta"]``; readers should use the top-level key.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgeclf.errors import ConfigError
from edgeclf.export.formats import Produced
from edgeclf.preprocess import PreprocessSpec

__all__ = ["RT_INFO_KEY", "export", "export_openvino", "read_openvino_metadata"]

RT_INFO_KEY = "edgeclf.meta"


def read_openvino_metadata(xml: Path) -> str | None:
    """The ``rt_info["edgeclf.meta"]`` string of an IR (None if absent)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    if not model.has_rt_info(RT_INFO_KEY):
        return None
    return str(model.get_rt_info(RT_INFO_KEY).astype(str))


def _ignored_ops(model: Any, keep_float: Sequence[str]) -> list[str]:
    """OpenVINO operation names for ONNX node names.

    Conversion keeps ONNX node names as operation names but splits some nodes: a Conv
    with a bias becomes ``<name>/WithoutBiases`` (Convolution) + ``<name>`` (Add). Every
    operation named ``<name>`` or ``<name>/...`` is ignored.
    """
    names = [op.get_friendly_name() for op in model.get_ops()]
    picked: list[str] = []
    for key in keep_float:
        hits = [n for n in names if n == key or n.startswith(key + "/")]
        if not hits:
            raise ConfigError(f"keep_float node {key} is not an operation of the OpenVINO model")
        picked.extend(h for h in hits if h not in picked)
    return picked


def export_openvino(
    fp32_onnx: Path,
    xml_path: Path,
    precision: str,
    metadata_json: str,
    calibration: np.ndarray | None = None,
    preset: str = "performance",
    keep_float: Sequence[str] = (),
    bias_correction: str = "full",
) -> dict[str, Any]:
    """Convert ``fp32_onnx`` to an IR at ``xml_path`` (+ ``.bin``) at ``precision``; return the details.

    ``calibration`` (N x 3 x H x W float32, preprocessed) is required for int8.
    """
    import openvino as ov

    model = ov.convert_model(str(fp32_onnx))
    details: dict[str, Any] = {"openvino_version": ov.get_version(), "rt_info_key": RT_INFO_KEY}
    if precision == "int8":
        import nncf

        if calibration is None or len(calibration) == 0:
            raise ConfigError("OpenVINO int8 export needs calibration images")
        ignored = _ignored_ops(model, keep_float)
        presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
        kwargs: dict[str, Any] = {}
        if keep_float:
            kwargs["ignored_scope"] = nncf.IgnoredScope(names=ignored)
        dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
        model = nncf.quantize(
            model,
            dataset,
            preset=presets[preset],
            subset_size=len(calibration),
            fast_bias_correction=bias_correction == "fast",
            **kwargs,
        )
        ops = [op.get_type_name() for op in model.get_ops()]
        details.update(
            {
                "nncf_version": nncf.__version__,
                "preset": preset,
                "bias_correction": bias_correction,
                "calibration_images": int(len(calibration)),
                "kept_float": list(keep_float),
                "ignored_ops": ignored,
                "fake_quantize_nodes": ops.count("FakeQuantize"),
            }
        )
    model.set_rt_info(metadata_json, RT_INFO_KEY)
    compress = precision == "fp16"
    # save_model writes xml and bin itself; the caller's staging folder makes it atomic.
    ov.save_model(model, str(xml_path), compress_to_fp16=compress)
    details["compress_to_fp16"] = compress
    details["nodes"] = len(model.get_ops())
    return details


def export(
    *,
    model: nn.Module,
    spec: PreprocessSpec,
    work_dir: Path,
    out_dir: Path,
    precision: str,
    calibration_images: Sequence[np.ndarray] | None,
    metadata_json: str,
    options: dict[str, Any],
    fp32_onnx: Path | None,
) -> Produced:
    """Format adapter for :func:`edgeclf.export.exporters.export_artifact` (``openvino``)."""
    from edgeclf.export.onnx_export import fp32_onnx_for
    from edgeclf.export.quantize import calibration_tensor

    src, src_details = fp32_onnx_for(model, spec, work_dir, metadata_json, options, fp32_onnx)
    xml = f"model.{precision}.xml"
    calibration = calibration_tensor(calibration_images, spec) if precision == "int8" and calibration_images else None
    details = export_openvino(
        src,
        work_dir / xml,
        precision,
        metadata_json,
        calibration=calibration,
        preset=str(options.get("preset", "performance")),
        keep_float=list(options.get("keep_float", ())),
        bias_correction=str(options.get("bias_correction", "full")),
    )
    bin_name = os.path.splitext(xml)[0] + ".bin"
    return Produced(file=xml, extra_files=[bin_name], details={**details, **src_details})
