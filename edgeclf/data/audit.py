"""``edgeclf data audit``: what is in an image folder, and what is wrong with it."""

from __future__ import annotations

import random
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from edgeclf._io import write_json
from edgeclf.data._index import PHASH_SIZE, DatasetIndex, FileProblem, ProgressFn, index_dataset
from edgeclf.errors import DataError

AUDIT_SCHEMA_VERSION = "1.0"

#: Images with a side shorter than this are flagged: a 224-px model upsamples them into blur.
TINY_SIDE_PX = 32


class Problem(BaseModel):
    path: str
    reason: str


class ClassCount(BaseModel):
    name: str
    images: int


class SizeStats(BaseModel):
    width_min: int
    width_median: float
    width_max: int
    height_min: int
    height_median: float
    height_max: int
    distinct_sizes: int
    most_common_size: str


class ExactDuplicateSet(BaseModel):
    sha256: str
    paths: list[str]
    labels: list[str]
    label_conflict: bool


class NearDuplicatePair(BaseModel):
    a: str
    b: str
    label_a: str
    label_b: str
    hamming_bits: int
    label_conflict: bool


class AuditReport(BaseModel):
    schema_version: str = AUDIT_SCHEMA_VERSION
    data_dir: str
    num_images: int
    classes: list[ClassCount]
    empty_classes: list[str]
    imbalance_ratio: float | None
    unreadable: list[Problem]
    ignored: list[Problem]
    warnings: list[Problem]
    modes: dict[str, int]
    formats: dict[str, int]
    sizes: SizeStats | None
    perceptual_hash: str
    near_duplicate_max_bits: int
    exact_duplicates: list[ExactDuplicateSet]
    near_duplicates: list[NearDuplicatePair]
    duplicate_groups: int
    images_in_duplicate_groups: int
    label_conflicts: int
    sample_grids: dict[str, str] = {}


def _problems(items: list[FileProblem]) -> list[Problem]:
    return [Problem(path=p.path, reason=p.reason) for p in items]


def build_report(index: DatasetIndex) -> AuditReport:
    recs = index.records
    counts = index.counts()
    nonempty = [c for c in counts.values() if c > 0]
    warnings: list[Problem] = []
    for r in recs:
        if r.extension_mismatch:
            warnings.append(Problem(path=r.path, reason=f"{r.format} content under a '{Path(r.path).suffix}' name (kept)"))
        if min(r.width, r.height) < TINY_SIDE_PX:
            warnings.append(Problem(path=r.path, reason=f"tiny image {r.width}x{r.height} (kept)"))
    sizes = None
    if recs:
        w = np.array([r.width for r in recs])
        h = np.array([r.height for r in recs])
        size_counts = Counter(f"{r.width}x{r.height}" for r in recs)
        sizes = SizeStats(
            width_min=int(w.min()),
            width_median=float(np.median(w)),
            width_max=int(w.max()),
            height_min=int(h.min()),
            height_median=float(np.median(h)),
            height_max=int(h.max()),
            distinct_sizes=len(size_counts),
            most_common_size=size_counts.most_common(1)[0][0],
        )
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(recs):
        by_sha[r.sha256].append(i)
    exact = []
    for sha, idx in sorted(by_sha.items(), key=lambda kv: recs[kv[1][0]].path):
        if len(idx) > 1:
            labels = [recs[i].label for i in idx]
            exact.append(
                ExactDuplicateSet(
                    sha256=sha, paths=[recs[i].path for i in idx], labels=labels, label_conflict=len(set(labels)) > 1
                )
            )
    near = [
        NearDuplicatePair(
            a=recs[i].path,
            b=recs[j].path,
            label_a=recs[i].label,
            label_b=recs[j].label,
            hamming_bits=d,
            label_conflict=recs[i].label != recs[j].label,
        )
        for i, j, d in sorted(index.near_pairs, key=lambda p: (p[2], recs[p[0]].path, recs[p[1]].path))
    ]
    group_sizes = Counter(index.groups)
    return AuditReport(
        data_dir=str(index.root),
        num_images=len(recs),
        classes=[ClassCount(name=c, images=n) for c, n in counts.items()],
        empty_classes=[c for c, n in counts.items() if n == 0],
        imbalance_ratio=round(max(nonempty) / min(nonempty), 4) if nonempty else None,
        unreadable=_problems(index.unreadable),
        ignored=_problems(index.ignored),
        warnings=warnings,
        modes=dict(sorted(Counter(r.mode for r in recs).items())),
        formats=dict(sorted(Counter(r.format for r in recs).items())),
        sizes=sizes,
        perceptual_hash=f"imagehash.phash (DCT, {PHASH_SIZE * PHASH_SIZE} bits)",
        near_duplicate_max_bits=index.near_duplicate_bits,
        exact_duplicates=exact,
        near_duplicates=near,
        duplicate_groups=sum(1 for n in group_sizes.values() if n > 1),
        images_in_duplicate_groups=sum(n for n in group_sizes.values() if n > 1),
        label_conflicts=sum(e.label_conflict for e in exact) + sum(p.label_conflict for p in near),
    )


def write_sample_grids(index: DatasetIndex, out_dir: Path, per_class: int = 16, seed: int = 0) -> dict[str, str]:
    """One PNG per class: ``per_class`` random images, each captioned with its label and file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeclf._io import atomic_open
    from edgeclf.data._image import ImageDecodeError, load_rgb

    by_class: dict[str, list[str]] = defaultdict(list)
    for r in index.records:
        by_class[r.label].append(r.path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    rng = random.Random(seed)
    for cls in index.classes:
        paths = sorted(by_class.get(cls, []))
        if not paths:
            continue
        pick = sorted(rng.sample(paths, min(per_class, len(paths))))
        cols = min(4, len(pick))
        rows = (len(pick) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows + 0.4), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, rel in zip(axes.flat, pick, strict=False):
            try:
                im = load_rgb(index.root / rel)
                im.thumbnail((256, 256))
                ax.imshow(np.asarray(im))
            except ImageDecodeError:
                continue
            name = Path(rel).name
            ax.set_title(f"{cls}\n{name if len(name) <= 28 else name[:25] + '...'}", fontsize=8)
        fig.suptitle(f"class '{cls}': {len(pick)} of {len(paths)} images (random, seed {seed})", fontsize=11)
        target = out_dir / f"{cls}.png"
        with warnings.catch_warnings(), atomic_open(target, "wb") as f:
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # CJK file names
            fig.tight_layout()
            fig.savefig(f, format="png", dpi=80)
        plt.close(fig)
        written[cls] = str(target)
    return written


def audit(
    data_dir: Path,
    out_dir: Path | None = None,
    near_duplicate_bits: int | None = None,
    grid_per_class: int = 16,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> AuditReport:
    """Audit ``data_dir``; with ``out_dir``, write ``audit.json`` and ``samples/<class>.png`` there."""
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise DataError(f"--out {out_dir} is a file; the audit writes a folder (audit.json, samples/): choose a folder")
    kwargs = {} if near_duplicate_bits is None else {"near_duplicate_bits": near_duplicate_bits}
    index = index_dataset(Path(data_dir), progress=progress, **kwargs)
    return audit_index(index, out_dir, grid_per_class, seed)


def audit_index(index: DatasetIndex, out_dir: Path | None = None, grid_per_class: int = 16, seed: int = 0) -> AuditReport:
    """The audit of an already indexed data set (so a split can reuse the same index)."""
    report = build_report(index)
    if out_dir is not None:
        out_dir = Path(out_dir)
        grids = write_sample_grids(index, out_dir / "samples", grid_per_class, seed)
        report.sample_grids = {c: str(Path(p).relative_to(out_dir)) for c, p in grids.items()}
        write_json(out_dir / "audit.json", report.model_dump(mode="json"))
    return report
