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
