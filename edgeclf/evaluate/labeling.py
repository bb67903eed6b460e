"""Help with labels: suggest labels for new images, and find training labels that look wrong.

* :func:`suggest_labels` predicts every image of an unlabelled folder and ranks
  them most-uncertain first (smallest margin between the two most probable
  classes), so a person labelling them spends their time where the model is
  least sure — uncertainty sampling for active learning.
* :func:`audit_labels` looks for likely label errors in the training split with
  out-of-fold predictions: a logistic regression on the run's frozen features
  is trained on K-1 folds and predicts the held-out fold, so no image is judged
  by a model that saw its label. An image is suspect when another class gets a
  confident out-of-fold probability. This is the core idea of confident
  learning (Northcutt, Jiang & Chuang, "Confident Learning: Estimating
  Uncertainty in Dataset Labels", JAIR 70, 2021), with one fixed confidence
  threshold in place of per-class thresholds.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn

from edgeclf._io import atomic_write_text
from edgeclf.data._image import IMAGE_SUFFIXES, ImageDecodeError, load_rgb
from edgeclf.data._index import FileProblem, walk_images
from edgeclf.data.manifest import Manifest
from edgeclf.errors import ConfigError, DataError
from edgeclf.evaluate.explain import image_grid
from edgeclf.evaluate.predictor import TorchPredictor
from edgeclf.preprocess import PreprocessSpec, resize_uint8

ProgressFn = Callable[[int, int], None]

#: Tiles in the ``most_uncertain.png`` and ``label_audit.png`` grids.
GRID_ITEMS = 24
#: Where :func:`suggest_run_labels` writes by default, inside the unlabelled folder (it is not scanned).
SUGGESTIONS_DIR = "edgeclf-suggestions"
#: Where :func:`audit_run_labels` writes by default, inside the run folder.
LABEL_AUDIT_DIR = "label-audit"

#: Features are centred and divided by one number, their RMS distance from the mean, fitted on
#: each fold's training part. Unlike per-dimension standardisation this keeps the geometry:
#: standardising PCA components (or a model's many near-silent feature dimensions) blows
#: noise directions up to the size of the signal ones; on 150 synthetic points in three
#: well-separated 200-d clusters reduced to 128 PCA dimensions that cut out-of-fold accuracy
#: from 99 % to 73 % and produced 13 false suspects.
#:
#: Inverse regularisation strengths tried for the logistic regression (in those units); the
#: one with the lowest out-of-fold log-loss is kept, so the probabilities the threshold is
#: applied to are not over-confident. No single C suits every feature set: scikit-learn's C = 1.0 on
#: standardised 1,280-d features of 84 images gave log-loss 1.27 (guessing: 1.10) and
#: p = 1 - 1e-130 for some of its mistakes. Measured optima: 10 (flowers, 500 images,
#: MobileNetV2 features; 84 fine-tuned images) and 10-100 (synthetic clusters).
AUDIT_CS = (0.1, 1.0, 10.0, 100.0)
#: lbfgs iterations; enough for the largest C above on 5,000 images.
AUDIT_MAX_ITER = 1000
#: Wider features are first reduced to this many PCA dimensions, fitted on all training
#: features without their labels (so no label leaks between folds). On 500 flowers images
#: with 1,280-d features: 6x faster, out-of-fold log-loss 1.008 against 0.979 unreduced
#: (128 dimensions: 1.008 as well, but fewer flipped labels found).
AUDIT_PCA_DIMS = 256


class ModelRun(Protocol):
    """What :func:`suggest_labels` needs of a run (:class:`~edgeclf.evaluate.predictor.LoadedRun` has it)."""

    model: nn.Module
    spec: PreprocessSpec
    classes: list[str]


class TrainingRun(ModelRun, Protocol):
    """What :func:`audit_labels` needs: the model plus its split manifest and data folder."""

    manifest: Manifest
    data_root: Path


# ----------------------------------------------------------------------------- shared helpers


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats, per row."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)


def _decode(path: Path, spec: PreprocessSpec) -> np.ndarray | str:
    """The image resized by ``spec`` (H x W x 3 uint8), or the reason it cannot be used.

    Resizing right after decoding keeps a batch of camera photos small in
    memory; preprocessing it again is exact (a resize to the size an image
    already has returns it unchanged).
    """
    try:
        return resize_uint8(np.asarray(load_rgb(path)), spec)
    except ImageDecodeError as e:
        return str(e)
    except OSError as e:
        return f"cannot read: {e.strerror or e}"


def _thumb(path: Path, size: int = 256) -> np.ndarray:
    img = load_rgb(path)
    img.thumbnail((size, size))
    return np.asarray(img)


def _short(name: str, limit: int = 26) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def _csv_text(header: Sequence[str], rows: list[list[object]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _grid_of_files(root: Path, rels: Sequence[str], captions: Sequence[str], path: Path, title: str, empty_message: str) -> Path:
    tiles, caps = [], []
    for rel, cap in zip(rels, captions, strict=False):
        try:
            tiles.append(_thumb(root / rel))
        except (ImageDecodeError, OSError):  # changed on disk since it was read; leave it out
            continue
        caps.append(cap)
    return image_grid(tiles, caps, path, title, cols=6, empty_message=empty_message)


# ----------------------------------------------------------------------------- label suggestions


@dataclass(frozen=True)
class Suggestion:
    """One unlabelled image, ranked by uncertainty (rank 1 = most uncertain)."""

    rank: int
    path: str  # relative to the unlabelled folder, POSIX separators
    suggested_label: str
    confidence: float  # calibrated probability of the suggested label
    margin: float  # top-1 minus top-2 probability
    entropy: float  # of the calibrated distribution, in nats
    top_k: tuple[tuple[str, float], ...]


@dataclass
class LabelSuggestions:
    """Result of :func:`suggest_labels`."""

    suggestions: list[Suggestion]
    skipped: list[FileProblem]  # image files that could not be decoded, with the reason
    ignored: list[FileProblem]  # files that are not images (by suffix)
    temperature: float
    csv_path: Path
    grid_path: Path
    skipped_csv_path: Path

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON document ``edgeclf label suggest --json`` prints."""
        return {
            "temperature": self.temperature,
            "suggestions": [
                {
                    "rank": s.rank,
                    "path": s.path,
                    "suggested_label": s.suggested_label,
                    "confidence": s.confidence,
                    "margin": s.margin,
                    "top_k": [list(t) for t in s.top_k],
                }
                for s in self.suggestions
            ],
            "skipped": [vars(p) for p in self.skipped],
            "csv": str(self.csv_path),
            "grid": str(self.grid_path),
        }


def _is_within(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


#: Files :func:`suggest_labels` writes; skipped when the output folder is the scanned folder itself.
_OUTPUT_FILES = frozenset({"most_uncertain.png"})


def list_unlabeled(root: Path, exclude: Path | None = None) -> tuple[list[str], list[FileProblem], list[FileProblem]]:
    """Image files anywhere under ``root`` (loose files and sub-folders alike).

    Returns ``(paths, ignored, unreadable)``; paths are relative to ``root``,
    POSIX, sorted. Hidden files and folders are skipped, directory symlinks are
    followed once (a loop is reported, not re-entered). ``exclude`` is an
    output folder: when it lies inside ``root`` it is not entered; when it is
    ``root`` itself, edgeclf's own output images there are skipped.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of images")
    root_real = root.resolve()
    excl = exclude.resolve() if exclude is not None else None
    skip_outputs = excl == root_real
    if excl is not None and (skip_outputs or not _is_within(excl, root_real)):
        excl = None  # the output folder is root itself, or outside it: nothing to prune
    ignored: list[FileProblem] = []
    unreadable: list[FileProblem] = []
    files = walk_images(
        root,
        root,
        ignored,
        unreadable,
        prune=(lambda d: _is_within(d.resolve(), excl)) if excl is not None else None,
        skip=(lambda p: p.parent == root and p.name in _OUTPUT_FILES) if skip_outputs else None,
    )
    files.sort()
    return files, ignored, unreadable


def suggest_labels(
    run: ModelRun,
    unlabeled_dir: Path,
    out_dir: Path,
    temperature: float = 1.0,
    top_k: int = 3,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
) -> LabelSuggestions:
    """Predict every image under ``unlabeled_dir`` and rank them most-uncertain first.

    Probabilities are calibrated as ``softmax(logits / temperature)`` (pass
    the run's fitted temperature; 1.0 = raw). Order: margin between the top
    two probabilities ascending, then entropy descending, then path.

    Writes ``out_dir/suggestions.csv`` (``rank, path, suggested_label,
    confidence, margin, entropy, top_k`` — top_k as ``label:prob`` joined by
    ``;``), ``out_dir/skipped.csv`` (``path, reason``; header only when none)
    and ``out_dir/most_uncertain.png`` (the first 24). ``out_dir`` may lie
    inside ``unlabeled_dir``; it is not scanned.

    Raises :class:`DataError` when the folder holds no readable image.
    """
    if not temperature > 0 or not np.isfinite(temperature):
        raise ConfigError(f"temperature must be a positive number, got {temperature}")
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    unlabeled_dir, out_dir = Path(unlabeled_dir), Path(out_dir)
    rels, ignored, skipped = list_unlabeled(unlabeled_dir, exclude=out_dir)
    if not rels:
        raise DataError(f"no image files under {unlabeled_dir} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    predictor = TorchPredictor(run.model, run.spec, list(run.classes), batch_size)
    kept: list[str] = []
    logits: list[np.ndarray] = []
    for start in range(0, len(rels), batch_size):
        batch_imgs, batch_rels = [], []
        for rel in rels[start : start + batch_size]:
            img = _decode(unlabeled_dir / rel, run.spec)
            if isinstance(img, str):
                skipped.append(FileProblem(rel, img))
            else:
                batch_imgs.append(img)
                batch_rels.append(rel)
        if batch_imgs:
            logits.append(predictor(batch_imgs))
            kept.extend(batch_rels)
        if progress:
            progress(min(start + batch_size, len(rels)), len(rels))
    skipped.sort(key=lambda p: p.path)
    if not kept:
        raise DataError(
            f"none of the {len(rels)} image files under {unlabeled_dir} could be decoded "
            f"(first: {skipped[0].path}: {skipped[0].reason})"
        )
    probs = _softmax(np.concatenate(logits), temperature)
    n_classes = probs.shape[1]
    if n_classes != len(run.classes):
        raise ConfigError(f"the model gives {n_classes} outputs but the run has {len(run.classes)} classes")
    order_desc = np.argsort(-probs, axis=1, kind="stable")
    top1 = probs[np.arange(len(probs)), order_desc[:, 0]]
    top2 = probs[np.arange(len(probs)), order_desc[:, 1]] if n_classes > 1 else np.zeros(len(probs))
    margin = top1 - top2
    ent = _entropy(probs)
    # lexsort: last key is primary -> margin asc, entropy desc, then path
    ranked = np.lexsort((np.array(kept, dtype=object).astype(str), -ent, margin))
    k = min(top_k, n_classes)
    suggestions: list[Suggestion] = []
    for rank, i in enumerate(ranked, 1):
        tk = tuple((run.classes[int(c)], float(probs[i, c])) for c in order_desc[i, :k])
        suggestions.append(
            Suggestion(
                rank=rank,
                path=kept[i],
                suggested_label=tk[0][0],
                confidence=float(top1[i]),
                margin=float(margin[i]),
                entropy=float(ent[i]),
                top_k=tk,
            )
        )

    csv_path = out_dir / "suggestions.csv"
    atomic_write_text(
        csv_path,
        _csv_text(
            ["rank", "path", "suggested_label", "confidence", "margin", "entropy", "top_k"],
            [
                [
                    s.rank,
                    s.path,
                    s.suggested_label,
                    f"{s.confidence:.6f}",
                    f"{s.margin:.6f}",
                    f"{s.entropy:.6f}",
                    ";".join(f"{lab}:{p:.6f}" for lab, p in s.top_k),
                ]
                for s in suggestions
            ],
        ),
    )
    skipped_csv = out_dir / "skipped.csv"
    atomic_write_text(skipped_csv, _csv_text(["path", "reason"], [[p.path, p.reason] for p in skipped]))
    head = suggestions[:GRID_ITEMS]
    grid_path = _grid_of_files(
        unlabeled_dir,
        [s.path for s in head],
        [f"{_short(s.suggested_label, 18)} ({s.confidence:.2f})\n{_short(Path(s.path).name)}" for s in head],
        out_dir / "most_uncertain.png",
        f"Most uncertain {len(head)} of {len(suggestions)} images: suggested label (confidence, T={temperature:g})",
        "no images",
    )
    return LabelSuggestions(
        suggestions=suggestions,
        skipped=skipped,
        ignored=ignored,
        temperature=float(temperature),
        csv_path=csv_path,
        grid_path=grid_path,
        skipped_csv_path=skipped_csv,
    )


# ----------------------------------------------------------------------------- label audit


@dataclass(frozen=True)
class OofResult:
    """Out-of-fold predictions and the suspects found in them (see :func:`oof_suspects`)."""

    probs: np.ndarray  # N x C out-of-fold probabilities (0 for a class absent from a fold's training part)
    folds: int  # folds actually used
    grouped: bool  # True when no group straddled a fold's train and held-out parts
    suspects: np.ndarray  # indices into the inputs, most confident disagreement first
    C: float  # the logistic regression's inverse regularisation strength that was chosen
    log_loss: float  # out-of-fold log-loss of the given labels at that C


def _fold_splits(
    labels: np.ndarray, groups: np.ndarray | None, folds: int, seed: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    present = np.unique(labels)
    dummy = np.zeros(len(labels))
    if groups is not None and len(np.unique(groups)) < len(groups) and len(np.unique(groups)) >= folds:
        splits = list(StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(dummy, labels, groups))
        # groups can make a fold's training part miss a class; then keep stratification, drop grouping
        if all(len(te) > 0 and np.array_equal(np.unique(labels[tr]), present) for tr, te in splits):
            return splits, True
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(dummy, labels))
    all_unique = groups is None or len(np.unique(groups)) == len(groups)
    return splits, groups is not None and all_unique


def oof_suspects(
    features: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str] | np.ndarray | None,
    classes: Sequence[str],
    folds: int = 5,
    seed: int = 0,
    threshold: float = 0.7,
) -> OofResult:
    """Out-of-fold logistic-regression probabilities and likely label errors.

    Each fold's held-out images are predicted by a logistic regression
    fitted on the other folds (features centred and scaled by one number;
    wider than 256 dimensions, first reduced to 256 by PCA). Its
    regularisation C is the one of :data:`AUDIT_CS` with the lowest
    out-of-fold log-loss, so the probabilities the threshold applies to are
    not over-confident. Folds are
    stratified by label and, when ``groups`` has duplicates (near-duplicate
    groups from the split manifest), grouped so copies of one image never
    judge each other; if grouping would leave a class out of a fold's training
    part, plain stratified folds are used (``grouped`` False).

    A suspect is an image whose most probable out-of-fold class is not its
    label and has probability >= ``threshold`` (hence the label's own
    probability is at most ``1 - threshold``) — confident learning's
    "confident disagreement" (Northcutt et al., JAIR 2021). Suspects are
    ordered by that probability, highest first.

    ``folds`` is lowered to the smallest class's count when that is smaller
    (at least 2); :class:`DataError` if a class has a single image.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    n_classes = len(classes)
    if x.ndim != 2 or len(x) != len(y):
        raise DataError(f"need N x D features and N labels, got {x.shape} and {y.shape}")
    if not np.isfinite(x).all():
        raise DataError("features contain NaN or infinite values; the model's outputs are not usable")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"labels must index the {n_classes} classes")
    if folds < 2:
        raise ConfigError(f"out-of-fold predictions need at least 2 folds, got {folds}")
    if not 0 < threshold <= 1:
        raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
    g = None if groups is None else np.asarray(groups, dtype=object).astype(str)
    if g is not None and len(g) != len(y):
        raise DataError(f"need one group per image, got {len(g)} groups for {len(y)} images")
    present, counts = np.unique(y, return_counts=True)
    if len(present) < 2:
        raise DataError("finding label errors needs training images of at least two classes")
    smallest = int(counts.min())
    if smallest < 2:
        name = classes[int(present[counts.argmin()])]
        raise DataError(f"class '{name}' has a single training image; out-of-fold predictions need at least 2 per class")
    k = min(folds, smallest)
    if x.shape[1] > AUDIT_PCA_DIMS and len(x) > AUDIT_PCA_DIMS:
        from sklearn.decomposition import PCA

        x = PCA(n_components=AUDIT_PCA_DIMS, svd_solver="randomized", random_state=seed).fit_transform(x)
    splits, grouped = _fold_splits(y, g, k, seed)
    tried: list[tuple[float, float, np.ndarray]] = []  # (log-loss, C, probs)
    for c in AUDIT_CS:
        probs = np.zeros((len(y), n_classes), dtype=np.float64)
        for tr, te in splits:
            mean = x[tr].mean(axis=0)
            rms = float(np.sqrt(((x[tr] - mean) ** 2).sum(axis=1).mean())) or 1.0
            clf = LogisticRegression(C=c, max_iter=AUDIT_MAX_ITER)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit((x[tr] - mean) / rms, y[tr])
            probs[np.ix_(te, clf.classes_)] = clf.predict_proba((x[te] - mean) / rms)
        loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-15, 1.0))))
        tried.append((loss, c, probs))
    loss, c_best, probs = min(tried, key=lambda t: t[0])  # ties: the stronger regularisation
    pred = probs.argmax(axis=1)
    p_pred = probs[np.arange(len(y)), pred]
    flagged = np.flatnonzero((pred != y) & (p_pred >= threshold))
    order = flagged[np.lexsort((flagged, -p_pred[flagged]))]
    return OofResult(probs=probs, folds=k, grouped=grouped, suspects=order, C=c_best, log_loss=loss)


@dataclass(frozen=True)
class Suspect:
    """A training image whose label the out-of-fold model confidently disagrees with."""

    path: str  # relative to the run's data folder, as in the manifest
    given_label: str
    suggested_label: str
    p_suggested: float
    p_given: float


@dataclass
class LabelAudit:
    """Result of :func:`audit_labels`."""

    suspects: list[Suspect]
    n_images: int  # training images judged
    folds: int  # folds actually used
    grouped: bool
    threshold: float
    C: float  # regularisation chosen for the out-of-fold logistic regression
    log_loss: float  # its out-of-fold log-loss (ln(classes) = guessing)
    skipped: list[FileProblem]  # training images that could not be read
    csv_path: Path
    grid_path: Path

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON document ``edgeclf label audit --json`` prints."""
        return {
            "folds": self.folds,
            "grouped": self.grouped,
            "images": self.n_images,
            "suspects": [vars(s) for s in self.suspects],
            "csv": str(self.csv_path),
            "grid": str(self.grid_path),
        }


def audit_labels(
    run: TrainingRun,
    out_dir: Path,
    folds: int = 5,
    seed: int = 0,
    threshold: float = 0.7,
    batch_size: int = 64,
    progress: ProgressFn | None = None,
) -> LabelAudit:
    """Find training images that are likely mislabelled (see :func:`oof_suspects`).

    Features are the fine-tuned model's penultimate-layer features of the
    run's training split. That model has seen these labels, so a wrong label
    it memorised can look right: treat the list as a ranked place to look,
    not as complete. Writes ``out_dir/label_audit.csv`` (``path, given_label,
    suggested_label, p_suggested, p_given``) and ``out_dir/label_audit.png``
    (the top 24 suspects).
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    rows = run.manifest.split_rows("train")
    if not rows:
        raise DataError("the run's split manifest has no training images")
    class_index = {c: i for i, c in enumerate(run.classes)}
    unknown = sorted({r.label for r in rows} - set(class_index))
    if unknown:
        raise DataError(f"training labels not among the model's classes: {', '.join(unknown)}")
    root = Path(run.data_root)
    predictor = TorchPredictor(run.model, run.spec, list(run.classes), batch_size)
    feats: list[np.ndarray] = []
    kept = []
    skipped: list[FileProblem] = []
    for start in range(0, len(rows), batch_size):
        imgs, batch_rows = [], []
        for r in rows[start : start + batch_size]:
            img = _decode(root / r.path, run.spec)
            if isinstance(img, str):
                skipped.append(FileProblem(r.path, img))
            else:
                imgs.append(img)
                batch_rows.append(r)
        if imgs:
            f, _ = predictor.features_and_logits(imgs)
            feats.append(f)
            kept.extend(batch_rows)
        if progress:
            progress(min(start + batch_size, len(rows)), len(rows))
    if not kept:
        raise DataError(
            f"none of the {len(rows)} training images under {root} could be read (first: {skipped[0].path}: {skipped[0].reason})"
        )
    labels = np.array([class_index[r.label] for r in kept], dtype=np.int64)
    res = oof_suspects(np.concatenate(feats), labels, [r.group for r in kept], run.classes, folds, seed, threshold)
    suspects = []
    for i in res.suspects:
        sug = int(res.probs[i].argmax())
        suspects.append(
            Suspect(
                path=kept[i].path,
                given_label=kept[i].label,
                suggested_label=run.classes[sug],
                p_suggested=float(res.probs[i, sug]),
                p_given=float(res.probs[i, labels[i]]),
            )
        )
    csv_path = Path(out_dir) / "label_audit.csv"
    atomic_write_text(
        csv_path,
        _csv_text(
            ["path", "given_label", "suggested_label", "p_suggested", "p_given"],
            [[s.path, s.given_label, s.suggested_label, f"{s.p_suggested:.6f}", f"{s.p_given:.6f}"] for s in suspects],
        ),
    )
    head = suspects[:GRID_ITEMS]
    grid_path = _grid_of_files(
        root,
        [s.path for s in head],
        [
            f"{_short(s.given_label, 12)} \u2192 {_short(s.suggested_label, 12)} ({s.p_suggested:.2f})\n"
            f"{_short(Path(s.path).name)}"
            for s in head
        ],
        Path(out_dir) / "label_audit.png",
        f"Likely label errors: {len(head)} of {len(suspects)} suspects among {len(kept)} training images "
        f"(given \u2192 suggested, out-of-fold p)",
        f"no training label is contradicted with p \u2265 {threshold:g} ({res.folds}-fold out-of-fold)",
    )
    return LabelAudit(
        suspects=suspects,
        n_images=len(kept),
        folds=res.folds,
        grouped=res.grouped,
        threshold=float(threshold),
        C=res.C,
        log_loss=res.log_loss,
        skipped=sorted(skipped, key=lambda p: p.path),
        csv_path=csv_path,
        grid_path=grid_path,
    )


# ----------------------------------------------------------------------------- on a training run


def suggest_run_labels(
    run_dir: Path,
    unlabeled_dir: Path,
    out_dir: Path | None = None,
    top_k: int = 3,
    progress: ProgressFn | None = None,
) -> LabelSuggestions:
    """:func:`suggest_labels` with a training run's model, calibrated by the run's stored temperature
    (1.0 before its evaluation has fitted one); ``out_dir`` defaults to ``UNLABELED_DIR/edgeclf-suggestions``."""
    from edgeclf.evaluate.calibration import stored_temperature
    from edgeclf.evaluate.predictor import load_run

    out_dir = out_dir or Path(unlabeled_dir) / SUGGESTIONS_DIR
    temperature = stored_temperature(run_dir)
    return suggest_labels(load_run(run_dir), unlabeled_dir, out_dir, temperature=temperature, top_k=top_k, progress=progress)


def audit_run_labels(
    run_dir: Path,
    out_dir: Path | None = None,
    folds: int = 5,
    threshold: float = 0.7,
    progress: ProgressFn | None = None,
) -> LabelAudit:
    """:func:`audit_labels` on a training run's model and training split; ``out_dir`` defaults to ``RUN_DIR/label-audit``."""
    from edgeclf.evaluate.predictor import load_run

    out_dir = out_dir or Path(run_dir) / LABEL_AUDIT_DIR
    return audit_labels(load_run(run_dir), out_dir, folds=folds, threshold=threshold, progress=progress)
