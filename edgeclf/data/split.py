"""Leak-free, stratified train/val/test split of a duplicate-grouped data set.

The rule, in full (it is what makes the split reproducible and stable):

1. Images linked by exact or near duplication form a *group* (see
   :mod:`edgeclf.data._index`); a group goes to one split as a whole, so no
   near-duplicate pair ever straddles two splits.
2. A group's class is its members' majority label (ties: first by name).
3. Within each class, groups are ordered by ``key = sha256(f"{seed}:{group}")``.
   Walking that order, a group goes to ``test`` while it fits in the class's
   test quota (``round(test * images)``, at least 1), else to ``val`` while it
   fits there, else to ``train``. A group too large for either quota goes to
   ``train``. If a split is still empty, the smallest group of ``train`` moves
   there, so every class appears in every split.

Same data + same seed = byte-identical manifest. A group's key does not depend
on any other image, so adding images later only moves the few groups that sit
at a quota boundary of their class; everything else keeps its split.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from edgeclf.data._index import METADATA_FILE, NEAR_DUPLICATE_BITS, DatasetIndex, ProgressFn, index_dataset
from edgeclf.data.manifest import SPLITS, ManifestRow
from edgeclf.errors import ConfigError, DataError


@dataclass(frozen=True)
class SplitConfig:
    val: float = 0.15
    test: float = 0.15
    seed: int = 0
    drop_small_classes: bool = False

    def validate(self) -> None:
        for name, v in (("val", self.val), ("test", self.test)):
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"--{name} must be in [0, 1), got {v}")
        if self.val + self.test >= 1.0:
            raise ConfigError(f"--val + --test must leave images for training, got {self.val + self.test:.2f}")

    @property
    def fractions(self) -> dict[str, float]:
        return {"test": self.test, "val": self.val}

    @property
    def active_splits(self) -> list[str]:
        return ["train"] + [s for s in ("val", "test") if self.fractions[s] > 0]


@dataclass
class SplitResult:
    rows: list[ManifestRow]
    dropped_classes: dict[str, str] = field(default_factory=dict)
    #: near-duplicate / exact-duplicate pairs whose two images sit in different splits.
    leaked_pairs: int = 0
    #: the same count for a naive stratified random split that ignores groups.
    naive_leaked_pairs: int = 0


def _key(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()


def duplicate_pairs(index: DatasetIndex) -> list[tuple[int, int]]:
    """Every exact-duplicate and near-duplicate pair of the index, as record indices."""
    pairs = [(i, j) for i, j, _ in index.near_pairs]
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(index.records):
        by_sha[r.sha256].append(i)
    for idx in by_sha.values():
        pairs.extend((idx[a], idx[b]) for a in range(len(idx)) for b in range(a + 1, len(idx)))
    return pairs


def count_leaks(splits: list[str], pairs: list[tuple[int, int]]) -> int:
    return sum(1 for i, j in pairs if splits[i] != splits[j])


def naive_split(labels: list[str], cfg: SplitConfig) -> list[str]:
    """A stratified random split that ignores duplicate groups (for comparison only)."""
    rng = np.random.default_rng(cfg.seed)
    out = ["train"] * len(labels)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_label[lab].append(i)
    for idx in by_label.values():
        perm = rng.permutation(idx).tolist()
        n_test, n_val = round(cfg.test * len(idx)), round(cfg.val * len(idx))
        for i in perm[:n_test]:
            out[i] = "test"
        for i in perm[n_test : n_test + n_val]:
            out[i] = "val"
    return out


def _assign_class(groups: list[tuple[str, int]], n_images: int, cfg: SplitConfig) -> dict[str, str]:
    """Assign one class's groups (id, size) to splits; see the module docstring."""
    quota = {s: (max(1, round(f * n_images)) if f > 0 else 0) for s, f in cfg.fractions.items()}
    filled = {"test": 0, "val": 0}
    assigned: dict[str, str] = {}
    for gid, size in sorted(groups, key=lambda g: _key(cfg.seed, g[0])):
        for s in ("test", "val"):
            if quota[s] and filled[s] + size <= quota[s]:
                assigned[gid], filled[s] = s, filled[s] + size
                break
        else:
            assigned[gid] = "train"
    sizes = dict(groups)
    for s in ("test", "val"):
        if quota[s] and filled[s] == 0:
            train = sorted((g for g, a in assigned.items() if a == "train"), key=lambda g: (sizes[g], _key(cfg.seed, g)))
            if len(train) > 1:
                assigned[train[0]] = s
                filled[s] += sizes[train[0]]
    return assigned


def make_split(index: DatasetIndex, cfg: SplitConfig, extra: dict[str, dict[str, str]] | None = None) -> SplitResult:
    """Split an indexed data set; raise :class:`DataError` if a class is too small."""
    cfg.validate()
    records = index.records
    if not records:
        raise DataError(f"{index.root} has no readable images")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(index.groups):
        members[g].append(i)
    group_label: dict[str, str] = {}
    for g, idx in members.items():
        votes = Counter(records[i].label for i in idx)
        group_label[g] = min(votes, key=lambda lab: (-votes[lab], lab))
    by_class: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for g, idx in members.items():
        by_class[group_label[g]].append((g, len(idx)))

    needed = len(cfg.active_splits)
    dropped: dict[str, str] = {}
    for cls in index.classes:
        n_groups = len(by_class.get(cls, []))
        if n_groups < needed:
            why = (
                f"class '{cls}' has {n_groups} distinct image group(s) (after merging duplicates) "
                f"but needs at least {needed} to appear in {', '.join(cfg.active_splits)}"
            )
            if not cfg.drop_small_classes:
                raise DataError(why + "; add images, or pass --drop-small-classes to leave it out")
            dropped[cls] = why
    if dropped and len(dropped) == len(index.classes):
        raise DataError(
            f"--drop-small-classes would leave out every class ({'; '.join(dropped.values())}); "
            "there is nothing to split: add images"
        )
    split_of_group: dict[str, str] = {}
    for cls, groups in by_class.items():
        if cls in dropped:
            continue
        n_images = sum(size for _, size in groups)
        split_of_group.update(_assign_class(groups, n_images, cfg))

    extra = extra or {}
    rows: list[ManifestRow] = []
    kept: list[int] = []
    for i, r in enumerate(records):
        g = index.groups[i]
        if group_label[g] in dropped:
            continue
        kept.append(i)
        rows.append(
            ManifestRow(
                path=r.path, label=r.label, sha256=r.sha256, group=g, split=split_of_group[g], extra=extra.get(r.path, {})
            )
        )
    for s in cfg.active_splits:
        missing = sorted({r.label for r in rows} - {r.label for r in rows if r.split == s})
        if missing:
            raise DataError(f"class(es) {', '.join(missing)} ended up with no images in '{s}'; add images")

    pairs = duplicate_pairs(index)
    splits_all = ["dropped"] * len(records)
    for i, row in zip(kept, rows, strict=False):
        splits_all[i] = row.split
    kept_set = set(kept)
    kept_pairs = [(i, j) for i, j in pairs if i in kept_set and j in kept_set]
    naive = naive_split([r.label for r in records], cfg)
    return SplitResult(
        rows=rows,
        dropped_classes=dropped,
        leaked_pairs=count_leaks(splits_all, kept_pairs),
        naive_leaked_pairs=count_leaks(naive, pairs),
    )


def read_extra_columns(data_dir: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Optional ``DATA_DIR/metadata.csv`` (``path`` + any columns) carried into the manifest."""
    meta = Path(data_dir) / METADATA_FILE
    if not meta.is_file():
        return [], {}
    with meta.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or reader.fieldnames[0] != "path":
            raise DataError(f"{meta}: first column must be 'path'")
        cols = [c for c in reader.fieldnames[1:] if c not in ("label", "sha256", "group", "split")]
        out = {row["path"]: {c: row.get(c) or "" for c in cols} for row in reader}
    return cols, out


__all__ = [
    "SPLITS",
    "SplitConfig",
    "SplitResult",
    "SplitSummary",
    "count_leaks",
    "make_split",
    "naive_split",
    "read_extra_columns",
    "run_split",
    "split_folder",
]


class SplitSummary(BaseModel):
    """What a split wrote: the manifest's fingerprint and per-split class counts (``<manifest>.summary.json``)."""

    manifest: str
    data_dir: str
    fingerprint: str
    images: int
    seed: int
    fractions: dict[str, float]
    near_duplicate_max_bits: int
    #: split -> class -> images, splits in manifest order
    counts: dict[str, dict[str, int]]
    groups: int
    #: class left out (``drop_small_classes``) -> why
    dropped_classes: dict[str, str]
    cross_split_duplicate_pairs: int
    naive_random_split_duplicate_pairs: int


def split_summary(
    result: SplitResult, cfg: SplitConfig, fingerprint: str, manifest: Path, data_dir: Path, bits: int
) -> SplitSummary:
    labels = sorted({r.label for r in result.rows})
    counts = {s: {lab: 0 for lab in labels} for s in SPLITS}
    for r in result.rows:
        counts[r.split][r.label] += 1
    return SplitSummary(
        manifest=str(manifest),
        data_dir=str(data_dir),
        fingerprint=fingerprint,
        images=len(result.rows),
        seed=cfg.seed,
        fractions={"val": cfg.val, "test": cfg.test},
        near_duplicate_max_bits=bits,
        counts=counts,
        groups=len({r.group for r in result.rows}),
        dropped_classes=result.dropped_classes,
        cross_split_duplicate_pairs=result.leaked_pairs,
        naive_random_split_duplicate_pairs=result.naive_leaked_pairs,
    )


def run_split(index: DatasetIndex, manifest: Path, cfg: SplitConfig) -> SplitSummary:
    """Split an indexed data set; write the manifest plus its summary (``<manifest>.summary.json``)."""
    from edgeclf._io import write_json
    from edgeclf.data.manifest import write_manifest

    cols, extra = read_extra_columns(index.root)
    result = make_split(index, cfg, extra)
    fingerprint = write_manifest(manifest, result.rows, cols)
    summary = split_summary(result, cfg, fingerprint, manifest, index.root, index.near_duplicate_bits)
    write_json(manifest.with_name(manifest.stem + ".summary.json"), summary.model_dump(mode="json"))
    return summary


def split_folder(
    data_dir: Path,
    manifest: Path,
    cfg: SplitConfig | None = None,
    near_duplicate_bits: int | None = None,
    progress: ProgressFn | None = None,
) -> SplitSummary:
    """Index the ImageFolder tree ``data_dir`` and split it into ``manifest`` (see :func:`run_split`).

    ``cfg`` is checked before any image is read; ``near_duplicate_bits`` defaults to
    :data:`edgeclf.data._index.NEAR_DUPLICATE_BITS`.
    """
    cfg = cfg or SplitConfig()
    cfg.validate()
    bits = NEAR_DUPLICATE_BITS if near_duplicate_bits is None else near_duplicate_bits
    index = index_dataset(Path(data_dir), near_duplicate_bits=bits, progress=progress)
    return run_split(index, Path(manifest), cfg)
