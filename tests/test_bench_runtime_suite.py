"""benchmarks/test_bench_runtime.py on bundles with fewer classes than the top-5 it reports:
every row of the suite must run on a 2- and a 4-class model, not stop at a fixed k.

The suite's functions are called here with a stand-in for pytest-benchmark's fixture that
calls the measured function once (the suite's plumbing under pytest is covered by
tests/test_bench.py; this is about what the rows compute)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import make_synthetic_bundle

pytestmark = pytest.mark.cpp
runtime = pytest.importorskip("edgeclf.runtime")
pytest.importorskip("timm")


class _Once:
    """pytest-benchmark's ``benchmark`` as the suite uses it: one call, nothing timed."""

    stats = None

    def __init__(self) -> None:
        self.extra_info: dict[str, Any] = {}
        self.result: Any = None

    def pedantic(self, fn: Any, rounds: int, iterations: int, warmup_rounds: int) -> None:
        self.result = fn()


def _bundle(dest: Path, classes: int) -> Path:
    """The synthetic ONNX bundle, naming a timm backbone for the Python reference row (built
    with random weights there: the reference is timed, not compared)."""
    from edgeclf.export.bundle import read_bundle, write_manifest

    b = make_synthetic_bundle(dest, crop=32, resize=36, labels=tuple(f"c{i}" for i in range(classes)))
    m = read_bundle(b, verify=False)
    write_manifest(b, m.model_copy(update={"source_run": {"backbone": "tf_efficientnet_lite0"}}))
    return b


@pytest.mark.parametrize("classes", [2, 4])
def test_runtime_benchmark_rows_run_on_fewer_than_five_classes(tmp_path: Path, classes: int) -> None:
    from benchmarks import test_bench_runtime as suite

    bundle = _bundle(tmp_path / "bundle", classes)
    ref = _Once()
    suite.test_python_reference(ref, bundle)
    assert ref.extra_info["kind"] == "reference"
    for precision in suite.PRECISIONS:
        with runtime.Classifier(bundle, precision=precision) as c:
            for row in (suite.test_c_bare_backend, suite.test_c_preprocess, suite.test_c_end_to_end):
                b = _Once()
                row(b, (precision, c))
                assert b.extra_info["requested"] == precision
            # the last row's call: top-5 of a model with fewer classes is all of them, best first
            (pred,) = b.result
            assert sorted(pred.labels) == [f"c{i}" for i in range(classes)]
            assert pred.probabilities == sorted(pred.probabilities, reverse=True)
