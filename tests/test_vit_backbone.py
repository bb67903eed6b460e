"""The hybrid ViT backbone (EfficientViT-B0): registry entry, weights offline, groups, and the
whole export chain at 64 px with random weights: ONNX fp32, OpenVINO fp32, int8 with its
gates, and the C runtime against the Python path on the same artifacts."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from edgeclf.errors import ConfigError
from edgeclf.models import (
    backbone_groups,
    classifier_parameters,
    create_model,
    freeze_batchnorm,
    get_backbone,
    list_backbones,
    load_pretrained,
    measure_cost,
    package_weights_installed,
)
from edgeclf.models import weights as weights_module
from edgeclf.select import load_model_costs, model_counts, select_backbone
from edgeclf.select.counts import COST_RESOLUTIONS
from tests.conftest import blob_image

VIT = "efficientvit_b0"
HUB_ID = "timm/efficientvit_b0.r224_in1k"
SIZE = 64  # input side of the export chain: 2 x 2 tokens in the last stage, seconds per export
# fp32 runtimes differ from eager PyTorch only in summation order and fusion (measured
# 5e-7 ONNX Runtime, 1.2e-6 OpenVINO, at logit scale ~1.4); a graph error is far larger.
FP32_ATOL = 1e-4
# int8 logits stay near fp32: measured max |diff| 0.07 (ONNX Runtime) and 0.15 (OpenVINO)
# at logit scale ~1.4; a broken quantised graph (e.g. the linear attention's 1/sum computed
# in int8) is off by the logit scale.
INT8_MAX_ABS = 0.35
# int8 top-1 agreement with eager on the images below: measured 1.0 for both runtimes; the
# tiny run's classifier has close logits, so a few flips would be rounding, not a fault.
INT8_TOP1_MIN = 0.8
# The C runtime runs the same artifact with the same preprocessing (C++ vs Python):
# measured 1.5e-8 on the probabilities; int8 kernels may differ by batch size.
C_FP32_PROB_ATOL = 1e-4
C_INT8_PROB_ATOL = 2e-2


def _fail_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """timm's hub download fails as it does offline, whatever the network here."""
    real = timm.create_model

    def fake(model_name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return real(model_name, pretrained=False, **kwargs)

    monkeypatch.setattr(weights_module.timm, "create_model", fake)


def _hub_like_file(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A stand-in for the hub's model.safetensors: timm's names, 1000-class head, seeded values
    (BatchNorm statistics set away from the identity, as in trained weights)."""
    torch.manual_seed(seed)
    model = timm.create_model(VIT, pretrained=False)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return state


# ---------------------------------------------------------------------- registry, cost


def test_registry_entry_is_timms_pretrained_config() -> None:
    info = get_backbone(VIT)
    assert VIT in [b.name for b in list_backbones()] and not info.default
    cfg = timm.models.get_pretrained_cfg(VIT)
    assert cfg.hf_hub_id == HUB_ID
    assert info.input_size == cfg.input_size[-1] == 224
    assert (info.interpolation, info.crop_pct) == (cfg.interpolation, cfg.crop_pct) == ("bicubic", 0.95)
    assert info.mean == tuple(cfg.mean) == timm.data.IMAGENET_DEFAULT_MEAN
    assert info.std == tuple(cfg.std) == timm.data.IMAGENET_DEFAULT_STD
    assert info.weight_package is None and not info.bn_folded and info.pretrained_cfg_overlay == {}
    assert "efficientvit_b0.r224_in1k" in info.weights_origin and "--weights" in info.weights_origin


def test_cost_figures_and_cached_counts() -> None:
    info = get_backbone(VIT)
    cost = measure_cost(timm.create_model(VIT, pretrained=False), info.input_size)
    assert cost.params_m == pytest.approx(info.params_m, rel=1e-6)
    assert cost.gflops == pytest.approx(info.gflops, rel=1e-5)
    cache = load_model_costs()
    sizes = sorted({*COST_RESOLUTIONS, info.input_size})
    counts = [cache[(VIT, s)] for s in sizes]  # shipped: selection never builds the model
    assert [c.flops for c in counts] == sorted(c.flops for c in counts)
    native = cache[(VIT, info.input_size)]
    assert native.gflops == pytest.approx(info.gflops, rel=1e-5) and native.params / 1e6 == pytest.approx(info.params_m)
    assert native.flops_depthwise > 0 and native.nodes_dense > 0
    assert model_counts(VIT, 160, compute_missing=False) == cache[(VIT, 160)]


def test_selection_lists_it_without_weights_here() -> None:
    info = get_backbone(VIT)
    assert not package_weights_installed(info)  # what build's "weights here" column reads
    result = select_backbone("x86-64-avx512", latency_ms=1e6, candidates=[VIT])
    rows = [c for c in result.candidates if c.backbone == VIT]
    assert sorted({c.resolution for c in rows}, reverse=True) == [224, 192, 160, 128]
    assert {c.precision for c in rows} >= {"fp32", "int8"}
    for c in rows:
        assert c.latency_ms_p95 > 0 and c.memory_mb > 0 and c.file_mb > 0 and c.fits
    native = next(c for c in rows if c.resolution == 224 and c.precision == "fp32")
    assert native.accuracy == pytest.approx(info.imagenet_top1) and native.gflops == pytest.approx(info.gflops, rel=1e-3)
    # Fewer FLOPs than the default backbone at the same size, so a lower estimate on the same runtime.
    lite0 = select_backbone(
        "x86-64-avx512",
        latency_ms=1e6,
        candidates=["tf_efficientnet_lite0"],
        trade_resolution=False,
        precisions=["fp32"],
        runtimes=[native.runtime],
    )
    assert native.latency_ms_p95 < lite0.choice.latency_ms_p95


# ---------------------------------------------------------------------- weights


def test_offline_pretrained_weights_fail_with_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_hub(monkeypatch)
    with pytest.raises(ConfigError) as err:
        create_model(VIT, 3)
    message = str(err.value)
    assert message.startswith(f"no pretrained weights for backbone {VIT!r} here")
    assert "no weights package ships them" in message and f"Hugging Face hub ({HUB_ID})" in message
    assert "--weights PATH" in message and f"https://huggingface.co/{HUB_ID}" in message
    assert "pip install" not in message  # there is no package to install
    with pytest.raises(ConfigError, match="has no weights package"):
        create_model(VIT, 3, source="package")


def test_weights_file_offline_loads_by_name(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    state = _hub_like_file(path, seed=1)
    model, report = create_model(VIT, 3, weights=path)
    assert (report.source, report.location, report.matched_by) == ("file", str(path), "name")
    assert report.skipped_keys == () and report.tensors_loaded == report.tensors_total and not report.bn_folded
    assert report.expects == get_backbone(VIT).pretrained_input
    got = model.state_dict()
    for key in (
        "stem.in_conv.conv.weight",
        "stages.3.blocks.1.context_module.main.qkv.conv.weight",
        "head.classifier.0.weight",
    ):
        assert torch.equal(got[key], state[key]), key
    assert model.get_classifier().out_features == 3  # the 1000-class head was replaced after loading
    # The same tensors as a .pth state_dict, into a 3-class model: the 1000-class head is skipped.
    pth = tmp_path / "model.pth"
    torch.save(state, pth)
    three = timm.create_model(VIT, pretrained=False, num_classes=3)
    again = load_pretrained(three, get_backbone(VIT), weights=pth)
    assert set(again.skipped_keys) == {"head.classifier.4.weight", "head.classifier.4.bias"}
    assert again.tensors_loaded == again.tensors_total - 2 and again.matched_by == "name"


# ---------------------------------------------------------------------- groups, trunk + top


def test_backbone_groups_and_trunk_top_split() -> None:
    torch.manual_seed(0)
    model, _ = create_model(VIT, 4, source="none")
    groups = backbone_groups(model)
    head = classifier_parameters(model)
    assert head == ["head.classifier.4.weight", "head.classifier.4.bias"]
    flat = [name for group in groups for name in group]
    assert len(flat) == len(set(flat)) and not set(flat) & set(head)
    assert set(flat) | set(head) == {name for name, _ in model.named_parameters()}
    # stem, the four stages in order, then the head's hidden layers (closest to the classifier)
    assert len(groups) == 6 and groups[0][0].startswith("stem.")
    assert [int(g[0].split(".")[1]) for g in groups[1:5]] == [0, 1, 2, 3]
    assert all(name.startswith("head.") for name in groups[-1]) and "head.in_conv.conv.weight" in groups[-1]
    # The trainer's partial unfreezing: "last 2 groups" = the last stage, the head's hidden layers, the classifier.
    from edgeclf.train.loop import set_trainable

    trainable = set(set_trainable(model, 2))
    assert trainable == set(head) | set(groups[-1]) | set(groups[-2])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    set_trainable(model, "all")

    # Frozen trunk (forward_features) + trainable top (forward_head) reproduce the model.
    model.eval()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trunk = model.forward_features(x)
        pre = model.forward_head(trunk, pre_logits=True)
        assert trunk.shape == (2, 128, SIZE // 32, SIZE // 32)
        assert pre.shape == (2, model.get_classifier().in_features) == (2, 1280)
        torch.testing.assert_close(model.get_classifier()(pre), model(x), rtol=0, atol=1e-6)

    # Freezing BatchNorm keeps its statistics and removes its affine from the groups.
    frozen = freeze_batchnorm(model)
    frozen.train()
    before = frozen.stem.in_conv.norm.running_mean.clone()
    frozen(torch.randn(2, 3, SIZE, SIZE) * 3 + 1)
    assert torch.equal(frozen.stem.in_conv.norm.running_mean, before)
    assert all(".norm." not in name or name.startswith("head.classifier") for g in backbone_groups(frozen) for name in g)


# ---------------------------------------------------------------------- export chain


@pytest.fixture(scope="module")
def vit_bundle(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny run of the ViT (random weights given as a file, 64 px, 1 epoch) exported to a bundle."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    from edgeclf.export.pipeline import export_run
    from edgeclf.train import load_config, train
    from tests.conftest import make_tiny_manifest

    base = tmp_path_factory.mktemp("vit")
    manifest = make_tiny_manifest(base)
    weights = base / "efficientvit_b0.random.safetensors"
    _hub_like_file(weights)
    cfg = load_config(
        None,
        {
            "data.manifest": manifest,
            "data.workers": 0,
            "data.cache_dir": str(base / "cache"),
            "model.backbone": VIT,
            "model.weights": weights,
            "model.image_size": SIZE,
            "probe.epochs": 5,
            "finetune.epochs": 1,
            "batch_size": 8,
            "amp": "off",
        },
    )
    train(cfg, base / "run")
    from edgeclf.runtime.gate import c_runtime_rows

    result = export_run(
        base / "run",
        base / "bundle",
        formats=["onnx", "openvino"],
        precisions=["fp32", "int8"],
        calibration_images=8,
        allow_failed=True,
        robustness=False,
        runtime_gate=c_runtime_rows,
        int8_evidence="point",  # 6 validation images: this proves the int8 chain, the interval rule is tested elsewhere
    )
    return {"base": base, "run": base / "run", "bundle": base / "bundle", "rows": result.rows}


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    sizes = (SIZE, SIZE + 8, SIZE + 24, 2 * SIZE)  # resize + crop exercised
    return [np.asarray(blob_image(100 + seed, size=sizes[seed % 4])) for seed in range(16)]


def _artifact(bundle: Path, runtime: str, precision: str) -> Any:
    from edgeclf.export.bundle import read_bundle

    found = [a for a in read_bundle(bundle).artifacts if a.runtime == runtime and a.precision == precision]
    return found[0] if found else None


def _runner(bundle: Path, art: Any) -> Any:
    from edgeclf.export.bundle import read_bundle
    from edgeclf.export.runners import load_runner

    m = read_bundle(bundle)
    doc = {
        "format": art.format,
        "precision": art.precision,
        "file": art.file,
        "extra_files": [e.file for e in art.extra_files],
        "runtime": art.runtime,
        "status": "ok",
        "error": None,
        "export_seconds": 0.0,
        "details": art.details,
    }
    return load_runner(bundle, doc, m.spec(), m.labels, threads=1)


@pytest.fixture(scope="module")
def eager(vit_bundle: dict[str, Any], images: list[np.ndarray]) -> np.ndarray:
    """Logits of the run's eager model (the reference every artifact is held to)."""
    from edgeclf.evaluate.predictor import TorchPredictor, load_run

    run = load_run(vit_bundle["run"])
    assert run.spec.crop_size == SIZE
    return TorchPredictor(run.model, run.spec, run.classes)(images)


def test_bundle_parity_table(vit_bundle: dict[str, Any]) -> None:
    import json

    import onnx

    from edgeclf.export.bundle import read_bundle
    from edgeclf.export.parity import INT8_MAX_MACRO_F1_DROP, INT8_MIN_AGREEMENT

    bundle = vit_bundle["bundle"]
    m = read_bundle(bundle)
    assert m.source_run["backbone"] == VIT and m.preprocess["crop_size"] == SIZE
    assert m.preprocess["interpolation"] == "bicubic"  # the backbone's, from timm's config
    parity = json.loads((bundle / "parity.json").read_text())
    by = {(r["format"], r["precision"]): r for r in parity["table"]}
    for key in (("onnx", "fp32"), ("openvino", "fp32")):
        assert by[key]["status"] == "ok" and by[key]["agreement"] == 1.0 and by[key]["delta_macro_f1"] == 0.0, by[key]
    for fmt in ("onnx", "openvino"):  # int8 went through its gates: shipped only if it passed them
        row = by[(fmt, "int8")]
        assert row["status"] in ("ok", "parity_failed") and row["agreement"] is not None, row
        assert (row["status"] == "ok") == (_artifact(bundle, "onnxruntime" if fmt == "onnx" else "openvino", "int8") is not None)
        if row["status"] == "ok":
            assert row["agreement"] >= INT8_MIN_AGREEMENT and row["delta_macro_f1"] >= -INT8_MAX_MACRO_F1_DROP
    # Plain ONNX: default-domain operators only (no custom ops), opset 17, metadata embedded.
    proto = onnx.load(str(bundle / "model.onnx"))
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    assert max(o.version for o in proto.opset_import) == 17
    ops = {n.op_type for n in proto.graph.node}
    assert {"MatMul", "Conv", "HardSwish"} <= ops and not ops & {"Shape", "Softmax"}
    assert "edgeclf.meta" in {p.key for p in proto.metadata_props}


def test_fp32_artifacts_match_eager(vit_bundle: dict[str, Any], images: list[np.ndarray], eager: np.ndarray) -> None:
    bundle = vit_bundle["bundle"]
    ref = eager
    assert np.abs(ref).max() > 1e-2  # logits large enough for the tolerance to mean something
    for runtime in ("onnxruntime", "openvino"):
        art = _artifact(bundle, runtime, "fp32")
        assert art is not None, runtime
        got = _runner(bundle, art)(images)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= FP32_ATOL, runtime
        assert (got.argmax(1) == ref.argmax(1)).all()


def test_int8_artifacts_stay_near_eager(vit_bundle: dict[str, Any], images: list[np.ndarray], eager: np.ndarray) -> None:
    from edgeclf.export.bundle import read_bundle

    bundle = vit_bundle["bundle"]
    ref = eager
    shipped = [a for a in read_bundle(bundle).artifacts if a.precision == "int8"]
    if not shipped:
        pytest.fail(f"no int8 artifact passed its gates: {[r for r in vit_bundle['rows'] if r['precision'] == 'int8']}")
    for art in shipped:
        got = _runner(bundle, art)(images)
        assert np.abs(got - ref).max() <= INT8_MAX_ABS, art.runtime
        assert np.mean(got.argmax(1) == ref.argmax(1)) >= INT8_TOP1_MIN, art.runtime


@pytest.mark.cpp
@pytest.mark.parametrize(
    ("backend", "precision"),
    [("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime", "int8"), ("openvino", "int8")],
)
def test_c_runtime_matches_python(vit_bundle: dict[str, Any], images: list[np.ndarray], backend: str, precision: str) -> None:
    if importlib.util.find_spec("edgeclf._runtime") is None:
        pytest.skip("the C runtime (edgeclf._runtime) is not built here")
    from edgeclf import runtime
    from edgeclf.evaluate.metrics import softmax
    from edgeclf.export.bundle import read_bundle

    bundle = vit_bundle["bundle"]
    art = _artifact(bundle, backend, precision)
    if art is None:
        pytest.skip(f"{backend}/{precision} did not pass its gates in this tiny export")
    m = read_bundle(bundle)
    want = softmax(_runner(bundle, art)(images), m.temperature)
    with runtime.Classifier(bundle, backend=backend, precision=precision, threads=1) as clf:
        assert (clf.backend, clf.precision, clf.artifact) == (backend, precision, art.file)
        assert clf.input_shape == (3, SIZE, SIZE)
        got = clf.probabilities(images)
    assert got.shape == want.shape
    assert (got.argmax(1) == want.argmax(1)).all()
    tol = C_FP32_PROB_ATOL if precision == "fp32" else C_INT8_PROB_ATOL
    assert np.abs(got - want).max() < tol
    # The export's own gate of the C runtime (validation split, against eager) passed too.
    from edgeclf.export.parity import FP32_MIN_AGREEMENT, INT8_MIN_AGREEMENT

    row = next(r for r in vit_bundle["rows"] if r["format"] == f"c-runtime ({backend})" and r["precision"] == precision)
    gate = FP32_MIN_AGREEMENT if precision == "fp32" else INT8_MIN_AGREEMENT
    assert row["status"] == "ok" and row["agreement"] >= gate, row
