"""A decision policy on a real (tiny) trained run: fitted on validation by evaluate, reported
next to argmax with its figures, shipped by export, gated in the parity table, and decided by
the C runtime exactly as by ``edgeclf.predict`` — for every kind of policy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeclf.evaluate.decision import DecisionPolicy, make_request
from tests.conftest import blob_image, save

pytestmark = pytest.mark.cpp
runtime = pytest.importorskip("edgeclf.runtime")


@pytest.fixture(scope="module")
def policy_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from edgeclf.evaluate.run import evaluate
    from edgeclf.export.pipeline import export_run
    from tests.conftest import make_tiny_run

    base = tmp_path_factory.mktemp("dec")
    run = make_tiny_run(base)
    ood = base / "ood"
    for i in range(16):  # grey noise: nothing like the blobs the model was trained on
        rng = np.random.default_rng(500 + i)
        from PIL import Image

        save(Image.fromarray(rng.integers(100, 156, (48, 48, 3), dtype=np.uint8)), ood / f"n{i}.png")
    evaluate(
        run,
        "val",
        robustness=False,
        explain=False,
        decision=make_request(min_recall="c=0.9", reject=True, ood_dir=ood, max_false_accept=0.25),
    )
    from edgeclf.runtime.gate import c_runtime_rows

    export_run(
        run,
        base / "bundle",
        formats=["onnx", "openvino"],
        precisions=["fp32"],
        allow_failed=True,
        robustness=False,
        runtime_gate=c_runtime_rows,
    )
    return run, base / "bundle", ood


def test_evaluate_fits_on_validation_and_reports_the_policy_next_to_argmax(policy_bundle: tuple[Path, Path, Path]) -> None:
    run, _, ood = policy_bundle
    doc = json.loads((run / "decision.json").read_text())
    pol = DecisionPolicy.model_validate(doc["policy"])
    assert pol.objectives == ["reject", "min_recall"] and pol.fitted_on == "val"
    assert pol.details["min_recall"]["c"]["met"] is True
    assert doc["ood"]["val"] and doc["ood"]["test"] and not set(doc["ood"]["val"]) & set(doc["ood"]["test"])
    m = json.loads((run / "eval" / "val" / "metrics.json").read_text())
    d = m["decision"]
    assert d["policy"]["per_class"]["c"]["recall"] >= 0.9
    assert set(d) >= {"policy", "argmax", "ood", "describe"} and 0 <= d["ood"]["auroc"] <= 1
    assert d["ood"]["ood_images"] == len(doc["ood"]["val"])
    figs = run / "report" / "figures" / "val"
    for f in ("pr_curves.png", "risk_coverage.png", "ood_scores.png"):
        assert (figs / f).stat().st_size > 5000
    html = (run / "report" / "index.html").read_text()
    assert "Decision policy" in html and "risk-coverage" in html
    train = json.loads((run / "metrics.json").read_text())
    assert train["evaluation"]["val"]["decision"]["policy"]["recall"]["c"] >= 0.9


def test_export_ships_the_policy_and_gates_the_c_runtime_decisions(policy_bundle: tuple[Path, Path, Path]) -> None:
    from edgeclf.export.bundle import MIN_RUNTIME_VERSION_DECISION, read_bundle

    run, bundle, _ = policy_bundle
    m = read_bundle(bundle)
    assert m.decision is not None and m.decision.reject is not None and m.min_runtime_version == MIN_RUNTIME_VERSION_DECISION
    rows = json.loads((bundle / "parity.json").read_text())["table"]
    c_rows = [r for r in rows if r["format"].startswith("c-runtime")]
    assert {r["format"] for r in c_rows} == {"c-runtime (onnxruntime)", "c-runtime (openvino)"}
    for r in c_rows:
        assert r["decision_match"] == 1.0 and r["decision"]["images"] > 0, r
        assert r["status"] == "ok" and "c" in r["decision"]["targets"]
    py_rows = [r for r in rows if r["format"] in ("onnx", "openvino")]
    assert py_rows and all(r["decision_agreement"] is not None for r in py_rows)


POLICIES = {
    "argmax": None,
    "macro_f1": make_request(optimize="macro-f1"),
    "min_recall": make_request(min_recall="b=0.9"),
    "reject": make_request(reject=True, coverage=0.7),
    "costs": None,  # a hand-written cost matrix, below
}


@pytest.mark.parametrize("name", list(POLICIES))
def test_c_and_python_decide_alike_on_a_real_bundle_for_every_policy(
    policy_bundle: tuple[Path, Path, Path], tmp_path: Path, name: str
) -> None:
    from edgeclf.evaluate.decision import fit_policy
    from edgeclf.evaluate.predictor import load_images
    from edgeclf.evaluate.run import Evaluation
    from edgeclf.runtime.reference import BundleClassifier

    run, bundle, ood = policy_bundle
    ev = Evaluation(run)
    val = ev.split_data("val")
    t = float(ev.temperature()["temperature"])
    req = POLICIES[name]
    pol = fit_policy(req, val.logits, val.y, t, ev.run.classes) if req is not None else None
    if name == "costs":
        pol = DecisionPolicy(costs=[[0, 1, 1], [1, 0, 1], [9, 9, 0]])
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    p = b / "edgeclf.json"
    m = json.loads(p.read_text())
    m["decision"] = pol.model_dump(mode="json") if pol is not None else None
    p.write_text(json.dumps(m, sort_keys=True))
    images = load_images(ev.run.data_root, val.paths) + [np.asarray(blob_image(900 + i, 40)) for i in range(6)]
    py = BundleClassifier(b).classify(images, top_k=1)
    for backend in ("onnxruntime", "openvino"):
        with runtime.Classifier(b, backend=backend) as clf:
            got = clf.classify_decision(images)
        assert [g.index for g in got] == [q.decision.index for q in py]  # type: ignore[union-attr]
        assert [g.rule for g in got] == [q.decision.rule for q in py]  # type: ignore[union-attr]


def test_predict_json_and_the_registry_show_the_decision(policy_bundle: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgeclf.cli import app

    run, bundle, ood = policy_bundle
    img = next(ood.glob("*.png"))
    r = CliRunner().invoke(app, ["predict", str(bundle), str(img), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    from edgeclf.export.bundle import read_bundle

    describe = read_bundle(bundle).policy().describe()
    assert "reject<" in describe and doc["decision_policy"] == describe
    dec = doc["predictions"][0]["decision"]
    assert set(dec) == {"label", "unknown", "rule", "top_label", "probability", "score"}
    r = CliRunner().invoke(app, ["registry", "add", str(bundle), "--root", str(tmp_path / "reg"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["entry"]["decision"] == describe


def test_bad_policy_options_are_one_clear_error_in_the_cli(policy_bundle: tuple[Path, Path, Path]) -> None:
    from typer.testing import CliRunner

    from edgeclf.cli import app
    from edgeclf.errors import EdgeclfError

    run, _, _ = policy_bundle
    before = (run / "decision.json").read_bytes()
    for args, match in (
        (["--min-recall", "zebra=0.9"], "unknown class 'zebra'"),
        (["--min-recall", "c=2"], "(0, 1]"),
        (["--coverage", "0.9"], "add --reject"),
    ):
        r = CliRunner().invoke(app, ["evaluate", str(run), "--no-robustness", "--no-explain", *args])
        # the library's PolicyError (an EdgeclfError: one red line from the console script, no traceback)
        assert isinstance(r.exception, EdgeclfError) and match in str(r.exception), (r.output, r.exception)
    assert (run / "decision.json").read_bytes() == before  # nothing half-written


def test_a_flipped_bit_in_a_real_checkpoint_stops_evaluate_and_export(
    policy_bundle: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from edgeclf.errors import EdgeclfError
    from edgeclf.evaluate.run import Evaluation
    from edgeclf.export.pipeline import export_run

    run, _, _ = policy_bundle
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    best = copy / "checkpoints" / "best.pt"
    data = bytearray(best.read_bytes())
    data[len(data) // 3] ^= 0x10
    best.write_bytes(bytes(data))
    with pytest.raises(EdgeclfError, match="best.pt does not match its recorded SHA-256"):
        Evaluation(copy)
    with pytest.raises(EdgeclfError, match="best.pt does not match its recorded SHA-256"):
        export_run(copy, tmp_path / "bundle", formats=["onnx"], precisions=["fp32"], robustness=False)
    assert not (tmp_path / "bundle").exists()


def test_the_build_reports_the_policy_on_validation_and_test(policy_bundle: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from edgeclf.build import BuildOptions, _decision_lines, _stage_evaluate

    run, _, _ = policy_bundle
    out = tmp_path / "out"
    shutil.copytree(run, out / "run")
    for f in ("decision.json",):
        (out / "run" / f).unlink(missing_ok=True)
    opts = BuildOptions(
        profile="x86-64-avx2", data_dir=tmp_path, out=out, robustness=False, decision=make_request(min_recall="c=0.9")
    )
    res = _stage_evaluate(opts, out, lambda m: None)
    dec = res.decision
    assert dec is not None and dec.val is not None and dec.test is not None, dec
    assert dec.val.recall["c"] >= 0.9 and dec.test.argmax is not None
    text = "\n".join(_decision_lines(dec))
    assert "| recall c |" in text and "val policy" in text and "test policy" in text
