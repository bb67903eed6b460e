"""Time-to-quality: the default recipe (partial fine-tuning on cached trunk activations) vs the
whole-network fine-tune loop, on the same split, in the same run.

Run: pytest benchmarks/test_bench_recipe.py --benchmark-only -s
Both runs use the same data (a trashnet-150 subset), epochs, batch size, resolution and seed;
the figures (wall time, images/s per epoch, best validation macro-F1 and the time to reach it)
go to extra_info and are printed. The ratio is the point: timings differ from host to host.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.conftest import shared, versions
from edgeclf.data._index import index_dataset
from edgeclf.data.manifest import write_manifest
from edgeclf.data.split import SplitConfig, make_split
from edgeclf.train import load_config, train

N_TRAIN = 480
EPOCHS = 4


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = shared("trashnet-150")
    rows = make_split(index_dataset(root), SplitConfig()).rows
    rng = np.random.default_rng(0)
    train_rows = [r for r in rows if r.split == "train"]
    keep = {id(train_rows[i]) for i in rng.choice(len(train_rows), N_TRAIN, replace=False)}
    rows = [r for r in rows if r.split == "val" or id(r) in keep]
    base = tmp_path_factory.mktemp("recipe")
    m = base / "splits.csv"
    write_manifest(m, rows)
    (base / "splits.summary.json").write_text(json.dumps({"data_dir": str(root)}))
    return m


def _run(manifest: Path, out: Path, cache: str, **over: object) -> dict:
    cfg = load_config(
        None,
        {
            "data.manifest": manifest,
            "data.cache_dir": cache,
            "finetune.epochs": EPOCHS,
            "finetune.early_stopping_patience": EPOCHS,
            "seed": 0,
            **over,
        },
    )
    t0 = time.perf_counter()
    m = train(cfg, out).metrics
    wall = time.perf_counter() - t0
    hist = m["history"]
    best = max(range(len(hist)), key=lambda i: hist[i]["val_macro_f1"])
    epoch_s = [h["seconds"] for h in hist]
    # time to best: everything before fine-tuning (features or trunk cache, probe) + epochs up to the best
    before = wall - sum(epoch_s)
    return {
        "wall_s": round(wall, 1),
        "before_finetune_s": round(before, 1),
        "images_per_s": [h["images_per_second"] for h in hist],
        "best_val_macro_f1": hist[best]["val_macro_f1"],
        "time_to_best_s": round(before + sum(epoch_s[: best + 1]), 1),
        "shipped": m["selection"]["selected"],
        "shipped_val_macro_f1": m["finetuned"]["macro_f1"],
    }


@pytest.mark.heavy
def test_time_to_quality(benchmark, manifest: Path) -> None:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "cache")
        # decode cache warm for both (no fine-tuning, no views: only the decode and the probe)
        train(
            load_config(
                None, {"data.manifest": manifest, "data.cache_dir": cache, "finetune.epochs": 0, "finetune.cache_views": 0}
            ),
            Path(tmp) / "warm",
        )
        results = {}

        def both() -> None:
            results["whole_network"] = _run(manifest, Path(tmp) / f"full-{len(results)}", cache, **{"finetune.unfreeze": "all"})
            results["cached_partial"] = _run(manifest, Path(tmp) / f"part-{len(results)}", cache)

        benchmark.pedantic(both, rounds=1, iterations=1)
    full, part = results["whole_network"], results["cached_partial"]
    ratio = {
        "wall": round(full["wall_s"] / part["wall_s"], 2),
        "time_to_best": round(full["time_to_best_s"] / part["time_to_best_s"], 2),
    }
    benchmark.extra_info.update(
        {"whole_network": full, "cached_partial": part, "speedup": ratio, "train_images": N_TRAIN, "epochs": EPOCHS, **versions()}
    )
    print(json.dumps(benchmark.extra_info, indent=1))
    assert part["best_val_macro_f1"] > 0 and full["best_val_macro_f1"] > 0
