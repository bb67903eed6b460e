"""Bad input gets one clear error and loses nothing: data folders with hostile symlinks, output
paths of the wrong kind, interrupted exports, flags checked before anything is written,
images of the wrong type or layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeclf.errors import ConfigError, DataError
from tests.conftest import REPO, make_clean_dataset, make_synthetic_bundle


def test_directory_symlinks_never_leave_the_data_folder_or_loop(tmp_path: Path) -> None:
    from edgeclf.data._index import scan_folder

    root = make_clean_dataset(tmp_path / "data", {"cat": 4, "dog": 4, "fox": 4})
    os.symlink("..", root / "dog" / "dirloop")  # back to the data root: would file cat and fox under dog
    os.symlink("/", root / "cat" / "whole-disk")  # out of the data folder
    os.symlink(root / "fox", root / "fox" / "self")  # its own folder
    (root / "dog" / "inner").mkdir()
    (root / "dog" / "inner" / "extra.png").write_bytes((root / "dog" / "dog_000.png").read_bytes())
    os.symlink("inner", root / "dog" / "alias")  # inside the class: followed (visited once)
    os.symlink("loop-b.png", root / "cat" / "loop-a.png")  # a file symlink loop
    os.symlink("loop-a.png", root / "cat" / "loop-b.png")
    scan = scan_folder(root)
    by_class: dict[str, int] = {}
    for _, label in scan.files:
        by_class[label] = by_class.get(label, 0) + 1
    assert by_class == {"cat": 4, "dog": 5, "fox": 4}
    reasons = {p.path: p.reason for p in scan.ignored}
    assert "leaves the data folder" in reasons["cat/whole-disk"]
    assert "ancestor" in reasons["dog/dirloop"] and "ancestor" in reasons["fox/self"]
    unread = {p.path: p.reason for p in scan.unreadable}
    assert unread["cat/loop-a.png"] == "symlink loop" and unread["cat/loop-b.png"] == "symlink loop"


def test_drop_small_classes_that_drops_everything_is_an_error(tmp_path: Path) -> None:
    from edgeclf.data._index import index_dataset
    from edgeclf.data.split import SplitConfig, make_split

    root = make_clean_dataset(tmp_path / "data", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="every class"):
        make_split(index_dataset(root, workers=1), SplitConfig(drop_small_classes=True))


def test_output_paths_of_the_wrong_kind_are_one_clear_error(tmp_path: Path) -> None:
    from edgeclf.data.audit import audit
    from edgeclf.data.manifest import write_manifest
    from edgeclf.export.pipeline import export_run

    root = make_clean_dataset(tmp_path / "data", {"a": 3, "b": 3})
    f = tmp_path / "a-file"
    f.write_text("keep me")
    with pytest.raises(DataError, match="is a file"):
        audit(root, f)
    with pytest.raises(DataError, match="is a folder"):
        write_manifest(tmp_path, [])
    with pytest.raises(ConfigError, match="is a file"):
        export_run(tmp_path / "no-run", f)
    assert f.read_text() == "keep me"


def test_stale_export_temporaries_are_cleaned_only_when_ours_and_stale(tmp_path: Path) -> None:
    import socket

    from edgeclf.export.pipeline import WORK_MARKER, clean_stale_work

    out = tmp_path / "bundle"

    def temp(name: str, pid: int | None, host: str | None = None) -> Path:
        d = tmp_path / f".bundle.{name}"
        (d / "model.onnx").parent.mkdir(parents=True)
        (d / "model.onnx").write_bytes(b"x" * 100)
        if pid is not None:
            (d / WORK_MARKER).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": 0}))
        return d

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temp("dead", int(dead.stdout))  # a kill -9'd export of this host
    live = temp("live", os.getppid())  # a running process: never touched
    foreign = temp("nomarker", None)  # not ours
    old_remote = temp("remote", 1, host="another-host")  # another host, started long ago
    removed = clean_stale_work(out)
    assert set(removed) == {stale, old_remote}
    assert live.is_dir() and foreign.is_dir() and not stale.exists()


def test_train_checks_every_flag_before_writing(tmp_path: Path) -> None:
    root = make_clean_dataset(tmp_path / "data", {"a": 6, "b": 6})
    run = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeclf.cli",
            "train",
            "--data",
            str(root),
            "--backbone",
            "tf_efficientnet_lite0",
            "--out",
            str(run),
            "--batch-size",
            "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "batch_size" in (r.stderr + r.stdout) and "Traceback" not in r.stderr
    assert not run.exists() or not any(run.iterdir()), sorted(p.name for p in run.iterdir())


@pytest.mark.parametrize(
    "bad,match",
    [
        (42, "int"),
        (b"\x89PNG...", "bytes"),
        (np.zeros((3, 40, 4), np.uint8), "channels-first"),
        (np.zeros((3, 48, 48), np.uint8), "channels-first"),
        (np.zeros((48, 48, 3), np.float32), "uint8"),
    ],
)
def test_predict_refuses_bad_images_clearly(tmp_path: Path, bad: object, match: str) -> None:
    import edgeclf

    b = make_synthetic_bundle(tmp_path / "b")
    with pytest.raises(DataError, match=match):
        edgeclf.predict(b, bad)  # type: ignore[arg-type]


@pytest.mark.cpp
@pytest.mark.parametrize(
    "bad,match",
    [
        (b"\x89PNG...", "bytes"),
        (np.zeros((3, 40, 4), np.uint8), "channels-first"),
    ],
)
def test_the_c_runtime_face_refuses_the_same_images(tmp_path: Path, bad: object, match: str) -> None:
    runtime = pytest.importorskip("edgeclf.runtime")
    b = make_synthetic_bundle(tmp_path / "b")
    with runtime.Classifier(b) as clf, pytest.raises(DataError, match=match):
        clf.classify(bad)  # type: ignore[arg-type]


def test_predict_keeps_only_resized_copies(tmp_path: Path) -> None:
    """Each input is decoded and resized before the next is decoded (large inputs are not all held)."""
    from edgeclf.runtime.reference import BundleClassifier

    b = make_synthetic_bundle(tmp_path / "b", crop=32, resize=40)
    clf = BundleClassifier(b)
    seen: list[tuple[int, ...]] = []
    real = clf.runner
    clf.runner = lambda ims: (seen.extend(im.shape for im in ims), real(ims))[1]  # type: ignore[assignment]
    big = [np.full((800 + i, 1200, 3), 40 * i, np.uint8) for i in range(3)]
    from edgeclf.evaluate.metrics import softmax

    full = np.sort(softmax(np.asarray(real(big)), clf.manifest.temperature), axis=1)[:, ::-1]  # resized by the runner
    got = clf.classify(big, top_k=3)
    assert all(max(s[:2]) <= 60 for s in seen), seen  # the runner only ever saw the small copies
    assert np.allclose([g.probabilities for g in got], full, atol=1e-6)  # and gives what full-size inputs give


# ---- checkpoints are data too ------------------------------------------------------------------
def test_checkpoints_verify_their_recorded_hash(tmp_path: Path) -> None:
    import torch

    from edgeclf.train.loop import CheckpointError, checkpoint_digest_path, load_checkpoint, save_checkpoint

    p = tmp_path / "ck" / "best.pt"
    p.parent.mkdir()
    save_checkpoint(p, {"model": {"w": torch.arange(1000, dtype=torch.float32)}})
    assert load_checkpoint(p)["model"]["w"][999] == 999
    good = p.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01  # one bit
    p.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="does not match its recorded SHA-256"):
        load_checkpoint(p)
    p.write_bytes(good[:100] + b"\0" * (len(good) - 100))  # zeroed bytes
    with pytest.raises(CheckpointError, match="best.pt"):
        load_checkpoint(p)
    # a crash between the two renames of a save leaves the old and the new digest: both verify
    p.write_bytes(good)
    side = checkpoint_digest_path(p)
    side.write_text("0" * 64 + "\n" + side.read_text())
    assert load_checkpoint(p)["model"]["w"][1] == 1
    # an older run without the sidecar still loads
    side.unlink()
    assert load_checkpoint(p)["format"]


def test_deleting_the_ledger_does_not_reset_the_test_once_rule(tmp_path: Path) -> None:
    from edgeclf.evaluate.ledger import LEDGER, TestReuseError, check_and_record

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"evaluation": {"test": {"macro_f1": 0.5}}}))
    with pytest.raises(TestReuseError, match="is missing"):
        check_and_record(run, "a" * 64, "f", allow_reuse=False)
    assert not (run / LEDGER).exists()
    assert check_and_record(run, "a" * 64, "f", allow_reuse=True) is False
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "metrics.json").write_text(json.dumps({"evaluation": {"val": {}}}))
    assert check_and_record(fresh, "a" * 64, "f", allow_reuse=False) is False
