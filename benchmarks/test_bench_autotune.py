"""``precision="auto"`` against the best artifact measured in the same run, with the export host's
timings in ``parity.json`` deliberately wrong (they name the slowest artifact here as the fastest).

    pytest benchmarks/test_bench_autotune.py --benchmark-only --bundle BUNDLE_DIR

Every artifact the C runtime runs is timed alone (batch 1, a ready tensor, medians of 200 calls);
then the bundle is loaded with ``precision="auto"`` and a fresh autotune cache, and the chosen
artifact timed the same way. ``extra_info`` carries ``auto_vs_best`` (best median / auto median,
1.0 = the autotune found the fastest; the target is >= 0.95), the per-artifact medians, what the
rigged parity report claimed and how long the load's own timing took.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.conftest import versions

runtime = pytest.importorskip("edgeclf.runtime")

CALLS = 200


def _median_ms(clf: Any, calls: int = CALLS) -> float:
    c, h, w = clf.input_shape
    x = np.zeros((1, c, h, w), np.float32)
    for _ in range(10):
        clf.run_tensor(x)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        clf.run_tensor(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def test_auto_vs_best_with_wrong_export_timings(benchmark: Any, bundle_dir: Path, tmp_path: Path) -> None:
    from edgeclf.export.bundle import read_bundle

    work = tmp_path / "bundle"
    shutil.copytree(bundle_dir, work, ignore=shutil.ignore_patterns("autotune.json"))
    arts = [a for a in read_bundle(work, verify=False).artifacts if a.status == "ok" and a.runtime in ("onnxruntime", "openvino")]
    if len(arts) < 2:
        pytest.skip("the bundle ships fewer than two artifacts the C runtime runs: nothing to choose")
    alone: dict[str, float] = {}
    for a in arts:
        with runtime.Classifier(work, backend=a.runtime, precision=a.precision, autotune=False) as clf:
            alone[clf.artifact] = _median_ms(clf)
    best = min(alone, key=alone.get)
    slowest = max(alone, key=alone.get)
    claimed = next(a for a in arts if a.file == slowest)
    doc = json.loads((work / "parity.json").read_text(encoding="utf-8"))
    for row in doc["table"]:
        if row.get("ms_per_image") is not None:
            row["ms_per_image"] = 0.1 if (row["format"], row["precision"]) == (claimed.format, claimed.precision) else 100.0
    (work / "parity.json").write_text(json.dumps(doc), encoding="utf-8")

    t0 = time.perf_counter()
    clf = runtime.Classifier(work)  # autotune on, a fresh cache
    load_s = time.perf_counter() - t0
    try:
        tuned = clf.autotune
        auto_ms = _median_ms(clf)
        c, h, w = clf.input_shape
        x = np.zeros((1, c, h, w), np.float32)
        benchmark.pedantic(lambda: clf.run_tensor(x), rounds=60, iterations=1, warmup_rounds=10)
        benchmark.extra_info.update(
            kind="autotune",
            chosen=clf.artifact,
            best=best,
            parity_claimed_fastest=slowest,
            auto_ms=auto_ms,
            alone_ms=alone,
            auto_vs_best=alone[best] / auto_ms,
            load_seconds=load_s,
            autotune=tuned,
            **versions(),
        )
        print(
            f"\nalone {alone} ms; auto chose {clf.artifact} ({auto_ms:.2f} ms), best alone {best}: "
            f"auto / best {alone[best] / auto_ms:.3f}; load with timing {load_s:.2f} s"
        )
    finally:
        clf.close()
    assert tuned["state"] == "measured"
