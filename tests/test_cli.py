"""The command line as a user meets it: help everywhere, JSON on stdout only, one red line on error."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeclf.cli import app
from tests.conftest import REPO, make_clean_dataset

runner = CliRunner()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgeclf.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["data"],
        ["data", "audit"],
        ["data", "split"],
        ["data", "elpv"],
        ["profiles"],
        ["profiles", "list"],
        ["profiles", "show"],
        ["demo"],
        ["backbones"],
        ["train"],
        ["evaluate"],
        ["label"],
        ["label", "suggest"],
        ["label", "audit"],
    ],
)
def test_every_command_has_help(cmd: list[str]) -> None:
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_audit_json_is_the_only_stdout(clean_dataset: Path) -> None:
    proc = run_cli("data", "audit", str(clean_dataset), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["num_images"] == 30 and [c["images"] for c in doc["classes"]] == [12, 10, 8]
    assert doc["imbalance_ratio"] == pytest.approx(1.5)


def test_split_writes_manifest_and_summary(clean_dataset: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "out" / "splits.csv"
    proc = run_cli("data", "split", str(clean_dataset), "--out", str(manifest), "--seed", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert manifest.read_text().startswith("path,label,sha256,group,split\n")
    summary = json.loads((tmp_path / "out" / "splits.summary.json").read_text())
    assert summary["fingerprint"] == doc["fingerprint"] and doc["fingerprint"].startswith("sha256:")
    assert sum(sum(c.values()) for c in doc["counts"].values()) == 30
    assert doc["cross_split_duplicate_pairs"] == 0


def test_user_error_is_one_red_line_without_traceback(tmp_path: Path) -> None:
    proc = run_cli("data", "audit", str(tmp_path / "nowhere"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error:") and "does not exist" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_small_class_error_through_cli(tmp_path: Path) -> None:
    root = make_clean_dataset(tmp_path / "d", {"a": 10, "b": 1})
    proc = run_cli("data", "split", str(root), "--out", str(tmp_path / "m.csv"))
    assert proc.returncode == 1 and "class 'b'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.csv").exists()  # nothing half-written


def test_usage_error_exit_code() -> None:
    proc = run_cli("data", "split")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_profiles_list_and_show_json() -> None:
    proc = run_cli("profiles", "list", "--json")
    names = [p["name"] for p in json.loads(proc.stdout)]
    assert {"jetson-orin", "jetson-orin-nano", "raspberry-pi-5", "x86-64-avx512", "x86-64-avx2"} <= set(names)
    shown = json.loads(run_cli("profiles", "show", "jetson-orin", "--json").stdout)
    assert shown["name"] == "jetson-orin" and shown["budgets"]["latency_ms_p95"] > 0
    bad = run_cli("profiles", "show", "no-such-device")
    assert bad.returncode == 1 and "available" in bad.stderr and "Traceback" not in bad.stderr


def test_version_flag() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("edgeclf ")


def test_demo_is_the_make_demo_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`edgeclf demo` runs the build the README and the Makefile describe, `--out` aside; nothing is built here."""
    import edgeclf.build
    from edgeclf.build.results import BuildRun
    from tests.build_documents import stage_results

    calls: list[edgeclf.build.BuildOptions] = []
    docs = stage_results()
    docs["train"]["quality_gates"] = {"every_class_recalled": {"passed": True, "classes": []}}
    done = BuildRun.model_validate({"out": "demo-out", "stages": [], "results": docs})

    def fake_build(opts: edgeclf.build.BuildOptions, **kwargs: object) -> BuildRun:
        calls.append(opts)
        return done

    monkeypatch.setattr(edgeclf.build, "build", fake_build)
    described = ["--profile", "auto", "--data", "elpv", "--out", "demo-out", "--backbones", "tf_efficientnet_lite0"]
    described += ["--image-size", "224"]
    for args in (["build", *described], ["demo"], ["demo", "--out", str(tmp_path / "elsewhere")]):
        res = runner.invoke(app, [*args, "--json"])
        assert res.exit_code == 0, (args, res.output, res.exception)
        assert json.loads(res.stdout) == done.model_dump(mode="json")
    built, demo, elsewhere = calls
    # the demo adds one recipe setting the command line above has no flag for (README: "finetune.unfreeze 2")
    assert demo.extra_train == {"finetune.unfreeze": 2}
    built = dataclasses.replace(built, extra_train=demo.extra_train)
    assert demo == built
    assert (demo.profile, demo.data_dir, demo.out, demo.backbones) == (
        "auto",
        Path("elpv"),
        Path("demo-out"),
        ["tf_efficientnet_lite0"],
    )
    assert elsewhere == dataclasses.replace(built, out=tmp_path / "elsewhere")

    recipe = (REPO / "Makefile").read_text(encoding="utf-8").split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert ".venv/bin/edgeclf demo" in recipe and "edgeclf build" not in recipe.split("\n", 1)[1]
