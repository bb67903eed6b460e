"""The C runtime end to end vs the Python reference pipeline, and vs its own backend alone.

    pytest benchmarks/test_bench_runtime.py --benchmark-only --bundle BUNDLE_DIR

One 640x480 RGB8 frame, batch 1:
* ``python-reference``: PIL resize + centre crop + normalise + eager timm (the training-side path);
* ``c-bare-backend``: the runtime's backend on a ready tensor (``edgeclf_run_tensor``);
* ``c-preprocess``: the runtime's fused preprocessing alone;
* ``c-end-to-end``: frame -> top-5 (``edgeclf_classify``), whose ``extra_info`` carries the
  ratios to the two above, measured in the same run (medians);
* ``c-end-to-end-over-bare-interleaved``: the two alternating call by call, with the
  preprocessing alone between them: the end to end ÷ bare ratio over the same stretch of time.

Top-5 means every label on a model of fewer classes (the reference row too).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.conftest import versions

runtime = pytest.importorskip("edgeclf.runtime")

PRECISIONS = ["auto", "fp32"]
TOP_K = 5  # labels asked for per frame; a model with fewer classes gets all of them
_medians: dict[tuple[str, str], float] = {}


def _frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    base = np.stack([(xx // 3) % 256, (yy // 2) % 256, ((xx + yy) // 5) % 256], axis=2)
    return (base + rng.integers(0, 30, (480, 640, 3))).clip(0, 255).astype(np.uint8)


WARMUP_ROUNDS = 10


def _pedantic(benchmark: Any, fn: Any, rounds: int = 60) -> None:
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=WARMUP_ROUNDS)


def _median(benchmark: Any) -> float | None:
    """The run's median (None under --benchmark-disable, where nothing is timed)."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median if stats is not None else None


def _info(benchmark: Any, clf: Any, kind: str, precision: str) -> None:
    benchmark.extra_info.update(
        runtime=f"edgeclf-c/{clf.backend}",
        precision=clf.precision,
        requested=precision,
        artifact=clf.artifact,
        kind=kind,
        frame="640x480 RGB8",
        batch=1,
        **versions(),
    )


@pytest.fixture(scope="module", params=PRECISIONS)
def clf(request: pytest.FixtureRequest, bundle_dir: Path) -> Any:
    try:
        c = runtime.Classifier(bundle_dir, precision=request.param)
    except runtime.RuntimeUnavailableError as e:
        pytest.skip(str(e))
    yield request.param, c
    c.close()


def test_python_reference(benchmark: Any, bundle_dir: Path) -> None:
    import timm
    import torch
    from PIL import Image

    from edgeclf.export.bundle import read_bundle

    m = read_bundle(bundle_dir, verify=False)
    spec = m.spec()
    k = min(TOP_K, len(m.labels))
    model = timm.create_model(m.source_run["backbone"], pretrained=False, num_classes=len(m.labels)).eval()
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    frame = Image.fromarray(_frame())
    resample = Image.Resampling.BICUBIC if spec.interpolation == "bicubic" else Image.Resampling.BILINEAR

    def once() -> None:
        w, h = frame.size
        s = spec.resize_size / min(w, h)
        im = frame.resize((round(w * s), round(h * s)), resample)
        left, top = (im.width - spec.crop_size) // 2, (im.height - spec.crop_size) // 2
        im = im.crop((left, top, left + spec.crop_size, top + spec.crop_size))
        x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div_(255).sub_(mean).div_(std)
        with torch.inference_mode():
            torch.softmax(model(x[None]), 1).topk(k)

    _pedantic(benchmark, once, rounds=30)
    benchmark.extra_info.update(
        runtime="python-reference (PIL + eager timm)",
        precision="fp32",
        kind="reference",
        frame="640x480 RGB8",
        batch=1,
        **versions(),
    )
    _medians[("reference", "")] = _median(benchmark)


def test_c_bare_backend(benchmark: Any, clf: Any) -> None:
    precision, c = clf
    x = c.preprocess(_frame())[None].copy()
    _pedantic(benchmark, lambda: c.run_tensor(x))
    _info(benchmark, c, "bare-backend", precision)
    _medians[("bare", precision)] = _median(benchmark)


def test_c_preprocess(benchmark: Any, clf: Any) -> None:
    precision, c = clf
    frame = _frame()
    _pedantic(benchmark, lambda: c.preprocess(frame), rounds=200)
    _info(benchmark, c, "preprocess", precision)


def test_c_end_to_end(benchmark: Any, clf: Any) -> None:
    precision, c = clf
    frame = _frame()
    k = min(TOP_K, len(c.labels))
    _pedantic(benchmark, lambda: c.classify(frame, top_k=k))
    _info(benchmark, c, "end-to-end", precision)
    med = _median(benchmark)
    if med is None:
        return
    if _medians.get(("reference", "")):
        benchmark.extra_info["speedup_vs_python_reference"] = round(_medians[("reference", "")] / med, 2)
    if _medians.get(("bare", precision)):
        benchmark.extra_info["end_to_end_over_bare_backend"] = round(med / _medians[("bare", precision)], 3)


def test_c_end_to_end_over_bare_interleaved(benchmark: Any, clf: Any) -> None:
    """End to end ÷ bare backend with the two calls alternating (and the preprocessing alone between
    them), each median over the same stretch of time: the separate blocks above each see a different
    moment of a shared host (their medians drift by 20-30 % from block to block on a 2-core VM), and
    in a tight loop of bare calls the model's weights stay in cache while a frame's decode-sized
    preprocessing evicts them in real use. The ratio here is the one the runtime's users get."""
    precision, c = clf
    frame = _frame()
    x = c.preprocess(frame)[None].copy()
    k = min(TOP_K, len(c.labels))
    calls = {
        "end_to_end": lambda: c.classify(frame, top_k=k),
        "bare": lambda: c.run_tensor(x),
        "preprocess": lambda: c.preprocess(frame),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}

    def one_round() -> None:
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)

    _pedantic(benchmark, one_round, rounds=100)
    _info(benchmark, c, "end-to-end-over-bare-interleaved", precision)
    # the warm-up rounds also land in ``times``
    med = {name: float(np.median(v[WARMUP_ROUNDS:])) * 1e3 for name, v in times.items()}
    benchmark.extra_info.update(
        {f"{name}_ms": round(v, 3) for name, v in med.items()},
        end_to_end_over_bare_backend=round(med["end_to_end"] / med["bare"], 3),
    )
