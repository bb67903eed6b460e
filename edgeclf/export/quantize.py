"""ONNX Runtime INT8: static QDQ quantisation, sensitive-node lookup, per-layer error sweep.

:func:`quantize_onnx_int8` turns an fp32 ONNX model into a QDQ model with
ONNX Runtime's static quantiser: ``QuantFormat.QDQ``, activations ``QUInt8``
(asymmetric), weights ``QInt8`` per channel, calibrated on the caller's images run
through the reference :func:`~edgeclf.preprocess.preprocess`. The calibration method
is ``minmax`` | ``entropy`` | ``percentile`` (``CalibrationMethod.MinMax/Entropy/Percentile``).
ONNX Runtime's Entropy calibrator with ``quantize_static``'s defaults (128 histogram
bins, 128 quantized bins) has exactly one threshold to try and returns MinMax's ranges,
and ``quantize_static`` cannot change those bins; ``entropy`` therefore calibrates with
:data:`ENTROPY_NUM_BINS` bins itself and hands the ranges to ``quantize_static``
through its calibration cache. ``keep_float`` names nodes left in fp32
(``nodes_to_exclude``). ``quant_pre_process`` (symbolic shape inference + basic graph
optimisation) runs first; when it fails, or renames a node to keep float, it is
skipped and the reason recorded.

Shape arithmetic is never quantised: a legacy-exported timm ``Conv2dSame`` (TF "same"
padding) graph that was not slimmed computes its pads at run time with float
Sub/Div/Ceil/Mul on tensor shapes, and ONNX Runtime's quantiser would put Q/DQ pairs
on those scalars (measured on tf_efficientnet_lite0 at 64 px: max logit error 1.43
instead of 0.12). Every node fed only by shapes, constants and initialisers is
therefore added to ``nodes_to_exclude`` (:func:`shape_subgraph_nodes`). The slimmed
graph that :mod:`edgeclf.export.onnx_export` writes has no such nodes.

:func:`per_layer_error_sweep` ranks candidate nodes by how much keeping each one
float reduces the int8 model's logit error (calibrating once and reusing the ranges
through ONNX Runtime's calibration cache), for an automatic "keep these float" retry.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgeclf.errors import ConfigError
from edgeclf.export.formats import Produced, one_line, stdout_to_stderr
from edgeclf.preprocess import PreprocessSpec, preprocess

__all__ = [
    "CALIBRATION_BATCH",
    "calibration_tensor",
    "export_ort_int8",
    "per_layer_error_sweep",
    "quantize_onnx_int8",
    "sensitive_onnx_nodes",
    "shape_subgraph_nodes",
]

log = logging.getLogger("edgeclf.export")

# Images per calibration inference: batching is faster than one at a time and does not
# change MinMax ranges; Entropy/Percentile histograms merge across batches.
CALIBRATION_BATCH = 8
# Images of the calibration set used to score each candidate in the error sweep:
# enough to rank layers, few enough that one candidate costs well under a second.
SWEEP_EVAL_IMAGES = 16
SENSITIVE_KINDS = ("first_conv", "classifier", "depthwise")
# Entropy (KL) calibration histogram. ONNX Runtime's own Entropy defaults (128 bins,
# 128 quantized bins) leave the KL search a single candidate -- the full range -- so
# they give exactly MinMax's ranges. 512 bins let the search clip to 25-100% of the
# observed |max|; 2048 (TensorRT's choice) would search down to 6% but costs ~6x the
# time in ONNX Runtime's Python search (30 s vs 5 s for efficientnet-lite0's 95 tensors).
ENTROPY_NUM_BINS = 512
ENTROPY_QUANTIZED_BINS = 128
# Images the histogram calibrations (percentile, entropy) read: ONNX Runtime builds every
# tensor's histogram in Python, so their time grows with the images (efficientnet-lite0 at
# 224 px, percentile: 83 s on 128 images, 15 s on 32), while the statistic settles early —
# 32 images give every tensor tens of thousands of values (millions for the early layers),
# far more than a 99.999th percentile or a 512-bin histogram needs. MinMax reads them all.
HISTOGRAM_CALIBRATION_IMAGES = 32


def histogram_images(n: int, method: str) -> int:
    """How many of ``n`` calibration images a method reads: all for minmax, at most 32 for the histogram ones."""
    return n if method == "minmax" else min(n, HISTOGRAM_CALIBRATION_IMAGES)


def histogram_subset(calibration: np.ndarray, method: str) -> np.ndarray:
    """The calibration images a method reads (:func:`histogram_images` of them, evenly spaced)."""
    n = len(calibration)
    k = histogram_images(n, method)
    return calibration if k == n else calibration[np.linspace(0, n - 1, k).round().astype(int)]


_SHAPE_SOURCES = ("Shape", "Size", "Constant", "ConstantOfShape")


def calibration_tensor(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Decoded H x W x 3 uint8 images -> N x 3 x crop x crop float32 by the reference preprocessing."""
    if not images:
        raise ConfigError("calibration needs at least one image")
    return np.ascontiguousarray(np.stack([preprocess(im, spec) for im in images]).astype(np.float32, copy=False))


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if name not in methods:
        raise ConfigError(f"calibration_method must be one of {', '.join(methods)}; got {name!r}")
    return methods[name]


def calibration_batch(n: int) -> int:
    """The largest batch size <= CALIBRATION_BATCH that divides ``n`` images evenly.

    ONNX Runtime's histogram calibrators (Entropy, Percentile) stack the per-batch outputs
    into one array and fail ("inhomogeneous shape") when the last batch is shorter; equal
    batches avoid that without repeating or dropping a calibration image.
    """
    if n < 1:
        raise ConfigError("calibration needs at least one image")
    return max(b for b in range(1, CALIBRATION_BATCH + 1) if n % b == 0)


def _reader(data: np.ndarray, input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    step = calibration_batch(len(data))

    class _BatchReader(CalibrationDataReader):
        """Feeds ``data`` in equal batches of :func:`calibration_batch` images."""

        def __init__(self) -> None:
            self.pos = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.pos >= len(data):
                return None
            batch = data[self.pos : self.pos + step]
            self.pos += step
            return {input_name: batch}

        def rewind(self) -> None:
            self.pos = 0

        def __len__(self) -> int:
            return len(data) // step

    return _BatchReader()


def shape_subgraph_nodes(model_proto: Any) -> list[str]:
    """Names of the nodes of a float model computing only on shapes/constants (no activation flows in).

    These are the runtime padding computations of an unslimmed ``Conv2dSame`` graph,
    reshape targets and the like; quantising them corrupts shapes and pads.
    """
    static = {init.name for init in model_proto.graph.initializer}
    names: list[str] = []
    for node in model_proto.graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type in _SHAPE_SOURCES or (inputs and all(i in static for i in inputs)):
            static.update(node.output)
            if node.op_type not in ("Shape", "Size", "Constant") and node.name:
                names.append(node.name)
    return names


def _unshare_shape_constants(model_proto: Any, shape_nodes: Sequence[str]) -> int:
    """Give shape-arithmetic nodes their own copy of constants they share with activation ops.

    ONNX exporters deduplicate equal constants, so e.g. the ``0`` of a ReLU6 ``Clip``
    and the ``0`` of a padding ``max(pad, 0)`` are one tensor. The quantiser then puts
    a Q/DQ pair on it for the activation op, and the excluded shape node would read the
    dequantised copy too. Returns the number of constants copied.
    """
    from onnx import helper

    shape_set = set(shape_nodes)
    consumers: dict[str, list[Any]] = {}
    for node in model_proto.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    inits = {init.name: init for init in model_proto.graph.initializer}
    constants = {n.output[0]: n for n in model_proto.graph.node if n.op_type == "Constant"}
    copies: dict[str, str] = {}
    for name, users in consumers.items():
        if name not in inits and name not in constants:
            continue
        if not any(u.name in shape_set for u in users) or all(u.name in shape_set for u in users):
            continue
        new = f"{name}__edgeclf_shape"
        copies[name] = new
        if name in inits:
            dup = model_proto.graph.initializer.add()
            dup.CopyFrom(inits[name])
            dup.name = new
        else:
            src = constants[name]
            dup_node = helper.make_node("Constant", [], [new], name=f"{src.name}__edgeclf_shape")
            dup_node.attribute.extend(src.attribute)
            model_proto.graph.node.insert(list(model_proto.graph.node).index(src) + 1, dup_node)
    for node in model_proto.graph.node:
        if node.name in shape_set:
            for k, i in enumerate(node.input):
                if i in copies:
                    node.input[k] = copies[i]
    return len(copies)


def _protect_shape_arithmetic(src: Path, work_dir: Path) -> tuple[Path, list[str], int]:
    """Find the shape-arithmetic nodes of ``src``; unshare their constants (new file if needed)."""
    import onnx

    model_proto = onnx.load(str(src), load_external_data=False)
    shape_nodes = shape_subgraph_nodes(model_proto)
    copied = _unshare_shape_constants(model_proto, shape_nodes) if shape_nodes else 0
    if not copied:
        return src, shape_nodes, 0
    out = work_dir / f"{src.stem}.unshared.onnx"
    onnx.save(model_proto, str(out))
    return out, shape_nodes, copied


def _conv_weight_shape(node: Any, inits: dict[str, Any]) -> tuple[int, ...] | None:
    if len(node.input) < 2 or node.input[1] not in inits:
        return None
    return tuple(int(d) for d in inits[node.input[1]].dims)


def sensitive_onnx_nodes(onnx_path: Path, which: Iterable[str] = SENSITIVE_KINDS) -> list[str]:
    """Nodes usually hurt most by int8, found by inspecting the graph.

    ``which`` picks among ``first_conv`` (the first Conv in graph order — it sees raw
    pixels), ``classifier`` (the last Gemm/MatMul — it writes the logits) and
    ``depthwise`` (Convs with ``group`` equal to their input channels; one 3x3 filter
    per channel leaves per-channel ranges wide). Returns names in graph order,
    without duplicates.
    """
    import onnx

    which = tuple(which)
    bad = sorted(set(which) - set(SENSITIVE_KINDS))
    if bad:
        raise ConfigError(f"unknown sensitive node kind(s) {', '.join(bad)}; choose from {', '.join(SENSITIVE_KINDS)}")
    model_proto = onnx.load(str(onnx_path), load_external_data=False)
    inits = {init.name: init for init in model_proto.graph.initializer}
    nodes = list(model_proto.graph.node)
    picked: set[str] = set()
    convs = [n for n in nodes if n.op_type == "Conv"]
    if "first_conv" in which and convs:
        picked.add(convs[0].name)
    if "classifier" in which:
        heads = [n for n in nodes if n.op_type in ("Gemm", "MatMul")]
        if heads:
            picked.add(heads[-1].name)
    if "depthwise" in which:
        for node in convs:
            group = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
            shape = _conv_weight_shape(node, inits)
            # weight is [C_out, C_in / group, kh, kw]: depthwise when each group has one input channel
            if group > 1 and shape is not None and len(shape) >= 2 and shape[1] == 1:
                picked.add(node.name)
    return [n.name for n in nodes if n.name in picked]


def _input_name(model_proto: Any) -> str:
    inits = {i.name for i in model_proto.graph.initializer}
    inputs = [i.name for i in model_proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ConfigError(f"expected a model with one input, found {inputs}")
    return inputs[0]


def _pre_process(src: Path, dst: Path, keep_float: Sequence[str]) -> tuple[Path, str]:
    """Run ``quant_pre_process``; fall back to ``src`` (with the reason) when it fails or renames kept nodes."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
        names = {n.name for n in onnx.load(str(dst), load_external_data=False).graph.node}
        lost = [k for k in keep_float if k not in names]
        if lost:
            return src, f"skipped: graph optimisation removed or renamed keep_float node(s) {', '.join(lost)}"
        return dst, "ok"
    except Exception as e:  # noqa: BLE001 — pre-processing is an optimisation; quantise without it
        log.warning("quant_pre_process failed, quantising without it: %s", one_line(e))
        return src, f"skipped: {one_line(e)}"


def _supports_calibration_cache() -> bool:
    import inspect

    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


def _entropy_ranges(src: Path, calib: np.ndarray, input_name: str, cache: Path) -> None:
    """Entropy (KL) calibration with :data:`ENTROPY_NUM_BINS` bins, saved as an ONNX Runtime range cache."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # what quantize_static calibrates by default
    with tempfile.TemporaryDirectory(prefix="edgeclf-entropy-") as tmp:
        calibrator = create_calibrator(
            Path(src),
            op_types,
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=CalibrationMethod.Entropy,
            extra_options={"num_bins": ENTROPY_NUM_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
        )
        calibrator.collect_data(_reader(calib, input_name))
        ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache)


def _quantize(
    src: Path,
    dst: Path,
    calib: np.ndarray,
    method: str,
    exclude: Sequence[str],
    reduce_range: bool,
    cache: Path | None = None,
) -> str:
    """Run ``quantize_static``; return a note on how the ranges were calibrated.

    With ``cache``, ranges are computed on the first call and reused after (ONNX
    Runtime skips calibration on a cache hit and ignores the reader). The histogram methods read
    :func:`histogram_subset` of ``calib``, and the note says so.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    input_name = _input_name(onnx.load(str(src), load_external_data=False))
    used = histogram_subset(calib, method)
    subset = f" (histograms of {len(used)} of the {len(calib)} images, evenly spaced)" if len(used) < len(calib) else ""
    calib = used
    kwargs: dict[str, Any] = {}
    note = f"onnxruntime {method}"
    if _supports_calibration_cache():
        if method == "entropy":
            cache = cache or dst.with_name(dst.stem + ".entropy-ranges.json")
            if not cache.exists():
                _entropy_ranges(src, calib, input_name, cache)
            note = f"entropy, {ENTROPY_NUM_BINS} histogram bins / {ENTROPY_QUANTIZED_BINS} quantized bins"
        if cache is not None:
            kwargs["calibration_cache_path"] = str(cache)
    elif method == "entropy":
        note = "onnxruntime entropy defaults (128/128 bins: the same ranges as minmax); upgrade onnxruntime"
    quantize_static(
        str(src),
        str(dst),
        calibration_data_reader=_reader(calib, input_name),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=reduce_range,
        nodes_to_exclude=list(exclude),
        calibrate_method=_method(method),
        **kwargs,
    )
    return note + subset


def quantize_onnx_int8(
    fp32_onnx: Path,
    out_path: Path,
    calibration: np.ndarray,
    work_dir: Path,
    method: str = "minmax",
    keep_float: Sequence[str] = (),
    reduce_range: bool = False,
    metadata_json: str | None = None,
) -> dict[str, Any]:
    """Quantise ``fp32_onnx`` to a QDQ int8 model at ``out_path``; return the details.

    Args:
        fp32_onnx: The fp32 model (one input, NCHW float32).
        out_path: Where the int8 model goes (written atomically).
        calibration: N x 3 x H x W float32, already preprocessed (:func:`calibration_tensor`).
        work_dir: Scratch folder for intermediate models.
        method: ``minmax`` | ``entropy`` | ``percentile``.
        keep_float: Node names left in fp32.
        reduce_range: 7-bit weights; ONNX Runtime advises it on x86 CPUs without VNNI
            (U8S8 products can saturate there); not needed with VNNI or on ARM.
        metadata_json: Copied into ``metadata_props["edgeclf.meta"]`` (else the fp32 model's value).

    Raises:
        ConfigError: a ``keep_float`` name is not a node of the model.
    """
    import onnx

    from edgeclf.export.onnx_export import onnx_opset, read_onnx_metadata, save_onnx, set_onnx_metadata

    fp32_proto = onnx.load(str(fp32_onnx), load_external_data=False)
    names = [n.name for n in fp32_proto.graph.node]
    unknown = [k for k in keep_float if k not in set(names)]
    if unknown:
        examples = ", ".join(n.name for n in fp32_proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul"))[:200]
        raise ConfigError(f"keep_float node(s) {', '.join(unknown)} are not in the model; node names look like: {examples}")
    src, pre_status = _pre_process(Path(fp32_onnx), work_dir / "int8.pre.onnx", keep_float)
    src, shape_nodes, unshared = _protect_shape_arithmetic(src, work_dir)
    exclude = list(dict.fromkeys([*keep_float, *shape_nodes]))
    tmp_out = work_dir / "int8.raw.onnx"
    calibration_note = _quantize(src, tmp_out, calibration, method, exclude, reduce_range)
    q = onnx.load(str(tmp_out))
    meta = metadata_json if metadata_json is not None else read_onnx_metadata(Path(fp32_onnx))
    if meta is not None:
        from edgeclf.export.onnx_export import META_KEY

        set_onnx_metadata(q, meta, META_KEY)
    onnx.checker.check_model(q)
    save_onnx(q, out_path)
    ops = [n.op_type for n in q.graph.node]
    return {
        "quant_format": "QDQ",
        "activation_type": "QUInt8",
        "weight_type": "QInt8",
        "per_channel": True,
        "reduce_range": reduce_range,
        "calibration_method": method,
        "calibration": calibration_note,
        "calibration_images": histogram_images(len(calibration), method),
        "kept_float": list(keep_float),
        "excluded_shape_nodes": len(shape_nodes),
        "unshared_shape_constants": unshared,
        "pre_process": pre_status,
        "opset": onnx_opset(q),
        "nodes_before": len(fp32_proto.graph.node),
        "nodes_after": len(ops),
        "quantize_linear_nodes": ops.count("QuantizeLinear"),
        "dequantize_linear_nodes": ops.count("DequantizeLinear"),
    }


def export_ort_int8(
    *,
    model: nn.Module,
    spec: PreprocessSpec,
    work_dir: Path,
    calibration_images: Sequence[np.ndarray],
    metadata_json: str,
    options: dict[str, Any],
    fp32_onnx: Path | None,
) -> Produced:
    """Format adapter for ``onnx`` ``int8`` (called by :func:`edgeclf.export.onnx_export.export`)."""
    from edgeclf.export.onnx_export import fp32_onnx_for

    src, src_details = fp32_onnx_for(model, spec, work_dir, metadata_json, options, fp32_onnx)
    name = "model.int8.onnx"
    details = quantize_onnx_int8(
        src,
        work_dir / name,
        calibration_tensor(calibration_images, spec),
        work_dir,
        method=str(options.get("calibration_method", "minmax")),
        keep_float=list(options.get("keep_float", ())),
        reduce_range=bool(options.get("reduce_range", False)),
        metadata_json=metadata_json,
    )
    return Produced(file=name, details={**details, **src_details})


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = _session(path)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 32]})[0] for i in range(0, len(x), 32)])


def per_layer_error_sweep(
    fp32_onnx: Path,
    calibration_images: Sequence[np.ndarray],
    spec: PreprocessSpec,
    top: int = 5,
    method: str = "minmax",
    candidates: Sequence[str] | None = None,
) -> list[str]:
    """Nodes whose int8 quantisation hurts most: keep them float to repair an int8 model.

    Calibrates once (ranges cached), quantises the whole model, then re-quantises
    with each candidate kept float in turn, scoring the candidate by how much the
    mean absolute logit error against fp32 drops (on up to :data:`SWEEP_EVAL_IMAGES`
    of the calibration images). Candidates default to :func:`sensitive_onnx_nodes`
    (first conv, classifier, depthwise convs). Returns at most ``top`` node names,
    best first, only those whose float copy helps at all; scores are logged.
    """
    calib = calibration_tensor(calibration_images, spec)
    probe = calib[:SWEEP_EVAL_IMAGES]
    ref = _logits(Path(fp32_onnx), probe)
    cands = list(candidates) if candidates is not None else sensitive_onnx_nodes(Path(fp32_onnx))
    with tempfile.TemporaryDirectory(prefix="edgeclf-sweep-") as tmp, stdout_to_stderr():
        work = Path(tmp)
        src, _ = _pre_process(Path(fp32_onnx), work / "pre.onnx", cands)
        src, shape_nodes, _ = _protect_shape_arithmetic(src, work)
        cache = work / "calibration.json"

        def error(keep: Sequence[str]) -> float:
            out = work / "q.onnx"
            _quantize(src, out, calib, method, [*keep, *shape_nodes], False, cache)
            return float(np.mean(np.abs(_logits(out, probe) - ref)))

        base = error([])
        scores = {name: base - error([name]) for name in cands}
    ranked = sorted((s, n) for n, s in scores.items() if s > 0)[::-1]
    log.info(
        "int8 error sweep (mean |logit error| %.4g when fully quantised): %s",
        base,
        ", ".join(f"{n} -{s:.3g}" for s, n in ranked[:top]) or "no single float layer helps",
    )
    return [n for _, n in ranked[:top]]
