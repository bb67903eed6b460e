"""The pipeline's own heavy steps, each against what it replaced, in the same run.

Run: pytest benchmarks/test_bench_pipeline.py --benchmark-only -s

* ``ort-copy``: the ONNX Runtime copy of the eager model that training (the cached trunk) and
  evaluation (every split, the corruption suite) run on: the product's graph (TF-"same" pads
  traced as constants, then onnxslim) vs a plain export, whose TF-"same"-padding layers compute
  their pads at run time. tf_efficientnet_lite0 at 224 px and tf_efficientnet_lite2 at 260 px
  (odd feature-map sizes, where onnxslim used to fold the run-time pads wrongly, so the product
  ran the plain graph), random initialisation (the cost does not depend on the weights), batch
  16, the two sessions' runs interleaved; ``extra_info`` has ms per image for both and the ratio.
* ``histogram-calibration``: ONNX Runtime's percentile calibration on the 32 evenly spaced images
  the export uses vs on all 128 calibration images, and each int8 model's top-1 agreement with
  the fp32 model on 64 other images (what the export's gate measures). The model is the
  ``--bundle``'s ``model.onnx`` when one is given (a trained model: meaningful agreement), else
  the random-initialised lite0 (near-tied logits: the agreement says little). Inputs are
  random. One round each (a minute or two).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.conftest import versions

BATCH = 16
SIZE = 224


def _model(name: str = "tf_efficientnet_lite0") -> Any:
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=4).eval()


@pytest.fixture(scope="module")
def model() -> Any:
    return _model()


def _per_image_ms(sessions: list[Any], x: np.ndarray, seconds: float = 8.0, min_rounds: int = 7) -> list[float]:
    """Median ms per image of each session, their runs interleaved (a slower moment of a shared
    host then costs every session alike, not only the one measured during it)."""
    for s in sessions:
        s.run(None, {"x": x})
    times: list[list[float]] = [[] for _ in sessions]
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times[0]) < min_rounds:
        for s, ts in zip(sessions, times, strict=True):
            t = time.perf_counter()
            s.run(None, {"x": x})
            ts.append(time.perf_counter() - t)
    return [float(np.median(ts)) / len(x) * 1e3 for ts in times]


@pytest.mark.parametrize(("backbone", "size"), [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite2", 260)])
def test_ort_copy_slimmed_vs_as_exported(benchmark: Any, backbone: str, size: int) -> None:
    import io

    import onnxruntime as ort
    import torch

    from edgeclf._onnx_match import matching_session

    model = _model(backbone)
    x = torch.randn(BATCH, 3, size, size)
    m = matching_session(model, x[:8], rtol=1e-4)
    assert m.session is not None and m.slimmed
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        (x[:1],),
        buf,
        input_names=["x"],
        output_names=["y0"],
        dynamic_axes={"x": {0: "n"}, "y0": {0: "n"}},
        dynamo=False,
        opset_version=17,
    )
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    raw = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    slimmed, as_exported = benchmark.pedantic(lambda: _per_image_ms([m.session, raw], xn), rounds=1, iterations=1)
    benchmark.extra_info.update(
        model=f"{backbone} @ {size} px",
        batch=BATCH,
        threads=torch.get_num_threads(),
        ms_per_image_slimmed=round(slimmed, 3),
        ms_per_image_as_exported=round(as_exported, 3),
        speedup=round(as_exported / slimmed, 2),
        **versions(),
    )
    ratio = as_exported / slimmed
    print(f"\nORT copy, {backbone} @ {size} px, ms per image at batch {BATCH}:", end=" ")
    print(f"product {slimmed:.2f}, plain export {as_exported:.2f} ({ratio:.2f}x)")


@pytest.mark.heavy
def test_percentile_calibration_on_a_subset(benchmark: Any, model: Any, request: pytest.FixtureRequest) -> None:
    import onnxruntime as ort
    import torch

    import edgeclf.export.quantize as q

    rng = np.random.default_rng(0)
    given = request.config.getoption("--bundle")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if given:
            from edgeclf.export.bundle import read_bundle

            fp32 = Path(given) / "model.onnx"
            size = read_bundle(Path(given), verify=False).spec().crop_size
            source = f"{given} model.onnx"
        else:
            fp32, size, source = work / "m.onnx", SIZE, f"random-init tf_efficientnet_lite0 @ {SIZE} px"
            x = torch.randn(1, 3, SIZE, SIZE)
            torch.onnx.export(
                model, (x,), str(fp32), input_names=["x"], output_names=["y"],
                dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False, opset_version=17,
            )  # fmt: skip
        calib = rng.standard_normal((128, 3, size, size)).astype(np.float32)
        probe = rng.standard_normal((64, 3, size, size)).astype(np.float32)

        def top1(path: Path) -> np.ndarray:
            s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            return s.run(None, {s.get_inputs()[0].name: probe})[0].argmax(1)

        ref = top1(fp32)

        def once(n: int) -> tuple[float, float]:
            old = q.HISTOGRAM_CALIBRATION_IMAGES
            q.HISTOGRAM_CALIBRATION_IMAGES = n
            try:
                t = time.perf_counter()
                q.quantize_onnx_int8(fp32, work / f"q{n}.onnx", calib, work, method="percentile")
                took = time.perf_counter() - t
            finally:
                q.HISTOGRAM_CALIBRATION_IMAGES = old
            return took, float((top1(work / f"q{n}.onnx") == ref).mean())

        full_s, full_agree = once(len(calib))
        sub_s, sub_agree = benchmark.pedantic(lambda: once(q.HISTOGRAM_CALIBRATION_IMAGES), rounds=1, iterations=1)
    k = q.HISTOGRAM_CALIBRATION_IMAGES
    benchmark.extra_info.update(
        model=source,
        seconds_subset=round(sub_s, 1),
        seconds_all=round(full_s, 1),
        subset_images=k,
        all_images=len(calib),
        speedup=round(full_s / sub_s, 2),
        agreement_with_fp32_subset=sub_agree,
        agreement_with_fp32_all=full_agree,
        **versions(),
    )
    print(
        f"\npercentile calibration of {source}: {k} images {sub_s:.1f} s, {len(calib)} images {full_s:.1f} s "
        f"({full_s / sub_s:.2f}x); top-1 agreement with fp32: {sub_agree:.3f} vs {full_agree:.3f}"
    )
