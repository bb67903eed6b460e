"""Export end to end on a tiny run: bundle, parity table, predict through the bundle, tampering refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeclf.export.pipeline import export_run
    from tests.conftest import make_tiny_run

    base = tmp_path_factory.mktemp("export")
    make_tiny_run(base)
    res = export_run(
        base / "run",
        base / "bundle",
        formats=["onnx", "openvino", "torchscript", "tensorrt"],
        precisions=["fp32", "int8"],
        calibration_images=8,
        allow_failed=True,
        robustness=False,
    )
    assert res.bundle_dir == base / "bundle"
    return base / "bundle"


def test_bundle_contents_and_parity(bundle: Path) -> None:
    from edgeclf.export.bundle import read_bundle

    m = read_bundle(bundle)
    shipped = {(a.format, a.precision) for a in m.artifacts}
    assert {("onnx", "fp32"), ("openvino", "fp32"), ("torchscript", "fp32")} <= shipped
    assert m.labels == ["a", "b", "c"] and m.temperature > 0 and m.calibration_data["split"] == "train"
    assert m.preprocess["crop_size"] == 64
    parity = json.loads((bundle / "parity.json").read_text())
    by = {(r["format"], r["precision"]): r for r in parity["table"]}
    for key in [("onnx", "fp32"), ("openvino", "fp32"), ("torchscript", "fp32")]:
        assert by[key]["status"] == "ok" and by[key]["agreement"] == 1.0
    assert by[("tensorrt", "fp32")]["status"] == "skipped"
    # 6 validation images cannot show any int8 artifact within its agreement budget: tried once, not retried
    from edgeclf.export.bundle import read_parity

    report = read_parity(bundle)
    assert report is not None
    int8 = [a for a in report.artifacts if a.precision == "int8" and a.format in ("onnx", "openvino")]
    assert len(int8) == 2 and all(len(a.attempts) == 1 and a.status != "ok" for a in int8)
    for a in m.artifacts:  # every shipped file is listed with its hash; failed ones are not in the bundle
        assert (bundle / a.file).is_file()
    for key, r in by.items():
        if r["status"] == "parity_failed":
            assert key not in shipped
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(bundle / "model.onnx")).metadata_props}
    card = json.loads(meta["edgeclf.meta"])
    assert card["labels"] == m.labels and "artifacts" not in card


def test_predict_api_and_cli(bundle: Path, tmp_path: Path) -> None:
    import edgeclf
    from tests.conftest import blob_image, save

    img = save(blob_image(3), tmp_path / "x.png")
    preds = edgeclf.predict(bundle, [img, np.asarray(blob_image(4)), blob_image(5)], top_k=2)
    assert len(preds) == 3 and all(len(p.labels) == 2 for p in preds)
    for p in preds:
        assert p.probabilities[0] >= p.probabilities[1] and 0 < sum(p.probabilities) <= 1 + 1e-6
    ort = edgeclf.predict(bundle, [img], runtime="onnxruntime", top_k=3)[0]
    ov = edgeclf.predict(bundle, [img], runtime="openvino", top_k=3)[0]
    assert ort.labels[0] == ov.labels[0]
    from typer.testing import CliRunner

    from edgeclf.cli import app

    res = CliRunner().invoke(app, ["predict", str(bundle), str(img), "--json", "--top-k", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["predictions"][0]["top_k"][0]["label"] in ["a", "b", "c"]


def test_tampered_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    import shutil

    from edgeclf.export.bundle import BundleError
    from edgeclf.runtime.reference import predict

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256"):
        predict(copy, [np.zeros((8, 8, 3), np.uint8)])
