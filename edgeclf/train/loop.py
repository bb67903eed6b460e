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
import json
import math
import os
import platform
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Subset

from edgeclf._io import atomic_open, atomic_write_text, write_json
from edgeclf.data.manifest import Manifest, read_manifest
from edgeclf.errors import ConfigError, DataError, EdgeclfError
from edgeclf.preprocess import PreprocessSpec, normalize_batch
from edgeclf.train.config import TrainConfig
from edgeclf.train.data import DecodeCache, EpochSampler, ManifestDataset
from edgeclf.train.losses import build_loss, class_weights
from edgeclf.train.metrics import classification_metrics
from edgeclf.train.schedule import lr_factor

CHECKPOINT_FORMAT = "edgeclf-checkpoint"
CHECKPOINT_VERSION = 1

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


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("edgeclf", "torch", "torchvision", "timm", "numpy", "pillow", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename: never a half-written checkpoint."""
    with atomic_open(path, "wb") as f:
        torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}, f)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
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
        groups.append({"params": params, "lr": lr * (1.0 if is_head else backbone_mult),
                       "weight_decay": weight_decay if decay else 0.0,
                       "name": f"{'head' if is_head else 'backbone'}/{'decay' if decay else 'no_decay'}"})
    return groups


# ----------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]


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
    raise DataError(
        f"cannot tell which folder the paths in {manifest_path} are relative to; pass --data-root DIR"
    )


def _check_manifest(m: Manifest) -> None:
    counts = m.counts()
    for split in ("train", "val"):
        missing = [c for c, n in counts[split].items() if n == 0]
        if missing:
            raise DataError(f"class(es) {', '.join(missing)} have no images in the '{split}' split of the manifest; "
                            "re-split the data so every class is in train and val")


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, resume: bool = False, log: Log | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.device = _device(cfg.device)
        self.dist = _init_dist(self.device)
        self.log: Log = (log or (lambda s: None)) if self.dist.main else (lambda s: None)
        self.progress = progress if self.dist.main else None
        self.amp = amp_mode(cfg.amp, self.device)

    # -- setup ---------------------------------------------------------------------------

    def _prepare_run_dir(self, resolved: dict[str, Any]) -> None:
        ckpt_dir = self.run_dir / "checkpoints"
        cfg_path = self.run_dir / "config.yaml"
        if self.resume:
            if not (ckpt_dir / "last.pt").is_file() and not (ckpt_dir / "probe.pt").is_file():
                raise CheckpointError(f"nothing to resume in {self.run_dir}: no checkpoints/last.pt or probe.pt")
            if cfg_path.is_file():
                old = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
                if old.get("config") != resolved["config"]:
                    diff = sorted(_diff_keys(old.get("config", {}), resolved["config"]))
                    raise ConfigError(f"--resume with a different config than {cfg_path}: {', '.join(diff[:8])} differ; "
                                      "resume with the same settings or start a new run directory")
            return
        if ckpt_dir.exists() and any(ckpt_dir.iterdir()):
            raise ConfigError(f"{self.run_dir} already holds a run; pass --resume to continue it, or choose another --out")
        if self.dist.main:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cfg_path, yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))

    def _loader(self, ds: torch.utils.data.Dataset, batch: int, sampler: Any = None, shuffle_items: list | None = None) -> DataLoader:
        w = self.cfg.data.workers
        return DataLoader(
            ds if shuffle_items is None else shuffle_items, batch_size=batch, sampler=sampler, num_workers=w,
            pin_memory=self.device.type == "cuda", persistent_workers=w > 0, prefetch_factor=4 if w > 0 else None,
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

    def _linear_probe(self, model: nn.Module, train_ds: ManifestDataset, val_ds: ManifestDataset,
                      loss_fn: nn.Module, classes: list[str]) -> dict[str, Any]:
        cfg = self.cfg.probe
        t0 = time.perf_counter()
        ftr, ytr = self._predict(model, train_ds, features=True)
        fva, yva = self._predict(model, val_ds, features=True)
        t_feat = time.perf_counter() - t0
        head = model.get_classifier()
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
        head.eval()
        with torch.no_grad():
            pred = head(torch.from_numpy(fva)).argmax(1).numpy()
        m = classification_metrics(yva, pred, classes)
        m["feature_seconds"] = round(t_feat, 2)
        return m

    def _train_epoch(self, model: nn.Module, loader: DataLoader, sampler: EpochSampler, epoch: int, opt: torch.optim.Optimizer,
                     sched: Any, scaler: Any, loss_fn: nn.Module, spec: PreprocessSpec, tb: _TB, global_step: int) -> tuple[float, int, int]:
        model.train()
        apply_bn_policy(model, self.cfg.finetune.batchnorm)
        sampler.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(self.cfg.seed, epoch, self.dist.rank))  # dropout / drop-path
        total, count = 0.0, 0
        n_batches = len(loader)
        for b, (x, y) in enumerate(loader):
            x = normalize_batch(x.to(self.device, non_blocking=True), spec)
            y = y.to(self.device, non_blocking=True)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(self.amp, self.device):
                loss = loss_fn(model(x).float(), y)
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
            total += float(loss.detach()) * len(y)
            count += len(y)
            tb.scalar("train/loss_step", float(loss.detach()), global_step)
            if self.progress:
                self.progress(f"epoch {epoch + 1}", b + 1, n_batches)
        return total / max(1, count), count, global_step

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

        from edgeclf.models import create_model, get_backbone

        info = get_backbone(cfg.model.backbone)
        model, weights_report = create_model(cfg.model.backbone, len(classes), weights=cfg.model.weights,
                                             source=cfg.model.weights_source, drop_rate=cfg.model.drop_rate)
        spec = PreprocessSpec.from_timm_config(model.pretrained_cfg, cfg.model.image_size)
        if weights_report.bn_folded and cfg.finetune.batchnorm == "train":
            self.log("[yellow]warning:[/] these weights have batch-norm folded into the convolutions; "
                     "finetune.batchnorm=train will disturb them (frozen_stats is the safe choice)")
        resolved = {
            "config": json.loads(cfg.model_dump_json()),
            "run": {"backbone": info.name, "timm_arch": info.timm_arch, "classes": classes,
                    "preprocess": spec.to_dict(), "weights": weights_report.to_dict(),
                    "data_root": str(root), "dataset_fingerprint": manifest.fingerprint,
                    "seed": cfg.seed, "amp": self.amp, "device": str(self.device), "world_size": self.dist.world_size,
                    "versions": library_versions(), "git_commit": git_commit()},
        }
        self._prepare_run_dir(resolved)
        ckpt_dir = self.run_dir / "checkpoints"

        cache = DecodeCache(cfg.data.cache_dir or None, spec)
        train_rows, val_rows = manifest.split_rows("train"), manifest.split_rows("val")
        train_ds = ManifestDataset(train_rows, root, classes, spec, cache, cfg.augment, cfg.seed)
        val_ds = ManifestDataset(val_rows, root, classes, spec, cache, None, cfg.seed)
        counts = [Counter(train_ds.targets)[i] for i in range(len(classes))]
        weight = class_weights(counts, cfg.loss.class_weights, cfg.loss.effective_beta)
        loss_fn = build_loss(cfg.loss.type, weight, cfg.loss.label_smoothing, cfg.loss.focal_gamma).to(self.device)
        model.to(self.device)
        if self.device.type == "cpu":  # oneDNN's fast path for depthwise convs: ~1.5x here
            model = model.to(memory_format=torch.channels_last)
        tb = _TB(self.run_dir / "tensorboard" if self.dist.main else None)

        # baselines: majority class (from train) on val
        majority = int(np.argmax(counts))
        baselines = {"majority_class": {"class": classes[majority],
                                        **classification_metrics(np.asarray(val_ds.targets),
                                                                 np.full(len(val_ds), majority), classes)}}

        # stage 1: linear probe on frozen features (doubles as the baseline)
        for p in model.parameters():
            p.requires_grad_(False)
        probe_path = ckpt_dir / "probe.pt"
        if self.resume and probe_path.is_file():
            probe = load_checkpoint(probe_path)
            model.get_classifier().load_state_dict(probe["head"])
            baselines["linear_probe"] = probe["metrics"]
            self.log("stage 1 (linear probe) restored from checkpoints/probe.pt")
        else:
            for p in model.get_classifier().parameters():
                p.requires_grad_(True)
            self.log(f"stage 1: linear probe on frozen {info.name} features ({len(train_ds)} train / {len(val_ds)} val images)")
            baselines["linear_probe"] = self._linear_probe(model, train_ds, val_ds, loss_fn, classes)
            if self.dist.main:
                save_checkpoint(probe_path, {"head": model.get_classifier().state_dict(), "metrics": baselines["linear_probe"]})
        self.log(f"  majority class: val macro-F1 {baselines['majority_class']['macro_f1']:.3f}, "
                 f"linear probe: val macro-F1 {baselines['linear_probe']['macro_f1']:.3f} "
                 f"(accuracy {baselines['linear_probe']['accuracy']:.3f})")

        # stage 2: fine-tune
        ft = cfg.finetune
        set_trainable(model, ft.unfreeze)
        if ft.batchnorm == "frozen":
            apply_bn_policy(model, "frozen")
        sampler = EpochSampler(train_ds.targets, cfg.seed, cfg.loss.balanced_sampler, self.dist.rank, self.dist.world_size)
        loader = self._loader(train_ds, cfg.batch_size, sampler=sampler)
        steps_per_epoch = len(loader)
        total_steps = ft.epochs * steps_per_epoch
        warmup = int(round(ft.warmup_epochs * steps_per_epoch))
        opt = torch.optim.AdamW(param_groups(model, ft.lr, ft.backbone_lr_mult, ft.weight_decay), lr=ft.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, total_steps, warmup, ft.schedule, ft.min_lr_ratio, ft.step_epochs * steps_per_epoch, ft.step_gamma))
        scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        train_model: nn.Module = model
        if self.dist.active:
            train_model = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        start_epoch, best_f1, best_epoch, bad_epochs, history, global_step = 0, -1.0, -1, 0, [], 0
        last_path = ckpt_dir / "last.pt"
        if self.resume and last_path.is_file():
            ck = load_checkpoint(last_path)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            if scaler is not None and ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            start_epoch, best_f1, best_epoch = ck["epoch"] + 1, ck["best_macro_f1"], ck["best_epoch"]
            bad_epochs, history, global_step = ck["bad_epochs"], ck["history"], ck["global_step"]
            self.log(f"resumed after epoch {start_epoch} (best val macro-F1 {best_f1:.4f} at epoch {best_epoch + 1})")

        stopped_early = bad_epochs >= ft.early_stopping_patience
        for epoch in range(start_epoch, ft.epochs):
            if stopped_early:
                break
            t0 = time.perf_counter()
            train_loss, n_seen, global_step = self._train_epoch(train_model, loader, sampler, epoch, opt, sched, scaler,
                                                                loss_fn, spec, tb, global_step)
            seconds = time.perf_counter() - t0
            n_seen = sum(_gather(n_seen, self.dist))
            logits, y = self._predict(model, val_ds)
            vm = classification_metrics(y, logits.argmax(1), classes)
            val_loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y).long()))
            rec = {"epoch": epoch + 1, "train_loss": round(train_loss, 6), "val_loss": round(val_loss, 6),
                   "val_accuracy": vm["accuracy"], "val_macro_f1": vm["macro_f1"],
                   "lr": opt.param_groups[0]["lr"], "seconds": round(seconds, 2),
                   "images_per_second": round(n_seen / seconds, 2)}
            history.append(rec)
            tb.scalar("train/loss", train_loss, epoch + 1)
            tb.scalar("val/loss", val_loss, epoch + 1)
            tb.scalar("val/accuracy", vm["accuracy"], epoch + 1)
            tb.scalar("val/macro_f1", vm["macro_f1"], epoch + 1)
            for g in opt.param_groups:
                tb.scalar(f"lr/{g['name']}", g["lr"], epoch + 1)
            for c, f in vm["per_class_f1"].items():
                tb.scalar(f"val_f1/{c}", f, epoch + 1)
            improved = vm["macro_f1"] > best_f1
            if improved:
                best_f1, best_epoch, bad_epochs = vm["macro_f1"], epoch, 0
            else:
                bad_epochs += 1
            stopped_early = bad_epochs >= ft.early_stopping_patience
            self.log(f"epoch {epoch + 1}/{ft.epochs}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                     f"val acc {vm['accuracy']:.4f}, val macro-F1 {vm['macro_f1']:.4f}"
                     f"{' (best)' if improved else ''}, {rec['images_per_second']:.1f} img/s")
            if self.dist.main:
                state = {"model": model.state_dict(), "epoch": epoch, "best_macro_f1": best_f1, "best_epoch": best_epoch,
                         "bad_epochs": bad_epochs, "history": history, "global_step": global_step,
                         "classes": classes, "preprocess": spec.to_dict(), "backbone": info.name,
                         "val_metrics": vm}
                if improved:
                    save_checkpoint(ckpt_dir / "best.pt", state)
                save_checkpoint(last_path, {**state, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                            "scaler": scaler.state_dict() if scaler is not None else {}})
        if stopped_early:
            self.log(f"early stopping: no val macro-F1 gain for {ft.early_stopping_patience} epochs")
        tb.close()

        metrics = self._final_metrics(ckpt_dir, baselines, history, best_epoch, stopped_early, classes, model, val_ds)
        if self.dist.main:
            write_json(self.run_dir / "metrics.json", metrics)
        if self.dist.active:
            import torch.distributed as td

            td.barrier()
        return RunResult(self.run_dir, metrics)

    def _final_metrics(self, ckpt_dir: Path, baselines: dict[str, Any], history: list[dict[str, Any]], best_epoch: int,
                       stopped_early: bool, classes: list[str], model: nn.Module, val_ds: ManifestDataset) -> dict[str, Any]:
        best: dict[str, Any] | None = None
        if (ckpt_dir / "best.pt").is_file():
            ck = load_checkpoint(ckpt_dir / "best.pt")
            best = {"epoch": ck["epoch"] + 1, **ck["val_metrics"]}
        return {
            "schema_version": "1.0",
            "classes": classes,
            "split": "val",
            "baselines": baselines,
            "finetuned": best,
            "history": history,
            "stopped_early": stopped_early,
            "test_split": "untouched",
        }


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    from edgeclf.train.data import mix_seed

    return mix_seed(seed, epoch, rank, 104729)


def _diff_keys(a: Any, b: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield prefix.rstrip(".")


def train(cfg: TrainConfig, run_dir: Path, resume: bool = False, log: Log | None = None,
          progress: Callable[[str, int, int], None] | None = None) -> RunResult:
    """Run baselines, the linear probe and fine-tuning; write the run directory."""
    return Trainer(cfg, run_dir, resume, log, progress).run()
