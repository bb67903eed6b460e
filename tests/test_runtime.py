"""The C runtime through its Python module: end-to-end parity with ``edgeclf.predict``,
every bad bundle refused with a clear error, threads, loading from memory."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.cpp
runtime = pytest.importorskip("edgeclf.runtime")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from tests.conftest import blob_image, make_synthetic_bundle  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeclf.export.pipeline import export_run
    from tests.conftest import make_tiny_run

    base = tmp_path_factory.mktemp("rt")
    make_tiny_run(base)
    from edgeclf.runtime.gate import c_runtime_rows

    export_run(
        base / "run",
        base / "bundle",
        formats=["onnx", "openvino"],
        precisions=["fp32", "int8"],
        runtime_gate=c_runtime_rows,
        int8_evidence="point",  # 6 val images: the int8 C paths, not the gates
        calibration_images=8,
        allow_failed=True,
        robustness=False,
    )
    return base / "bundle"


def val_images(bundle: Path) -> list[Path]:
    import csv

    from edgeclf.export.bundle import read_bundle

    run = Path(read_bundle(bundle).source_run["run_dir"]) if "run_dir" in read_bundle(bundle).source_run else None
    base = bundle.parent
    rows = list(csv.DictReader(open(base / "splits.csv")))
    data = Path(json.loads((base / "splits.summary.json").read_text())["data_dir"])
    del run
    return [data / r["path"] for r in rows if r["split"] in ("val", "test")]


@pytest.mark.parametrize(
    "backend,precision", [("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime", "int8"), ("openvino", "int8")]
)
def test_top1_and_probabilities_match_python(bundle: Path, backend: str, precision: str) -> None:
    """C++ end to end (decode in Python, everything else in C++) vs edgeclf.predict on the same artifact."""
    from edgeclf.export.bundle import read_bundle
    from edgeclf.runtime.reference import BundleClassifier

    m = read_bundle(bundle)
    art = [a for a in m.artifacts if a.runtime == backend and a.precision == precision]
    if not art:
        pytest.skip(f"{backend}/{precision} failed its gate in this tiny export")
    images = val_images(bundle)
    assert len(images) >= 10
    py = BundleClassifier(bundle, runtime=backend)
    py.artifact = art[0]
    from edgeclf.export.runners import load_runner

    a = art[0]
    py.runner = load_runner(bundle, a.to_artifact(), py.spec, py.labels)
    want = py.classify(images, top_k=3)
    with runtime.Classifier(bundle, backend=backend, precision=precision) as clf:
        assert (clf.backend, clf.precision, clf.artifact) == (backend, precision, a.file)
        got = clf.classify(images, top_k=3)
        probs = clf.probabilities(images)
    assert [g.label for g in got] == [w.label for w in want]  # top-1: 100 %
    py_probs = np.array([[dict(zip(w.labels, w.probabilities, strict=False)).get(lab, np.nan) for lab in m.labels] for w in want])
    mask = ~np.isnan(py_probs)
    # fp32: same preprocessing bit for bit, same backend -> float32 round-off only.
    # int8: the same quantized graph; OpenVINO may pick different int8 kernels per batch size.
    tol = 1e-4 if precision == "fp32" else 2e-2
    assert np.abs(probs[mask] - py_probs[mask]).max() < tol
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_auto_choice_matches_predict(bundle: Path) -> None:
    from edgeclf.runtime.reference import BundleClassifier

    py = BundleClassifier(bundle)
    if py.artifact.runtime not in ("onnxruntime", "openvino"):
        pytest.skip("the fastest artifact here is not one the C runtime runs")
    with runtime.Classifier(bundle) as clf:
        assert (clf.backend, clf.precision) == (py.artifact.runtime, py.artifact.precision)


def test_both_faces_choose_by_one_rule(bundle: Path, tmp_path: Path) -> None:
    """The fastest-artifact rule exists once: without host timing, whichever artifact the parity run
    timed fastest, the Python face (choose_artifact) and the C runtime (precision "auto") both load
    it; with it, the Python face loads the C runtime's choice."""
    import shutil

    from edgeclf.export.bundle import read_bundle
    from edgeclf.runtime.reference import choose_artifact

    work = tmp_path / "bundle"
    shutil.copytree(bundle, work, ignore=shutil.ignore_patterns("autotune.json"))
    m = read_bundle(work)
    runnable = [a for a in m.artifacts if a.status == "ok" and a.runtime in ("onnxruntime", "openvino")]
    assert len(runnable) >= 2, "the tiny export ships fewer than two artifacts the C runtime runs"
    original = json.loads((work / "parity.json").read_text(encoding="utf-8"))
    for fastest in runnable:
        doc = json.loads(json.dumps(original))
        for row in doc["table"]:
            if row.get("ms_per_image") is not None:
                mine = (row["format"], row["precision"]) == (fastest.format, fastest.precision)
                row["ms_per_image"] = 0.5 if mine else 50.0
        (work / "parity.json").write_text(json.dumps(doc), encoding="utf-8")
        py = choose_artifact(work, m, autotune=False)
        with runtime.Classifier(work, autotune=False) as clf:
            assert (py.runtime, py.precision, py.file) == (fastest.runtime, fastest.precision, fastest.file)
            assert (clf.backend, clf.precision, clf.artifact) == (fastest.runtime, fastest.precision, fastest.file)
    # timed on this host: the Python face loads what the C runtime measured fastest
    py = choose_artifact(work, m)
    with runtime.Classifier(work) as clf:
        assert clf.autotune["state"] in ("measured", "cached")
        assert py.file == clf.artifact


def _parity_says_fastest(work: Path, fastest: tuple[str, str]) -> None:
    doc = json.loads((work / "parity.json").read_text(encoding="utf-8"))
    for row in doc["table"]:
        if row.get("ms_per_image") is not None:
            row["ms_per_image"] = 0.5 if (row["format"], row["precision"]) == fastest else 50.0
    (work / "parity.json").write_text(json.dumps(doc), encoding="utf-8")


def test_autotune_chooses_on_this_host_and_caches_it(bundle: Path, tmp_path: Path) -> None:
    """precision=auto times the candidates here, whatever the export host recorded; the result is cached
    per host and reused; autotune off is the export host's rule; a bad cache is ignored, never fatal."""
    import shutil

    from edgeclf.export.bundle import read_bundle

    work = tmp_path / "bundle"
    shutil.copytree(bundle, work, ignore=shutil.ignore_patterns("autotune.json"))
    runnable = [a for a in read_bundle(work).artifacts if a.status == "ok" and a.runtime in ("onnxruntime", "openvino")]
    assert len(runnable) >= 2
    # the export host's figures, deliberately wrong: the last candidate "was fastest"
    claimed = runnable[-1]
    _parity_says_fastest(work, (claimed.format, claimed.precision))
    with runtime.Classifier(work) as clf:
        tuned = clf.autotune
        assert tuned["state"] == "measured", tuned
        assert set(tuned["ms"]) == {a.file for a in runnable} and all(v > 0 for v in tuned["ms"].values())
        assert clf.artifact == min(tuned["ms"], key=tuned["ms"].get)  # the fastest as measured here
        assert tuned["cache"] == str(work / "autotune.json")
        assert clf.classify(np.asarray(blob_image(1, 64)), top_k=1)[0].label in clf.labels
    cache = json.loads((work / "autotune.json").read_text(encoding="utf-8"))
    assert cache["format"] == "edgeclf-autotune" and len(cache["entries"]) == 1
    (entry,) = cache["entries"].values()
    assert entry["chosen"] == min(tuned["ms"], key=tuned["ms"].get) and entry["host"]
    with runtime.Classifier(work) as clf:  # the same host, threads and bundle: no timing
        assert clf.autotune["state"] == "cached" and clf.artifact == entry["chosen"]
    with runtime.Classifier(work, threads=1) as clf:  # another thread count is another entry
        assert clf.autotune["state"] == "measured"
    assert len(json.loads((work / "autotune.json").read_text(encoding="utf-8"))["entries"]) == 2
    # a changed bundle (its manifest) is another entry: timed anew
    from edgeclf._io import canonical_json

    manifest = json.loads((work / "edgeclf.json").read_text(encoding="utf-8"))
    (work / "edgeclf.json").write_text(canonical_json(manifest | {"name": manifest["name"] + "-v2"}), encoding="utf-8")
    with runtime.Classifier(work) as clf:
        assert clf.autotune["state"] == "measured"
    assert len(json.loads((work / "autotune.json").read_text(encoding="utf-8"))["entries"]) == 3
    with runtime.Classifier(work, autotune=False) as clf:  # the export host's rule
        assert clf.artifact == claimed.file and clf.autotune["state"].startswith("off")
    with runtime.Classifier(work, precision="fp32", backend="onnxruntime") as clf:
        assert clf.autotune["state"].startswith("off") and clf.precision == "fp32"
    # a damaged cache is ignored and replaced; an entry naming a file the bundle lacks is not used
    (work / "autotune.json").write_text("{not json", encoding="utf-8")
    with runtime.Classifier(work) as clf:
        assert clf.autotune["state"] == "measured"
    doc = json.loads((work / "autotune.json").read_text(encoding="utf-8"))
    for e in doc["entries"].values():
        e["chosen"] = "gone.onnx"
    (work / "autotune.json").write_text(json.dumps(doc), encoding="utf-8")
    with runtime.Classifier(work) as clf:
        assert clf.autotune["state"] == "measured"
    # a cache that cannot be written only means the timing is not kept
    with runtime.Classifier(work, autotune_cache=tmp_path / "no" / "such" / "dir" / "t.json") as clf:
        assert clf.autotune["state"].startswith("measured (not cached: cannot write")


def test_bench_tune_records_this_host_for_the_bundle(bundle: Path, tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from edgeclf.cli import app

    work = tmp_path / "bundle"
    shutil.copytree(bundle, work, ignore=shutil.ignore_patterns("autotune.json"))
    foreign = {"format": "edgeclf-autotune", "version": 1, "entries": {"another-host": {"chosen": "model.onnx", "ms": {}}}}
    (work / "autotune.json").write_text(json.dumps(foreign), encoding="utf-8")
    res = CliRunner().invoke(app, ["bench", str(work), "--tune", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["chosen"] == min(out["ms"], key=out["ms"].get) and len(out["ms"]) >= 2
    entries = json.loads((work / "autotune.json").read_text(encoding="utf-8"))["entries"]
    assert "another-host" in entries and len(entries) == 2  # other devices' timings are kept
    with runtime.Classifier(work) as clf:  # what --tune recorded is what the runtime then loads, untimed
        assert clf.autotune["state"] == "cached" and clf.artifact == out["chosen"]
    res = CliRunner().invoke(app, ["bench", str(work), "--tune", "--batch", "8"])
    assert res.exit_code != 0 and "--batch" in res.output


def test_classifier_api(bundle: Path, tmp_path: Path) -> None:
    img = np.asarray(blob_image(1, 90))
    with runtime.Classifier(bundle, backend="onnxruntime", precision="fp32", threads=1) as clf:
        assert clf.labels == ["a", "b", "c"] and clf.input_shape == (3, 64, 64)
        assert json.loads(clf.manifest_value("/labels")) == ["a", "b", "c"]
        assert clf.manifest_value("/schema_version").startswith("1.")
        one = clf.classify(img, top_k=10)[0]
        assert len(one.labels) == 3 and abs(sum(one.probabilities) - 1) < 1e-5
        # the same frame as BGR, with padded rows, gives the same answer
        bgr = np.zeros((90, 90 * 3 + 7), np.uint8)[:, : 90 * 3].reshape(90, 90, 3)
        bgr[...] = img[:, :, ::-1]
        assert np.allclose(clf.probabilities(bgr, pixel_format="BGR8"), clf.probabilities(img), atol=1e-6)
        x = clf.preprocess(img)[None]
        logits = clf.run_tensor(x)
        from edgeclf.evaluate.metrics import softmax

        t = float(clf.manifest_value("/temperature"))
        assert np.allclose(softmax(logits, t), clf.probabilities(img), atol=1e-5)
        with pytest.raises(runtime.RuntimeCallError, match="NV12 needs an even width"):
            clf.classify(np.zeros((6, 5), np.uint8), pixel_format="NV12")
        from edgeclf.errors import DataError

        with pytest.raises(DataError):
            clf.classify(np.zeros((8, 8, 3), np.float32))
        with pytest.raises(DataError):
            clf.classify(np.zeros((8, 8, 3), np.uint8), pixel_format="YUYV")
        with pytest.raises(DataError):
            clf.classify([])
    with pytest.raises(Exception, match="closed"):
        clf.classify(img)


def test_threads_share_one_model(bundle: Path) -> None:
    """8 Python threads, one Classifier (a session per thread): identical to serial."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (70 + i, 90 - i, 3), dtype=np.uint8) for i in range(12)]
    with runtime.Classifier(bundle, backend="openvino", precision="fp32", threads=1) as clf:
        serial = clf.probabilities(frames)
        out: list[np.ndarray | None] = [None] * 8
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for _ in range(3):
                    out[i] = np.stack([clf.probabilities(f)[0] for f in frames])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert not errors
    for o in out:
        assert o is not None and np.array_equal(o, serial)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_bundles_are_refused(tmp_path: Path) -> None:
    good = make_synthetic_bundle(tmp_path / "good")
    with runtime.Classifier(good) as c:
        assert c.classify(np.zeros((40, 40, 3), np.uint8))[0].label in ("a", "b", "c")

    tampered = _copy(good, tmp_path / "tampered")
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[-5] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(runtime.RuntimeCallError, match="SHA-256") as e:
        runtime.Classifier(tampered)
    assert e.value.status == "EDGECLF_ERR_INTEGRITY"
    with pytest.raises(runtime.RuntimeCallError) as e:  # unverified: the backend's own error, not a crash
        runtime.Classifier(tampered, verify=False)
    assert e.value.status == "EDGECLF_ERR_BACKEND"

    truncated = _copy(good, tmp_path / "truncated")
    (truncated / "model.onnx").write_bytes((truncated / "model.onnx").read_bytes()[:100])
    with pytest.raises(runtime.RuntimeCallError, match="SHA-256"):
        runtime.Classifier(truncated)

    missing = _copy(good, tmp_path / "missing")
    (missing / "model.onnx").unlink()
    with pytest.raises(runtime.RuntimeCallError, match="incomplete"):
        runtime.Classifier(missing)

    for name, edit, pattern in [
        ("schema", lambda m: m.update(schema_version="2.0.0"), "schema_version"),
        ("newer", lambda m: m.update(min_runtime_version="99.0.0"), "needs edgeclf runtime"),
        ("labels", lambda m: m.update(labels=[]), "labels"),
        ("temperature", lambda m: m.update(temperature=-1), "temperature"),
        ("spec", lambda m: m["preprocess"].update(layout="NHWC"), "layout"),
        ("traversal", lambda m: m["artifacts"][0].update(file="../good/model.onnx"), "plain file name"),
    ]:
        d = _copy(good, tmp_path / name)
        m = json.loads((d / "edgeclf.json").read_text())
        edit(m)
        (d / "edgeclf.json").write_text(json.dumps(m))
        with pytest.raises(runtime.RuntimeCallError, match=pattern):
            runtime.Classifier(d)
    broken = _copy(good, tmp_path / "broken")
    (broken / "edgeclf.json").write_text((broken / "edgeclf.json").read_text()[:-40])
    with pytest.raises(runtime.RuntimeCallError, match="not valid JSON"):
        runtime.Classifier(broken)
    with pytest.raises(Exception, match="not a directory"):
        runtime.Classifier(tmp_path / "nowhere")
    with pytest.raises(runtime.RuntimeUnavailableError, match="no artifact"):
        runtime.Classifier(good, backend="openvino")


def test_load_from_memory(tmp_path: Path) -> None:
    from edgeclf import _runtime

    d = make_synthetic_bundle(tmp_path / "b")
    manifest = (d / "edgeclf.json").read_bytes()
    model = _runtime.Model(manifest, {"model.onnx": (d / "model.onnx").read_bytes()})
    s = _runtime.Session(model)
    img = np.asarray(blob_image(2, 50))
    with runtime.Classifier(d) as clf:
        assert np.array_equal(s.probabilities([img]), clf.probabilities(img))
    with pytest.raises(_runtime.RuntimeLibraryError, match="was not passed"):
        _runtime.Model(manifest, {})
    with pytest.raises(_runtime.RuntimeLibraryError, match="SHA-256"):
        _runtime.Model(manifest, {"model.onnx": b"not a model"})


def test_versions() -> None:
    import importlib.metadata

    from edgeclf import _runtime

    assert _runtime.api_version() == _runtime.API_VERSION == 3  # 3: autotune
    assert runtime.version() == importlib.metadata.version("edgeclf") == "0.2.0"
    assert set(runtime.backends()) == {"onnxruntime", "openvino"}


def test_export_gates_the_c_runtime(bundle: Path) -> None:
    """The export's parity table carries the C runtime as one more artifact, gated like the rest."""
    table = json.loads((bundle / "parity.json").read_text())["table"]
    rows = {(r["format"], r["precision"]): r for r in table}
    fp32 = rows[("c-runtime (onnxruntime)", "fp32")]
    assert fp32["status"] == "ok" and fp32["agreement"] == 1.0 and fp32["delta_macro_f1"] == 0.0
    assert ("c-runtime (openvino)", "fp32") in rows
