"""The training run: baselines, linear probe on frozen features, then fine-tuning.

Stage 1 trains only the new head on cached, frozen backbone features (computed
once with the deployment preprocessing); its validation score is the
linear-probe baseline. Stage 2 unfreezes the backbone (all of it or its last N
groups) with a lower learning rate and fine-tunes with augmentation, AdamW
(no weight decay on norms and biases), warm-up + cosine decay, early stopping
on validation macro-F1, an atomic ``best.pt`` (by macro-F1) and ``last.pt``
(for ``--resume``) after every epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Subset

from edgeclf._io import atomic_open, atomic_write_bytes, atomic_write_text, sha256_bytes
from edgeclf._provenance import library_versions
from edgeclf.data.manifest import Manifest, read_manifest, stratified_rows
from edgeclf.errors import ConfigError, DataError, EdgeclfError
from edgeclf.preprocess import PreprocessSpec, PretrainedInput, normalize_batch
from edgeclf.train.config import AugmentConfig, TrainConfig
from edgeclf.train.data import DecodeCache, EpochSampler, ManifestDataset, mix_seed
from edgeclf.train.losses import build_loss, class_weights
from edgeclf.train.metrics import classification_metrics
from edgeclf.train.partial import TrunkRunner, TrunkSplit, split_trunk
from edgeclf.train.probe import ProbeFit, fit_probe
from edgeclf.train.recipe import (
    RESOLUTION_CHECK,
    RecipeChoice,
    choose_resolution,
    explicit_keys,
    resolution_candidates,
)
from edgeclf.train.record import TrainMetrics, read_run_config, write_metrics
from edgeclf.train.schedule import lr_factor

CHECKPOINT_FORMAT = "edgeclf-checkpoint"
CHECKPOINT_VERSION = 1
#: A validation NLL lower by less than this does not break a macro-F1 tie between epochs.
NLL_MIN_DELTA = 1e-3

Log = Callable[[str], None]


class CheckpointError(EdgeclfError):
    """A checkpoint is missing, corrupt or from a different run."""


# ----------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def _init_dist(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as td

    if not td.is_initialized():
        td.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _gather(obj: Any, dist: Dist) -> list[Any]:
    if not dist.active:
        return [obj]
    import torch.distributed as td

    out: list[Any] = [None] * dist.world_size
    td.all_gather_object(out, obj)
    return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is available")
    return dev


def _cpu_has_bf16() -> bool:
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def amp_mode(setting: str, device: torch.device) -> str:
    """Resolve ``auto`` to what the hardware does natively: bf16 on CPU, fp16 on CUDA, else off."""
    if setting != "auto":
        if setting == "fp16" and device.type != "cuda":
            raise ConfigError("amp fp16 needs a CUDA device; use bf16 or off on CPU")
        return setting
    if device.type == "cuda":
        return "fp16"
    return "bf16" if _cpu_has_bf16() else "off"


def _autocast(mode: str, device: torch.device) -> contextlib.AbstractContextManager:
    if mode == "off":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


#: The packages a training run's record names (config.yaml ``run.versions``).
_RUN_PACKAGES = ("edgeclf", "torch", "torchvision", "timm", "numpy", "pillow", "scikit-learn")


def git_commit() -> str | None:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_digest_path(path: Path) -> Path:
    """The sidecar ``<checkpoint>.sha256`` that records a checkpoint's SHA-256."""
    return Path(path).with_name(Path(path).name + ".sha256")


def _recorded_digests(path: Path) -> list[str]:
    side = checkpoint_digest_path(path)
    if not side.is_file():
        return []
    return [line.split()[0] for line in side.read_text(encoding="utf-8").splitlines() if line.strip()]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: never a half-written checkpoint.

    The SHA-256 goes into ``<checkpoint>.sha256``: first beside the previous one (so that a
    crash between the two renames leaves a pair that still verifies), then alone.
    """
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, buf)
    data = buf.getvalue()
    digest = sha256_bytes(data)
    side = checkpoint_digest_path(path)
    previous = _recorded_digests(path)[-1:] if Path(path).is_file() else []
    atomic_write_text(side, "\n".join(dict.fromkeys([*previous, digest])) + "\n")
    atomic_write_bytes(path, data)
    atomic_write_text(side, digest + "\n")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint after checking it against its recorded SHA-256 (checkpoints are data too:
    a flipped bit would otherwise evaluate, export and resume silently)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = Path(path).read_bytes()
    recorded = _recorded_digests(path)
    if recorded and sha256_bytes(data) not in recorded:
        raise CheckpointError(
            f"checkpoint {path} does not match its recorded SHA-256 ({checkpoint_digest_path(path).name}): "
            "the file is corrupt (damaged or altered); restore it from a copy or train again"
        )
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise CheckpointError(f"checkpoint {path} is corrupt or not an edgeclf checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an edgeclf checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {ckpt.get('version')}, expected {CHECKPOINT_VERSION}")
    return ckpt


# ----------------------------------------------------------------------------- model helpers


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm | nn.GroupNorm | nn.LayerNorm)


def apply_bn_policy(model: nn.Module, policy: str) -> None:
    """Call after ``model.train()``: keep BN statistics (and maybe affine) frozen per ``policy``."""
    if policy == "train":
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            if policy == "frozen":
                for p in m.parameters(recurse=False):
                    p.requires_grad_(False)


def head_parameter_names(model: nn.Module) -> set[str]:
    clf = model.get_classifier()
    prefix = next(n for n, m in model.named_modules() if m is clf)
    return {f"{prefix}.{n}" for n, _ in clf.named_parameters()}


def set_trainable(model: nn.Module, unfreeze: str | int) -> list[str]:
    """Head always trainable; backbone all, or its last ``unfreeze`` groups. Returns trainable names."""
    from edgeclf.models import backbone_groups

    head = head_parameter_names(model)
    if unfreeze == "all":
        train_names = {n for n, _ in model.named_parameters()}
    else:
        groups = backbone_groups(model)
        n = int(unfreeze)
        if n < 0 or n > len(groups):
            raise ConfigError(f"finetune.unfreeze must be 'all' or 0..{len(groups)} groups for this backbone, got {n}")
        train_names = set(head).union(*groups[len(groups) - n :]) if n else set(head)
    for name, p in model.named_parameters():
        p.requires_grad_(name in train_names)
    return sorted(train_names)


def param_groups(model: nn.Module, lr: float, backbone_mult: float, weight_decay: float) -> list[dict[str, Any]]:
    """Head / backbone at their learning rates, each split into decay / no-decay (norms, biases)."""
    head = head_parameter_names(model)
    no_decay_ids = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim > 1 and id(p) not in no_decay_ids
        buckets.setdefault((name in head, decay), []).append(p)
    groups = []
    for (is_head, decay), params in sorted(buckets.items()):
        groups.append(
            {
                "params": params,
                "lr": lr * (1.0 if is_head else backbone_mult),
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{'head' if is_head else 'backbone'}/{'decay' if decay else 'no_decay'}",
            }
        )
    return groups


# ----------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    run_dir: Path
    metrics: TrainMetrics


class _TB:
    """TensorBoard writer on the main rank; a no-op elsewhere."""

    def __init__(self, log_dir: Path | None) -> None:
        self.w = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.w = SummaryWriter(str(log_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.w is not None:
            self.w.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.w is not None:
            self.w.flush()
            self.w.close()


def _resolve_root(manifest_path: Path, root: Path | None) -> Path:
    if root is not None:
        return Path(root)
    summary = manifest_path.with_name(manifest_path.stem + ".summary.json")
    if summary.is_file():
        try:
            recorded = Path(json.loads(summary.read_text(encoding="utf-8"))["data_dir"])
        except (ValueError, KeyError):
            recorded = None
        if recorded is not None:
            if not recorded.is_absolute():
                # recorded relative to where `data split` ran; try the cwd, then beside the manifest
                for base in (Path.cwd(), manifest_path.parent):
                    if (base / recorded).is_dir():
                        return base / recorded
            elif recorded.is_dir():
                return recorded
    raise DataError(f"cannot tell which folder the paths in {manifest_path} are relative to; pass --data-root DIR")


def _check_manifest(m: Manifest) -> None:
    counts = m.counts()
    for split in ("train", "val"):
        missing = [c for c, n in counts[split].items() if n == 0]
        if missing:
            raise DataError(
                f"class(es) {', '.join(missing)} have no images in the '{split}' split of the manifest; "
                "re-split the data so every class is in train and val"
            )


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        resume: bool = False,
        log: Log | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        max_image_size: int | None = None,
        shared_cache: dict[Any, Any] | None = None,
        on_epoch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.max_image_size = max_image_size
        self.resolution_table: list[dict[str, Any]] | None = None
        #: the running mean of the end-of-epoch weights (finetune.average_from), filled by _finetune
        self.weight_average: dict[str, Any] | None = None
        #: trunk activations shared between runs with the same trunk and views (the search's trials)
        self.shared_cache = shared_cache
        #: called after every fine-tuning epoch with (epoch, val macro-F1): the search's pruner
        self.on_epoch = on_epoch
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.device = _device(cfg.device)
        self.dist = _init_dist(self.device)
        self.log: Log = (log or (lambda s: None)) if self.dist.main else (lambda s: None)
        self.progress = progress if self.dist.main else None
        self.amp = amp_mode(cfg.amp, self.device)

    # -- setup ---------------------------------------------------------------------------

    def _write_config(self, resolved: dict[str, Any], annotate: Callable[[str], str]) -> None:
        if self.dist.main and not self.resume:
            (self.run_dir / "checkpoints" / "candidates").mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                self.run_dir / "config.yaml", annotate(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
            )

    def _prepare_run_dir(self, resolved: dict[str, Any]) -> None:
        """Refuse to overwrite a run; on --resume, refuse a different config (config.yaml is written later)."""
        ckpt_dir = self.run_dir / "checkpoints"
        cfg_path = self.run_dir / "config.yaml"
        if self.resume:
            if not (ckpt_dir / "last.pt").is_file() and not (ckpt_dir / "probe.pt").is_file():
                raise CheckpointError(f"nothing to resume in {self.run_dir}: no checkpoints/last.pt or probe.pt")
            if self.dist.main:
                (ckpt_dir / "candidates").mkdir(parents=True, exist_ok=True)
            if cfg_path.is_file():
                old = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
                if old.get("config") != resolved["config"]:
                    diff = sorted(_diff_keys(old.get("config", {}), resolved["config"]))
                    raise ConfigError(
                        f"--resume with a different config than {cfg_path}: {', '.join(diff[:8])} differ; "
                        "resume with the same settings or start a new run directory"
                    )
            return
        if ckpt_dir.exists() and any(p.is_file() for p in ckpt_dir.rglob("*")):
            raise ConfigError(f"{self.run_dir} already holds a run; pass --resume to continue it, or choose another --out")

    def _loader(
        self, ds: torch.utils.data.Dataset, batch: int, sampler: Any = None, shuffle_items: list | None = None
    ) -> DataLoader:
        w = self.cfg.data.workers
        return DataLoader(
            ds if shuffle_items is None else shuffle_items,
            batch_size=batch,
            sampler=sampler,
            num_workers=w,
            pin_memory=self.device.type == "cuda",
            persistent_workers=w > 0,
            prefetch_factor=4 if w > 0 else None,
            # forkserver, not fork: forking a process that has loaded a threaded runtime (OpenVINO's
            # TBB, ONNX Runtime's pools) can crash; workers start once per loader (persistent)
            multiprocessing_context="forkserver" if w > 0 else None,
            # its own generator: creating an iterator must not draw from the global RNG that
            # dropout uses, or a resumed run (fresh iterator) would diverge from an uninterrupted one
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )

    # -- stages --------------------------------------------------------------------------

    @torch.no_grad()
    def _predict(self, model: nn.Module, ds: ManifestDataset, features: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Logits (or pooled features) for every item of ``ds`` in order, sharded over ranks."""
        model.eval()
        idx = list(range(self.dist.rank, len(ds), self.dist.world_size))
        loader = self._loader(Subset(ds, idx), self.cfg.batch_size * 2)
        outs = []
        for x, _ in loader:
            # fp32 on purpose: validation numbers must be those of the model that gets exported
            x = normalize_batch(x.to(self.device, non_blocking=True), ds.spec)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            out = model.forward_head(model.forward_features(x), pre_logits=True) if features else model(x)
            outs.append(out.float().cpu())
        mine = torch.cat(outs).numpy() if outs else np.zeros((0, 0), np.float32)
        parts = _gather((idx, mine), self.dist)
        full: np.ndarray | None = None
        for ids, arr in parts:
            if len(ids) == 0:
                continue
            if full is None:
                full = np.zeros((len(ds), arr.shape[1]), np.float32)
            full[ids] = arr
        assert full is not None
        return full, np.asarray(ds.targets)

    @property
    def _mixup_alpha(self) -> float:
        return self.cfg.augment.mixup if self.cfg.augment.enabled else 0.0

    def _train_epoch(
        self,
        model: nn.Module,
        loader: DataLoader,
        sampler: EpochSampler,
        epoch: int,
        opt: torch.optim.Optimizer,
        sched: Any,
        scaler: Any,
        loss_fn: nn.Module,
        spec: PreprocessSpec,
        tb: _TB,
        global_step: int,
    ) -> tuple[float, int, int]:
        model.train()
        apply_bn_policy(model, self.cfg.finetune.batchnorm)
        sampler.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(self.cfg.seed, epoch, self.dist.rank))  # dropout / drop-path
        acc = [0.0, 0.0]
        n_batches = len(loader)
        mix_rng = np.random.default_rng(_epoch_seed(mix_seed(self.cfg.seed, MIXUP_STREAM), epoch, self.dist.rank))
        for b, (x, y) in enumerate(loader):
            x = normalize_batch(x.to(self.device, non_blocking=True), spec)
            y = y.to(self.device, non_blocking=True)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            x, mix = mixup_batch(x, y, self._mixup_alpha, mix_rng)
            with _autocast(self.amp, self.device):
                loss = _mixed_loss(loss_fn, model(x).float(), y, mix)
            global_step = self._step(loss, len(y), opt, sched, scaler, tb, global_step, acc, epoch, b, n_batches)
        return acc[0] / max(1, acc[1]), int(acc[1]), global_step

    def _step(
        self,
        loss: torch.Tensor,
        n: int,
        opt: torch.optim.Optimizer,
        sched: Any,
        scaler: Any,
        tb: _TB,
        global_step: int,
        acc: list[float],
        epoch: int,
        b: int,
        n_batches: int,
    ) -> int:
        """Backward, optimizer and schedule step, running loss, TensorBoard, progress: one batch."""
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        sched.step()
        global_step += 1
        acc[0] += float(loss.detach()) * n
        acc[1] += n
        tb.scalar("train/loss_step", float(loss.detach()), global_step)
        if self.progress:
            self.progress(f"epoch {epoch + 1}", b + 1, n_batches)
        return global_step

    # -- main ----------------------------------------------------------------------------

    def run(self) -> RunResult:
        cfg = self.cfg
        if cfg.data.manifest is None:
            raise ConfigError("no data: pass --manifest M (from `edgeclf data split`) or --data DIR")
        manifest_path = Path(cfg.data.manifest)
        manifest = read_manifest(manifest_path)
        _check_manifest(manifest)
        root = _resolve_root(manifest_path, cfg.data.root)
        classes = manifest.classes
        seed_everything(cfg.seed, cfg.deterministic)

        from edgeclf.models import backbone_groups, create_model, get_backbone
        from edgeclf.train.recipe import annotate_yaml, measure_facts, resolve_recipe

        self.user_cfg = cfg

        info = get_backbone(cfg.model.backbone)
        model, weights_report = create_model(
            cfg.model.backbone,
            len(classes),
            weights=cfg.model.weights,
            source=cfg.model.weights_source,
            drop_rate=cfg.model.drop_rate,
        )
        train_rows, val_rows = manifest.split_rows("train"), manifest.split_rows("val")
        facts = measure_facts(train_rows, root, classes, cfg.seed)
        if cfg.auto_recipe:
            cfg, choices = resolve_recipe(cfg, facts, info.input_size, len(backbone_groups(model)), self.max_image_size)
            self.cfg = cfg
        else:
            choices = []
        stored_choices: list[RecipeChoice] = []
        if self.resume and (self.run_dir / "config.yaml").is_file():
            stored_choices = [
                RecipeChoice.model_validate(c)
                for c in read_run_config(self.run_dir).recipe.get("choices", [])
                if c.get("source") == "auto"
            ]
            checked = [c for c in stored_choices if c.reason.startswith(AUG_CHECK)]
            if checked:  # the augmentation check ran before the interruption: the same result
                cfg = self.cfg = _with_augment(cfg, {c.key.split(".", 1)[1]: c.value for c in checked})
                choices += checked
        if cfg.auto_recipe and "model.image_size" not in explicit_keys(self.user_cfg):
            measured = [c for c in stored_choices if c.key == "model.image_size" and c.reason.startswith(RESOLUTION_CHECK)]
            sizes = resolution_candidates(facts, info.input_size, self.max_image_size)
            if measured:  # measured before the interruption: the same result
                choice = measured[0]
            elif len(sizes) > 1:
                size, why, table = self._resolution_check(
                    model, train_rows, val_rows, root, classes, sizes, weights_report.expects
                )
                choice = RecipeChoice(key="model.image_size", value=size, reason=why, source="auto")
                self.resolution_table = table
            else:
                choice = None
            if choice is not None:
                choices = [c for c in choices if c.key != "model.image_size"] + [choice]
                cfg = self.cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"image_size": choice.value})})
        for c in choices:
            self.log(f"  recipe: {c.key} = {c.value}  ({c.source}: {c.reason})")
        spec = PreprocessSpec.for_weights(weights_report.expects, cfg.model.image_size)
        if weights_report.bn_folded and cfg.finetune.batchnorm == "train":
            self.log(
                "[yellow]warning:[/] these weights have batch-norm folded into the convolutions; "
                "finetune.batchnorm=train will disturb them (frozen_stats is the safe choice)"
            )
        recipe: dict[str, Any] = {"facts": facts.to_dict(), "choices": [c.model_dump(mode="json") for c in choices]}
        if self.resolution_table is not None:
            recipe["resolution_check"] = self.resolution_table
        resolved = {
            "config": json.loads(cfg.model_dump_json()),
            "recipe": recipe,
            "run": {
                "backbone": info.name,
                "timm_arch": info.timm_arch,
                "classes": classes,
                "preprocess": spec.to_dict(),
                "weights": weights_report.to_dict(),
                "data_root": str(root),
                "dataset_fingerprint": manifest.fingerprint,
                "seed": cfg.seed,
                "amp": self.amp,
                "device": str(self.device),
                "world_size": self.dist.world_size,
                "versions": library_versions(_RUN_PACKAGES),
                "git_commit": git_commit(),
            },
        }
        self._prepare_run_dir(resolved)
        if self.dist.active:  # every rank has checked the run directory before rank 0 writes into it
            import torch.distributed as td

            td.barrier()
        ckpt_dir = self.run_dir / "checkpoints"

        cache = DecodeCache(cfg.data.cache_dir or None, spec)
        train_ds = ManifestDataset(train_rows, root, classes, spec, cache, cfg.augment, cfg.seed)
        val_ds = ManifestDataset(val_rows, root, classes, spec, cache, None, cfg.seed)
        counts = [Counter(train_ds.targets)[i] for i in range(len(classes))]
        weight = class_weights(counts, cfg.loss.class_weights, cfg.loss.effective_beta)
        loss_fn = build_loss(
            cfg.loss.type, weight, cfg.loss.label_smoothing, cfg.loss.focal_gamma, counts, cfg.loss.logit_tau
        ).to(self.device)
        model.to(self.device)
        if self.device.type == "cpu":  # oneDNN's fast path for depthwise convs: ~1.5x here
            model = model.to(memory_format=torch.channels_last)
        tb = _TB(self.run_dir / "tensorboard" if self.dist.main else None)
        y_val = np.asarray(val_ds.targets)
        cands = _Candidates(ckpt_dir / "candidates", classes, y_val, spec, info.name, self.dist.main)

        # candidate 0: the majority class of train (a head that ignores its input)
        majority = int(np.argmax(counts))
        prior = np.asarray(counts, np.float64) / max(1, sum(counts))
        maj_logits = np.tile(np.log(np.maximum(prior, 1e-12)), (len(val_ds), 1)).astype(np.float32)
        baselines = {
            "majority_class": {
                "class": classes[majority],
                **classification_metrics(y_val, np.full(len(val_ds), majority), classes),
            }
        }

        # the frozen trunk and its cached activations (partial fine-tuning), when the split allows it
        for p in model.parameters():
            p.requires_grad_(False)
        ft = cfg.finetune
        set_trainable(model, ft.unfreeze)
        split = (
            split_trunk(model)
            if (ft.unfreeze != "all" and self.device.type == "cpu" and not self.dist.active and ft.cache_views > 0)
            else None
        )
        for p in model.parameters():
            p.requires_grad_(False)
        acts: _Activations | None = None
        if split is not None:
            key = (
                info.name,
                spec.to_dict().__repr__(),
                split.first_trainable,
                ft.cache_views,
                ft.cache_max_gb,
                cfg.seed,
                manifest.fingerprint,
                ft.trunk_engine,
            )
            if self.shared_cache is not None and key in self.shared_cache:
                acts = self.shared_cache[key]
                self.log("trunk activations shared with an earlier run of this search")
            else:
                acts = self._activations(split, train_ds, val_ds, ft.cache_views, spec)
                if self.shared_cache is not None and acts is not None:
                    self.shared_cache.clear()  # one trunk's activations in memory at a time
                    self.shared_cache[key] = acts
            if acts is None:
                split = None

        t_stage = time.perf_counter()
        head = model.get_classifier()

        # candidate 1: linear probe on frozen features (doubles as the baseline)
        probe_path = ckpt_dir / "probe.pt"
        if self.resume and probe_path.is_file():
            probe = load_checkpoint(probe_path)
            head.load_state_dict(probe["head"])
            baselines["linear_probe"] = probe["metrics"]
            self.log("stage 1 (linear probe) restored from checkpoints/probe.pt")
        else:
            for p in head.parameters():
                p.requires_grad_(True)
            self.log(f"stage 1: linear probe on frozen {info.name} features ({len(train_ds)} train / {len(val_ds)} val images)")
            baselines["linear_probe"] = self._linear_probe(model, train_ds, val_ds, loss_fn, classes, split, acts)
        if (
            split is not None
            and acts is not None
            and not self.resume
            and cfg.auto_recipe
            and "augment.crop_scale" not in explicit_keys(self.user_cfg)
            and train_ds.augment is not None
        ):
            soft = self._augment_check(model, split, acts, train_ds, val_ds, spec, classes)
            if soft:
                cfg = self.cfg = _with_augment(cfg, {c.key.split(".", 1)[1]: c.value for c in soft})
                choices += soft
                for c in soft:
                    self.log(f"  recipe: {c.key} = {c.value}  ({c.source}: {c.reason})")
                train_ds = ManifestDataset(train_rows, root, classes, spec, cache, cfg.augment, cfg.seed)
                recipe["choices"] = [c.model_dump(mode="json") for c in choices]
                resolved["config"] = json.loads(cfg.model_dump_json())
        self._write_config(resolved, lambda text: annotate_yaml(text, choices))
        if self.dist.main and not (self.resume and probe_path.is_file()):
            save_checkpoint(probe_path, {"head": head.state_dict(), "metrics": baselines["linear_probe"]})
        # candidates are written only after config.yaml: an interrupted run before it is a fresh start
        with torch.no_grad():
            probe_state = {k: v.clone() for k, v in head.state_dict().items()}
            for prm in head.parameters():
                prm.zero_()
            bias = getattr(head, "bias", None)
            if bias is not None:
                bias.copy_(torch.from_numpy(np.log(np.maximum(prior, 1e-12))).float())
        cands.add("majority_class", "always the most frequent training class", maj_logits, model, 0, 0.0, shippable=True)
        head.load_state_dict(probe_state)
        if split is not None and acts is not None and not acts.views_:
            self._fill_views(acts, train_ds, spec, ft.cache_views)
        probe_logits = self._val_logits(model, val_ds, split, acts)
        cands.add(
            "linear_probe", f"linear head on frozen {info.name} features", probe_logits, model, 0, time.perf_counter() - t_stage
        )
        self.log(
            f"  majority class: val macro-F1 {baselines['majority_class']['macro_f1']:.3f}, "
            f"linear probe: val macro-F1 {baselines['linear_probe']['macro_f1']:.3f} "
            f"(accuracy {baselines['linear_probe']['accuracy']:.3f})"
        )

        # candidate 2: fine-tune (the last groups on cached activations, or the whole network)
        t_stage = time.perf_counter()
        set_trainable(model, ft.unfreeze)
        if ft.batchnorm == "frozen":
            apply_bn_policy(model, "frozen")
        history, best_epoch, stopped_early, best_state = self._finetune(
            model, train_ds, val_ds, loss_fn, spec, tb, classes, split, acts, ckpt_dir, info.name
        )
        tb.close()
        ft_path = ckpt_dir / "candidates" / "finetune.pt"
        if best_epoch >= 0:
            # every rank holds the best state (same on all): no rank waits on another's file
            model.load_state_dict(best_state if best_state is not None else load_checkpoint(ft_path)["model"])
            what = (
                f"last {ft.unfreeze} backbone stages + head fine-tuned on cached trunk activations "
                f"({acts.views} augmented views, trunk on {acts.engine})"
                if split is not None and acts is not None
                else f"{'whole network' if ft.unfreeze == 'all' else f'last {ft.unfreeze} backbone stages + head'} fine-tuned"
            )
            cands.add(
                "finetune",
                what,
                self._val_logits(model, val_ds, split, acts),
                model,
                best_epoch + 1,
                time.perf_counter() - t_stage,
                save=False,
                path=ft_path,
            )

        avg = self.weight_average
        if best_epoch >= 0 and avg is not None and avg["n"] >= 2:
            t_avg = time.perf_counter()
            shipped_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(avg["state"])
            cands.add(
                "finetune_average",
                f"the mean of the fine-tuned weights at the end of epochs {avg['first']}-{avg['last']} "
                f"({avg['n']} epochs; stochastic weight averaging)",
                self._val_logits(model, val_ds, split, acts),
                model,
                avg["last"],
                time.perf_counter() - t_avg,
            )
            model.load_state_dict(shipped_state)

        selected = cands.select()
        metrics = TrainMetrics.model_validate(
            self._final_metrics(cands, selected, baselines, history, stopped_early, classes, recipe)
        )
        if self.dist.main:
            cands.ship(selected, ckpt_dir / "best.pt")
            write_metrics(self.run_dir, metrics)
        if self.dist.active:
            import torch.distributed as td

            td.barrier()
        return RunResult(self.run_dir, metrics)

    def _resolution_check(
        self,
        model: nn.Module,
        train_rows: list,
        val_rows: list,
        root: Path,
        classes: list[str],
        sizes: list[int],
        figures: PretrainedInput,
    ) -> tuple[int, str, list[dict[str, Any]]]:
        """The linear probe at each candidate input size on a class-stratified sample of train,
        scored on (a sample of) validation; :func:`choose_resolution` decides."""
        rng = np.random.default_rng(mix_seed(self.cfg.seed, 5151))
        tr = stratified_rows(train_rows, RES_CHECK_TRAIN, rng)
        va = stratified_rows(val_rows, RES_CHECK_VAL, rng)
        counts = Counter(r.label for r in tr)
        weight = class_weights(
            [max(1, counts.get(c, 0)) for c in classes], self.cfg.loss.class_weights, self.cfg.loss.effective_beta
        )
        model.to(self.device)
        preds: dict[int, np.ndarray] = {}
        y_val = np.zeros(0, np.int64)
        t0 = time.perf_counter()
        for size in sizes:
            spec = PreprocessSpec.for_weights(figures, size)
            cache = DecodeCache(self.cfg.data.cache_dir or None, spec)
            ftr, ytr = self._predict(model, ManifestDataset(tr, root, classes, spec, cache, None, self.cfg.seed), features=True)
            fva, y_val = self._predict(model, ManifestDataset(va, root, classes, spec, cache, None, self.cfg.seed), features=True)
            fit = fit_probe(ftr, ytr, fva, y_val, len(classes), None if weight is None else weight.numpy())
            preds[size] = (fva @ fit.weight.T + fit.bias).argmax(axis=1)
        size, why, table = choose_resolution(sizes, y_val, preds, classes, self.cfg.seed)
        self.log(
            f"resolution check on {len(tr)} train / {len(va)} val images in {time.perf_counter() - t0:.0f} s: "
            + ", ".join(f"{r['size']} px {r['probe_val_macro_f1']:.3f}" for r in table)
            + f" -> {size} px"
        )
        return size, why, table

    # -- cached activations --------------------------------------------------------------

    def _activations(
        self, split: TrunkSplit, train_ds: ManifestDataset, val_ds: ManifestDataset, views: int, spec: PreprocessSpec
    ) -> _Activations | None:
        """Trunk outputs: val and train as deployed (no augmentation), and ``views`` augmented train views."""
        example = normalize_batch(torch.stack([val_ds[i][0] for i in range(min(8, len(val_ds)))]), spec)
        runner = TrunkRunner(split.trunk, example, self.log, self.cfg.finetune.trunk_engine)
        with torch.no_grad():
            shape = tuple(runner(example[:1]).shape[1:])
        per = int(np.prod(shape)) * 2  # fp16
        budget = int(self.cfg.finetune.cache_max_gb * 2**30)
        fit = budget // max(1, per * len(train_ds)) - 1  # one clean copy of train
        if fit < 1:
            self.log(
                f"trunk activations ({per * len(train_ds) / 2**30:.1f} GB per view) exceed finetune.cache_max_gb: "
                "fine-tuning without the cache"
            )
            return None
        if fit < views:
            self.log(f"finetune.cache_views {views} -> {fit} (finetune.cache_max_gb {self.cfg.finetune.cache_max_gb})")
            views = fit
        t0 = time.perf_counter()
        val = self._run_trunk(runner, val_ds, list(range(len(val_ds))), spec, "trunk: val", torch.float32)
        memo: dict[bytes, torch.Tensor] = {}
        clean = self._run_trunk(runner, train_ds, list(range(len(train_ds))), spec, "trunk: train", torch.float16, memo)
        seconds = time.perf_counter() - t0
        return _Activations(
            val=val,
            train=clean,
            views_=[],
            engine=runner.engine,
            seconds=seconds,
            images_per_second=(len(val_ds) + len(train_ds)) / max(seconds, 1e-9),
            runner=runner,
            max_views=views,
            shape=shape,
            memo=memo,
        )

    def _fill_views(self, acts: _Activations, train_ds: ManifestDataset, spec: PreprocessSpec, views: int) -> None:
        """The augmented training views, computed once (views are shared only with the same augmentation)."""
        key = train_ds.augment.model_dump_json() if train_ds.augment is not None else "none"
        if acts.views_key == key and acts.views_:
            return
        views = min(views, acts.max_views)
        t0 = time.perf_counter()
        memo = dict(acts.memo)  # the plain training images; a view equal to one (or to another view) is reused
        acts.views_ = [
            self._run_trunk(
                acts.runner,
                train_ds,
                [(v, i) for i in range(len(train_ds))],
                spec,
                f"trunk: train view {v + 1}/{views}",
                torch.float16,
                memo,
            )
            for v in range(views)
        ]
        ran = len(memo) - len(acts.memo)
        del memo
        acts.views_key = key
        seconds = time.perf_counter() - t0
        n = len(train_ds) * views
        acts.seconds += seconds
        total = n + len(acts.train) + len(acts.val)
        acts.images_per_second = total / max(acts.seconds, 1e-9)
        reused = f"; {n - ran} of the {n} views equal an image already run and were reused" if ran < n else ""
        self.log(
            f"trunk activations {acts.shape} for {total} images on {acts.engine} in {acts.seconds:.1f} s "
            f"({acts.images_per_second:.1f} img/s{reused})"
        )

    def _augment_check(
        self,
        model: nn.Module,
        split: TrunkSplit,
        acts: _Activations,
        train_ds: ManifestDataset,
        val_ds: ManifestDataset,
        spec: PreprocessSpec,
        classes: list[str],
    ) -> list[RecipeChoice]:
        """Does the augmentation keep the label? The linear probe (fitted on clean training images)
        scores a sample of *validation* images as deployed and as augmented — held-out images, so the
        clean figure is not the probe's fit to its own training data. When augmentation costs more
        than ``AUG_MAX_DROP`` of its macro-F1, it steps down :data:`AUG_LADDER` (a softer crop and
        turn, then no crop or turn, then no flips either), measured again at each step, and keeps the
        first step within the limit: the label lives in details that a large crop or turn removes, as
        for defects on an inspection image, or in the orientation itself."""
        a = train_ds.augment
        assert a is not None
        rng = np.random.default_rng(mix_seed(self.cfg.seed, 4242))
        idx = np.sort(rng.choice(len(val_ds), size=min(AUG_CHECK_IMAGES, len(val_ds)), replace=False)).tolist()
        y = np.asarray(val_ds.targets)[idx]
        head = model.get_classifier()
        with torch.no_grad():
            clean_pred = head(torch.from_numpy(self._top_predict(model, split, acts.val[idx], features=True))).argmax(1)
        f_clean = classification_metrics(y, clean_pred.numpy(), classes)["macro_f1"]

        def drop_under(aug: AugmentConfig) -> tuple[float, float]:
            ds = ManifestDataset(val_ds.rows, val_ds.root, classes, spec, val_ds.cache, aug, self.cfg.seed)
            items = [(AUG_CHECK_VIEW, i) for i in idx]
            feats = self._run_trunk(acts.runner, ds, items, spec, "augmentation check", torch.float32)
            with torch.no_grad():
                pred = head(torch.from_numpy(self._top_predict(model, split, feats, features=True))).argmax(1)
            f = classification_metrics(y, pred.numpy(), classes)["macro_f1"]
            return f, (f_clean - f) / max(f_clean, 1e-9)

        user = explicit_keys(self.user_cfg)
        f_aug, drop = drop_under(a)
        self.log(
            f"augmentation check on {len(idx)} validation images: probe macro-F1 {f_clean:.3f} as deployed, "
            f"{f_aug:.3f} augmented ({drop:+.0%} drop; stepped down above {AUG_MAX_DROP:.0%})"
        )
        if drop <= AUG_MAX_DROP:
            return []
        steps = [f"{f_aug:.3f} augmented as configured ({drop:.0%})"]
        values: dict[str, Any] = {}
        for name, step in AUG_LADDER:
            step = {k: v for k, v in step.items() if f"augment.{k}" not in user}
            step = {
                k: (max(a.crop_scale[0], v[0]), v[1]) if k == "crop_scale" else min(getattr(a, k), v) for k, v in step.items()
            }
            step = {k: v for k, v in step.items() if getattr(a, k) != v}
            if not step:
                continue
            values.update(step)
            f_aug, drop = drop_under(a.model_copy(update=values))
            steps.append(f"{f_aug:.3f} with {name} ({drop:.0%})")
            self.log(f"    {name}: probe macro-F1 {f_aug:.3f} ({drop:+.0%} drop)")
            if drop <= AUG_MAX_DROP:
                break
        if not values:
            return []
        why = (
            f"{AUG_CHECK}: on {len(idx)} validation images the linear probe's macro-F1 as deployed is {f_clean:.3f}; "
            f"{', '.join(steps)}; the limit is a {AUG_MAX_DROP:.0%} drop: the label does not survive more"
        )
        return [RecipeChoice(key=f"augment.{k}", value=v, reason=why, source="auto") for k, v in values.items()]

    def _run_trunk(
        self,
        runner: TrunkRunner,
        ds: ManifestDataset,
        items: list,
        spec: PreprocessSpec,
        label: str,
        dtype: torch.dtype,
        memo: dict[bytes, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The trunk's output for ``items``. With ``memo`` (input digest -> activation), an input seen
        before (an augmented view that came out as the plain image or as a flip already computed) is
        not run again; the memo is extended with this call's inputs, pointing into the result."""
        w = self.cfg.data.workers
        loader = DataLoader(
            _Items(ds, items),
            batch_size=self.cfg.batch_size * 2,
            num_workers=w,
            multiprocessing_context="forkserver" if w > 0 else None,
            prefetch_factor=4 if w > 0 else None,
        )
        outs, keys, done = [], [], 0
        for x, _ in loader:
            if memo is None:
                outs.append(runner(normalize_batch(x, spec)).to(dtype))
            else:
                batch_keys = [hashlib.blake2b(xi.numpy().tobytes(), digest_size=16).digest() for xi in x]
                new: dict[bytes, int] = {}
                for j, k in enumerate(batch_keys):
                    if k not in memo and k not in new:
                        new[k] = j
                if new:
                    y = runner(normalize_batch(x[list(new.values())], spec)).to(dtype)
                    memo.update(zip(new, y, strict=True))
                outs.append(torch.stack([memo[k] for k in batch_keys]))
                keys += batch_keys
            done += len(x)
            if self.progress:
                self.progress(label, done, len(items))
        out = torch.cat(outs)
        if memo is not None:  # point at the result, so that the batches' own tensors are freed
            memo.update({k: out[i] for i, k in enumerate(keys)})
        return out

    # -- stages --------------------------------------------------------------------------

    def _val_logits(
        self, model: nn.Module, val_ds: ManifestDataset, split: TrunkSplit | None, acts: _Activations | None
    ) -> np.ndarray:
        if split is not None and acts is not None:
            return self._top_predict(model, split, acts.val)
        return self._predict(model, val_ds)[0]

    @torch.no_grad()
    def _top_predict(self, model: nn.Module, split: TrunkSplit, x: torch.Tensor, features: bool = False) -> np.ndarray:
        """Logits (or pre-logit features) of the top on cached trunk activations."""
        model.eval()
        run = split.features if features else split.top
        return torch.cat(
            [run(x[i : i + 128].float().contiguous(memory_format=torch.channels_last)).float() for i in range(0, len(x), 128)]
        ).numpy()

    def _linear_probe(
        self,
        model: nn.Module,
        train_ds: ManifestDataset,
        val_ds: ManifestDataset,
        loss_fn: nn.Module,
        classes: list[str],
        split: TrunkSplit | None = None,
        acts: _Activations | None = None,
    ) -> dict[str, Any]:
        cfg = self.cfg.probe
        t0 = time.perf_counter()
        if split is not None and acts is not None:
            ftr = self._top_predict(model, split, acts.train, features=True)
            fva = self._top_predict(model, split, acts.val, features=True)
            ytr, yva = np.asarray(train_ds.targets), np.asarray(val_ds.targets)
        else:
            ftr, ytr = self._predict(model, train_ds, features=True)
            fva, yva = self._predict(model, val_ds, features=True)
        t_feat = time.perf_counter() - t0
        head = model.get_classifier()
        fit: ProbeFit | None = None
        if cfg.method == "logistic" and cfg.epochs > 0:
            # the probe balances the classes as loss.class_weights says, whatever the fine-tuning loss
            counts = [int(np.sum(ytr == i)) for i in range(len(classes))]
            weight = class_weights([max(1, n) for n in counts], self.cfg.loss.class_weights, self.cfg.loss.effective_beta)
            fit = fit_probe(ftr, ytr, fva, yva, len(classes), None if weight is None else weight.detach().cpu().numpy())
            with torch.no_grad():
                head.weight.copy_(torch.from_numpy(fit.weight))
                head.bias.copy_(torch.from_numpy(fit.bias))
            self.log(
                f"  linear probe: L2 strength C={fit.c:g} chosen on validation macro-F1 over {len(fit.sweep)} values "
                f"({fit.seconds:.1f} s)"
            )
        else:
            self._sgd_probe(head, ftr, ytr, loss_fn)
        head.eval()
        with torch.no_grad():
            pred = head(torch.from_numpy(fva)).argmax(1).numpy()
        m = classification_metrics(yva, pred, classes)
        m["feature_seconds"] = round(t_feat, 2)
        m["probe"] = fit.summary() if fit is not None else {"method": "sgd", "epochs": cfg.epochs}
        return m

    def _sgd_probe(self, head: nn.Module, ftr: np.ndarray, ytr: np.ndarray, loss_fn: nn.Module) -> None:
        """The probe by AdamW on the training loss (``probe.method: sgd``; ``probe.epochs: 0`` keeps the head)."""
        cfg = self.cfg.probe
        xtr, ttr = torch.from_numpy(ftr), torch.from_numpy(ytr).long()
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        g = torch.Generator().manual_seed(self.cfg.seed)
        n = len(xtr)
        bs = max(256, self.cfg.batch_size)
        steps = cfg.epochs * math.ceil(n / bs)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, 0, "cosine", 0.01))
        head.train()
        for _ in range(cfg.epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, bs):
                b = perm[i : i + bs]
                loss = loss_fn(head(xtr[b]), ttr[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()

    def _top_epoch(
        self,
        model: nn.Module,
        split: TrunkSplit,
        feats: torch.Tensor,
        targets: torch.Tensor,
        epoch: int,
        opt: torch.optim.Optimizer,
        sched: Any,
        loss_fn: nn.Module,
        tb: _TB,
        global_step: int,
    ) -> tuple[float, int, int]:
        """One epoch of the top on one cached view (same order rule as the image loader: seed + epoch)."""
        model.train()
        apply_bn_policy(model, self.cfg.finetune.batchnorm)
        torch.manual_seed(_epoch_seed(self.cfg.seed, epoch, 0))
        order = EpochSampler(targets.tolist(), self.cfg.seed, self.cfg.loss.balanced_sampler).order(epoch)
        bs = self.cfg.batch_size
        acc = [0.0, 0.0]
        n_batches = math.ceil(len(order) / bs)
        mix_rng = np.random.default_rng(_epoch_seed(mix_seed(self.cfg.seed, MIXUP_STREAM), epoch, 0))
        for b in range(n_batches):
            idx = torch.from_numpy(order[b * bs : (b + 1) * bs])
            x = feats[idx].float().contiguous(memory_format=torch.channels_last)
            y = targets[idx]
            x, mix = mixup_batch(x, y, self._mixup_alpha, mix_rng)
            with _autocast(self.amp, self.device):
                loss = _mixed_loss(loss_fn, split.top(x).float(), y, mix)
            global_step = self._step(loss, len(y), opt, sched, None, tb, global_step, acc, epoch, b, n_batches)
        return acc[0] / max(1, acc[1]), int(acc[1]), global_step

    def _finetune(
        self,
        model: nn.Module,
        train_ds: ManifestDataset,
        val_ds: ManifestDataset,
        loss_fn: nn.Module,
        spec: PreprocessSpec,
        tb: _TB,
        classes: list[str],
        split: TrunkSplit | None,
        acts: _Activations | None,
        ckpt_dir: Path,
        backbone: str,
    ) -> tuple[list[dict[str, Any]], int, bool, dict[str, Any] | None]:
        cfg, ft = self.cfg, self.cfg.finetune
        cached = split is not None and acts is not None
        sampler = EpochSampler(train_ds.targets, cfg.seed, cfg.loss.balanced_sampler, self.dist.rank, self.dist.world_size)
        loader = None if cached else self._loader(train_ds, cfg.batch_size, sampler=sampler)
        steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size) if cached else len(loader)
        total_steps = ft.epochs * steps_per_epoch
        warmup = int(round(ft.warmup_epochs * steps_per_epoch))
        opt = torch.optim.AdamW(param_groups(model, ft.lr, ft.backbone_lr_mult, ft.weight_decay), lr=ft.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: lr_factor(
                s, total_steps, warmup, ft.schedule, ft.min_lr_ratio, ft.step_epochs * steps_per_epoch, ft.step_gamma
            ),
        )
        scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        train_model: nn.Module = model
        if self.dist.active:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        targets = torch.tensor(train_ds.targets, dtype=torch.long)

        start_epoch, best_f1, best_nll, best_epoch, bad_epochs, history, global_step = 0, -1.0, math.inf, -1, 0, [], 0
        last_path = ckpt_dir / "last.pt"
        ft_path = ckpt_dir / "candidates" / "finetune.pt"
        self.weight_average = None
        if self.resume and last_path.is_file():
            ck = load_checkpoint(last_path)
            model.load_state_dict(ck["model"])
            self.weight_average = ck.get("weight_average")
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            if scaler is not None and ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            start_epoch, best_f1, best_epoch = ck["epoch"] + 1, ck["best_macro_f1"], ck["best_epoch"]
            best_nll = ck.get("best_nll", math.inf)
            bad_epochs, history, global_step = ck["bad_epochs"], ck["history"], ck["global_step"]
            self.log(f"resumed after epoch {start_epoch} (best val macro-F1 {best_f1:.4f} at epoch {best_epoch + 1})")
        if ft.epochs:
            self.log(
                f"stage 2: fine-tuning {'the whole network' if ft.unfreeze == 'all' else f'the last {ft.unfreeze} stages'} "
                f"for up to {ft.epochs} epochs{' on cached trunk activations' if cached else ''}"
            )

        stopped_early = bad_epochs >= ft.early_stopping_patience
        best_state: dict[str, Any] | None = None  # None after a resume: the best epoch's file has it
        average_start = average_start_epoch(ft.epochs, ft.average_from)
        for epoch in range(start_epoch, ft.epochs):
            if stopped_early:
                break
            t0 = time.perf_counter()
            if cached:
                assert split is not None and acts is not None
                train_loss, n_seen, global_step = self._top_epoch(
                    model, split, acts.view(epoch), targets, epoch, opt, sched, loss_fn, tb, global_step
                )
            else:
                assert loader is not None
                train_loss, n_seen, global_step = self._train_epoch(
                    train_model, loader, sampler, epoch, opt, sched, scaler, loss_fn, spec, tb, global_step
                )
            seconds = time.perf_counter() - t0
            n_seen = sum(_gather(n_seen, self.dist))
            logits = self._val_logits(model, val_ds, split, acts)
            y = np.asarray(val_ds.targets)
            vm = classification_metrics(y, logits.argmax(1), classes)
            val_loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y).long()))
            rec = {
                "epoch": epoch + 1,
                "train_loss": round(train_loss, 6),
                "val_loss": round(val_loss, 6),
                "val_accuracy": vm["accuracy"],
                "val_macro_f1": vm["macro_f1"],
                "lr": opt.param_groups[0]["lr"],
                "seconds": round(seconds, 2),
                "images_per_second": round(n_seen / seconds, 2),
            }
            history.append(rec)
            tb.scalar("train/loss", train_loss, epoch + 1)
            tb.scalar("val/loss", val_loss, epoch + 1)
            tb.scalar("val/accuracy", vm["accuracy"], epoch + 1)
            tb.scalar("val/macro_f1", vm["macro_f1"], epoch + 1)
            for g in opt.param_groups:
                tb.scalar(f"lr/{g['name']}", g["lr"], epoch + 1)
            for c, f in vm["per_class_f1"].items():
                tb.scalar(f"val_f1/{c}", f, epoch + 1)
            # ties on macro-F1 go to a clearly lower validation NLL (a drift of 1e-3 is noise)
            improved = vm["macro_f1"] > best_f1 or (vm["macro_f1"] == best_f1 and val_loss < best_nll - NLL_MIN_DELTA)
            if improved:
                best_f1, best_nll, best_epoch, bad_epochs = vm["macro_f1"], val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
            stopped_early = bad_epochs >= ft.early_stopping_patience
            if epoch >= average_start:
                self.weight_average = running_average(self.weight_average, model.state_dict(), epoch + 1)
            if self.on_epoch is not None:
                self.on_epoch(epoch + 1, vm["macro_f1"])
            self.log(
                f"epoch {epoch + 1}/{ft.epochs}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                f"val acc {vm['accuracy']:.4f}, val macro-F1 {vm['macro_f1']:.4f}"
                f"{' (best)' if improved else ''}, {rec['images_per_second']:.1f} img/s"
            )
            if self.dist.main:
                state = {
                    "model": model.state_dict(),
                    "epoch": epoch,
                    "best_macro_f1": best_f1,
                    "best_epoch": best_epoch,
                    "best_nll": best_nll,
                    "bad_epochs": bad_epochs,
                    "history": history,
                    "global_step": global_step,
                    "classes": classes,
                    "preprocess": spec.to_dict(),
                    "backbone": backbone,
                    "val_metrics": vm,
                }
                if improved:
                    save_checkpoint(ft_path, state)
                save_checkpoint(
                    last_path,
                    {
                        **state,
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else {},
                        "weight_average": self.weight_average,
                    },
                )
        if stopped_early:
            self.log(f"early stopping: no val macro-F1 gain for {ft.early_stopping_patience} epochs")
        if best_state is None and best_epoch >= 0 and self.dist.active:
            import torch.distributed as td

            td.barrier()  # resumed under DDP: the best epoch's file is on disk before anyone reads it
        return history, best_epoch, stopped_early, best_state

    def _final_metrics(
        self,
        cands: _Candidates,
        selected: dict[str, Any],
        baselines: dict[str, Any],
        history: list[dict[str, Any]],
        stopped_early: bool,
        classes: list[str],
        recipe: dict[str, Any],
    ) -> dict[str, Any]:
        missed = [c for c, r in selected["val"]["per_class_recall"].items() if r <= 0.0]
        others = [c for c in cands.items if c["name"] != selected["name"]]
        margins = {c["name"]: round(selected["val"]["macro_f1"] - c["val"]["macro_f1"], 6) for c in others}
        runner_up = max(others, key=lambda c: c["val"]["macro_f1"], default=None)
        reason = f"{selected['name']} has the highest validation macro-F1 ({selected['val']['macro_f1']:.4f})" + (
            f", {margins[runner_up['name']]:+.4f} over {runner_up['name']}" if runner_up else ""
        )
        if runner_up and margins[runner_up["name"]] == 0:
            reason += " (tie on macro-F1: lower validation NLL)"
        finetuned = {"candidate": selected["name"], "epoch": selected["epoch"], **selected["val"]}
        return {
            "schema_version": "1.1",
            "classes": classes,
            "split": "val",
            "baselines": baselines,
            "candidates": cands.items,
            "selection": {"selected": selected["name"], "rule": SELECTION_RULE, "reason": reason, "margins": margins},
            "quality_gates": {
                "every_class_recalled": {
                    "passed": not missed,
                    "classes": missed,
                    "rule": "the shipped candidate recalls every class on validation (recall > 0)",
                }
            },
            "recipe": recipe,
            "finetuned": finetuned,
            "history": history,
            "stopped_early": stopped_early,
            "test_split": "untouched",
        }


SELECTION_RULE = "highest validation macro-F1; ties: lower validation NLL"


#: The augmentation check: sample size, the view index its draws use (never a training view),
#: the largest relative macro-F1 drop of the probe under augmentation that is accepted, and
#: the softer settings used past it (crop keeps >= 80 % of the image, turns <= 5 degrees).
AUG_CHECK = "probe check"
#: Images of train / validation the resolution check fits and scores its probes on.
RES_CHECK_TRAIN = 800
RES_CHECK_VAL = 1000
AUG_CHECK_IMAGES = 256
AUG_CHECK_VIEW = 1_000_003
AUG_MAX_DROP = 0.15
SOFT_CROP = (0.8, 1.0)
SOFT_ROTATION = 5.0
#: The augmentation check's steps down, each measured and kept only as far as needed; a value the
#: user set is never changed, and a step never makes an augmentation stronger.
AUG_LADDER: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        f"a softer crop and turn (crop >= {SOFT_CROP[0]:.0%}, <= {SOFT_ROTATION:g} degrees)",
        {"crop_scale": SOFT_CROP, "rotation_deg": SOFT_ROTATION},
    ),
    ("no crop or turn (flips only)", {"crop_scale": (1.0, 1.0), "rotation_deg": 0.0}),
    ("no flips either", {"hflip": 0.0, "vflip": 0.0}),
)


def _with_augment(cfg: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    raw = cfg.model_dump(mode="python")
    raw["augment"].update(values)
    return TrainConfig.model_validate(raw)


@dataclass
class _Activations:
    val: torch.Tensor
    train: torch.Tensor
    views_: list[torch.Tensor]
    engine: str
    seconds: float
    images_per_second: float
    runner: Any = None
    max_views: int = 0
    shape: tuple = ()
    views_key: str = ""
    #: input digest -> trunk output of the plain training images (rows of ``train``)
    memo: dict = field(default_factory=dict)

    @property
    def views(self) -> int:
        return len(self.views_)

    def view(self, epoch: int) -> torch.Tensor:
        return self.views_[epoch % len(self.views_)]


class _Items(torch.utils.data.Dataset):
    """A dataset over explicit items (indices or ``(view, index)`` pairs)."""

    def __init__(self, ds: ManifestDataset, items: list) -> None:
        self.ds, self.items = ds, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.ds[self.items[i]]


class _Candidates:
    """Every model the run produced, scored on validation; the best one is shipped as ``best.pt``."""

    def __init__(
        self, folder: Path, classes: list[str], y_val: np.ndarray, spec: PreprocessSpec, backbone: str, main: bool
    ) -> None:
        self.folder, self.classes, self.y, self.spec, self.backbone, self.main = folder, classes, y_val, spec, backbone, main
        self.items: list[dict[str, Any]] = []
        self.preds: dict[str, np.ndarray] = {}
        self.paths: dict[str, Path] = {}

    def add(
        self,
        name: str,
        description: str,
        logits: np.ndarray,
        model: nn.Module,
        epoch: int,
        seconds: float,
        shippable: bool = True,
        save: bool = True,
        path: Path | None = None,
    ) -> dict[str, Any]:
        m = classification_metrics(self.y, logits.argmax(1), self.classes)
        nll = float(nn.functional.cross_entropy(torch.from_numpy(logits).float(), torch.from_numpy(self.y).long()))
        item = {
            "name": name,
            "description": description,
            "epoch": epoch,
            "seconds": round(seconds, 2),
            "shippable": shippable,
            "val": {
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "nll": round(nll, 6),
                "per_class_recall": m["per_class_recall"],
                "per_class_f1": m["per_class_f1"],
                "n": m["n"],
            },
        }
        self.items.append(item)
        self.preds[name] = logits.argmax(1).astype(np.int64)
        target = path or self.folder / f"{name}.pt"
        if save and self.main:
            save_checkpoint(
                target,
                {
                    "model": model.state_dict(),
                    "epoch": max(0, epoch - 1),
                    "classes": self.classes,
                    "preprocess": self.spec.to_dict(),
                    "backbone": self.backbone,
                    "val_metrics": m,
                    "candidate": name,
                },
            )
        self.paths[name] = target
        return item

    def select(self) -> dict[str, Any]:
        ok = [c for c in self.items if c["shippable"]]
        return max(ok, key=lambda c: (c["val"]["macro_f1"], -c["val"]["nll"]))

    def ship(self, selected: dict[str, Any], best: Path) -> None:
        ck = load_checkpoint(self.paths[selected["name"]])
        ck["candidate"] = selected["name"]
        save_checkpoint(best, {k: v for k, v in ck.items() if k not in ("format", "version")})
        out = self.folder.parent.parent / "candidates"
        out.mkdir(parents=True, exist_ok=True)
        with atomic_open(out / "val_predictions.npz", "wb") as f:
            np.savez(f, y_true=self.y.astype(np.int64), **self.preds)


def average_start_epoch(epochs: int, average_from: float) -> int:
    """The first epoch (0-based) whose end-of-epoch weights enter the weight average; ``epochs``
    (none) when ``average_from`` is 1."""
    return epochs if average_from >= 1 else int(math.floor(epochs * average_from))


def running_average(avg: dict[str, Any] | None, state: Mapping[str, torch.Tensor], epoch: int) -> dict[str, Any]:
    """``avg`` (``{"state", "n", "first", "last"}``, or None) with ``state`` folded into its running
    mean; integer tensors (BatchNorm's batch counters) take the latest value."""
    if avg is None:
        return {"state": {k: v.detach().clone() for k, v in state.items()}, "n": 1, "first": epoch, "last": epoch}
    n = avg["n"] + 1
    for k, v in state.items():
        a = avg["state"][k]
        if a.is_floating_point():
            a.add_((v.detach().to(a.dtype) - a) / n)
        else:
            a.copy_(v.detach())
    return {"state": avg["state"], "n": n, "first": avg["first"], "last": epoch}


#: The random stream mixup draws its weights and partners from (per seed and epoch).
MIXUP_STREAM = 6161


def mixup_batch(
    x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator
) -> tuple[torch.Tensor, tuple[torch.Tensor, float] | None]:
    """Mixup: the batch blended with a shuffled copy of itself by lambda ~ Beta(alpha, alpha);
    returns the blend and (partner targets, lambda), or the batch untouched and ``None`` when
    ``alpha`` is 0 or the batch has one item."""
    if alpha <= 0 or len(y) < 2:
        return x, None
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(len(y))).to(y.device)
    return lam * x + (1.0 - lam) * x[perm], (y[perm], lam)


def _mixed_loss(
    loss_fn: nn.Module, logits: torch.Tensor, y: torch.Tensor, mix: tuple[torch.Tensor, float] | None
) -> torch.Tensor:
    """``loss_fn`` on the targets, or, after mixup, the same blend of the losses on both targets."""
    if mix is None:
        return loss_fn(logits, y)
    partner, lam = mix
    return lam * loss_fn(logits, y) + (1.0 - lam) * loss_fn(logits, partner)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    from edgeclf.train.data import mix_seed

    return mix_seed(seed, epoch, rank, 104729)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


def train(
    cfg: TrainConfig,
    run_dir: Path,
    resume: bool = False,
    log: Log | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    max_image_size: int | None = None,
) -> RunResult:
    """Run the candidates (majority class, linear probe, fine-tuning), ship the best; write the run directory.

    ``max_image_size``: the largest input side the deployment's latency budget allows (from the
    build's selection); the resolution rule of :mod:`edgeclf.train.recipe` stays within it.
    """
    return Trainer(cfg, run_dir, resume, log, progress, max_image_size).run()
