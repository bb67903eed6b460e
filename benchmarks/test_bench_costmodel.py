"""The cost model against measured latency on this host: ONNX Runtime CPU, batch 1, fp32.

Run: pytest benchmarks/test_bench_costmodel.py --benchmark-only -s
Each registered backbone is exported at its native resolution (ImageNet weights where
the weights package is installed, random weights otherwise: latency does not depend on
the values) and timed with the calibration's thread count; ``extra_info`` carries
p50/p90/p99 and the cost model's estimate and error twice: with the figures of the host the
factors were calibrated on (``calibration.json``), and with this host's figures probed now
(its GEMM rate and memory bandwidth, :func:`edgeclf.select.detect_host`); the second is the
estimate for a machine the model was not calibrated on. To re-measure every backbone and
refit the factors stored in the package, run ``edgeclf profiles calibrate-costmodel``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks.conftest import versions
from edgeclf.models import list_backbones

pytestmark = pytest.mark.heavy  # one export per backbone: minutes in all

WARMUP = 5
ROUNDS = 30


@pytest.fixture(scope="module")
def this_host():
    from edgeclf.select import detect_host

    return detect_host()


@pytest.mark.parametrize("backbone", [b.name for b in list_backbones()])
def test_costmodel_vs_measured(benchmark, request, tmp_path, this_host, backbone) -> None:
    import onnxruntime as ort
    import timm

    from edgeclf.bench.calibrate import weights_available as _weights_available
    from edgeclf.export.onnx_export import export_onnx_fp32
    from edgeclf.models import get_backbone, load_pretrained
    from edgeclf.preprocess import PreprocessSpec
    from edgeclf.select import CostModel, load_calibration, model_counts

    calibration = load_calibration()
    if calibration is None:
        pytest.skip("no calibration.json; run `edgeclf profiles calibrate-costmodel` first")
    info = get_backbone(backbone)
    size = info.input_size
    model = timm.create_model(info.timm_arch, pretrained=False).eval()
    weights = "random"
    if _weights_available(backbone):
        load_pretrained(model, info, source="package")
        weights = "pretrained"
    path = tmp_path / "model.onnx"
    spec = PreprocessSpec(resize_size=size, crop_size=size, interpolation="bilinear", mean=info.mean, std=info.std)
    export_onnx_fp32(model, spec, path, "{}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = calibration.host.threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    for _ in range(WARMUP):
        session.run(None, {"input": x})
    times: list[float] = []

    def once() -> None:
        start = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - start)

    benchmark.pedantic(once, rounds=ROUNDS, warmup_rounds=0)
    ms = np.array(times) * 1000
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    counts = model_counts(backbone, size)
    provider = ("onnxruntime", "CPUExecutionProvider")
    estimate = CostModel().estimate(counts, calibration.host.figures(), provider, "fp32")
    error = 100 * (estimate.p50_ms / p50 - 1)
    here = CostModel().estimate(counts, this_host.figures(), provider, "fp32")
    error_here = 100 * (here.p50_ms / p50 - 1)
    benchmark.extra_info.update(versions())
    benchmark.extra_info.update(
        backbone=backbone,
        resolution=size,
        weights=weights,
        runtime="onnxruntime",
        precision="fp32",
        batch=1,
        threads=calibration.host.threads,
        p50_ms=round(p50, 3),
        p90_ms=round(p90, 3),
        p99_ms=round(p99, 3),
        estimated_p50_ms=round(estimate.p50_ms, 3),
        estimate_error_pct=round(error, 1),
        estimated_p50_ms_this_host=round(here.p50_ms, 3),
        estimate_error_pct_this_host=round(error_here, 1),
        this_host_gemm_gflops=this_host.gemm_gflops,
        calibration_gemm_gflops=calibration.host.gemm_gflops,
        calibrated=calibration.created,
        profile=request.config.getoption("--profile") or calibration.host.matched_profile,
    )
    print(
        f"\n{backbone} {size} px: measured p50 {p50:.2f} ms, estimated {estimate.p50_ms:.2f} ms ({error:+.1f} %) "
        f"with the calibration host's figures, {here.p50_ms:.2f} ms ({error_here:+.1f} %) with this host's"
    )


@pytest.fixture(scope="module")
def measured_native(tmp_path_factory, this_host):
    """Every registered EfficientNet-Lite at its native resolution, fp32 and int8 (static QDQ), on
    ONNX Runtime and OpenVINO, timed the way ``edgeclf profiles calibrate-costmodel`` times them
    (one worker process per model file, the quietest of the passes)."""
    import importlib.util

    from edgeclf.bench.calibrate import measure_backbones
    from edgeclf.models import get_backbone

    runtimes = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
    work = tmp_path_factory.mktemp("native")
    points = []
    for name in [b.name for b in list_backbones() if b.name.startswith("tf_efficientnet_lite")]:
        size = get_backbone(name).input_size
        points += measure_backbones([name], [], [size], runtimes, this_host.threads, 1.0, work, passes=2)
    return points


def test_estimate_table_on_this_host(benchmark, measured_native, this_host) -> None:
    """The selection's estimate with this host's probed figures (what ``--profile auto`` uses) vs the
    measured p50, per backbone x runtime x precision; the int8 / fp32 ratio per runtime; achieved
    GFLOP/s beside the physical bound (the model's FLOPs at this host's probed peak)."""
    from edgeclf.select import CostModel, calibration_for_profile, model_counts

    figures = this_host.figures()
    model = CostModel(calibration_for_profile(this_host.matched_profile))  # what `--profile auto` selects with here
    calibrated_on = model.calibration.host.cpu_model if model.calibration else "priors"
    rows = []
    for p in measured_native:
        counts = model_counts(p.backbone, p.resolution)
        est = model.estimate(counts, figures, (p.runtime, p.backend), p.precision)
        peak = figures.peak_gops[p.precision]
        rows.append(
            {
                "backbone": p.backbone,
                "px": p.resolution,
                "runtime": p.runtime,
                "precision": p.precision,
                "measured_p50_ms": p.p50_ms,
                "estimated_p50_ms": round(est.p50_ms, 3),
                "error_pct": round(100 * (est.p50_ms / p.p50_ms - 1), 1),
                "gflops": round(counts.gflops, 3),
                "achieved_gops_per_s": round(counts.gflops / (p.p50_ms / 1e3), 1),
                "bound_ms": round(counts.gflops / peak * 1e3, 3),
                "peak_gops_per_s": round(peak, 1),
            }
        )
    ratios = {}
    for r in rows:
        if r["precision"] == "int8":
            fp32 = next(x for x in rows if (x["backbone"], x["runtime"], x["precision"]) == (r["backbone"], r["runtime"], "fp32"))
            ratios[f"{r['backbone']}/{r['runtime']}"] = round(fp32["measured_p50_ms"] / r["measured_p50_ms"], 3)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    within = sum(abs(r["error_pct"]) <= 25 for r in rows)
    benchmark.extra_info.update(
        versions(),
        rows=rows,
        int8_speedup=ratios,
        within_25_pct=f"{within}/{len(rows)}",
        host=figures.name,
        factors_from=calibrated_on,
    )
    print(f"\n{figures.name}: estimate within +-25 % for {within}/{len(rows)} (factors fitted on {calibrated_on})")
    print("backbone                 px  runtime      prec  measured  estimate  error  achieved GOP/s  bound ms")
    for r in rows:
        print(
            f"{r['backbone']:<24} {r['px']:>3}  {r['runtime']:<11} {r['precision']:<5} {r['measured_p50_ms']:8.2f}  "
            f"{r['estimated_p50_ms']:8.2f}  {r['error_pct']:+5.0f}%  {r['achieved_gops_per_s']:14.1f}  {r['bound_ms']:8.2f}"
        )
    print("int8 speed-up over fp32 (fp32 p50 / int8 p50):", ratios)
