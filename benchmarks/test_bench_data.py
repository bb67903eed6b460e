"""Data-stage throughput: decode + hash (SHA-256, pHash) per image, serial vs worker pool.

Run: pytest benchmarks/test_bench_data.py --benchmark-only
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeclf.data._index import index_dataset

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "trashnet-150"


@pytest.fixture(scope="module")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip("trashnet-150 not available at ../shared/datasets")
    return DATA


@pytest.mark.parametrize("workers", [1, os.cpu_count() or 1])
def test_index_throughput(benchmark, data_dir: Path, workers: int) -> None:
    index = benchmark.pedantic(index_dataset, args=(data_dir,), kwargs={"workers": workers}, rounds=3, warmup_rounds=1)
    n = len(index.records)
    benchmark.extra_info.update(images=n, workers=workers)
    if benchmark.stats is not None:  # None under --benchmark-disable (one plain call, no statistics)
        benchmark.extra_info["images_per_s_median"] = round(n / benchmark.stats.stats.median, 1)
