"""Cost model and budgeted backbone selection (edgeclf.select): fast, no timing runs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeclf.bench.calibrate import WORKER
from edgeclf.errors import ConfigError, EdgeclfError
from edgeclf.models import list_backbones
from edgeclf.profiles import list_profiles, load_profile
from edgeclf.select import (
    TARGET_ERROR_PCT,
    Calibration,
    CalibrationPoint,
    CostModel,
    DeviceFigures,
    LatencyFactors,
    Measurement,
    MemoryFactors,
    NoCandidateFitsError,
    accuracy_penalty,
    count_model,
    estimate_file_mib,
    estimate_latency_ms,
    estimate_memory_mib,
    fit_calibration,
    fit_latency_factors,
    load_calibration,
    load_model_costs,
    match_host_profile,
    model_counts,
    select_backbone,
    validate_cost_model,
)
from edgeclf.select.calibration import VALIDATION_PATH
from edgeclf.select.costmodel import CALIBRATION_PATH, CLASS_CALIBRATIONS, FileFactors, HostInfo
from edgeclf.select.selection import INT8_PENALTY, TOP1_RESOLUTION

LITE0, LITE2, RESNET50, MNV3 = "tf_efficientnet_lite0", "tf_efficientnet_lite2", "resnet50", "tf_mobilenetv3_small_100"
# The cached counts must reproduce the registry's FLOPs and parameters (both counted on
# the same timm models; the registry's figures are rounded to 6 decimals).
COUNT_TOLERANCE = 1e-4


# ------------------------------------------------------------------------------ counts


class _Tiny(nn.Module):
    """conv-bn-relu, depthwise, pointwise, residual add, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU(inplace=True)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.c1(x)))
        z = self.pw(self.dw(y)) + y
        return self.fc(z.mean((2, 3)))


def test_count_model_classifies_nodes_and_replays_liveness() -> None:
    c = count_model(_Tiny(), 16)
    plane = 16 * 16
    # dense: c1 (2 x 8*256 outputs x 3*9 MACs) + pw (2 x 2048 x 8) + fc (2 x 4 x 8)
    assert c.flops_dense == 2 * 8 * plane * 27 + 2 * 8 * plane * 8 + 2 * 4 * 8
    assert c.flops_depthwise == 2 * 8 * plane * 9
    assert (c.nodes_dense, c.nodes_depthwise, c.nodes_other) == (3, 1, 2)  # bn, relu folded; add, mean
    assert c.act_elems_dense == (3 * plane + 8 * plane) + 2 * 8 * plane + (8 + 4)
    assert c.act_elems_other == 3 * 8 * plane + (8 * plane + 8)
    # Peak: at the add, y (kept for the skip), pw's output and the sum are alive.
    assert c.peak_activation_elems == 3 * 8 * plane
    assert c.params == sum(p.numel() for p in _Tiny().parameters())
    assert c.num_classes == 4


def test_cached_counts_reproduce_registry_cost_figures() -> None:
    cache = load_model_costs()
    for info in list_backbones():
        c = cache[(info.name, info.input_size)]
        assert c.gflops == pytest.approx(info.gflops, rel=COUNT_TOLERANCE), info.name
        assert c.params / 1e6 == pytest.approx(info.params_m, rel=COUNT_TOLERANCE), info.name
        smaller = cache[(info.name, 128)]
        assert smaller.flops < c.flops and smaller.peak_activation_elems < c.peak_activation_elems
        assert smaller.params == c.params and smaller.nodes == c.nodes
    assert cache[(RESNET50, 224)].flops_depthwise == 0
    assert cache[(LITE0, 224)].flops_depthwise > 0


def test_model_counts_on_demand_for_an_uncached_resolution() -> None:
    assert (MNV3, 100) not in load_model_costs()
    with pytest.raises(ConfigError, match="no cached cost counts"):
        model_counts(MNV3, 100, compute_missing=False)
    c = model_counts(MNV3, 100)
    assert c.resolution == 100 and c.backbone == MNV3
    smaller, larger = model_counts(MNV3, 96), model_counts(MNV3, 128)
    assert smaller.flops < c.flops < larger.flops
    assert smaller.peak_activation_elems < c.peak_activation_elems < larger.peak_activation_elems
    assert c.params == larger.params
    # Counted now, then kept: the second call returns the same object.
    assert model_counts(MNV3, 100) is c
    with pytest.raises(ConfigError, match="unknown backbone"):
        model_counts("resnet51", 224)


# -------------------------------------------------------------------------- cost model


def _device(**kw: float) -> DeviceFigures:
    base = {"peak": 500.0, "bw": 40.0, "clock": 2.0}
    base.update(kw)
    return DeviceFigures(
        name="test",
        target="cpu",
        peak_gops={"fp32": base["peak"], "fp16": base["peak"], "int8": 4 * base["peak"]},
        memory_bandwidth_gb_per_s=base["bw"],
        cpu_clock_ghz=base["clock"],
        threads=4,
    )


def _factors(precision: str = "fp32") -> LatencyFactors:
    return LatencyFactors(
        target="cpu",
        runtime="onnxruntime",
        backend="CPUExecutionProvider",
        precision=precision,
        compute_efficiency=0.5,
        depthwise_efficiency=0.1,
        memory_efficiency=2.0,
        call_overhead_ms=0.05,
        node_overhead_ms=0.01,
        overhead_clock_ghz=3.0,
        p95_factor=1.1,
        source="prior",
    )


def test_latency_is_monotonic_in_flops_bytes_and_nodes() -> None:
    base = model_counts(LITE0, 224)
    device, factors = _device(), _factors()
    t0, terms = estimate_latency_ms(base, device, factors)
    assert t0 == pytest.approx(sum(terms.values()))
    for field in (
        "flops_dense",
        "flops_depthwise",
        "params",
        "act_elems_dense",
        "act_elems_depthwise",
        "act_elems_other",
        "nodes_other",
    ):
        bigger = dataclasses.replace(base, **{field: getattr(base, field) * 2})
        assert estimate_latency_ms(bigger, device, factors)[0] > t0, field
    # Twice the dense FLOPs adds exactly the dense term again.
    doubled = dataclasses.replace(base, flops_dense=2 * base.flops_dense)
    assert estimate_latency_ms(doubled, device, factors)[0] - t0 == pytest.approx(terms["dense_ms"])
    # A faster device (peak, bandwidth, clock) is never slower.
    assert estimate_latency_ms(base, _device(peak=1000.0), factors)[0] < t0
    assert estimate_latency_ms(base, _device(bw=80.0), factors)[0] < t0
    assert estimate_latency_ms(base, _device(clock=4.0), factors)[0] < t0
    # Per-node overhead scales with the clock the overheads were measured at.
    assert terms["overhead_ms"] == pytest.approx(0.05 + base.nodes * 0.01 * 3.0 / 2.0)


def test_memory_and_file_estimates_grow_with_weights_and_activations() -> None:
    base = model_counts(LITE0, 224)
    mem = MemoryFactors(
        target="cpu",
        runtime="onnxruntime",
        backend="CPUExecutionProvider",
        base_mib=50,
        weight_copies=2,
        activation_factor=1.5,
        source="prior",
    )
    files = FileFactors(runtime="onnxruntime", precision="fp32", bytes_per_param=4.0, overhead_mib=0.1, source="prior")
    m0 = estimate_memory_mib(base, "fp32", mem)
    assert m0 == pytest.approx(50 + 2 * base.params * 4 / 2**20 + 1.5 * base.peak_activation_elems * 4 / 2**20)
    assert estimate_memory_mib(dataclasses.replace(base, params=2 * base.params), "fp32", mem) > m0
    assert estimate_memory_mib(dataclasses.replace(base, peak_activation_elems=2 * base.peak_activation_elems), "fp32", mem) > m0
    assert estimate_memory_mib(base, "int8", mem) < m0
    # On a CPU an fp16 model computes in fp32: same resident bytes as fp32.
    assert estimate_memory_mib(base, "fp16", mem) == pytest.approx(m0)
    assert estimate_file_mib(dataclasses.replace(base, params=2 * base.params), files) > estimate_file_mib(base, files)


def test_lower_precision_is_estimated_faster_than_fp32_on_every_builtin_profile() -> None:
    model = CostModel()
    counts = model_counts(RESNET50, 224)
    for name in list_profiles():
        profile = load_profile(name)
        device = DeviceFigures.from_profile(profile)
        for rt in profile.runtimes:
            if "fp32" not in rt.precisions:
                continue
            fp32 = model.estimate(counts, device, rt, "fp32")
            for precision in set(rt.precisions) & {"int8"}:
                assert model.estimate(counts, device, rt, precision).p95_ms < fp32.p95_ms, (name, rt.label)
            assert fp32.p95_ms >= fp32.p50_ms and fp32.memory_mib > fp32.file_mib > 0


def test_cost_model_without_factors_says_so() -> None:
    with pytest.raises(EdgeclfError, match="no latency factors"):
        CostModel(False).latency_factors("cpu", "tensorrt", "GPU", "fp32")


# -------------------------------------------------------------------------- calibration


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    cal = load_calibration()
    assert cal is not None, f"{CALIBRATION_PATH.name} must ship with the package"
    return cal


def test_stored_calibration_describes_its_host_and_fits(calibration: Calibration) -> None:
    host = calibration.host
    assert host.matched_profile in list_profiles()
    assert host.peak_fp32_gflops == pytest.approx(host.gemm_gflops / host.gemm_efficiency_assumed, rel=1e-3)
    assert host.peak_int8_gops == pytest.approx(host.peak_fp32_gflops * host.int8_ops_per_fp32_flop, rel=1e-3)
    keys = {(f.runtime, f.precision): f for f in calibration.latency}
    ort = keys[("onnxruntime", "fp32")]
    assert ort.source == "fitted" and ort.fit is not None and ort.fit.points >= 14
    assert 0 < ort.compute_efficiency <= 1.2 and 0 < ort.depthwise_efficiency <= ort.compute_efficiency
    measured = {p.backbone for p in calibration.points if (p.runtime, p.precision) == ("onnxruntime", "fp32")}
    # efficientvit_b0 (the hybrid ViT) has no latency points yet: its estimates come from the
    # factors fitted on the CNNs until it is measured on a quiet calibration host
    not_yet = {"efficientvit_b0"}
    assert measured == {b.name for b in list_backbones()} - not_yet and not (measured & not_yet)
    # Every backbone whose weights ship as a package was measured with them.
    assert any(p.weights == "pretrained" for p in calibration.points if p.backbone == LITE0)
    # The default cost model uses the fitted factors, not the priors.
    assert CostModel().latency_factors("cpu", "onnxruntime", "CPUExecutionProvider", "fp32") == ort


def test_calibrated_model_is_within_its_stated_error_on_the_stored_measurements(calibration: Calibration) -> None:
    assert calibration.stated_error_pct <= TARGET_ERROR_PCT
    report = validate_cost_model(calibration, leave_one_out=False)
    assert len(report.rows) == len(calibration.points)
    worst = max(report.rows, key=lambda r: abs(r.error_pct))
    assert abs(worst.error_pct) <= calibration.stated_error_pct, worst
    for factors in calibration.latency:
        if factors.fit is not None:
            assert factors.fit.max_abs_error_pct <= calibration.stated_error_pct
    # The shipped validation table is the same computation.
    shipped = json.loads(VALIDATION_PATH.read_text())
    assert shipped["max_abs_error_pct"] == pytest.approx(report.max_abs_error_pct, abs=0.15)
    assert len(shipped["rows"]) == len(report.rows)


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(CLASS_CALIBRATIONS.glob("*.json")) if not p.name.endswith(".validation.json")],
    ids=lambda p: p.stem,
)
def test_each_class_calibration_describes_a_host_of_its_class_and_fits(path: Path) -> None:
    cal = load_calibration(path)
    assert cal is not None and cal.host.matched_profile == path.stem and path.stem in list_profiles()
    fitted = {(f.runtime, f.precision): f for f in cal.latency if f.source == "fitted"}
    assert {("onnxruntime", "fp32"), ("onnxruntime", "int8")} <= set(fitted)
    report = validate_cost_model(cal, leave_one_out=False)
    assert max(abs(r.error_pct) for r in report.rows) <= cal.stated_error_pct
    shipped = json.loads(path.with_name(f"{path.stem}.validation.json").read_text())
    assert shipped["max_abs_error_pct"] == pytest.approx(report.max_abs_error_pct, abs=0.15)
    # what `--profile auto` on a host of that class estimates with
    assert CostModel().for_profile(load_profile(path.stem)).calibration.host.cpu_model == cal.host.cpu_model


def test_a_profile_of_a_class_with_its_own_calibration_is_estimated_with_it(
    calibration: Calibration, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeclf.select import costmodel

    other = next(n for n in ("x86-64-avx2", "x86-64-avx512") if n != calibration.host.matched_profile)
    slow = [f.model_copy(update={"compute_efficiency": f.compute_efficiency / 4}) for f in calibration.latency]
    own = calibration.model_copy(update={"host": calibration.host.model_copy(update={"matched_profile": other}), "latency": slow})
    monkeypatch.setattr(costmodel, "CLASS_CALIBRATIONS", tmp_path)
    counts = model_counts(LITE0, 224)
    key = ("onnxruntime", "CPUExecutionProvider")
    device = DeviceFigures.from_profile(load_profile(other))

    def p50(model: CostModel) -> float:
        return model.estimate(counts, device, key, "int8").p50_ms

    default = CostModel().for_profile(load_profile(other))
    assert default.calibration is calibration  # none of that class ships here: the default
    (tmp_path / f"{other}.json").write_text(own.model_dump_json())
    chosen = CostModel().for_profile(load_profile(other))
    assert chosen.calibration is not None and chosen.calibration.host.matched_profile == other
    assert p50(chosen) > 1.5 * p50(default)  # its factors, not the default's
    # the default calibration's own class keeps it; a calibration given explicitly is kept
    assert CostModel().for_profile(load_profile(calibration.host.matched_profile)).calibration is calibration
    assert CostModel(calibration).for_profile(load_profile(other)).calibration is calibration
    # a name that is not a plain profile name never becomes a path
    assert costmodel.calibration_for_profile("../calibration") is calibration
    assert costmodel.calibration_for_profile(None) is calibration  # a host of no built-in class: the default


def _host() -> HostInfo:
    return HostInfo(
        cpu_model="test cpu",
        arch="x86_64",
        isa_features=["avx2", "fma"],
        logical_cpus=2,
        threads=2,
        flops_per_cycle_fp32=32,
        int8_ops_per_fp32_flop=2.0,
        gemm_gflops=180.0,
        gemm_efficiency_assumed=0.9,
        clock_ghz=3.125,
        peak_fp32_gflops=200.0,
        peak_int8_gops=400.0,
        memory_bandwidth_gb_per_s=20.0,
        matched_profile="x86-64-avx2",
    )


def _synthetic_points(truth: LatencyFactors, host: HostInfo, noise: float = 0.0) -> list[CalibrationPoint]:
    rng = np.random.default_rng(0)
    points = []
    for info in list_backbones():
        for size in (info.input_size, 160, 128):
            p50, _ = estimate_latency_ms(model_counts(info.name, size), host.figures(), truth)
            p50 *= float(np.exp(rng.normal(0, noise))) if noise else 1.0
            points.append(
                CalibrationPoint(
                    backbone=info.name,
                    resolution=size,
                    runtime=truth.runtime,
                    backend=truth.backend,
                    precision=truth.precision,
                    weights="random",
                    threads=2,
                    runs=50,
                    p50_ms=p50,
                    p95_ms=1.1 * p50,
                    min_ms=0.9 * p50,
                    file_mib=model_counts(info.name, size).params * 4 / 2**20 + 0.05,
                    baseline_rss_mib=40.0,
                    peak_rss_mib=60 + model_counts(info.name, size).params * 8 / 2**20,
                )
            )
    return points


def test_fit_recovers_the_factors_that_generated_the_measurements() -> None:
    host = _host()
    truth = _factors().model_copy(update={"overhead_clock_ghz": host.clock_ghz, "memory_efficiency": 0.8})
    fitted = fit_latency_factors(_synthetic_points(truth, host), host)
    assert fitted.fit is not None and fitted.fit.max_abs_error_pct < 0.5
    for name in ("compute_efficiency", "depthwise_efficiency", "memory_efficiency", "node_overhead_ms"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=0.05), name
    assert fitted.p95_factor == pytest.approx(1.1, rel=1e-3)
    # With 10 % measurement noise the fit still predicts every point within 30 %.
    noisy = fit_latency_factors(_synthetic_points(truth, host, noise=0.1), host)
    assert noisy.fit is not None and noisy.fit.max_abs_error_pct < 30
    assert noisy.fit.loo_max_abs_error_pct is not None


def test_fit_calibration_derives_openvino_fp16_and_fits_memory_and_files() -> None:
    host = _host()
    ov = _factors().model_copy(update={"runtime": "openvino", "backend": "CPU", "overhead_clock_ghz": host.clock_ghz})
    ort = _factors().model_copy(update={"overhead_clock_ghz": host.clock_ghz})
    cal = fit_calibration(_synthetic_points(ov, host) + _synthetic_points(ort, host), host, versions={})
    keys = {(f.runtime, f.precision): f for f in cal.latency}
    assert keys[("openvino", "fp16")].source == "derived"
    assert keys[("openvino", "fp16")].compute_efficiency == keys[("openvino", "fp32")].compute_efficiency
    mem = {m.runtime: m for m in cal.memory}["onnxruntime"]
    assert mem.base_mib == pytest.approx(60, rel=0.02) and mem.weight_copies == pytest.approx(2, rel=0.02)
    files = {(f.runtime, f.precision): f for f in cal.files}[("onnxruntime", "fp32")]
    assert files.bytes_per_param == pytest.approx(4.0, rel=1e-3)
    assert cal.stated_error_pct == 5.0  # exact synthetic data: rounded up to the first 5 %


def test_host_profile_matching() -> None:
    assert match_host_profile("x86_64", {"avx2", "fma", "avx512f", "avx512_vnni"}) == "x86-64-avx512"
    assert match_host_profile("x86_64", {"avx2", "fma", "avx512f"}) == "x86-64-avx2"
    assert match_host_profile("x86_64", {"sse4_2"}) is None
    assert match_host_profile("aarch64", {"asimd"}) is None


def test_measure_worker_times_an_onnx_file(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        [w],
    )
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    done = subprocess.run(
        [
            sys.executable,
            str(WORKER),
            str(path),
            "--resolution",
            "16",
            "--threads",
            "1",
            "--seconds",
            "0.05",
            "--warmup",
            "1",
            "--min-runs",
            "10",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result["runs"] >= 10
    assert 0 < result["min_ms"] <= result["p50_ms"] <= result["p95_ms"]
    assert result["peak_rss_mib"] >= result["baseline_rss_mib"] > 0


# --------------------------------------------------------------------------- selection


def _row(result, backbone: str, resolution: int, precision: str = "fp32", runtime: str = "onnxruntime/CPU"):
    return next(
        c
        for c in result.candidates
        if (c.backbone, c.resolution, c.precision, c.runtime) == (backbone, resolution, precision, runtime)
    )


ORT_FP32 = {"runtimes": ["onnxruntime"], "precisions": ["fp32"]}


def test_accuracy_penalty_rule() -> None:
    assert accuracy_penalty(224, 224, "fp32") == 0.0
    assert accuracy_penalty(256, 224, "fp16") == 0.0  # no bonus above the reference
    assert accuracy_penalty(160, 224, "fp32") == pytest.approx(3.0, abs=0.05)  # MobileNetV2: 71.8 -> 68.8
    assert accuracy_penalty(128, 224, "fp32") == pytest.approx(6.5, abs=0.4)  # 71.8 -> 65.3
    assert accuracy_penalty(224, 224, "int8") == INT8_PENALTY
    assert accuracy_penalty(128, 224, "fp32") > accuracy_penalty(160, 224, "fp32") > accuracy_penalty(192, 224, "fp32")


def test_selection_picks_the_most_accurate_candidate_that_fits() -> None:
    free = select_backbone("x86-64-avx512", latency_ms=1e6, candidates=[LITE0, RESNET50], trade_resolution=False, **ORT_FP32)
    assert len(free.candidates) == 2 and all(c.fits for c in free.candidates)
    assert free.choice.backbone == RESNET50  # 81.21 at 288 px minus the 224 px penalty > 75.1
    lite0, resnet = _row(free, LITE0, 224), _row(free, RESNET50, 224)
    assert resnet.accuracy == pytest.approx(81.21 - accuracy_penalty(224, TOP1_RESOLUTION[RESNET50], "fp32"), abs=0.01)
    assert lite0.latency_ms_p95 < resnet.latency_ms_p95
    assert {c.latency_source for c in free.candidates} == {"estimate"}

    budget = (lite0.latency_ms_p95 + resnet.latency_ms_p95) / 2
    tight = select_backbone("x86-64-avx512", latency_ms=budget, candidates=[LITE0, RESNET50], trade_resolution=False, **ORT_FP32)
    assert tight.choice.backbone == LITE0
    assert tight.budgets.overridden == ["latency"]
    miss = _row(tight, RESNET50, 224)
    assert not miss.fits and miss.reason is not None and miss.reason.startswith("p95")
    assert LITE0 in tight.justification and "estimate" in tight.justification
    assert "\n" not in tight.justification


def test_selection_trades_resolution_when_native_does_not_fit() -> None:
    free = select_backbone("x86-64-avx512", latency_ms=1e6, candidates=[LITE2], **ORT_FP32)
    assert [c.resolution for c in free.candidates] == [260, 224, 192, 160, 128]
    assert free.choice.resolution == 260
    native, r224 = _row(free, LITE2, 260), _row(free, LITE2, 224)
    assert r224.accuracy == pytest.approx(77.6 - accuracy_penalty(224, 260, "fp32"), abs=0.01)
    assert r224.latency_ms_p95 < native.latency_ms_p95

    budget = (native.latency_ms_p95 + r224.latency_ms_p95) / 2
    traded = select_backbone("x86-64-avx512", latency_ms=budget, candidates=[LITE2], **ORT_FP32)
    assert (traded.choice.backbone, traded.choice.resolution) == (LITE2, 224)
    # Without trading resolution nothing fits.
    with pytest.raises(NoCandidateFitsError):
        select_backbone("x86-64-avx512", latency_ms=budget, candidates=[LITE2], trade_resolution=False, **ORT_FP32)


def test_selection_prices_the_images_own_size_above_native_but_never_chooses_it_by_accuracy() -> None:
    free = select_backbone("x86-64-avx512", latency_ms=1e6, candidates=[LITE0], data_size=300, **ORT_FP32)
    assert [c.resolution for c in free.candidates] == [288, 224, 192, 160, 128]
    big, native = _row(free, LITE0, 288), _row(free, LITE0, 224)
    assert big.fits and big.accuracy == native.accuracy  # no credit for up-scaling the network
    assert big.latency_ms_p95 > native.latency_ms_p95 and big.gflops > native.gflops
    assert free.choice.resolution == 224  # the same accuracy for less: training decides on 288
    # smaller than native (or not a size up to the next multiple of 32): nothing extra
    for side in (200, 250):
        small = select_backbone("x86-64-avx512", latency_ms=1e6, candidates=[LITE0], data_size=side, **ORT_FP32)
        assert max(c.resolution for c in small.candidates) == 224
    between = (big.latency_ms_p95 + native.latency_ms_p95) / 2
    tight = select_backbone("x86-64-avx512", latency_ms=between, candidates=[LITE0], data_size=300, **ORT_FP32)
    assert not _row(tight, LITE0, 288).fits and tight.choice.resolution == 224


def test_no_candidate_fits_names_the_closest_and_the_miss() -> None:
    free = select_backbone("jetson-orin", latency_ms=1e6, candidates=[LITE0, MNV3, RESNET50])
    fastest = min(free.candidates, key=lambda c: c.latency_ms_p95)
    budget = fastest.latency_ms_p95 / 1.25
    with pytest.raises(NoCandidateFitsError) as info:
        select_backbone("jetson-orin", latency_ms=budget, candidates=[LITE0, MNV3, RESNET50])
    closest = info.value.closest
    assert closest is not None
    assert (closest.backbone, closest.resolution, closest.runtime, closest.precision) == (
        fastest.backbone,
        fastest.resolution,
        fastest.runtime,
        fastest.precision,
    )
    assert closest.resolution == 128 and closest.overshoot == pytest.approx(1.25, abs=1e-3)
    message = str(info.value)
    assert closest.describe() in message and "(+25 %)" in message
    assert "jetson-orin" in message


def test_memory_and_file_budgets_are_checked() -> None:
    result = select_backbone(
        "x86-64-avx512",
        latency_ms=1e6,
        file_mb=40,
        candidates=[LITE0, RESNET50],
        trade_resolution=False,
        precisions=["fp32", "int8"],
        runtimes=["onnxruntime"],
    )
    resnet_fp32, resnet_int8 = _row(result, RESNET50, 224), _row(result, RESNET50, 224, "int8")
    assert not resnet_fp32.fits and "file" in (resnet_fp32.reason or "")
    assert resnet_int8.fits  # a quarter of the bytes
    assert (result.choice.backbone, result.choice.precision) == (RESNET50, "int8")
    with pytest.raises(NoCandidateFitsError) as info:
        select_backbone("x86-64-avx512", latency_ms=1e6, memory_mb=1.0, candidates=[LITE0], **ORT_FP32)
    assert info.value.closest is not None and (info.value.closest.reason or "").startswith("memory")
    assert info.value.closest.resolution == 128  # the smallest activations miss by the least


def test_measured_latency_overrides_the_estimate() -> None:
    kw = {"candidates": [LITE0, RESNET50], "trade_resolution": False, **ORT_FP32}
    free = select_backbone("x86-64-avx512", latency_ms=1e6, **kw)
    budget = _row(free, LITE0, 224).latency_ms_p95 * 1.01  # resnet50's estimate does not fit
    assert select_backbone("x86-64-avx512", latency_ms=budget, **kw).choice.backbone == LITE0
    on_target = Measurement(
        backbone=RESNET50, resolution=224, precision="fp32", runtime="onnxruntime", latency_ms_p95=budget / 2, memory_mb=300.0
    )
    result = select_backbone("x86-64-avx512", latency_ms=budget, measured=[on_target], **kw)
    assert result.choice.backbone == RESNET50
    row = _row(result, RESNET50, 224)
    assert (row.latency_source, row.memory_source, row.memory_mb) == ("measured", "measured", 300.0)
    assert row.latency_ms_p95 == pytest.approx(budget / 2, abs=1e-3)
    assert row.file_source == "estimate" and row.factors == "measured"
    assert _row(result, LITE0, 224).latency_source == "estimate"
    assert "measured p95" in result.justification
    # A measurement for another runtime changes nothing here.
    other = on_target.model_copy(update={"runtime": "openvino"})
    assert select_backbone("x86-64-avx512", latency_ms=budget, measured=[other], **kw).choice.backbone == LITE0


def test_user_accuracy_replaces_the_registry_figure() -> None:
    kw = {"latency_ms": 1e6, "candidates": [LITE0, RESNET50], **ORT_FP32}
    result = select_backbone("x86-64-avx512", accuracy={LITE0: 90.0, RESNET50: 85.0}, **kw)
    assert (result.choice.backbone, result.choice.resolution) == (LITE0, 224)
    row = _row(result, LITE0, 160)
    assert row.accuracy == pytest.approx(90.0 - accuracy_penalty(160, 224, "fp32"), abs=0.01)
    assert row.accuracy_source.startswith("user")
    exact = select_backbone("x86-64-avx512", accuracy={(LITE0, 160): 99.0, RESNET50: 85.0}, **kw)
    assert (exact.choice.backbone, exact.choice.resolution) == (LITE0, 160)
    assert _row(exact, LITE0, 160).accuracy == 99.0
    # Backbones without a user figure keep the registry's.
    assert _row(exact, LITE0, 224).accuracy == pytest.approx(75.1)
    with pytest.raises(ConfigError, match="percentage"):
        select_backbone("x86-64-avx512", accuracy={LITE0: 120.0}, **kw)


def test_selection_on_a_gpu_profile_uses_its_runtimes_and_says_where_factors_come_from() -> None:
    result = select_backbone("jetson-orin")
    profile = load_profile("jetson-orin")
    labels = {rt.label for rt in profile.runtimes}
    assert {c.runtime for c in result.candidates} == labels
    assert result.choice.fits and result.choice.accuracy == max(c.accuracy for c in result.fitting())
    assert {c.factors for c in result.candidates} == {"prior"}  # no GPU calibration yet
    assert result.choice.runtime in labels
    table = result.table()
    assert table.count("\n") == len(result.candidates) and result.choice.backbone in table


def test_selection_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="budget must be positive"):
        select_backbone("x86-64-avx512", latency_ms=0)
    with pytest.raises(ConfigError, match="unknown backbone"):
        select_backbone("x86-64-avx512", candidates=["resnet51"])
    with pytest.raises(ConfigError, match="unknown precision"):
        select_backbone("x86-64-avx512", precisions=["fp8"])
    with pytest.raises(ConfigError, match="none of the runtimes"):
        select_backbone("x86-64-avx512", runtimes=["tensorrt"])
    with pytest.raises(ConfigError, match="none of the precisions"):
        select_backbone("raspberry-pi-5", precisions=["fp16"])
