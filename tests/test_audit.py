"""Audit of a folder full of trouble: nothing crashes, everything is named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclf.data._index import duplicate_groups, index_dataset, near_duplicate_pairs, scan_folder
from edgeclf.data.audit import audit
from edgeclf.errors import DataError
from tests.conftest import blob_image, png_bomb, save


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    root = tmp_path / "messy"
    for i in range(5):
        save(blob_image(100 + i), root / "cat" / f"cat{i}.png")
    for i in range(3):
        save(blob_image(200 + i), root / "dog" / f"dog{i}.jpg", quality=95)
    (root / "cat" / "zero.jpg").write_bytes(b"")
    full = save(blob_image(300, 256), root / "cat" / "full.jpg")
    (root / "cat" / "trunc.jpg").write_bytes(full.read_bytes()[:400])
    full.unlink()
    (root / "cat" / "notes.jpg").write_text("not an image")
    (root / "cat" / "README.txt").write_text("a stray text file")
    save(blob_image(400).convert("CMYK"), root / "dog" / "cmyk.jpg")
    save(Image.fromarray(np.full((16, 16), 30000, dtype=np.uint16)), root / "dog" / "deep16.png")
    save(blob_image(401).convert("P"), root / "dog" / "palette.png")
    save(blob_image(402).convert("RGBA"), root / "dog" / "alpha.png")
    save(Image.new("RGB", (1, 1), (1, 2, 3)), root / "dog" / "dot.png")
    save(blob_image(403), root / "dog" / "ñandú_猫.png")
    png_bomb(root / "dog" / "bomb.png")
    save(blob_image(404), root / "bird" / "only.png")  # a class with one image
    (root / "empty").mkdir()  # an empty class folder
    os.symlink(root / "cat", root / "cat" / "loop")  # a symlink loop
    # exact duplicate inside a class, and across classes (a label conflict)
    (root / "cat" / "cat0_copy.png").write_bytes((root / "cat" / "cat0.png").read_bytes())
    (root / "dog" / "cat1_as_dog.png").write_bytes((root / "cat" / "cat1.png").read_bytes())
    # near-duplicate: a re-encoded, slightly resized copy with another label
    blob_image(101).resize((60, 60)).save(root / "dog" / "cat1_resized.jpg", quality=90)
    return root


def test_audit_names_every_problem_and_survives(messy: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    report = audit(messy, out)
    reasons = {p.path: p.reason for p in report.unreadable}
    assert "0 bytes" in reasons["cat/zero.jpg"]
    assert "truncated" in reasons["cat/trunc.jpg"]
    assert "not an image" in reasons["cat/notes.jpg"]
    assert "decompression bomb" in reasons["dog/bomb.png"]
    ignored = {p.path: p.reason for p in report.ignored}
    assert "suffix" in ignored["cat/README.txt"]
    assert "symlink loop" in ignored["cat/loop"]
    counts = {c.name: c.images for c in report.classes}
    assert counts == {"bird": 1, "cat": 6, "dog": 11, "empty": 0}
    assert report.empty_classes == ["empty"]
    assert report.imbalance_ratio == pytest.approx(11.0)
    assert {"RGB", "CMYK", "P", "RGBA", "I;16"} <= set(report.modes)
    assert any(w.path == "dog/dot.png" and "tiny" in w.reason for w in report.warnings)
    assert "dog/ñandú_猫.png" not in reasons
    exact = {tuple(sorted(e.paths)): e for e in report.exact_duplicates}
    assert not exact[("cat/cat0.png", "cat/cat0_copy.png")].label_conflict
    assert exact[("cat/cat1.png", "dog/cat1_as_dog.png")].label_conflict
    near = {(p.a, p.b) for p in report.near_duplicates} | {(p.b, p.a) for p in report.near_duplicates}
    assert ("cat/cat1.png", "dog/cat1_resized.jpg") in near
    assert report.label_conflicts >= 2
    doc = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    assert doc["num_images"] == report.num_images == 18
    assert sorted(doc["sample_grids"]) == ["bird", "cat", "dog"]
    for rel in doc["sample_grids"].values():
        with Image.open(out / rel) as grid:
            assert grid.size[0] > 100 and grid.size[1] > 100


def test_missing_and_flat_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(tmp_path / "nope")
    save(blob_image(1), tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_folder(tmp_path / "flat")


def test_near_duplicate_pairs_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=50, dtype=np.uint64)
    flips = np.array([1 << int(b) for b in rng.integers(0, 64, size=50)], dtype=np.uint64)
    hashes = np.concatenate([base, base ^ flips])  # 50 pairs at distance 1
    got = near_duplicate_pairs(hashes, 6, block=7)
    want = [
        (i, j, bin(int(hashes[i]) ^ int(hashes[j])).count("1"))
        for i in range(len(hashes))
        for j in range(i + 1, len(hashes))
        if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 6
    ]
    assert sorted(got) == sorted(want)
    assert len(got) >= 50


def test_groups_are_transitive_and_name_independent(clean_dataset: Path) -> None:
    index = index_dataset(clean_dataset, workers=1)
    recs = index.records
    # chain a-b, b-c: all three share a group; the id comes from content, not names
    groups = duplicate_groups(recs, [(0, 1, 2), (1, 2, 3)])
    assert groups[0] == groups[1] == groups[2]
    assert groups[3] != groups[0]
    assert groups[0] == "g" + min(r.sha256 for r in recs[:3])[:16]


def test_parallel_and_serial_hashing_agree(clean_dataset: Path) -> None:
    serial = index_dataset(clean_dataset, workers=1)
    parallel = index_dataset(clean_dataset, workers=2)
    assert serial.records == parallel.records
