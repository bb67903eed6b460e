"""Audit and split on real data sets: trashnet-150 and flowers-128 from ../shared, elpv from PyPI."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeclf.data._index import index_dataset
from edgeclf.data.audit import build_report
from edgeclf.data.datasets import materialize_elpv
from edgeclf.data.split import SplitConfig, make_split, read_extra_columns
from tests.conftest import shared_dataset


def test_trashnet_audit_figures_and_leak_free_split() -> None:
    index = index_dataset(shared_dataset("trashnet-150"))
    report = build_report(index)
    assert report.num_images == 2527 and len(report.classes) == 6
    assert report.imbalance_ratio == pytest.approx(594 / 137, abs=1e-3)  # ~4.34
    assert report.exact_duplicates and report.near_duplicates
    result = make_split(index, SplitConfig())
    assert result.leaked_pairs == 0
    assert result.naive_leaked_pairs > 0


def test_flowers_split_is_leak_free() -> None:
    index = index_dataset(shared_dataset("flowers-128"))
    result = make_split(index, SplitConfig())
    assert len(index.classes) == 5 and result.leaked_pairs == 0 and result.naive_leaked_pairs > 0


def test_elpv_from_the_package_index(tmp_path: Path) -> None:
    pytest.importorskip("elpv_dataset")
    root = materialize_elpv(tmp_path / "elpv")
    assert materialize_elpv(root) == root  # idempotent
    index = index_dataset(root)
    counts = index.counts()
    assert counts == {"defect-0.00": 1508, "defect-0.33": 295, "defect-0.67": 106, "defect-1.00": 715}
    assert build_report(index).modes == {"L": 2624}
    cols, extra = read_extra_columns(root)
    assert cols == ["cell_type", "defect_probability"]
    result = make_split(index, SplitConfig(), extra)
    assert result.leaked_pairs == 0
    assert not index.ignored  # metadata.csv is part of the layout, not a stray file
    assert {r.extra["cell_type"] for r in result.rows} == {"mono", "poly"}
