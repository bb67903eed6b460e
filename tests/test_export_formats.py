"""Per-format export and runners: ONNX, ORT INT8, TorchScript, OpenVINO, TensorRT (or its command)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeclf.errors import ConfigError
from edgeclf.evaluate.predictor import Predictor, TorchPredictor
from edgeclf.export.exporters import export_artifact
from edgeclf.export.formats import FORMATS, Artifact, validate_request
from edgeclf.export.runners import load_runner, ort_providers
from edgeclf.export.tensorrt_export import (
    TRT_NOT_INSTALLED,
    check_engine_compatible,
    engine_file_name,
    trt_commands,
)
from edgeclf.preprocess import PreprocessSpec
from tests.conftest import blob_image

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# fp32 runtimes differ from eager PyTorch only in kernel summation order and fusion
# (measured <= 2e-6 on these logits); 1e-4 leaves room for other CPUs' SIMD paths
# while any graph error (wrong padding, a dropped op) is orders of magnitude larger.
FP32_ATOL = 1e-4
# OpenVINO fp16 IR: weights rounded to fp16 (relative 2^-11 each), accumulated over ~50
# layers; measured 1.2e-3 on these logits. 2e-2 is loose enough for any CPU, tight
# enough to catch an IR computed in bf16 or with a wrong layer.
FP16_ATOL = 2e-2
# INT8 "mostly agrees": a random-init classifier has near-tied logits on synthetic
# images, so int8 rounding flips some close calls (measured 94-100% agreement).
INT8_TOP1_MIN = 0.6
# INT8 logits stay near fp32 (measured max |diff| 0.05-0.12 at logit scale ~1);
# a corrupted graph (e.g. quantised padding arithmetic) is off by ~1.
INT8_MAX_ABS = 0.5

CLASSES = ["ant", "bee", "cat"]
SPEC = PreprocessSpec(resize_size=72, crop_size=64, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
META = json.dumps(
    {"schema_version": "1.0.0", "labels": CLASSES, "note": 'ünïcode & <xml> "quotes"'}, ensure_ascii=False, sort_keys=True
)

needs_openvino = pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
    reason="openvino / nncf not installed",
)
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def model() -> nn.Module:
    from edgeclf.models import create_model

    torch.manual_seed(0)
    m, _ = create_model("tf_efficientnet_lite0", len(CLASSES), source="none")
    return m.eval()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    # Smooth images of a few sizes/aspects so resize + crop are exercised.
    sizes = (64, 72, 80, 96)
    return [np.asarray(blob_image(seed, size=sizes[seed % 4])) for seed in range(16)]


@pytest.fixture(scope="module")
def reference(model: nn.Module, images: list[np.ndarray]) -> np.ndarray:
    return TorchPredictor(model, SPEC, CLASSES)(images)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, model: nn.Module, images: list[np.ndarray]) -> tuple[Path, Artifact]:
    out = tmp_path_factory.mktemp("bundle")
    art = export_artifact("onnx", "fp32", model, SPEC, out, images, META)
    assert art.status == "ok", art.error
    return out, art


def _no_staging_left(out: Path) -> None:
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def _producers(model_proto) -> dict[str, object]:
    return {o: n for n in model_proto.graph.node for o in n.output}


# --- formats table and request validation ----------------------------------------------


def test_formats_table() -> None:
    assert set(FORMATS) == {"onnx", "torchscript", "openvino", "tensorrt"}
    assert FORMATS["onnx"].precisions == ("fp32", "int8")
    assert FORMATS["torchscript"].precisions == ("fp32",)
    assert FORMATS["openvino"].precisions == ("fp32", "fp16", "int8")
    assert "int8" in FORMATS["tensorrt"].precisions and "fp16" in FORMATS["tensorrt"].precisions
    assert "calibration_method" in FORMATS["onnx"].options_for("int8")
    assert "calibration_method" not in FORMATS["onnx"].options_for("fp32")
    assert FORMATS["onnx"].available() == (True, "")
    if not HAS_TRT:
        assert FORMATS["tensorrt"].available() == (False, TRT_NOT_INSTALLED)


@pytest.mark.parametrize(
    ("fmt", "precision", "options", "calib", "match"),
    [
        ("torchscript", "int8", {}, True, "torchscript cannot be exported at precision 'int8'"),
        ("tflite", "fp32", {}, False, "unknown export format"),
        ("onnx", "fp16", {}, False, "supports fp32, int8"),
        ("onnx", "fp32", {"calibration_method": "minmax"}, False, "not supported for onnx fp32"),
        ("onnx", "int8", {"calibration_method": "kl"}, True, "must be one of minmax, entropy, percentile"),
        ("onnx", "int8", {"keep_float": "conv"}, True, "list of node names"),
        ("openvino", "int8", {"bias_correction": "slow"}, True, "must be one of full, fast"),
        ("openvino", "fp32", {"bias_correction": "full"}, False, "not supported for openvino fp32"),
        ("onnx", "fp32", {"opset": 13}, False, "opset must be an integer 17"),
        ("onnx", "int8", {}, False, "needs calibration images"),
        ("tensorrt", "fp16", {"opt_batch": 64, "max_batch": 8}, False, "must not exceed max_batch"),
    ],
)
def test_unsupported_requests_raise_before_work(
    tmp_path: Path,
    model: nn.Module,
    images: list[np.ndarray],
    fmt: str,
    precision: str,
    options: dict,
    calib: bool,
    match: str,
) -> None:
    with pytest.raises(ConfigError, match=match):
        export_artifact(fmt, precision, model, SPEC, tmp_path / "out", images if calib else None, META, options)
    assert not (tmp_path / "out").exists()


def test_metadata_must_be_a_json_object() -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        validate_request("onnx", "fp32", {}, None, "{not json")
    with pytest.raises(ConfigError, match="JSON object"):
        validate_request("onnx", "fp32", {}, None, "[1, 2]")


# --- ONNX fp32 -------------------------------------------------------------------------


def test_onnx_fp32_export(bundle: tuple[Path, Artifact], model: nn.Module) -> None:
    out, art = bundle
    assert (art.format, art.precision, art.runtime, art.file) == ("onnx", "fp32", "onnxruntime", "model.onnx")
    assert art.export_seconds > 0 and art.error is None and art.extra_files == []
    d = art.details
    assert d["exporter"] == "torchscript" and d["opset"] >= 17
    # Conv2dSame's runtime padding arithmetic is folded away by onnxslim.
    assert d["nodes_after"] < d["nodes_before"] and d["slim"].startswith("onnxslim")
    assert d["random_input_max_abs_diff"] <= FP32_ATOL

    m = onnx.load(str(out / art.file))
    onnx.checker.check_model(m)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert {p.key: p.value for p in m.metadata_props}["edgeclf.meta"] == META
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["logits"]
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]
    assert not any(n.op_type in ("Pad", "Shape", "Ceil") for n in m.graph.node)

    session = ort.InferenceSession(str(out / art.file), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(1)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64, generator=g)
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == (batch, len(CLASSES))
        assert np.abs(got - ref).max() <= FP32_ATOL
    _no_staging_left(out)


@pytest.mark.parametrize("size", [64, 100])  # 100 px: a stride-2 layer meets odd sizes (25 -> 13)
def test_onnx_fp32_same_padding_is_constant_and_slimmed(tmp_path: Path, model: nn.Module, size: int) -> None:
    """TF-"same" pads are traced as constants of the fixed input size: no shape arithmetic in the
    graph, the slimmed model kept, at even and odd feature-map sizes (onnxslim folded the runtime
    arithmetic wrongly at odd sizes, and every lite1/lite2 export at native size stayed unslimmed)."""
    spec = PreprocessSpec(resize_size=size, crop_size=size, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    art = export_artifact("onnx", "fp32", model, spec, tmp_path, None, META)
    assert art.status == "ok" and art.details["slim"].startswith("onnxslim"), art.details
    graph = onnx.load(str(tmp_path / art.file)).graph
    assert not {"Shape", "Ceil"} & {n.op_type for n in graph.node}
    assert art.details["random_input_max_abs_diff"] <= FP32_ATOL


class _TinySame(nn.Module):
    """timm's Conv2dSame (TF "same" padding, computed at run time) + a linear head."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import Conv2dSame

        self.conv = Conv2dSame(3, 8, 3, stride=2)
        self.fc = nn.Linear(8, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_onnx_exporters_handle_conv2dsame(tmp_path: Path, exporter: str, capfd: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    tiny = _TinySame().eval()
    art = export_artifact("onnx", "fp32", tiny, SPEC, tmp_path, None, META, {"exporter": exporter})
    assert capfd.readouterr().out == ""  # the dynamo exporter's progress lines went to stderr
    assert art.status == "ok", art.error
    assert art.details["exporter"] == exporter
    # the dynamo exporter implements opset >= 18 only; the legacy one writes the requested 17
    assert art.details["opset"] == (17 if exporter == "torchscript" else 18)
    m = onnx.load(str(tmp_path / art.file))
    assert not any(n.op_type in ("Pad", "Ceil") for n in m.graph.node)  # pads folded into the Conv
    session = ort.InferenceSession(str(tmp_path / art.file), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = tiny(x).numpy()
    assert np.abs(session.run(None, {"input": x.numpy()})[0] - ref).max() <= FP32_ATOL


def test_onnx_runner_is_a_predictor(bundle: tuple[Path, Artifact], images: list[np.ndarray], reference: np.ndarray) -> None:
    out, art = bundle
    runner = load_runner(out, art.to_dict(), SPEC, CLASSES, threads=1)
    assert isinstance(runner, Predictor) and runner.providers == ["CPUExecutionProvider"]
    logits = runner(images)
    assert logits.dtype == np.float32 and logits.shape == (len(images), len(CLASSES))
    assert np.abs(logits - reference).max() <= FP32_ATOL
    x = np.zeros((2, 3, 64, 64), np.float32)
    assert runner.run_tensor(x).shape == (2, len(CLASSES))
    assert runner([]).shape == (0, len(CLASSES))


def test_artifact_dict_round_trip(bundle: tuple[Path, Artifact]) -> None:
    _, art = bundle
    d = art.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert Artifact.from_dict(d) == art


# --- TorchScript -----------------------------------------------------------------------


def test_torchscript_export(tmp_path: Path, model: nn.Module, images: list[np.ndarray], reference: np.ndarray) -> None:
    from edgeclf.export.torchscript_export import read_torchscript_metadata

    art = export_artifact("torchscript", "fp32", model, SPEC, tmp_path, None, META)
    assert art.status == "ok" and art.file == "model.ts" and art.runtime == "torch"
    assert read_torchscript_metadata(tmp_path / art.file) == META
    runner = load_runner(tmp_path, art, SPEC, CLASSES, threads=1)
    assert np.abs(runner(images) - reference).max() <= FP32_ATOL
    assert runner.run_tensor(np.zeros((3, 3, 64, 64), np.float32)).shape == (3, len(CLASSES))
    assert model.training is False  # mode restored (it was eval)


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)

    def forward(self, x: torch.Tensor) -> float:  # a Python float cannot be traced or exported
        return float(self.conv(x).sum().item())


@pytest.mark.parametrize(("fmt", "options"), [("torchscript", {}), ("onnx", {"exporter": "torchscript"})])
def test_export_failure_is_recorded(tmp_path: Path, fmt: str, options: dict, caplog: pytest.LogCaptureFixture) -> None:
    bad = _Untraceable().train()
    with caplog.at_level(logging.WARNING, logger="edgeclf.export"):
        art = export_artifact(fmt, "fp32", bad, SPEC, tmp_path, None, META, options)
    assert art.status == "export_failed"
    assert art.error and "\n" not in art.error and len(art.error) <= 400 and ":" in art.error
    assert "export failed" in caplog.text
    assert bad.training  # the caller's mode is restored
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no staging folder


# --- ONNX Runtime INT8 -----------------------------------------------------------------


def _activation_scales(m) -> dict[str, float]:
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    return {
        n.input[0]: float(inits[n.input[1]])
        for n in m.graph.node
        if n.op_type == "QuantizeLinear" and inits[n.input[1]].size == 1
    }


def test_ort_int8_each_calibration_method(
    tmp_path: Path,
    bundle: tuple[Path, Artifact],
    model: nn.Module,
    images: list[np.ndarray],
    reference: np.ndarray,
    capfd: pytest.CaptureFixture[str],
) -> None:
    out, fp32 = bundle
    scales: dict[str, dict[str, float]] = {}
    for method in ("minmax", "entropy", "percentile"):
        folder = tmp_path / method
        art = export_artifact(
            "onnx", "int8", model, SPEC, folder, images, META, {"calibration_method": method}, fp32_onnx=out / fp32.file
        )
        assert capfd.readouterr().out == ""  # calibrators' prints go to stderr: --json keeps stdout clean
        assert art.status == "ok", art.error
        d = art.details
        assert art.file == "model.int8.onnx" and d["calibration_method"] == method and d["calibration_images"] == 16
        assert d["quant_format"] == "QDQ" and d["per_channel"] is True

        m = onnx.load(str(folder / art.file))
        assert {p.key: p.value for p in m.metadata_props}["edgeclf.meta"] == META
        ops = [n.op_type for n in m.graph.node]
        assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
        inits = {i.name: i for i in m.graph.initializer}
        producers = _producers(m)
        conv = next(n for n in m.graph.node if n.op_type == "Conv" and n.input[1] in producers)
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        scale = onnx.numpy_helper.to_array(inits[dq.input[1]])
        assert scale.ndim == 1 and scale.size > 1  # per-channel weight scales
        zero_point = onnx.numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 else None
        assert zero_point is None or zero_point.dtype == np.int8
        act_q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
        assert onnx.numpy_helper.to_array(inits[act_q.input[2]]).dtype == np.uint8  # QUInt8 activations
        scales[method] = _activation_scales(m)

        logits = load_runner(folder, art, SPEC, CLASSES, threads=1)(images)
        assert np.mean(logits.argmax(1) == reference.argmax(1)) >= INT8_TOP1_MIN
        if method != "entropy":  # entropy clips tails this random-init net relies on (measured 0.64)
            assert np.abs(logits - reference).max() <= INT8_MAX_ABS
    # Each method really calibrates differently (ONNX Runtime's default Entropy settings equal MinMax).
    assert scales["entropy"] != scales["minmax"] and scales["percentile"] != scales["minmax"]
    # Clipping methods never widen a range beyond MinMax's.
    for method in ("entropy", "percentile"):
        assert all(scales[method][k] <= scales["minmax"][k] * (1 + 1e-6) for k in scales["minmax"])


def test_sensitive_nodes(bundle: tuple[Path, Artifact]) -> None:
    from edgeclf.export.quantize import sensitive_onnx_nodes

    out, fp32 = bundle
    path = out / fp32.file
    m = onnx.load(str(path))
    by_name = {n.name: n for n in m.graph.node}
    first = sensitive_onnx_nodes(path, which=("first_conv",))
    assert first == [next(n.name for n in m.graph.node if n.op_type == "Conv")]
    head = sensitive_onnx_nodes(path, which=("classifier",))
    assert len(head) == 1 and by_name[head[0]].op_type == "Gemm"
    dws = sensitive_onnx_nodes(path, which=("depthwise",))
    assert len(dws) == 16  # one per MBConv block in efficientnet-lite0
    for name in dws:
        group = next(onnx.helper.get_attribute_value(a) for a in by_name[name].attribute if a.name == "group")
        assert group > 1
    assert set(sensitive_onnx_nodes(path)) == {*first, *head, *dws}
    with pytest.raises(ConfigError, match="unknown sensitive node kind"):
        sensitive_onnx_nodes(path, which=("everything",))


def test_ort_int8_keep_float(tmp_path: Path, bundle: tuple[Path, Artifact], model: nn.Module, images: list[np.ndarray]) -> None:
    from edgeclf.export.quantize import sensitive_onnx_nodes

    out, fp32 = bundle
    keep = sensitive_onnx_nodes(out / fp32.file, which=("first_conv", "classifier"))
    art = export_artifact("onnx", "int8", model, SPEC, tmp_path, images, META, {"keep_float": keep}, fp32_onnx=out / fp32.file)
    assert art.status == "ok", art.error and art.details["kept_float"] == keep
    m = onnx.load(str(tmp_path / art.file))
    inits = {i.name: i for i in m.graph.initializer}
    producers = _producers(m)
    for node in (n for n in m.graph.node if n.name in keep):
        weight = node.input[1]
        assert weight in inits and inits[weight].data_type == onnx.TensorProto.FLOAT  # stays float
        assert weight not in producers
    # the other convolutions are still quantised
    assert any(producers.get(n.input[1]) is not None for n in m.graph.node if n.op_type == "Conv" and n.name not in keep)


def test_ort_int8_unknown_keep_float_fails_cleanly(
    tmp_path: Path, bundle: tuple[Path, Artifact], model: nn.Module, images: list[np.ndarray]
) -> None:
    out, fp32 = bundle
    art = export_artifact(
        "onnx", "int8", model, SPEC, tmp_path, images, META, {"keep_float": ["/no/such/Conv"]}, fp32_onnx=out / fp32.file
    )
    assert art.status == "export_failed" and "/no/such/Conv" in (art.error or "")
    assert list(tmp_path.iterdir()) == []


def test_int8_never_quantises_shape_arithmetic(
    tmp_path: Path, model: nn.Module, images: list[np.ndarray], reference: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A legacy graph that computes Conv2dSame pads at run time (traced without constant pads, as
    older exports were): those nodes stay float."""
    import contextlib

    import edgeclf.export.onnx_export as onnx_export
    from edgeclf.export.quantize import shape_subgraph_nodes

    monkeypatch.setattr(onnx_export, "static_same_padding", contextlib.nullcontext)
    fp32 = export_artifact("onnx", "fp32", model, SPEC, tmp_path, None, META, {"slim": False})
    assert fp32.status == "ok" and fp32.details["nodes_after"] == fp32.details["nodes_before"]
    src = onnx.load(str(tmp_path / fp32.file))
    assert any(n.op_type == "Ceil" for n in src.graph.node)  # the runtime padding arithmetic is there
    art = export_artifact("onnx", "int8", model, SPEC, tmp_path, images, META, fp32_onnx=tmp_path / fp32.file)
    assert art.status == "ok", art.error and art.details["excluded_shape_nodes"] > 0
    q = onnx.load(str(tmp_path / art.file))
    producers = _producers(q)
    shape_nodes = set(shape_subgraph_nodes(src))
    assert shape_nodes & {n.name for n in q.graph.node}
    for node in (n for n in q.graph.node if n.name in shape_nodes):
        assert all(getattr(producers.get(i), "op_type", None) != "DequantizeLinear" for i in node.input)
    logits = load_runner(tmp_path, art, SPEC, CLASSES, threads=1)(images)
    assert np.abs(logits - reference).max() <= INT8_MAX_ABS


def test_per_layer_error_sweep(bundle: tuple[Path, Artifact], images: list[np.ndarray]) -> None:
    from edgeclf.export.quantize import per_layer_error_sweep, sensitive_onnx_nodes

    out, fp32 = bundle
    path = out / fp32.file
    candidates = sensitive_onnx_nodes(path, which=("first_conv", "classifier"))
    ranked = per_layer_error_sweep(path, images[:8], SPEC, top=2, candidates=candidates)
    assert len(ranked) <= 2 and set(ranked) <= set(candidates) and len(set(ranked)) == len(ranked)


# --- ONNX Runtime execution providers ---------------------------------------------------


def test_ort_provider_resolution() -> None:
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_providers(None, ["CPUExecutionProvider"]) == [("CPUExecutionProvider", {})]
    assert [n for n, _ in ort_providers(["tensorrt"], gpu)] == gpu  # CUDA behind TensorRT, CPU last
    assert [n for n, _ in ort_providers(["cuda"], gpu)] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with_opts = ort_providers([("TensorrtExecutionProvider", {"trt_fp16_enable": True}), "cpu"], gpu)
    assert with_opts[0] == ("TensorrtExecutionProvider", {"trt_fp16_enable": True})
    assert [n for n, _ in with_opts][-1] == "CPUExecutionProvider"
    with pytest.raises(ConfigError, match="TensorrtExecutionProvider is not available"):
        ort_providers(["tensorrt"], ["CPUExecutionProvider"])


def test_load_runner_refuses_failed_or_missing_artifacts(tmp_path: Path, bundle: tuple[Path, Artifact]) -> None:
    _, art = bundle
    failed = Artifact("onnx", "fp32", "model.onnx", [], "onnxruntime", "export_failed", "boom", 0.1, {})
    with pytest.raises(ConfigError, match="was not exported"):
        load_runner(tmp_path, failed, SPEC, CLASSES)
    with pytest.raises(ConfigError, match="missing"):
        load_runner(tmp_path, art, SPEC, CLASSES)


# --- OpenVINO ------------------------------------------------------------------------


@needs_openvino
def test_openvino_fp32_fp16(
    tmp_path: Path, bundle: tuple[Path, Artifact], model: nn.Module, images: list[np.ndarray], reference: np.ndarray
) -> None:
    from edgeclf.export.openvino_export import read_openvino_metadata

    out, fp32 = bundle
    bounds = {"fp32": FP32_ATOL, "fp16": FP16_ATOL}
    for precision, bound in bounds.items():
        art = export_artifact("openvino", precision, model, SPEC, tmp_path, None, META, fp32_onnx=out / fp32.file)
        assert art.status == "ok", art.error
        assert art.file == f"model.{precision}.xml" and art.extra_files == [f"model.{precision}.bin"]
        assert (tmp_path / art.extra_files[0]).stat().st_size > 0
        assert read_openvino_metadata(tmp_path / art.file) == META
        runner = load_runner(tmp_path, art, SPEC, CLASSES, threads=1)
        assert runner.inference_precision == "f32"  # not the bf16 default of AVX512-BF16/AMX CPUs
        assert np.abs(runner(images) - reference).max() <= bound
        if precision == "fp32":  # 48 images = two chunks of 32 + 16: chunks must not share output buffers
            np.testing.assert_allclose(runner(images * 3), np.concatenate([reference] * 3), atol=bound, rtol=0)
        assert runner.run_tensor(np.zeros((3, 3, 64, 64), np.float32)).shape == (3, len(CLASSES))
    assert (tmp_path / "model.fp16.bin").stat().st_size < (tmp_path / "model.fp32.bin").stat().st_size
    _no_staging_left(tmp_path)


@needs_openvino
def test_openvino_int8(
    tmp_path: Path, bundle: tuple[Path, Artifact], model: nn.Module, images: list[np.ndarray], reference: np.ndarray
) -> None:
    import openvino as ov

    from edgeclf.export.openvino_export import read_openvino_metadata
    from edgeclf.export.quantize import sensitive_onnx_nodes

    out, fp32 = bundle
    keep = sensitive_onnx_nodes(out / fp32.file, which=("first_conv",))
    art = export_artifact(
        "openvino", "int8", model, SPEC, tmp_path, images, META, {"keep_float": keep}, fp32_onnx=out / fp32.file
    )
    assert art.status == "ok", art.error
    assert art.details["fake_quantize_nodes"] > 0 and art.details["ignored_ops"]
    assert art.details["bias_correction"] == "full"  # the default: NNCF's layer-by-layer BiasCorrection
    assert read_openvino_metadata(tmp_path / art.file) == META
    ir = ov.Core().read_model(str(tmp_path / art.file))
    assert any(op.get_type_name() == "FakeQuantize" for op in ir.get_ops())
    logits = load_runner(tmp_path, art, SPEC, CLASSES, threads=1)(images)
    assert np.mean(logits.argmax(1) == reference.argmax(1)) >= INT8_TOP1_MIN
    assert np.abs(logits - reference).max() <= INT8_MAX_ABS


# --- TensorRT ------------------------------------------------------------------------


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the engine is built instead")
def test_tensorrt_absent_gives_command_and_calibration(
    tmp_path: Path, bundle: tuple[Path, Artifact], model: nn.Module, images: list[np.ndarray]
) -> None:
    from edgeclf.export.quantize import calibration_tensor

    out, fp32 = bundle
    art = export_artifact("tensorrt", "int8", model, SPEC, tmp_path, images, META, fp32_onnx=out / fp32.file)
    assert art.status == "skipped" and art.error == TRT_NOT_INSTALLED
    cmd = art.details["trt_command"]
    assert cmd.startswith("trtexec --onnx=model.onnx --saveEngine=") and "--int8" in cmd and "--calib=" in cmd
    assert "--maxShapes=input:32x3x64x64" in cmd
    assert "--calibration model.calib.npy" in art.details["trt_calibration_command"]
    # the fp32 ONNX lives in another folder, so it was copied in for trtexec
    assert set(art.extra_files) == {"model.onnx", "model.calib.npy"}
    calib = np.load(tmp_path / "model.calib.npy")
    assert calib.dtype == np.float32 and calib.shape == (len(images), 3, 64, 64)
    np.testing.assert_array_equal(calib, calibration_tensor(images, SPEC))

    fp16 = export_artifact("tensorrt", "fp16", model, SPEC, out, None, META, fp32_onnx=out / fp32.file)
    assert fp16.status == "skipped" and fp16.extra_files == []  # ONNX already in the bundle
    assert "--fp16" in fp16.details["trt_command"] and "--int8" not in fp16.details["trt_command"]
    _no_staging_left(tmp_path)


def test_engine_naming_and_compatibility() -> None:
    assert engine_file_name("fp16", "10.3.0.30", "NVIDIA Orin") == "model.fp16.trt10.3-NVIDIA_Orin.engine"
    details = {"tensorrt": {"trt_version": "10.3.0.30", "device": "NVIDIA Orin"}, **trt_commands("model.onnx", "fp16", 64)}
    assert check_engine_compatible(details, trt_version="10.3.0.30", device="NVIDIA Orin") is None
    with pytest.raises(ConfigError, match=r"built with TensorRT 10\.3\.0\.30 but this machine has TensorRT 8\.6\.2"):
        check_engine_compatible(details, trt_version="8.6.2", device="NVIDIA Orin")
    with pytest.raises(ConfigError, match="built for NVIDIA Orin but this machine's GPU is NVIDIA H100"):
        check_engine_compatible(details, trt_version="10.3.0.30", device="NVIDIA H100")
    with pytest.raises(ConfigError, match="no build record"):
        check_engine_compatible({}, trt_version="10.3.0", device="x")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed")
def test_tensorrt_engine(
    tmp_path: Path, bundle: tuple[Path, Artifact], model: nn.Module, images: list[np.ndarray], reference: np.ndarray
) -> None:
    out, fp32 = bundle
    art = export_artifact("tensorrt", "fp16", model, SPEC, tmp_path, None, META, fp32_onnx=out / fp32.file)
    assert art.status == "ok", art.error
    assert art.file.startswith("model.fp16.trt") and art.file.endswith(".engine")
    check_engine_compatible(art.details)
    logits = load_runner(tmp_path, art, SPEC, CLASSES)(images)
    assert np.abs(logits - reference).max() <= FP16_ATOL
