"""One bundle contract for Python and C: every case of ``tests/manifest_cases.py`` is accepted
by both loaders or refused by both, each refusal an edgeclf error that names the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_synthetic_bundle
from tests.manifest_cases import CASES, Case

pytestmark = pytest.mark.cpp
runtime = pytest.importorskip("edgeclf.runtime")


def python_load(b: Path) -> str | None:
    """None when the Python side loads and classifies with the bundle, else its error message."""
    from edgeclf.errors import EdgeclfError
    from edgeclf.runtime.reference import BundleClassifier

    try:
        BundleClassifier(b).classify([np.zeros((40, 40, 3), np.uint8)], top_k=1)
    except EdgeclfError as e:
        return str(e) or type(e).__name__
    return None


def c_load(b: Path) -> str | None:
    try:
        with runtime.Classifier(b) as clf:
            clf.classify(np.zeros((40, 40, 3), np.uint8), top_k=1)
    except runtime.RuntimeCallError as e:
        return f"{e.status}: {e}"
    except runtime.RuntimeUnavailableError as e:
        return f"unavailable: {e}"
    return None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_python_and_c_accept_and_refuse_the_same_bundles(tmp_path: Path, case: Case) -> None:
    b = make_synthetic_bundle(tmp_path / "bundle")
    case.mutate(b)
    py, c = python_load(b), c_load(b)
    if case.ok:
        assert py is None and c is None, (py, c)
        return
    assert py is not None and c is not None, f"Python: {py!r}; C: {c!r}"
    assert "Traceback" not in py
    if case.match:
        assert case.match.lower() in py.lower(), py
        assert case.match.lower() in c.lower(), c


def test_every_refusal_in_the_issue_is_a_case() -> None:
    names = {c.name for c in CASES}
    for needed in (
        "absolute artifact path",
        "artifact path with ..",
        "a link out of the bundle",
        "hash matches, model does not load",
        "parity.json truncated",
        "parity.json row without format",
        "temperature 0",
        "temperature NaN",
        "resize_size 100000",
        "min_runtime_version from the future",
        "unknown top-level key",
        "UTF-8 byte-order mark",
        "fewer labels than outputs",
        "duplicate labels",
    ):
        assert needed in names
