"""The bundle registry: verified adds, semantic versions, atomic promote, byte-identical rollback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from edgeclf._io import sha256_bytes
from edgeclf.cli import app
from edgeclf.export.bundle import MANIFEST, PARITY, ArtifactEntry, BundleError, BundleManifest, write_manifest
from edgeclf.registry import (
    POINTER,
    VERSIONS,
    Pointer,
    Registry,
    RegistryError,
    next_version,
    parse_version,
)
from tests.conftest import REPO, tiny_onnx_bytes

runner = CliRunner()

OK_SUMMARY = [
    {"format": "onnx", "precision": "fp32", "status": "ok", "agreement": 1.0, "delta_macro_f1": 0.0},
    {"format": "tensorrt", "precision": "fp32", "status": "skipped", "agreement": None, "delta_macro_f1": None},
]

#: a valid preprocessing spec (bundles are validated against the runtime's rules at load)
SPEC = {"resize_size": 36, "crop_size": 32, "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def make_bundle(
    path: Path, seed: int = 0, *, statuses: dict[str, str] | None = None, macro_f1: float = 0.9, with_parity: bool = True
) -> Path:
    """A small but valid bundle: one artifact with its real SHA-256, manifest, parity.json.

    ``statuses`` maps "format/precision" to the status written in the parity results
    (default: onnx/fp32 ok, tensorrt/fp32 skipped, as on a machine without TensorRT).
    """
    path.mkdir(parents=True)
    model = tiny_onnx_bytes(2, 32, seed)  # a real model: the registry opens it as a device would
    (path / "model.onnx").write_bytes(model)
    (path / "robustness.png").write_bytes(b"\x89PNG fake figure " + bytes([seed % 256]))
    summary = [dict(r) for r in OK_SUMMARY]
    for r in summary:
        r["status"] = (statuses or {}).get(f"{r['format']}/{r['precision']}", r["status"])
    manifest = BundleManifest(
        schema_version="1.0.0",
        min_runtime_version="0.1.0",
        name=f"demo-{seed}",
        created="2026-01-01T00:00:00+00:00",
        creator={"edgeclf": "0.1.0"},
        labels=["cat", "dog"],
        preprocess=SPEC,
        temperature=1.5,
        source_run={"run": f"run-{seed}"},
        dataset_fingerprint="sha256:" + "0" * 64,
        calibration_data={},
        metrics={"evaluation": {"val": {"macro_f1": macro_f1, "accuracy": macro_f1 + 0.01}}},
        artifacts=[
            ArtifactEntry(
                file="model.onnx",
                format="onnx",
                runtime="onnxruntime",
                precision="fp32",
                sha256=sha256_bytes(model),
                size_bytes=len(model),
                status="ok",
            )
        ],
        parity={"gates": {"fp32": {"min_agreement": 0.999}}, "summary": summary} if with_parity else {},
    )
    write_manifest(path, manifest)
    if with_parity:
        (path / PARITY).write_text(
            json.dumps(
                {
                    "split": "val",
                    "table": [{"format": r["format"], "precision": r["precision"], "status": r["status"]} for r in summary],
                    "artifacts": [
                        {
                            "format": r["format"],
                            "precision": r["precision"],
                            "status": r["status"],
                            "attempts": [
                                {
                                    "status": r["status"],
                                    "parity": {"failures": [] if r["status"] == "ok" else ["agreement 0.97 < 0.999"]},
                                }
                            ],
                        }
                        for r in summary
                    ],
                }
            )
        )
    return path


def tree_bytes(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture()
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


# ----------------------------------------------------------------------------- versions


def test_semver_parsing_and_next_version() -> None:
    assert parse_version("1.10.3") == (1, 10, 3)
    assert next_version([]) == "1.0.0"
    assert next_version(["1.0.0", "1.0.9", "1.0.10"]) == "1.0.11"  # numeric, not string, order
    assert next_version(["0.9.0", "2.1.4", "1.5.0"]) == "2.1.5"
    for bad in ("1.0", "v1.0.0", "01.0.0", "1.0.0-rc1", "../1.0.0"):
        with pytest.raises(RegistryError, match="semantic version"):
            parse_version(bad)


def test_add_assigns_patch_versions_and_stores_a_verified_copy(reg: Registry, tmp_path: Path) -> None:
    a = reg.add(make_bundle(tmp_path / "a", 1))
    b = reg.add(make_bundle(tmp_path / "b", 2))
    assert (a.entry.version, b.entry.version) == ("1.0.0", "1.0.1")
    assert not a.already_present and not b.already_present
    assert tree_bytes(Path(a.path)) == tree_bytes(tmp_path / "a")
    assert tree_bytes(Path(b.path)) == tree_bytes(tmp_path / "b")
    assert a.entry.content_hash != b.entry.content_hash and a.entry.content_hash.startswith("sha256:")
    assert a.entry.metrics.macro_f1 == pytest.approx(0.9) and a.entry.metrics.split == "val"
    assert a.entry.parity.verdict == "passed" and a.entry.parity.skipped == ["tensorrt/fp32"]
    index = json.loads(reg.index_path.read_text())
    assert [e["version"] for e in index["entries"]] == ["1.0.0", "1.0.1"]
    assert reg.current() is None  # adding never promotes
    # nothing temporary is left beside the versions
    assert sorted(p.name for p in (reg.root / VERSIONS).iterdir()) == ["1.0.0", "1.0.1"]


def test_explicit_version_and_duplicate_version_refused(reg: Registry, tmp_path: Path) -> None:
    reg.add(make_bundle(tmp_path / "a", 1), version="2.3.0")
    assert reg.add(make_bundle(tmp_path / "b", 2)).entry.version == "2.3.1"
    with pytest.raises(RegistryError, match="version 2.3.0 is already in the registry"):
        reg.add(make_bundle(tmp_path / "c", 3), version="2.3.0")
    with pytest.raises(RegistryError, match="semantic version"):
        reg.add(make_bundle(tmp_path / "d", 4), version="2.4")
    assert [e.version for e in reg.entries()] == ["2.3.0", "2.3.1"]


def test_identical_content_is_reported_as_already_there(reg: Registry, tmp_path: Path) -> None:
    first = reg.add(make_bundle(tmp_path / "a", 1))
    again = reg.add(make_bundle(tmp_path / "copy-of-a", 1))  # same bytes, another folder
    assert again.already_present and again.entry.version == first.entry.version == "1.0.0"
    assert len(reg.entries()) == 1
    with pytest.raises(RegistryError, match="already in the registry as version 1.0.0"):
        reg.add(tmp_path / "a", version="5.0.0")


def test_tampered_bundle_refused_at_add(reg: Registry, tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "a", 1)
    data = bytearray((b / "model.onnx").read_bytes())
    data[100] ^= 0xFF  # same size, different bytes
    (b / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its SHA-256"):
        reg.add(b)
    assert not (reg.root / VERSIONS).exists() or not any((reg.root / VERSIONS).iterdir())


def test_not_a_bundle_and_not_a_registry(reg: Registry, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not an edgeclf bundle"):
        reg.add(tmp_path / "empty")
    with pytest.raises(RegistryError, match="not an edgeclf registry"):
        reg.entries()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("unrelated")
    with pytest.raises(RegistryError, match="exists and is not an edgeclf registry"):
        Registry(busy).add(make_bundle(tmp_path / "a", 1))
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]  # left untouched


def test_interrupted_add_leaves_no_half_version(reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg.add(make_bundle(tmp_path / "a", 1))
    b = make_bundle(tmp_path / "b", 2)
    calls = {"n": 0}
    real = shutil.copyfile

    def flaky(src: Any, dst: Any, *a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(shutil, "copyfile", flaky)
    with pytest.raises(OSError, match="No space"):
        reg.add(b)
    monkeypatch.setattr(shutil, "copyfile", real)
    assert [p.name for p in (reg.root / VERSIONS).iterdir()] == ["1.0.0"]
    assert [e.version for e in reg.entries()] == ["1.0.0"]
    # a crash (no cleanup at all) leaves a temporary folder: the next add sweeps it away
    (reg.root / VERSIONS / ".add-crashed").mkdir()
    (reg.root / VERSIONS / ".add-crashed" / "model.onnx").write_bytes(b"half")
    assert reg.add(b).entry.version == "1.0.1"
    assert sorted(p.name for p in (reg.root / VERSIONS).iterdir()) == ["1.0.0", "1.0.1"]


# ----------------------------------------------------------------------------- promote / rollback


def test_promote_and_rollback_restore_bytes(reg: Registry, tmp_path: Path) -> None:
    srcs = [make_bundle(tmp_path / f"b{i}", i) for i in range(3)]
    versions = [reg.add(s).entry.version for s in srcs]
    for v in versions:
        ch = reg.promote(v)
        assert ch.changed and ch.current == v
    assert reg.current().stack == versions  # type: ignore[union-attr]
    assert tree_bytes(reg.path("current")) == tree_bytes(srcs[2])

    ch = reg.rollback()
    assert (ch.previous, ch.current) == ("1.0.2", "1.0.1")
    assert tree_bytes(reg.path("current")) == tree_bytes(srcs[1])
    ch = reg.rollback()
    assert ch.current == "1.0.0" and tree_bytes(reg.path("current")) == tree_bytes(srcs[0])
    with pytest.raises(RegistryError, match="no earlier one"):
        reg.rollback()
    assert reg.current().version == "1.0.0"  # type: ignore[union-attr]

    events = json.loads(reg.index_path.read_text())["events"]
    assert [(e["action"], e["version"], e["previous"]) for e in events] == [
        ("promote", "1.0.0", None),
        ("promote", "1.0.1", "1.0.0"),
        ("promote", "1.0.2", "1.0.1"),
        ("rollback", "1.0.1", "1.0.2"),
        ("rollback", "1.0.0", "1.0.1"),
    ]


def test_rollback_goes_to_previously_promoted_not_previous_version(reg: Registry, tmp_path: Path) -> None:
    for i in range(3):
        reg.add(make_bundle(tmp_path / f"b{i}", i))
    reg.promote("1.0.2")
    reg.promote("1.0.0")
    assert reg.rollback().current == "1.0.2"
    again = reg.promote("1.0.2")  # already current: nothing changes
    assert not again.changed and reg.current().stack == ["1.0.2"]  # type: ignore[union-attr]


def test_promote_refuses_failed_parity(reg: Registry, tmp_path: Path) -> None:
    good = reg.add(make_bundle(tmp_path / "good", 1)).entry.version
    bad = reg.add(make_bundle(tmp_path / "bad", 2, statuses={"onnx/fp32": "parity_failed"}))
    assert bad.entry.parity.verdict == "failed"
    assert bad.entry.parity.failures == ["onnx/fp32: parity_failed (agreement 0.97 < 0.999)"]
    reg.promote(good)
    with pytest.raises(
        RegistryError,
        match=r"cannot be promoted: its parity gates did not pass "
        r"\(onnx/fp32: parity_failed \(agreement 0.97 < 0.999\)\)",
    ):
        reg.promote(bad.entry.version)
    assert reg.current().version == good  # type: ignore[union-attr]


def test_promote_refuses_export_failure_gate_failure_and_missing_parity(reg: Registry, tmp_path: Path) -> None:
    v1 = reg.add(make_bundle(tmp_path / "a", 1, statuses={"tensorrt/fp32": "export_failed"})).entry
    assert v1.parity.verdict == "failed"
    b = make_bundle(tmp_path / "b", 2)
    m = json.loads((b / MANIFEST).read_text())
    m["parity"]["gates"]["int8"] = {"passed": False}
    write_manifest(b, BundleManifest.model_validate(m))
    v2 = reg.add(b).entry
    assert v2.parity.verdict == "failed" and any("gate int8 failed" in f for f in v2.parity.failures)
    v3 = reg.add(make_bundle(tmp_path / "c", 3, with_parity=False)).entry
    assert v3.parity.verdict == "missing"
    for v in (v1, v2, v3):
        with pytest.raises(RegistryError, match="cannot be promoted"):
            reg.promote(v.version)
    assert reg.current() is None


def test_promote_and_rollback_refuse_a_stored_copy_that_changed(reg: Registry, tmp_path: Path) -> None:
    for i in range(3):
        reg.add(make_bundle(tmp_path / f"b{i}", i))
    reg.promote("1.0.0")
    reg.promote("1.0.1")
    (reg.root / VERSIONS / "1.0.0" / "robustness.png").write_bytes(b"edited")  # not an artifact, still content
    with pytest.raises(RegistryError, match="changed on disk since it was added"):
        reg.rollback()
    (reg.root / VERSIONS / "1.0.2" / "model.onnx").write_bytes(b"x")
    with pytest.raises(RegistryError, match="version 1.0.2 is damaged"):
        reg.promote("1.0.2")
    assert reg.current().version == "1.0.1"  # type: ignore[union-attr]


def test_unknown_version_and_nothing_promoted(reg: Registry, tmp_path: Path) -> None:
    reg.add(make_bundle(tmp_path / "a", 1))
    with pytest.raises(RegistryError, match=r"version 9.9.9 is not in the registry .*versions: 1.0.0"):
        reg.promote("9.9.9")
    with pytest.raises(RegistryError, match="nothing is promoted"):
        reg.path("current")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()


def test_pointer_is_always_complete_during_repeated_promotes(reg: Registry, tmp_path: Path) -> None:
    versions = [reg.add(make_bundle(tmp_path / f"b{i}", i)).entry.version for i in range(2)]
    hashes = {e.version: e.content_hash for e in reg.entries()}
    reg.promote(versions[0])
    pointer = reg.root / POINTER
    stop = threading.Event()
    seen: list[str] = []
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                raw = pointer.read_bytes()
            except FileNotFoundError:
                problems.append("pointer missing")
                continue
            try:
                p = Pointer.model_validate(json.loads(raw))
            except Exception as e:  # noqa: BLE001 - any parse failure is the bug under test
                problems.append(f"{e!r}: {raw[:80]!r}")
                continue
            if p.content_hash != hashes.get(p.version) or p.path != f"{VERSIONS}/{p.version}" or p.stack[-1] != p.version:
                problems.append(f"inconsistent pointer {p}")
            seen.append(p.version)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(61):  # ends on versions[1]
            reg.promote(versions[(i + 1) % 2])
        deadline = time.monotonic() + 10
        while (not seen or seen[-1] != versions[1]) and time.monotonic() < deadline:
            time.sleep(0.01)  # let the reader catch up with the last switch
    finally:
        stop.set()
        t.join()
    assert problems == []
    assert set(seen) == set(versions)  # the reader did observe both sides of the switch
    assert [p.name for p in reg.root.iterdir() if p.name.endswith(".tmp")] == []


# ----------------------------------------------------------------------------- CLI


def test_cli_add_list_promote_rollback_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "reg"
    a, b = make_bundle(tmp_path / "a", 1, macro_f1=0.81), make_bundle(tmp_path / "b", 2, macro_f1=0.87)
    res = runner.invoke(app, ["registry", "add", str(a), "--root", str(root), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["entry"]["version"] == "1.0.0"
    monkeypatch.setenv("EDGECLF_REGISTRY", str(root))  # the default root from the environment
    res = runner.invoke(app, ["registry", "add", str(b), "--version", "1.1.0"])
    assert res.exit_code == 0 and "version 1.1.0" in res.stdout
    res = runner.invoke(app, ["registry", "add", str(b)])
    assert res.exit_code == 0 and "already in the registry as version 1.1.0" in res.stdout

    assert runner.invoke(app, ["registry", "promote", "1.0.0"]).exit_code == 0
    res = runner.invoke(app, ["registry", "promote", "1.1.0", "--json"])
    assert json.loads(res.stdout) == {
        "action": "promote",
        "previous": "1.0.0",
        "current": "1.1.0",
        "changed": True,
        "path": str((root / VERSIONS / "1.1.0").resolve()),
    }

    doc = json.loads(runner.invoke(app, ["registry", "list", "--json"]).stdout)
    assert doc["current"] == "1.1.0" and doc["stack"] == ["1.0.0", "1.1.0"]
    assert [(v["version"], v["current"], v["metrics"]["macro_f1"], v["parity"]["verdict"]) for v in doc["versions"]] == [
        ("1.0.0", False, 0.81, "passed"),
        ("1.1.0", True, 0.87, "passed"),
    ]
    from edgeclf import cli

    monkeypatch.setattr(cli.out, "_width", 200)  # wide enough for every column, whatever COLUMNS was at import
    table = runner.invoke(app, ["registry", "list"], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    row = next(line for line in table.stdout.splitlines() if "1.1.0" in line)
    assert "*" in row and "0.8700" in row and "passed" in row
    assert doc["versions"][1]["content_hash"].removeprefix("sha256:")[:12] in row

    res = runner.invoke(app, ["registry", "path", "current"])
    assert res.stdout == f"{(root / VERSIONS / '1.1.0').resolve()}\n"
    res = runner.invoke(app, ["registry", "rollback"])
    assert res.exit_code == 0 and "1.1.0 -> 1.0.0" in res.stdout
    current = Path(runner.invoke(app, ["registry", "path", "current"]).stdout.strip())
    assert tree_bytes(current) == tree_bytes(a)


def test_cli_refused_promotion_is_one_red_line(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    Registry(root).add(make_bundle(tmp_path / "bad", 1, statuses={"onnx/fp32": "parity_failed"}))
    proc = subprocess.run(
        [sys.executable, "-m", "edgeclf.cli", "registry", "promote", "1.0.0", "--root", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error:") and "cannot be promoted" in proc.stderr and "parity_failed" in proc.stderr
    assert not (root / POINTER).exists()


@pytest.mark.parametrize(
    "cmd",
    [
        ["registry"],
        ["registry", "add"],
        ["registry", "list"],
        ["registry", "promote"],
        ["registry", "rollback"],
        ["registry", "path"],
    ],
)
def test_registry_commands_have_help(cmd: list[str]) -> None:
    res = runner.invoke(app, [*cmd, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output
    if len(cmd) == 2:
        assert "--root" in res.output and "EDGECLF_REGISTRY" in res.output


def test_int8_retry_that_passed_counts_as_passed(tmp_path: Path) -> None:
    """The export pipeline retries a failing int8 artifact; only the final status counts."""
    b = make_bundle(tmp_path / "a", 1)
    doc = json.loads((b / PARITY).read_text())
    doc["artifacts"].append(
        {
            "format": "onnx",
            "precision": "int8",
            "status": "ok",
            "attempts": [
                {"status": "parity_failed", "parity": {"failures": ["recall of 'dog' drops 0.0323 > 0.03"]}},
                {"status": "ok", "parity": {"failures": []}},
            ],
        }
    )
    (b / PARITY).write_text(json.dumps(doc))
    from edgeclf.export.bundle import read_bundle
    from edgeclf.registry import parity_verdict

    assert parity_verdict(b, read_bundle(b)).verdict == "passed"
    doc["artifacts"][-1]["status"] = "parity_failed"
    doc["artifacts"][-1]["attempts"][-1] = {"status": "parity_failed", "parity": {"failures": ["agreement 0.95 < 0.98"]}}
    (b / PARITY).write_text(json.dumps(doc))
    v = parity_verdict(b, read_bundle(b))
    assert v.verdict == "failed" and v.failures == ["onnx/int8: parity_failed (agreement 0.95 < 0.98)"]


def test_add_stopped_before_the_index_write_is_recorded_by_the_next_add(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgeclf.registry as registry_mod

    reg.add(make_bundle(tmp_path / "a", 1))
    real = registry_mod.write_json

    def crash_on_index(path: Any, obj: Any) -> None:
        if Path(path) == reg.index_path:
            raise KeyboardInterrupt  # stopped after the rename, before the index write
        real(path, obj)

    monkeypatch.setattr(registry_mod, "write_json", crash_on_index)
    with pytest.raises(KeyboardInterrupt):
        reg.add(make_bundle(tmp_path / "b", 2))
    monkeypatch.setattr(registry_mod, "write_json", real)
    assert [e.version for e in reg.entries()] == ["1.0.0"]  # the index never saw 1.0.1
    c = reg.add(make_bundle(tmp_path / "c", 3))
    assert c.entry.version == "1.0.2"  # 1.0.1 stays taken ...
    assert [e.version for e in reg.entries()] == ["1.0.0", "1.0.1", "1.0.2"]  # ... and is recorded
    assert reg.entry("1.0.1").name == "demo-2"
    assert reg.add(tmp_path / "b").already_present
    assert tree_bytes(reg.path("1.0.1")) == tree_bytes(tmp_path / "b")


def test_metrics_summary_prefers_test_then_val_then_finetuned(tmp_path: Path) -> None:
    from edgeclf.export.bundle import read_bundle
    from edgeclf.registry import metrics_summary

    m = read_bundle(make_bundle(tmp_path / "a", 1))
    m.metrics = {
        "finetuned": {"macro_f1": 0.5},
        "evaluation": {"val": {"macro_f1": 0.7, "accuracy": 0.8}, "test": {"macro_f1": 0.6, "accuracy": 0.65}},
    }
    assert metrics_summary(m).model_dump() == {"split": "test", "macro_f1": 0.6, "accuracy": 0.65}
    del m.metrics["evaluation"]["test"]
    assert metrics_summary(m).macro_f1 == 0.7
    m.metrics = {"finetuned": {"macro_f1": 0.5}, "evaluation": {"val": {"macro_f1": "n/a"}}}
    assert metrics_summary(m).model_dump() == {"split": "val", "macro_f1": 0.5, "accuracy": None}
    m.metrics = {}
    assert metrics_summary(m).macro_f1 is None


def test_promote_refuses_a_model_that_never_predicts_a_class(reg: Registry, tmp_path: Path) -> None:
    good = reg.add(make_bundle(tmp_path / "good", 1)).entry.version
    b = make_bundle(tmp_path / "weak", 2)
    m = json.loads((b / MANIFEST).read_text())
    m["metrics"]["quality_gates"] = {"every_class_recalled": {"passed": False, "classes": ["dog"], "rule": "recall > 0"}}
    write_manifest(b, BundleManifest.model_validate(m))
    weak = reg.add(b).entry.version  # stored, so it can be inspected ...
    reg.promote(good)
    with pytest.raises(
        RegistryError,
        match=r"cannot be promoted: model quality: gate every_class_recalled failed "
        r"\(validation recall 0 for: dog\)",
    ):
        reg.promote(weak)  # ... but never served
    assert reg.current().version == good  # type: ignore[union-attr]


def _edit(b: Path, **changes: object) -> None:
    m = json.loads((b / "edgeclf.json").read_text())
    m.update(changes)
    (b / "edgeclf.json").write_text(json.dumps(m, sort_keys=True))


@pytest.mark.parametrize(
    "change,match",
    [
        ({"labels": ["cat"]}, "labels"),  # cut labels: 1 label for a 2-output model
        ({"temperature": -1.0}, "temperature"),
        ({"labels": ["cat", "cat"]}, "more than once"),
    ],
)
def test_add_runs_the_full_load_validation(reg: Registry, tmp_path: Path, change: dict, match: str) -> None:
    b = make_bundle(tmp_path / "b")
    _edit(b, **change)
    with pytest.raises(BundleError, match=match):
        reg.add(b)
    assert not (reg.root / VERSIONS).exists() or not any((reg.root / VERSIONS).iterdir())


def test_add_refuses_a_model_outside_the_bundle(reg: Registry, tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes((b / "model.onnx").read_bytes())
    m = json.loads((b / "edgeclf.json").read_text())
    m["artifacts"][0]["file"] = str(outside)
    (b / "edgeclf.json").write_text(json.dumps(m, sort_keys=True))
    with pytest.raises(BundleError, match="plain file name"):
        reg.add(b)


def test_a_deleted_version_folder_is_repaired_by_re_adding(reg: Registry, tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b")
    reg.add(b)
    reg.promote("1.0.0")
    shutil.rmtree(reg.root / VERSIONS / "1.0.0")
    # promote no longer answers "already current" for a version that is not there
    with pytest.raises(RegistryError, match="missing; re-add the bundle"):
        reg.promote("1.0.0")
    res = reg.add(b)  # what every error message advises: it copies the bundle again
    assert res.already_present and res.repaired and res.entry.version == "1.0.0"
    assert tree_bytes(reg.root / VERSIONS / "1.0.0") == tree_bytes(b)
    assert reg.promote("1.0.0").changed is False  # current, and really there again
    # a damaged (not deleted) copy is repaired the same way
    (reg.root / VERSIONS / "1.0.0" / "model.onnx").write_bytes(b"garbage")
    assert reg.add(b).repaired
    assert tree_bytes(reg.root / VERSIONS / "1.0.0") == tree_bytes(b)
