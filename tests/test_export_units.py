"""Parity gates, bundle manifest integrity and predict input validation (no exporter needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclf.errors import DataError
from edgeclf.export import parity as P
from edgeclf.export.bundle import (
    SCHEMA_VERSION,
    ArtifactEntry,
    BundleError,
    BundleManifest,
    file_entry,
    read_bundle,
    write_manifest,
)
from edgeclf.runtime.types import to_rgb_array

CLASSES = ["a", "b", "c"]


def _logits(y: np.ndarray, margin: float = 4.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1, (len(y), 3)).astype(np.float32)
    z[np.arange(len(y)), y] += margin
    return z


def test_fp32_gate_on_logit_difference_and_agreement() -> None:
    y = np.repeat([0, 1, 2], 100)
    eager = _logits(y)
    ok = P.compare("onnx", "fp32", eager + 1e-5, eager, y, CLASSES, 1.0, 0.1)
    assert ok.passed and ok.agreement == 1.0 and ok.max_abs_logit_diff == pytest.approx(1e-5, rel=1e-2)
    bad = P.compare("onnx", "fp32", eager + 0.01, eager, y, CLASSES, 1.0, 0.1)
    assert not bad.passed and "logit diff" in bad.failures[0]


def test_int8_gate_catches_a_rare_class_losing_recall() -> None:
    y = np.array([0] * 150 + [1] * 140 + [2] * 10)
    eager = _logits(y, margin=6.0)
    art = eager.copy()
    art[290:291, 2] -= 20  # one of ten 'c' images now wrong: recall 1.0 -> 0.9 (agreement still 99.7 %)
    r = P.compare("onnx", "int8", art, eager, y, CLASSES, 1.0, 0.1)
    assert r.agreement > P.INT8_MIN_AGREEMENT
    assert not r.passed and any("recall of 'c'" in f for f in r.failures)
    fine = P.compare("onnx", "int8", eager + 0.05, eager, y, CLASSES, 1.0, 0.1)
    assert fine.passed and fine.kl_divergence < 1e-3


def _bundle(tmp_path: Path) -> Path:
    (tmp_path / "model.onnx").write_bytes(b"onnx-bytes")
    e = file_entry(tmp_path, "model.onnx")
    m = BundleManifest(
        schema_version=SCHEMA_VERSION,
        min_runtime_version="0.1.0",
        name="t",
        created="now",
        creator={"edgeclf": "0"},
        labels=CLASSES,
        preprocess={"resize_size": 72, "crop_size": 64, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3},
        temperature=1.2,
        source_run={},
        dataset_fingerprint="sha256:x",
        calibration_data={},
        metrics={},
        artifacts=[
            ArtifactEntry(
                file="model.onnx",
                format="onnx",
                runtime="onnxruntime",
                precision="fp32",
                sha256=e.sha256,
                size_bytes=e.size_bytes,
                status="ok",
            )
        ],
    )
    write_manifest(tmp_path, m)
    return tmp_path


def test_bundle_manifest_is_canonical_and_verified(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    text = (b / "edgeclf.json").read_text(encoding="utf-8")
    assert json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False, indent=2) + "\n" == text
    assert read_bundle(b).labels == CLASSES
    (b / "model.onnx").write_bytes(b"onnx-byteZ")  # same size, other content
    with pytest.raises(BundleError, match="does not match its SHA-256"):
        read_bundle(b)
    (b / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        read_bundle(b)


def test_bundle_schema_and_damage(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    doc = json.loads((b / "edgeclf.json").read_text())
    (b / "edgeclf.json").write_text(json.dumps({**doc, "schema_version": "2.0.0"}))
    with pytest.raises(BundleError, match="not supported"):
        read_bundle(b)
    (b / "edgeclf.json").write_text(text := json.dumps(doc)[:-20])
    assert text
    with pytest.raises(BundleError, match="not valid JSON"):
        read_bundle(b)
    with pytest.raises(BundleError, match="not an edgeclf bundle"):
        read_bundle(tmp_path / "nowhere")


def test_predict_input_validation(tmp_path: Path) -> None:
    assert to_rgb_array(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert to_rgb_array(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)
    assert to_rgb_array(Image.new("L", (3, 2))).shape == (2, 3, 3)
    with pytest.raises(DataError, match="uint8"):
        to_rgb_array(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(DataError, match="NaN"):
        to_rgb_array(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(DataError, match="shape"):
        to_rgb_array(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(DataError, match="empty"):
        to_rgb_array(np.zeros((0, 4, 3), np.uint8))
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(DataError, match="not an image"):
        to_rgb_array(bad)


@pytest.mark.parametrize("n", [1, 7, 9, 13, 17])
@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_int8_calibration_on_small_and_odd_sized_sets(tmp_path: Path, n: int, method: str) -> None:
    """ONNX Runtime's histogram calibrators failed on a short last batch ("inhomogeneous shape",
    a 150-image flowers run); every set size now calibrates, in equal batches."""
    from edgeclf.export.quantize import CALIBRATION_BATCH, calibration_batch, quantize_onnx_int8
    from tests.conftest import make_synthetic_bundle

    b = make_synthetic_bundle(tmp_path / "b")
    calib = np.random.default_rng(n).random((n, 3, 32, 32), dtype=np.float32)
    step = calibration_batch(n)
    assert n % step == 0 and 1 <= step <= CALIBRATION_BATCH
    quantize_onnx_int8(b / "model.onnx", tmp_path / "q.onnx", calib, tmp_path, method=method)
    assert (tmp_path / "q.onnx").stat().st_size > 0


def test_int8_gates_are_decided_for_the_number_of_images() -> None:
    """20 validation images cannot show 98 % agreement either way: "insufficient evidence", with the rule named;
    decisive intervals still pass or fail; enough images go back to the point estimate."""
    y = np.repeat([0, 1, 2], 7)[:20]
    eager = _logits(y, margin=6.0)
    same = P.compare("onnx", "int8", eager + 0.01, eager, y, CLASSES, 1.0, 0.1)
    assert same.status == "insufficient_evidence" and not same.passed
    assert "Clopper-Pearson" in same.rules["agreement"] and "insufficient evidence" in same.failures[0]
    broken = eager.copy()
    broken[:10] = np.roll(broken[:10], 1, axis=1)  # half the images flipped: decisively outside
    bad = P.compare("onnx", "int8", broken, eager, y, CLASSES, 1.0, 0.1)
    assert bad.status == "failed" and "outside the budget" in bad.rules["agreement"]
    y_big = np.repeat([0, 1, 2], 400)
    e_big = _logits(y_big, margin=6.0)
    a_big = e_big.copy()
    a_big[:5] = np.roll(a_big[:5], 1, axis=1)  # 5 of 1200 flipped: 99.6 % agreement
    big = P.compare("onnx", "int8", a_big, e_big, y_big, CLASSES, 1.0, 0.1)
    assert big.status == "passed" and big.rules["agreement"].startswith("point estimate")
    # held back by the interval alone: the hint names the point estimates and the way to ship on them
    hint = P.point_estimate_hint("int8", same)
    assert hint is not None and "--int8-gates point" in hint and "agreement 1.0000" in hint
    assert P.point_estimate_hint("int8", same.record()) == hint  # from parity.json's record too
    assert P.point_estimate_hint("int8", bad) is None  # failed, not short of evidence
    assert P.point_estimate_hint("int8", big) is None  # passed
    few_flipped = eager.copy()
    few_flipped[:1] = np.roll(few_flipped[:1], 1, axis=1)  # 1 of 20: 95 % agreement, a failing point estimate
    unsure = P.compare("onnx", "int8", few_flipped, eager, y, CLASSES, 1.0, 0.1)
    assert unsure.status == "insufficient_evidence" and P.point_estimate_hint("int8", unsure) is None


def test_int8_retries_only_where_an_artifact_could_pass() -> None:
    """Below 183 validation images a 2 % agreement budget cannot be shown by an interval even with no
    disagreement at all: a retry cannot pass there, so the export does not spend one (point evidence can)."""
    from edgeclf.export.parity import _clopper_pearson

    assert not P.int8_can_pass(0) and not P.int8_can_pass(6) and not P.int8_can_pass(182)
    assert P.int8_can_pass(183) and P.int8_can_pass(1200)
    assert _clopper_pearson(0, 182)[1] > 0.02 >= _clopper_pearson(0, 183)[1]  # the boundary is the interval's
    assert P.int8_can_pass(6, "point") and not P.int8_can_pass(0, "point")
    # a perfect artifact on 183 images passes the agreement gate by its interval, as int8_can_pass says
    y = np.repeat([0, 1, 2], 61)
    eager = _logits(y, margin=6.0)
    assert "within the budget" in P.compare("onnx", "int8", eager + 0.01, eager, y, CLASSES, 1.0, 0.1).rules["agreement"]


def test_third_party_output_goes_to_the_log_file_not_the_terminal(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import logging
    import os

    from edgeclf.export.formats import stdout_to_stderr, third_party_log

    log_file = tmp_path / "logs" / "export.log"
    with third_party_log(log_file), stdout_to_stderr():
        print("Collecting tensor data and making histogram ...")
        os.write(1, b"a C library's stdout\n")
        os.write(2, b"a C library's stderr\n")
        logging.getLogger("nncf").warning("NNCF says something")
    print("ours, after")
    text = log_file.read_text(encoding="utf-8")
    for line in ("Collecting tensor data", "a C library's stdout", "a C library's stderr", "NNCF says something"):
        assert line in text
    out, err = capfd.readouterr()
    assert "Collecting" not in out + err and "NNCF" not in out + err and "C library" not in out + err
    assert "ours, after" in out  # the redirection ends with the block
    with stdout_to_stderr():  # without a log file: off stdout, onto stderr (as before)
        print("to stderr")
    out, err = capfd.readouterr()
    assert "to stderr" in err and "to stderr" not in out


def test_a_library_imported_inside_the_redirect_does_not_log_into_a_closed_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """NNCF binds its handler to the stdout it sees at import: imported inside the block, that is the
    log file, closed when the block ends. The next block and later lines must not fail to log."""
    import logging
    import sys

    from edgeclf.export.formats import stdout_to_stderr, third_party_log

    lg = logging.getLogger("nncf")
    before = lg.handlers[:]
    log_file = tmp_path / "export.log"
    try:
        with third_party_log(log_file), stdout_to_stderr():
            lg.addHandler(logging.StreamHandler(sys.stdout))  # "import nncf" inside the block
            lg.warning("first block")
        with third_party_log(log_file), stdout_to_stderr():
            lg.warning("second block")
        lg.warning("after both")
    finally:
        lg.handlers = before
    out, err = capfd.readouterr()
    text = log_file.read_text(encoding="utf-8")
    assert "Logging error" not in text + out + err
    assert "first block" in text and text.count("second block") == 1
    assert "after both" in err and "after both" not in out


def test_histogram_calibrations_read_an_evenly_spaced_subset(tmp_path: Path) -> None:
    """Percentile and entropy build a histogram per tensor in Python (their time grows with the images):
    they read HISTOGRAM_CALIBRATION_IMAGES evenly spaced images, minmax reads every one, and the
    artifact's details say how many were read."""
    from edgeclf.export.quantize import HISTOGRAM_CALIBRATION_IMAGES as K
    from edgeclf.export.quantize import histogram_subset, quantize_onnx_int8
    from tests.conftest import make_synthetic_bundle

    calib = np.arange(100, dtype=np.float32).reshape(100, 1, 1, 1) * np.ones((1, 3, 4, 4), np.float32)
    assert len(histogram_subset(calib, "minmax")) == 100
    sub = histogram_subset(calib, "percentile")
    firsts = sub[:, 0, 0, 0]
    assert len(sub) == K and firsts[0] == 0 and firsts[-1] == 99 and np.all(np.diff(firsts) > 0)
    assert len(histogram_subset(calib[:K], "entropy")) == K  # few enough: all of them
    b = make_synthetic_bundle(tmp_path / "b")
    images = np.random.default_rng(0).random((K + 8, 3, 32, 32), dtype=np.float32)
    d = quantize_onnx_int8(b / "model.onnx", tmp_path / "q.onnx", images, tmp_path, method="percentile")
    assert d["calibration_images"] == K and f"histograms of {K} of the {K + 8} images" in d["calibration"]
    d = quantize_onnx_int8(b / "model.onnx", tmp_path / "q2.onnx", images, tmp_path, method="minmax")
    assert d["calibration_images"] == K + 8


def test_export_robustness_compares_a_reduced_precision_artifact_or_says_why_not() -> None:
    """The corruption suite is worth running on an artifact whose figures can differ from eager's: int8,
    else fp16. With only fp32 shipped it is skipped (each equals eager within the fp32 tolerance)."""
    from edgeclf.export.parity_schema import ParityReport
    from edgeclf.export.pipeline import ROBUSTNESS_FP32_ONLY, _robustness_artifact

    assert _robustness_artifact({"onnx/fp32": 1, "openvino/fp16": 2, "openvino/int8": 3}) == "openvino/int8"
    assert _robustness_artifact({"onnx/fp32": 1, "openvino/fp16": 2}) == "openvino/fp16"
    # fp16 weights computed in f32 (OpenVINO on CPU with the f32 hint) differ from fp32 by rounding alone

    class F32:
        inference_precision = "f32"

    assert _robustness_artifact({"onnx/fp32": 1, "openvino/fp16": F32()}) is None
    assert _robustness_artifact({"openvino/fp16": F32(), "tensorrt/fp16": 2}) == "tensorrt/fp16"
    assert _robustness_artifact({"onnx/fp32": 1, "openvino/fp32": 2}) is None
    doc = {"split": "val", "images": 3, "temperature": 1.0, "artifacts": [], "table": []}
    assert ParityReport.model_validate(doc).robustness_skipped is None  # a 1.0.0 report reads
    r = ParityReport.model_validate({**doc, "robustness_skipped": ROBUSTNESS_FP32_ONLY})
    assert "parity tolerance" in r.robustness_skipped


def test_int8_is_retried_only_when_a_retry_could_reach_the_gate() -> None:
    """A retry divides the disagreement by at most ~3 (measured); one that starts far below the gate is
    not spent. The bound is the low end of the disagreement's 95 % interval, so few images retry more."""
    from edgeclf.export.parity import INT8_MIN_AGREEMENT, INT8_RETRY_REACH, _clopper_pearson, int8_retry_can_reach

    assert INT8_RETRY_REACH * (1 - INT8_MIN_AGREEMENT) < 0.1
    assert not int8_retry_can_reach(0.70, 394) and not int8_retry_can_reach(0.881, 648)  # elpv, flowers: hopeless
    assert int8_retry_can_reach(0.937, 379) and int8_retry_can_reach(0.974, 379)  # trashnet: worth a retry
    assert int8_retry_can_reach(0.85, 20)  # 3 of 20: the interval reaches down into the retry's reach
    assert _clopper_pearson(3, 20)[0] <= INT8_RETRY_REACH * (1 - INT8_MIN_AGREEMENT)
    assert not int8_retry_can_reach(0.5, 20) and int8_retry_can_reach(None, 394)
    from edgeclf.export.parity import int8_no_retry_reason

    assert "no int8 artifact can pass" in int8_no_retry_reason(1.0, 100)  # the smaller-set rule comes first
    assert "too far below the gate" in int8_no_retry_reason(0.70, 394)
    assert int8_no_retry_reason(0.937, 379) is None
