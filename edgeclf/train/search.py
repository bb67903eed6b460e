"""A time-budgeted recipe search: Optuna's TPE sampler with successive-halving pruning.

Each trial is an ordinary training run (its own run directory under ``RUN_DIR/trials``)
with a few recipe settings drawn by the sampler; it is scored on validation macro-F1 only
(the value its run ships: the best of its own candidates) and reports its per-epoch
validation macro-F1 so the pruner can stop bad trials early. Trial 0 is the default,
data-aware recipe, so the search can only match or beat it. Trials that share a frozen
trunk (same backbone, input size and unfrozen depth) share its cached activations, so most
trials cost only the training of the top. The test split is never read: trials see the
manifest's train and val rows only.

The search stops starting trials when the time left is less than the slowest finished
trial took (plus a margin), so the budget holds without timing assertions on speed.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeclf.errors import ConfigError
from edgeclf.train.config import TrainConfig, _set_dotted
from edgeclf.train.record import CandidateRecord, SplitScores, TrainMetrics, read_metrics, read_run_config, write_metrics

Log = Callable[[str], None]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """``15m``, ``1h``, ``900s``, ``900`` (seconds) -> seconds."""
    m = _DURATION.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--time-budget {text!r}: expected a positive duration such as 15m, 1h or 900s")
    unit = (m.group(2) or "s").lower()
    return float(m.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}[unit]


class _Pruned(Exception):
    pass


def _space(trial: Any, cfg: TrainConfig, n_groups: int, backbones: list[str]) -> dict[str, Any]:
    """The recipe settings a trial varies (dotted config keys)."""
    over: dict[str, Any] = {
        "finetune.lr": trial.suggest_float("lr", 2e-4, 5e-3, log=True),
        "finetune.backbone_lr_mult": trial.suggest_float("backbone_lr_mult", 0.1, 1.0, log=True),
        "finetune.unfreeze": trial.suggest_int("unfreeze", 1, min(4, n_groups)),
        "loss.class_weights": trial.suggest_categorical("class_weights", ["none", "effective"]),
        "loss.label_smoothing": trial.suggest_categorical("label_smoothing", [0.0, 0.1]),
    }
    if len(backbones) > 1:
        over["model.backbone"] = trial.suggest_categorical("backbone", backbones)
    return over


def _default_params(cfg: TrainConfig, backbones: list[str]) -> dict[str, Any]:
    p: dict[str, Any] = {
        "lr": cfg.finetune.lr,
        "backbone_lr_mult": cfg.finetune.backbone_lr_mult,
        "unfreeze": cfg.finetune.unfreeze if isinstance(cfg.finetune.unfreeze, int) else 2,
        "class_weights": cfg.loss.class_weights if cfg.loss.class_weights != "inverse" else "effective",
        "label_smoothing": cfg.loss.label_smoothing if cfg.loss.label_smoothing in (0.0, 0.1) else 0.1,
    }
    if len(backbones) > 1:
        p["backbone"] = cfg.model.backbone
    return p


def search(
    cfg: TrainConfig,
    run_dir: Path,
    time_budget_s: float,
    backbones: list[str] | None = None,
    log: Log | None = None,
    max_image_size: int | None = None,
    n_trials: int | None = None,
) -> dict[str, Any]:
    """Run trials until the budget is spent; the best trial's run becomes ``run_dir``. Returns the trial table."""
    import optuna

    from edgeclf.models import backbone_groups, create_model
    from edgeclf.train.loop import Trainer

    log = log or (lambda s: None)
    run_dir = Path(run_dir)
    trials_dir = run_dir / "trials"
    if trials_dir.exists():
        shutil.rmtree(trials_dir)  # a search is not resumable trial by trial: start it again
    trials_dir.mkdir(parents=True)
    backbones = backbones or [cfg.model.backbone]
    model, _ = create_model(cfg.model.backbone, 2, source="none")
    n_groups = len(backbone_groups(model))
    del model
    t_start = time.perf_counter()
    shared: dict[Any, Any] = {}
    rows: list[dict[str, Any]] = []
    durations: list[float] = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=2),
    )
    study.enqueue_trial(_default_params(cfg, backbones))  # the data-aware recipe first, as trial 0

    def objective(trial: optuna.Trial) -> float:
        over = _space(trial, cfg, n_groups, backbones)
        # trial 0 is the recipe as given; the others fix the sampled keys (as a user would)
        # and let the data-aware rules choose the rest
        tcfg = cfg if trial.number == 0 else TrainConfig.model_validate(_merge(_explicit_dump(cfg), _nest(over)))
        tdir = trials_dir / f"trial-{trial.number:03d}"
        t0 = time.perf_counter()

        def on_epoch(epoch: int, f1: float) -> None:
            trial.report(f1, epoch)
            if trial.should_prune():
                raise _Pruned()

        state = "complete"
        try:
            res = Trainer(
                tcfg, tdir, log=lambda s: None, max_image_size=max_image_size, shared_cache=shared, on_epoch=on_epoch
            ).run()
            value = float(res.metrics.finetuned.macro_f1 or 0.0)
        except _Pruned:
            state = "pruned"
            value = float("nan")
        seconds = time.perf_counter() - t0
        durations.append(seconds)
        row = {
            "trial": trial.number,
            "params": dict(trial.params),
            "state": state,
            "seconds": round(seconds, 1),
            "ended_s": round(time.perf_counter() - t_start, 1),  # since the search began
            "run": str(tdir.relative_to(run_dir)),
        }
        if (tdir / "config.yaml").is_file():
            resolved = read_run_config(tdir).config.model_dump(mode="json")
            row["config"] = {k: _dotted(resolved, k) for k in [*over, "model.image_size", "finetune.epochs"]}
        if state == "complete":
            row.update(_trial_summary(tdir, read_metrics(tdir)))
        rows.append(row)
        log(
            f"search: trial {trial.number} {state} in {seconds:.0f} s"
            + (f": val macro-F1 {row['val_macro_f1']:.4f} ({row['shipped']})" if state == "complete" else "")
            + f" {row.get('config', trial.params)}"
        )
        if state == "pruned":
            raise optuna.TrialPruned()
        return value

    def stop_when_no_time(study: optuna.Study, _trial: Any) -> None:
        left = time_budget_s - (time.perf_counter() - t_start)
        if left < 1.2 * max(durations, default=0.0) or (n_trials is not None and len(rows) >= n_trials):
            study.stop()

    study.optimize(objective, callbacks=[stop_when_no_time], catch=())
    done = [r for r in rows if r["state"] == "complete"]
    if not done:
        raise ConfigError("the search finished no trial within the time budget; give it more time (--time-budget)")
    best = max(done, key=lambda r: (r["val_macro_f1"], -(r.get("val_nll") or math.inf)))
    _adopt(run_dir, run_dir / best["run"])
    table = {
        "rule": "highest validation macro-F1 of the trial's shipped model; ties: lower validation NLL",
        "time_budget_s": time_budget_s,
        "seconds": round(time.perf_counter() - t_start, 1),
        "sampler": "optuna TPE (seed = run seed)",
        "pruner": "successive halving (min 2 epochs, factor 2)",
        "best_trial": best["trial"],
        "trials": rows,
    }
    metrics = read_metrics(run_dir)
    metrics.search = table  # type: ignore[attr-defined]  # an open field of the document
    others = [r for r in done if r is not best]
    metrics.candidates += [
        CandidateRecord(
            name=f"trial-{r['trial']:03d}",
            description=f"search trial {r['trial']} ({r['shipped']}): {r['params']}",
            epoch=r.get("epoch") or 0,
            seconds=r["seconds"],
            shippable=True,
            val=SplitScores(
                accuracy=r["val_accuracy"],
                macro_f1=r["val_macro_f1"],
                nll=r.get("val_nll"),
                per_class_recall=r.get("per_class_recall", {}),
                n=r.get("n"),
            ),
        )
        for r in others
    ]
    if metrics.selection is not None:
        metrics.selection.margins.update(
            {f"trial-{r['trial']:03d}": round(best["val_macro_f1"] - r["val_macro_f1"], 6) for r in others}
        )
        metrics.selection.reason += (
            f"; search: trial {best['trial']} of {len(rows)} "
            f"({len(done)} finished, {len(rows) - len(done)} pruned) in {table['seconds']:.0f} s"
        )
    _add_trial_predictions(run_dir, others)
    write_metrics(run_dir, metrics)
    return table


def _explicit_dump(cfg: TrainConfig) -> dict[str, Any]:
    """The keys the user set explicitly, nested (so a trial re-runs the data-aware rules for the rest)."""
    from edgeclf.train.recipe import explicit_keys

    raw = cfg.model_dump(mode="python")
    out: dict[str, Any] = {}
    for key in explicit_keys(cfg):
        v: Any = raw
        for k in key.split("."):
            v = v[k]
        _set_dotted(out, key, v)
    return out


def _dotted(d: dict[str, Any], key: str) -> Any:
    for k in key.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        _set_dotted(out, k, v)
    return out


def _trial_summary(tdir: Path, m: TrainMetrics) -> dict[str, Any]:
    from edgeclf.stats import bootstrap_ci

    ft = m.finetuned
    if m.selection is None:
        raise ConfigError(f"{tdir / 'metrics.json'}: the trial selected no candidate")
    sel = next(c for c in m.candidates if c.name == m.selection.selected)
    out = {
        "shipped": sel.name,
        "val_macro_f1": ft.macro_f1,
        "val_accuracy": ft.accuracy,
        "val_nll": sel.val.nll,
        "epoch": ft.epoch,
        "n": sel.val.n,
        "per_class_recall": sel.val.per_class_recall,
    }
    z = tdir / "candidates" / "val_predictions.npz"
    if z.is_file():
        with np.load(z, allow_pickle=False) as d:
            ci = bootstrap_ci(d["y_true"], d[sel.name], m.classes, n_resamples=1000, seed=0)
        out["val_macro_f1_ci"] = [ci["macro_f1"]["low"], ci["macro_f1"]["high"]]
    return out


def _adopt(run_dir: Path, trial_dir: Path) -> None:
    """Make the winning trial's run the run directory's own (checkpoints, config, metrics, TensorBoard)."""
    for name in ("checkpoints", "tensorboard", "candidates", "config.yaml", "metrics.json"):
        src, dst = trial_dir / name, run_dir / name
        if not src.exists():
            continue
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)


def _add_trial_predictions(run_dir: Path, others: list[dict[str, Any]]) -> None:
    from edgeclf._io import atomic_open

    z = run_dir / "candidates" / "val_predictions.npz"
    if not z.is_file():
        return
    with np.load(z, allow_pickle=False) as d:
        arrays = {k: d[k] for k in d.files}
    for r in others:
        tz = run_dir / r["run"] / "candidates" / "val_predictions.npz"
        if tz.is_file():
            with np.load(tz, allow_pickle=False) as d:
                if r["shipped"] in d.files and len(d[r["shipped"]]) == len(arrays["y_true"]):
                    arrays[f"trial-{r['trial']:03d}"] = d[r["shipped"]]
    with atomic_open(z, "wb") as f:
        np.savez(f, **arrays)


def train_seeds(
    cfg: TrainConfig, run_dir: Path, seeds: list[int], log: Log | None = None, max_image_size: int | None = None
) -> dict[str, Any]:
    """One run per seed (``RUN_DIR/seeds/seed-N``); the spread is recorded, the best on validation adopted."""
    from edgeclf.train.loop import train

    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs distinct integers, got {seeds}")
    log = log or (lambda s: None)
    run_dir = Path(run_dir)
    rows = []
    for seed in seeds:
        sdir = run_dir / "seeds" / f"seed-{seed}"
        res = train(
            cfg.model_copy(update={"seed": seed}),
            sdir,
            log=log,
            max_image_size=max_image_size,
            resume=(sdir / "checkpoints" / "last.pt").is_file(),
        )
        ft = res.metrics.finetuned
        rows.append(
            {
                "seed": seed,
                "val_macro_f1": ft.macro_f1,
                "val_accuracy": ft.accuracy,
                "shipped": ft.candidate,
                "run": str(sdir.relative_to(run_dir)),
            }
        )
        log(f"seed {seed}: val macro-F1 {ft.macro_f1 or 0.0:.4f} ({ft.candidate})")
    f1 = np.array([r["val_macro_f1"] for r in rows])
    best = rows[int(np.argmax(f1))]
    _adopt(run_dir, run_dir / best["run"])
    spread = {
        "seeds": seeds,
        "runs": rows,
        "mean": float(f1.mean()),
        "std": float(f1.std(ddof=1)) if len(f1) > 1 else 0.0,
        "min": float(f1.min()),
        "max": float(f1.max()),
        "adopted": best["seed"],
        "rule": "the seed with the highest validation macro-F1 is adopted",
    }
    metrics = read_metrics(run_dir)
    metrics.seeds = spread  # type: ignore[attr-defined]  # an open field of the document
    write_metrics(run_dir, metrics)
    return spread
