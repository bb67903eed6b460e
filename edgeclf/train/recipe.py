"""Data-aware defaults: what the training data looks like chooses the recipe, visibly.

:func:`measure_facts` reads what matters about the training split (class counts, how
imbalanced it is, whether the images are grayscale, how large they are); then
:func:`resolve_recipe` applies a short list of rules to every setting the user did not
set explicitly (in the YAML recipe or with a flag) and returns the resolved config with
one :class:`RecipeChoice` per rule: the key, the value, and the one-line reason. The
rules are written to generalise, not tuned to one data set:

* **imbalance** — ratio of largest to smallest class > 3, or any class under 5 % of
  the training images: class-balanced loss with effective-number weights (Cui et al.,
  CVPR 2019); otherwise plain cross-entropy. Both thresholds are the common
  rules of thumb for when a plain loss starts to ignore the small classes.
* **modality** — when (nearly) every sampled image is grayscale, colour jitter only
  adds noise (saturation/hue do nothing and brightness/contrast shift a signal that
  is the measurement itself): off.
* **resolution** — the input size is chosen between two candidates by measuring
  (:func:`resolution_candidates`, then the trainer's resolution check): the backbone's
  native size and the images' own (median short side, a multiple of 32, within the
  largest size the latency budget allows — ``max_image_size``, given by the build's
  selection). The linear probe is fitted at both on a sample of train and scored on
  validation; the costlier size is taken only when its paired-bootstrap gain in
  macro-F1 excludes zero (:func:`choose_resolution`). Up-sampling small images adds no
  information but sometimes helps pretrained filters; a larger input costs compute on
  the device: both are measured instead of assumed.
* **data size** — the number of training images sets how deep fine-tuning reaches
  (more data, more unfrozen stages), how many epochs run (about the same number of
  optimizer steps whatever the data size, within 4..30 epochs) and the warm-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from edgeclf.data.manifest import ManifestRow
from edgeclf.train.config import TrainConfig, _set_dotted

#: Imbalance that switches on class-balanced loss (largest / smallest class).
IMBALANCE_RATIO = 3.0
#: ... or a class below this share of the training images.
MIN_CLASS_SHARE = 0.05
#: Share of sampled images that must be grayscale for the data to count as grayscale.
GRAYSCALE_SHARE = 0.95
#: Optimizer steps (at batch 32) the epoch rule aims for; epochs are clamped to this range.
TARGET_STEPS = 640
EPOCH_RANGE = (4, 30)
#: Backbone stages fine-tuned at any data size, and the training-image counts above which one
#: more is unfrozen. Half of an EfficientNet-Lite's 8 stages: on trashnet-150 (1,769 training
#: images, lite2 at 160 px) the last 4 stages reached val macro-F1 0.929 against 0.874 with the
#: last 2 (test 0.871 vs 0.832), at about twice the time per epoch on cached trunk activations.
#: Early stopping on validation and the candidate selection (the linear probe ships when the
#: fine-tuned model is not better) bound the risk of a deeper fine-tune on little data.
UNFREEZE_BASE = 4
UNFREEZE_STEPS = (20000,)
#: Images sampled (decoded) to decide the modality.
GRAY_SAMPLE = 48
#: The smallest input the resolution rule trains at (below it the last feature map is 2x2).
MIN_IMAGE_SIZE = 64
#: Prefix of the reason of a choice made by measuring (kept across a resume, like the augmentation check).
RESOLUTION_CHECK = "resolution check"


@dataclass(frozen=True)
class DataFacts:
    """What the recipe rules look at, measured on the training split."""

    num_train: int
    class_counts: dict[str, int]
    imbalance_ratio: float
    min_class_share: float
    smallest_class: str
    grayscale_sampled: int
    grayscale_of: int
    median_short_side: int

    @property
    def grayscale(self) -> bool:
        return self.grayscale_of > 0 and self.grayscale_sampled / self.grayscale_of >= GRAYSCALE_SHARE

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_train": self.num_train,
            "class_counts": self.class_counts,
            "imbalance_ratio": round(self.imbalance_ratio, 3),
            "min_class_share": round(self.min_class_share, 4),
            "smallest_class": self.smallest_class,
            "grayscale_sampled": self.grayscale_sampled,
            "grayscale_of": self.grayscale_of,
            "median_short_side": self.median_short_side,
        }


class RecipeChoice(BaseModel):
    """One setting of the resolved recipe and why it has that value."""

    key: str
    value: Any
    reason: str
    source: Literal["auto", "user"]


def _is_gray(img: np.ndarray) -> bool:
    if img.ndim == 2 or img.shape[2] == 1:
        return True
    sub = img[::4, ::4, :3].astype(np.int16)
    # JPEG chroma rounding leaves a level or two on grey pixels
    return bool(np.abs(sub[..., 0] - sub[..., 1]).max() <= 2 and np.abs(sub[..., 1] - sub[..., 2]).max() <= 2)


def measure_facts(rows: list[ManifestRow], root: Path, classes: list[str], seed: int = 0) -> DataFacts:
    """Class counts from the manifest; image sizes from the file headers; modality from a decoded sample."""
    from PIL import Image

    from edgeclf.data._image import ImageDecodeError, load_rgb

    counts = {c: 0 for c in classes}
    for r in rows:
        counts[r.label] = counts.get(r.label, 0) + 1
    nonzero = [n for n in counts.values() if n > 0]
    n = sum(counts.values())
    smallest = min(counts, key=lambda c: counts[c])
    shorts = []
    for r in rows:
        try:
            with Image.open(Path(root) / r.path) as im:
                shorts.append(min(im.size))
        except OSError:
            continue
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), size=min(GRAY_SAMPLE, len(rows)), replace=False) if rows else []
    gray = total = 0
    for i in pick:
        try:
            img = np.asarray(load_rgb(Path(root) / rows[int(i)].path))
        except (ImageDecodeError, OSError):
            continue
        total += 1
        gray += _is_gray(img)
    return DataFacts(
        num_train=n,
        class_counts=counts,
        imbalance_ratio=(max(nonzero) / min(nonzero)) if nonzero else 1.0,
        min_class_share=(counts[smallest] / n) if n else 0.0,
        smallest_class=smallest,
        grayscale_sampled=gray,
        grayscale_of=total,
        median_short_side=int(np.median(shorts)) if shorts else 0,
    )


def explicit_keys(cfg: TrainConfig) -> set[str]:
    """Dotted keys the user set (YAML recipe or flag): pydantic's ``model_fields_set``, recursively."""
    out: set[str] = set()

    def walk(m: BaseModel, prefix: str) -> None:
        for name in m.model_fields_set:
            v = getattr(m, name)
            if isinstance(v, BaseModel):
                walk(v, f"{prefix}{name}.")
            else:
                out.add(f"{prefix}{name}")

    walk(cfg, "")
    return out


def _get(cfg: TrainConfig, key: str) -> Any:
    obj: Any = cfg
    for k in key.split("."):
        obj = getattr(obj, k)
    return obj


def epochs_for(num_train: int, batch_size: int) -> int:
    """About ``TARGET_STEPS`` optimizer steps at batch 32, whatever the data size."""
    steps_per_epoch = max(1, math.ceil(num_train / 32))
    lo, hi = EPOCH_RANGE
    return int(min(hi, max(lo, round(TARGET_STEPS / steps_per_epoch))))


def unfreeze_for(num_train: int, n_groups: int) -> int:
    """Backbone groups (timm stages, counted from the head) to fine-tune: 4, then 5 with more data."""
    depth = UNFREEZE_BASE + sum(num_train > s for s in UNFREEZE_STEPS)
    return min(depth, n_groups)


def resolve_recipe(
    cfg: TrainConfig, facts: DataFacts, native_size: int, n_groups: int, max_image_size: int | None = None
) -> tuple[TrainConfig, list[RecipeChoice]]:
    """Apply the data-aware rules to every key the user left at its default."""
    user = explicit_keys(cfg)
    raw = cfg.model_dump(mode="python")
    choices: list[RecipeChoice] = []

    def choose(key: str, value: Any, reason: str) -> None:
        if key in user:
            choices.append(
                RecipeChoice(
                    key=key, value=_get(cfg, key), reason=f"set by the user (rule would say: {value!r}, {reason})", source="user"
                )
            )
            return
        _set_dotted(raw, key, value)
        choices.append(RecipeChoice(key=key, value=value, reason=reason, source="auto"))

    # imbalance
    if facts.imbalance_ratio > IMBALANCE_RATIO or facts.min_class_share < MIN_CLASS_SHARE:
        why = (
            f"audit: imbalance ratio {facts.imbalance_ratio:.1f} > {IMBALANCE_RATIO:g}"
            if facts.imbalance_ratio > IMBALANCE_RATIO
            else f"audit: class {facts.smallest_class} is {facts.min_class_share:.1%} of train < {MIN_CLASS_SHARE:.0%}"
        )
        choose("loss.class_weights", "effective", why)
    else:
        choose(
            "loss.class_weights",
            "none",
            f"audit: classes balanced (ratio {facts.imbalance_ratio:.1f} <= "
            f"{IMBALANCE_RATIO:g}, smallest {facts.min_class_share:.1%})",
        )
    # modality
    if facts.grayscale:
        choose(
            "augment.color_jitter",
            0.0,
            f"audit: {facts.grayscale_sampled}/{facts.grayscale_of} sampled images are grayscale: no colour jitter",
        )
    # resolution
    side = facts.median_short_side
    cap = max_image_size
    budget = f" (the latency budget allows up to {cap} px)" if cap is not None else ""
    if side > native_size:
        want = max(native_size, (side // 32) * 32)
        if cap is not None:
            size = min(want, cap)
            why = (
                f"audit: images {side} px > native {native_size} px: {size} px, their size (multiple of 32) "
                f"within the latency budget ({cap} px)"
            )
        else:
            size = native_size
            why = (
                f"audit: images {side} px > native {native_size} px, but no latency budget is known here "
                "(pass --image-size, or use `edgeclf build`): native size"
            )
        choose("model.image_size", size, why)
    elif side:
        size = min(native_size, cap) if cap is not None else native_size
        choose(
            "model.image_size",
            size,
            f"audit: images {side} px <= native {native_size} px: {size} px (the pretrained scale, never larger){budget}",
        )
    # data size
    n = facts.num_train
    choose(
        "finetune.unfreeze",
        unfreeze_for(n, n_groups),
        f"data size: {n} training images -> the last {unfreeze_for(n, n_groups)} of {n_groups} backbone stages "
        f"(one more above {', '.join(str(s) for s in UNFREEZE_STEPS)} images)",
    )
    ep = epochs_for(n, raw.get("batch_size", 32))
    choose(
        "finetune.epochs",
        ep,
        f"data size: {n} training images -> {ep} epochs (~{TARGET_STEPS} steps at batch 32, "
        f"within {EPOCH_RANGE[0]}..{EPOCH_RANGE[1]})",
    )
    ep = int(raw["finetune"]["epochs"])  # the user's, when set
    choose("finetune.warmup_epochs", 1.0 if ep >= 8 else 0.5, f"{ep} epochs: warm-up {'1' if ep >= 8 else '0.5'} epoch")
    resolved = TrainConfig.model_validate(raw)
    return resolved, choices


def annotate_yaml(text: str, choices: list[RecipeChoice], section: str = "config") -> str:
    """Append ``# reason`` to the lines of ``text`` (a YAML dump) that hold a chosen key under ``section``."""
    reasons = {f"{section}.{c.key}": f"{c.source}: {c.reason}" for c in choices}
    out, path = [], []
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith(("#", "- ")) or ":" not in stripped:
            out.append(line)
            continue
        depth = (len(line) - len(stripped)) // 2
        key = stripped.split(":", 1)[0]
        path = path[:depth] + [key]
        dotted = ".".join(path)
        if dotted in reasons and not stripped.endswith(":"):
            line = f"{line}  # {reasons[dotted]}"
        out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def resolution_candidates(facts: DataFacts, native_size: int, max_image_size: int | None = None) -> list[int]:
    """The input sizes worth measuring, cheapest first: native and the images' own size (multiple of 32).

    Images smaller than native: their size rounded up to a multiple of 32 (at least
    ``MIN_IMAGE_SIZE``) vs native. Larger: native vs their size rounded down, within the
    latency budget (unknown budget: native only). One candidate: nothing to measure.
    """
    side = facts.median_short_side
    if not side:
        return [native_size]
    if side < native_size:
        small = max(MIN_IMAGE_SIZE, -(-side // 32) * 32)
        return [small, native_size] if small < native_size else [native_size]
    if max_image_size is None:
        return [native_size]
    big = min((side // 32) * 32, max_image_size)
    return [native_size, big] if big > native_size else [native_size]


def choose_resolution(
    sizes: list[int], y_val: np.ndarray, preds: dict[int, np.ndarray], classes: list[str], seed: int = 0
) -> tuple[int, str, list[dict[str, Any]]]:
    """The cheapest size, unless a costlier one is better beyond the noise (paired bootstrap, 95 %).

    ``preds``: the probe's validation predictions at each size. Returns the size, the reason
    and one row per size (its probe macro-F1 and the paired interval against the cheapest).
    """
    from edgeclf.stats import paired_bootstrap_diff
    from edgeclf.train.metrics import classification_metrics

    base = sizes[0]
    rows, chosen, why = [], base, ""
    f1 = {s: classification_metrics(y_val, preds[s], classes)["macro_f1"] for s in sizes}
    for s in sizes:
        row: dict[str, Any] = {"size": s, "probe_val_macro_f1": round(f1[s], 4)}
        if s != base:
            d = paired_bootstrap_diff(y_val, preds[s], preds[base], classes, seed=seed)
            row["gain_over_cheapest"] = {k: round(float(d[k]), 4) for k in ("diff", "low", "high")}
            if d["low"] > 0 and f1[s] > f1[chosen]:
                chosen = s
        rows.append(row)
    table = ", ".join(f"{r['size']} px {r['probe_val_macro_f1']:.3f}" for r in rows)
    if chosen == base:
        why = f"{RESOLUTION_CHECK}: linear probe val macro-F1 {table}: {base} px (a costlier size is not better beyond the noise)"
    else:
        g = rows[sizes.index(chosen)]["gain_over_cheapest"]
        why = (
            f"{RESOLUTION_CHECK}: linear probe val macro-F1 {table}: {chosen} px "
            f"(+{g['diff']:.3f}, 95% interval [{g['low']:+.3f}, {g['high']:+.3f}] over {base} px)"
        )
    return chosen, why, rows
