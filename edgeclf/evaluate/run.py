"""``edgeclf evaluate RUN_DIR --split val|test``: everything a ship / no-ship decision needs."""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeclf._io import write_json
from edgeclf.errors import ConfigError
from edgeclf.evaluate.calibration import calibration_summary, fit_temperature, plot_reliability
from edgeclf.evaluate.figures import plot_confusion, plot_mistakes, top_mistakes, write_mistakes_csv
from edgeclf.evaluate.ledger import check_and_record, read_ledger
from edgeclf.evaluate.metrics import (
    OVERFIT_GAP,
    MetricInputError,
    bootstrap_ci,
    confused_pairs,
    full_metrics,
    paired_bootstrap_diff,
    softmax,
    thin_evidence,
    thin_evidence_note,
)
from edgeclf.evaluate.predictor import LoadedRun, load_images, load_run
from edgeclf.evaluate.record import SplitEvaluation, write_split_evaluation
from edgeclf.train.record import read_metrics, write_metrics

Log = Callable[[str], None]

#: Shorter-side buckets for the automatic "image size" slice.
SIZE_BUCKETS = ((0, 128, "<128 px"), (128, 256, "128-255 px"), (256, 512, "256-511 px"), (512, 10**9, ">=512 px"))

#: Verdict gates, each with the reason for its value.
GATES = {
    # Shipping anything but the best validated candidate throws accuracy away, and a baseline
    # (majority class, linear probe on frozen features) winning means training added nothing.
    "best_candidate_shipped": "the shipped model has the highest validation macro-F1 of all candidates, baselines "
    "included (ties: lower validation NLL)",
    # Predicting the majority class is the floor every model must clear by a wide margin.
    "beats_majority": "macro-F1 above the majority-class baseline",
    # A class the model never gets right is a failure that accuracy and averages hide.
    "every_class_recalled": "every class present in this split has recall > 0",
    # See OVERFIT_GAP.
    "no_overfitting": f"train macro-F1 - validation macro-F1 <= {OVERFIT_GAP:.2f}",
    # After temperature scaling, probabilities should be trustworthy to a few points: 5 % ECE is the
    # level Guo et al. report for calibrated CNNs on small benchmarks.
    "calibrated": "ECE after temperature scaling <= 0.05",
    # Test used once, or its numbers are validation numbers.
    "test_touched_once": "the test split was evaluated at most once",
}
MAX_ECE = 0.05

#: Per-image validation predictions of every training candidate (one int array per name, plus "y_true").
CANDIDATE_PREDICTIONS = Path("candidates") / "val_predictions.npz"
#: The decision policy fitted on validation (``edgeclf.evaluate.decision``), read by export.
DECISION = "decision.json"
#: Training images predicted for the train-vs-held-out gap: enough for its macro-F1 within about
#: +-0.04 (95 %), so the evaluation no longer re-predicts a large training set in full.
TRAIN_GAP_SAMPLE = 600


@dataclass
class SplitData:
    paths: list[str]
    y: np.ndarray
    logits: np.ndarray
    features: np.ndarray
    rows: list[Any]
    #: the split's size when these rows are a sample of it, else None
    sampled_from: int | None = None


class Evaluation:
    def __init__(self, run_dir: Path, log: Log | None = None, progress: Callable[[str, int, int], None] | None = None) -> None:
        self.run: LoadedRun = load_run(run_dir)
        self.run_dir = Path(run_dir)
        self.log = log or (lambda s: None)
        self.progress = progress
        self.cache_dir = self.run_dir / "eval" / "cache"
        #: which engine computed the predictions (the eager model, or ONNX Runtime matching it)
        self.engine = "eager (torch fp32)"

    def split_data(self, split: str, sample: int | None = None) -> SplitData:
        """Logits + features of a split, cached per checkpoint hash (decoding is the slow part).

        ``sample``: at most this many images, class-stratified and seeded (the same ones every
        time), for figures that need a split's level rather than every image of it.
        """
        rows = self.run.manifest.split_rows(split)
        if not rows:
            raise ConfigError(f"the manifest has no '{split}' images")
        tag, sampled_from = split, None
        if sample is not None and len(rows) > sample:
            from edgeclf.data.manifest import stratified_rows

            sampled_from = len(rows)
            rows = stratified_rows(rows, sample, np.random.default_rng(0))
            tag = f"{split}-sample{sample}"
        idx = {c: i for i, c in enumerate(self.run.classes)}
        unknown = sorted({r.label for r in rows} - set(idx))
        if unknown:
            raise ConfigError(f"the '{split}' split has classes the model was not trained on: {', '.join(unknown)}")
        paths = [r.path for r in rows]
        y = np.array([idx[r.label] for r in rows])
        cache = self.cache_dir / f"{tag}-{self.run.checkpoint_sha256[:16]}.npz"
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as z:
                if list(z["paths"]) == paths:
                    if "engine" in z.files:
                        self.engine = str(z["engine"])
                    return SplitData(paths, y, z["logits"], z["features"], rows, sampled_from)
        step = 64
        pred = self.run.fast_predictor(load_images(self.run.data_root, paths[:8]))
        self.engine = pred.engine
        of = f" (a stratified sample of the {sampled_from})" if sampled_from is not None else ""
        self.log(f"predicting {len(paths)} {split} images{of}: {pred.engine}")
        feats, logits = [], []
        for i in range(0, len(paths), step):
            f, lg = pred.features_and_logits(load_images(self.run.data_root, paths[i : i + step]))
            feats.append(f)
            logits.append(lg)
            if self.progress:
                self.progress(f"predict {split}", min(i + step, len(paths)), len(paths))
        data = SplitData(paths, y, np.concatenate(logits), np.concatenate(feats), rows, sampled_from)
        from edgeclf._io import atomic_open

        with atomic_open(cache, "wb") as fobj:
            np.savez(fobj, paths=np.array(paths), logits=data.logits, features=data.features, engine=np.array(self.engine))
        return data

    def temperature(self) -> dict[str, Any]:
        """Fit (or read) the temperature on validation logits; stored in RUN_DIR/calibration.json."""
        path = self.run_dir / "calibration.json"
        if path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("checkpoint_sha256") == self.run.checkpoint_sha256:
                return stored
        val = self.split_data("val")
        t = fit_temperature(val.logits, val.y)
        summary = calibration_summary(val.logits, val.y, t)
        stored = {
            "temperature": t,
            "fitted_on": "val",
            "checkpoint_sha256": self.run.checkpoint_sha256,
            "val_nll_before": summary["nll_before"],
            "val_nll_after": summary["nll_after"],
            "val_ece_before": summary["ece_before"],
            "val_ece_after": summary["ece_after"],
        }
        write_json(path, stored)
        return stored

    # -- decision policy -------------------------------------------------------------------
    def fit_decision(self, req: Any) -> dict[str, Any]:
        """Fit the decision policy ``req`` (a :class:`~edgeclf.evaluate.decision.DecisionRequest`) on
        validation only and store it in RUN_DIR/decision.json, which export puts into the bundle."""
        from edgeclf.evaluate.decision import fit_policy, ood_split, resolve_request

        req = resolve_request(req, self.run.classes)
        temp = float(self.temperature()["temperature"])
        val = self.split_data("val")
        ood: dict[str, Any] | None = None
        ood_val = None
        if req.ood_dir is not None:
            parts = ood_split(req.ood_dir)
            ood = {"dir": str(Path(req.ood_dir).resolve()), **parts}
            ood_val = self.ood_logits(ood, "val")
        policy = fit_policy(req, val.logits, val.y, temp, self.run.classes, ood_val)
        doc = {
            "policy": policy.model_dump(mode="json"),
            "checkpoint_sha256": self.run.checkpoint_sha256,
            "temperature": temp,
            "request": req.key(),
            "ood": ood,
        }
        write_json(self.run_dir / DECISION, doc)
        self.log(f"decision policy: {policy.describe()} (fitted on {len(val.y)} validation images)")
        return doc

    def decision(self) -> tuple[Any, dict[str, Any]] | None:
        """The stored policy and its document, when it was fitted for this checkpoint."""
        from edgeclf.evaluate.decision import DecisionPolicy

        path = self.run_dir / DECISION
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("checkpoint_sha256") != self.run.checkpoint_sha256:
                self.log(f"{DECISION} was fitted for another checkpoint; ignored (fit it again with the policy options)")
                return None
            return DecisionPolicy.model_validate(doc["policy"]).check(len(self.run.classes)), doc
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(
                f"{path} is damaged ({e}); fit the policy again (edgeclf evaluate --split val with the policy options)"
            ) from None

    def ood_logits(self, ood: dict[str, Any], part: str) -> np.ndarray:
        """Logits of the OOD folder's ``part`` ("val" or "test"), cached like the splits."""
        from edgeclf.evaluate.decision import load_ood_images

        paths = list(ood[part])
        key = hashlib.sha256("\n".join([ood["dir"], *paths]).encode()).hexdigest()[:16]
        cache = self.cache_dir / f"ood-{part}-{key}-{self.run.checkpoint_sha256[:16]}.npz"
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as z:
                return np.asarray(z["logits"])
        images, skipped = load_ood_images(Path(ood["dir"]), paths)
        for s in skipped[:5]:
            self.log(f"OOD image skipped: {s}")
        self.log(f"predicting {len(images)} OOD images ({part} part)")
        pred = self.run.fast_predictor(images[:8])
        logits = np.concatenate([pred.features_and_logits(images[i : i + 64])[1] for i in range(0, len(images), 64)])
        from edgeclf._io import atomic_open

        with atomic_open(cache, "wb") as fobj:
            np.savez(fobj, logits=logits)
        return logits

    def _decision_metrics(self, split: str, data: SplitData, temp: float, fig_dir: Path, tag: str) -> dict[str, Any] | None:
        from edgeclf.evaluate.decision import (
            compare_to_argmax,
            decide,
            ood_metrics,
            plot_ood_histogram,
            plot_pr_curves,
            plot_risk_coverage,
            scores,
        )

        stored = self.decision()
        if stored is None:
            return None
        policy, doc = stored
        # "policy" and "argmax": the split's figures at each; "policy_document": the policy itself
        out = {
            "describe": policy.describe(),
            "policy_document": policy.model_dump(mode="json"),
            **compare_to_argmax(data.y, data.logits, temp, policy, self.run.classes),
        }
        d = decide(data.logits, temp, policy)
        plot_pr_curves(
            data.y,
            softmax(data.logits, temp),
            d,
            self.run.classes,
            fig_dir / "pr_curves.png",
            f"precision-recall per class, {tag} (star: the decision policy)",
        )
        if policy.reject is not None:
            plot_risk_coverage(data.y, d, fig_dir / "risk_coverage.png", f"risk-coverage, {tag}")
        ood = doc.get("ood")
        if ood and ood.get(split):
            ol = self.ood_logits(ood, split)
            om = ood_metrics(data.logits, ol, temp, policy)
            om["dir"] = ood["dir"]
            out["ood"] = om
            plot_ood_histogram(
                scores(data.logits, temp, om["score"], policy.bias),
                scores(ol, temp, om["score"], policy.bias),
                policy.reject.threshold if policy.reject else None,
                om["score"],
                om["auroc"],
                om["fpr_at_95_tpr"],
                fig_dir / "ood_scores.png",
                f"reject score, {tag} vs OOD {split} part",
            )
        return out

    def slices(self, data: SplitData, probs: np.ndarray) -> dict[str, list[dict[str, Any]]]:
        """Metrics by each extra manifest column and by image-size bucket."""
        from PIL import Image

        groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i, r in enumerate(data.rows):
            for col, val in r.extra.items():
                groups[col][val or "(empty)"].append(i)
            try:
                with Image.open(self.run.data_root / r.path) as im:
                    short = min(im.size)
            except OSError:
                continue
            label = next(lab for lo, hi, lab in SIZE_BUCKETS if lo <= short < hi)
            groups["image_size"][label].append(i)
        out: dict[str, list[dict[str, Any]]] = {}
        pred = probs.argmax(1)
        from sklearn.metrics import f1_score

        for col, vals in groups.items():
            rows = []
            for val, idx in sorted(vals.items()):
                ii = np.array(idx)
                rows.append(
                    {
                        "value": val,
                        "n": len(idx),
                        "accuracy": float((pred[ii] == data.y[ii]).mean()),
                        "macro_f1": float(
                            f1_score(
                                data.y[ii], pred[ii], labels=list(range(len(self.run.classes))), average="macro", zero_division=0
                            )
                        ),
                    }
                )
            out[col] = rows
        return out

    def evaluate(
        self,
        split: str,
        allow_test_reuse: bool = False,
        robustness: bool = True,
        robustness_max_images: int = 300,
        explain: bool = True,
        seed: int = 0,
    ) -> SplitEvaluation:
        if split not in ("val", "test"):
            raise ConfigError(f"--split must be val or test, got {split!r}")
        reused = False
        if split == "test":
            # the ledger is checked and written before a single test image is predicted
            reused = check_and_record(self.run_dir, self.run.checkpoint_sha256, self.run.manifest.fingerprint, allow_test_reuse)
        classes = self.run.classes
        calib = self.temperature()
        temp = float(calib["temperature"])
        data = self.split_data(split)
        probs = softmax(data.logits, temp)
        fig_dir = self.run_dir / "report" / "figures" / split
        fig_dir.mkdir(parents=True, exist_ok=True)
        tag = f"{split}{' (TEST REUSED)' if reused else ''}"

        metrics = full_metrics(data.y, probs, classes)
        metrics["ci"] = bootstrap_ci(data.y, probs.argmax(axis=1), classes, seed=seed)
        metrics["confused_pairs"] = confused_pairs(metrics["confusion_matrix"], classes)
        cal = calibration_summary(data.logits, data.y, temp)
        metrics["calibration"] = {k: v for k, v in cal.items() if not k.startswith("reliability")}
        plot_confusion(
            metrics["confusion_matrix"],
            metrics["confusion_matrix_normalized"],
            classes,
            fig_dir / "confusion.png",
            f"confusion matrix, {tag}",
        )
        plot_reliability(cal, fig_dir / "reliability.png", f"reliability, {tag} (temperature fitted on val)")
        mistakes = top_mistakes(data.paths, data.y, probs, classes)
        write_mistakes_csv(top_mistakes(data.paths, data.y, probs, classes, top=len(data.paths)), fig_dir / "mistakes.csv")
        mistake_paths = [m["path"] for m in mistakes]
        mistake_imgs = dict(zip(mistake_paths, load_images(self.run.data_root, mistake_paths), strict=True))
        plot_mistakes(mistakes, mistake_imgs, fig_dir / "mistakes.png", f"most confident mistakes, {tag}")
        metrics["top_mistakes"] = mistakes[:10]
        metrics["slices"] = self.slices(data, probs)
        decision = self._decision_metrics(split, data, temp, fig_dir, tag)
        if decision is not None:
            metrics["decision"] = decision

        # side by side: train, val (and test when this is the test evaluation)
        side: dict[str, dict[str, float]] = {}
        for s in ["train", "val"] + (["test"] if split == "test" else []):
            # the training split only for its level (the overfitting gap): a sample keeps the cost flat in its size
            d = data if s == split else self.split_data(s, TRAIN_GAP_SAMPLE if s == "train" else None)
            m = full_metrics(d.y, softmax(d.logits, temp), classes, top_ks=())
            side[s] = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}
            if d.sampled_from is not None:
                side[s]["sampled_from"] = d.sampled_from
        gap = side["train"]["macro_f1"] - side["val"]["macro_f1"]
        metrics["train_vs_heldout"] = {"splits": side, "train_minus_val_macro_f1": gap, "overfitting": gap > OVERFIT_GAP}

        train_metrics = read_metrics(self.run_dir).to_json()
        metrics["baselines"] = _dict(train_metrics.get("baselines"))
        metrics["candidate_comparison"] = candidate_comparison(self.run_dir, train_metrics, classes, seed, self.log)

        if robustness:
            metrics["robustness"] = self._robustness(data, fig_dir, tag, robustness_max_images, seed)
        if explain:
            metrics["figures_extra"] = self._explain(data, probs, fig_dir, tag, seed)

        verdict = compute_verdict(metrics, train_metrics, side, reused, len(read_ledger(self.run_dir)), split)
        metrics.update(
            {
                "split": split,
                "test_reused": reused,
                "temperature": temp,
                "verdict": verdict,
                "model_sha256": self.run.checkpoint_sha256,
                "best_epoch": self.run.best_epoch,
                "prediction_engine": self.engine,
                "dataset_fingerprint": self.run.manifest.fingerprint,
                "classes": classes,
            }
        )
        doc = write_split_evaluation(self.run_dir, metrics)  # validated: what every reader relies on is there
        train_metrics.setdefault("evaluation", {})[split] = {
            k: metrics[k]
            for k in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "n", "test_reused", "verdict", "ci")
        }
        if decision is not None:
            train_metrics["evaluation"][split]["decision"] = {
                "describe": decision["describe"],
                **{
                    side: {k: decision[side][k] for k in ("accuracy", "macro_f1", "coverage", "selective_accuracy")}
                    | {"recall": {c: v["recall"] for c, v in decision[side]["per_class"].items()}}
                    for side in ("policy", "argmax")
                },
                **(
                    {
                        "ood": {
                            k: decision["ood"][k] for k in ("auroc", "fpr_at_95_tpr", "ood_unknown_rate") if k in decision["ood"]
                        }
                    }
                    if "ood" in decision
                    else {}
                ),
            }
        train_metrics["evaluation"][split]["ece_after"] = metrics["calibration"]["ece_after"]
        train_metrics["calibration"] = {k: v for k, v in calib.items()}
        write_metrics(self.run_dir, train_metrics)
        from edgeclf.evaluate.report import write_report

        write_report(self.run_dir)
        return doc

    def _robustness(self, data: SplitData, fig_dir: Path, tag: str, max_images: int, seed: int) -> dict[str, Any]:
        from edgeclf.evaluate.robustness import plot_robustness, run_robustness

        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(len(data.paths), min(max_images, len(data.paths)), replace=False))
        images = load_images(self.run.data_root, [data.paths[i] for i in idx])
        self.log(f"robustness suite on {len(idx)} images")
        pred = self.run.fast_predictor(images[:8])
        tick = self.progress
        res = run_robustness(
            pred, images, data.y[idx], seed=seed, progress=(lambda d, t: tick(f"robustness {tag}", d, t)) if tick else None
        )
        self.engine = pred.engine
        plot_robustness({"eager fp32": res}, fig_dir / "robustness.png", f"macro-F1 under corruption, {tag}")
        return {"images": int(len(idx)), **res.to_dict()}

    def _explain(self, data: SplitData, probs: np.ndarray, fig_dir: Path, tag: str, seed: int) -> dict[str, str]:
        from edgeclf.evaluate.embeddings import export_projector, plot_embeddings, project_2d
        from edgeclf.evaluate.explain import gradcam_grid, sample_correct_and_wrong

        xy, method = project_2d(data.features, seed=seed)
        plot_embeddings(xy, data.y, self.run.classes, fig_dir / "embeddings.png", f"penultimate-layer features, {tag}", method)
        export_projector(
            data.features, data.y, self.run.classes, data.paths, self.run_dir / "tensorboard" / f"projector-{fig_dir.name}"
        )
        pred = probs.argmax(1)
        pick = np.asarray(sample_correct_and_wrong(data.y, pred, max_items=16, seed=seed), dtype=int)
        n_wrong = int((pred[pick] != data.y[pick]).sum())
        imgs = load_images(self.run.data_root, [data.paths[i] for i in pick])
        gradcam_grid(
            self.run.model,
            self.run.spec,
            self.run.classes,
            imgs,
            data.y[pick],
            pred[pick],
            probs[pick, pred[pick]],
            fig_dir / "gradcam.png",
            f"Grad-CAM: {len(pick) - n_wrong} correct, {n_wrong} wrong, {tag}",
        )
        return {"embeddings": method}


def _number(v: Any) -> float | None:
    """``v`` as a finite float, or None (missing, null, text, NaN in an old or hand-edited metrics.json)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def recorded_candidates(train_metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The training candidates that name themselves and carry a validation macro-F1; others are ignored."""
    out = []
    raw = train_metrics.get("candidates")
    for c in raw if isinstance(raw, list) else []:
        if (
            isinstance(c, dict)
            and isinstance(c.get("name"), str)
            and isinstance(c.get("val"), dict)
            and _number(c["val"].get("macro_f1")) is not None
        ):
            out.append(c)
    return out


def best_candidates(candidates: list[dict[str, Any]]) -> list[str]:
    """Names of the candidates with the highest validation macro-F1, ties broken by lower NLL (missing NLL loses)."""
    if not candidates:
        return []
    f1 = {c["name"]: float(c["val"]["macro_f1"]) for c in candidates}
    nll = {c["name"]: _number(c["val"].get("nll")) for c in candidates}
    top = max(f1.values())
    tied = [n for n in f1 if math.isclose(f1[n], top, rel_tol=0.0, abs_tol=1e-12)]
    best_nll = min((nll[n] for n in tied if nll[n] is not None), default=None)
    if best_nll is None:
        return tied
    return [n for n in tied if nll[n] is not None and math.isclose(nll[n], best_nll, rel_tol=0.0, abs_tol=1e-12)]


def best_candidate_gate(train_metrics: dict[str, Any], val_macro_f1: float) -> dict[str, Any]:
    """Gate ``best_candidate_shipped``: the selection recorded by training is the best candidate on validation.

    Runs that record no candidates fall back to comparing the fine-tuned model's validation
    macro-F1 (``val_macro_f1``) with the linear probe's.
    """
    gate: dict[str, Any] = {"rule": GATES["best_candidate_shipped"]}
    candidates = recorded_candidates(train_metrics)
    if not candidates:
        probe = _number(_dict(_dict(train_metrics.get("baselines")).get("linear_probe")).get("macro_f1"))
        if probe is None:
            return {**gate, "passed": True, "detail": "no candidates and no linear probe recorded"}
        passed = val_macro_f1 >= probe
        return {
            **gate,
            "passed": passed,
            "detail": f"no candidates recorded; fine-tuned validation macro-F1 "
            f"{val_macro_f1:.4f} {'>=' if passed else '<'} linear probe {probe:.4f}",
        }
    selected = _dict(train_metrics.get("selection")).get("selected")
    best = best_candidates(candidates)
    f1 = {c["name"]: float(c["val"]["macro_f1"]) for c in candidates}
    gate.update(selected=selected, best=best)
    if not isinstance(selected, str):
        return {**gate, "passed": False, "detail": f"{len(candidates)} candidates recorded but no selection"}
    if selected not in f1:
        return {**gate, "passed": False, "detail": f"the selected '{selected}' is not among the recorded candidates"}
    if selected in best:
        return {
            **gate,
            "passed": True,
            "detail": f"'{selected}' has the best validation macro-F1 ({f1[selected]:.4f}) of {len(candidates)} candidates",
        }
    return {
        **gate,
        "passed": False,
        "detail": f"'{selected}' shipped (validation macro-F1 {f1[selected]:.4f}) but "
        f"{', '.join(repr(n) for n in best)} scored {f1[best[0]]:.4f}",
    }


def every_class_recalled_gate(per_class: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Gate ``every_class_recalled``: names the classes with support on this split and recall 0."""
    missed = [c for c, v in per_class.items() if (v.get("support") or 0) > 0 and not (v.get("recall") or 0) > 0]
    return {
        "passed": not missed,
        "rule": GATES["every_class_recalled"],
        "classes": missed,
        "detail": f"recall 0 on this split: {', '.join(missed)}" if missed else "every class recalled",
    }


def compute_verdict(
    m: dict[str, Any],
    train_metrics: dict[str, Any],
    side: dict[str, Any],
    reused: bool,
    ledger_entries: int,
    split: str = "this split",
) -> dict[str, Any]:
    """Every gate of GATES on one evaluated split: ``{"gates": {name: {passed, rule, detail, ...}}, "passed", "notes"}``.

    ``notes`` never fail the verdict: they name what the figures cannot show (classes with too few
    images on the split, :func:`edgeclf.evaluate.metrics.thin_evidence`).

    ``m`` is the split's metrics (with ``calibration`` and ``train_vs_heldout``), ``train_metrics``
    the run's metrics.json, ``side`` the train / val summaries, ``ledger_entries`` the number
    of test evaluations recorded for the run.
    """
    gates: dict[str, dict[str, Any]] = {}
    gates["best_candidate_shipped"] = best_candidate_gate(train_metrics, float(side["val"]["macro_f1"]))
    major = _number(_dict(_dict(train_metrics.get("baselines")).get("majority_class")).get("macro_f1"))
    if major is None:
        major = next(
            (_number(c["val"]["macro_f1"]) for c in recorded_candidates(train_metrics) if c["name"] == "majority_class"), None
        )
    gates["beats_majority"] = {
        "passed": major is None or m["macro_f1"] > major,
        "rule": GATES["beats_majority"],
        "detail": "no majority-class baseline recorded"
        if major is None
        else f"macro-F1 {m['macro_f1']:.4f} vs majority class {major:.4f}",
    }
    gates["every_class_recalled"] = every_class_recalled_gate(m["per_class"])
    gap = m["train_vs_heldout"]["train_minus_val_macro_f1"]
    gates["no_overfitting"] = {
        "passed": not m["train_vs_heldout"]["overfitting"],
        "rule": GATES["no_overfitting"],
        "detail": f"train - validation macro-F1 = {gap:+.4f}",
    }
    ece_after = m["calibration"]["ece_after"]
    gates["calibrated"] = {"passed": ece_after <= MAX_ECE, "rule": GATES["calibrated"], "detail": f"ECE {ece_after:.4f}"}
    gates["test_touched_once"] = {
        "passed": not reused and ledger_entries <= 1,
        "rule": GATES["test_touched_once"],
        "detail": f"{ledger_entries} test evaluation(s) recorded" + ("; this one reused it" if reused else ""),
    }
    for g in gates.values():
        g["passed"] = bool(g["passed"])
    thin = thin_evidence({c: v["support"] for c, v in m["per_class"].items() if "support" in v})
    notes = [thin_evidence_note(thin, split)] if thin else []
    return {"gates": gates, "passed": all(g["passed"] for g in gates.values()), "notes": notes}


def candidate_comparison(
    run_dir: Path, train_metrics: dict[str, Any], classes: list[str], seed: int = 0, log: Log | None = None
) -> list[dict[str, Any]]:
    """Selected candidate minus each other one: validation macro-F1 difference with its paired bootstrap interval.

    Reads RUN_DIR/candidates/val_predictions.npz; an empty list when the file, the selection
    or the selected candidate's predictions are missing, and a candidate whose predictions
    do not match the labels is left out (each said through ``log``).
    """
    log = log or (lambda s: None)
    path = Path(run_dir) / CANDIDATE_PREDICTIONS
    if not path.is_file():
        return []
    selected = _dict(train_metrics.get("selection")).get("selected")
    if not isinstance(selected, str):
        log(f"{CANDIDATE_PREDICTIONS}: no selection in metrics.json, candidates not compared")
        return []
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError) as e:
        log(f"{CANDIDATE_PREDICTIONS} is unreadable ({e}); candidates not compared")
        return []
    y_true = arrays.pop("y_true", None)
    if y_true is None or selected not in arrays:
        log(f"{CANDIDATE_PREDICTIONS} lacks {'y_true' if y_true is None else repr(selected)}; candidates not compared")
        return []
    listed = [c["name"] for c in recorded_candidates(train_metrics)]
    others = [n for n in listed if n in arrays and n != selected] + sorted(set(arrays) - set(listed) - {selected})
    rows = []
    for name in others:
        try:
            d = paired_bootstrap_diff(y_true, arrays[selected], arrays[name], classes, "macro_f1", seed=seed)
        except MetricInputError as e:
            log(f"{CANDIDATE_PREDICTIONS}: '{name}' not compared ({e})")
            continue
        rows.append(
            {
                "candidate": name,
                "val_macro_f1": d["b"],
                "diff": d["diff"],
                "low": d["low"],
                "high": d["high"],
                "significant": d["significant"],
                "selected": selected,
                "selected_val_macro_f1": d["a"],
                "level": d["level"],
                "n_resamples": d["n_resamples"],
                "seed": d["seed"],
            }
        )
    return rows


def evaluate(
    run_dir: Path,
    split: str,
    allow_test_reuse: bool = False,
    robustness: bool = True,
    explain: bool = True,
    robustness_max_images: int = 300,
    log: Log | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    decision: Any = None,
) -> SplitEvaluation:
    """Evaluate a training run on ``split``; write figures, metrics and the HTML report.

    ``decision`` (a :class:`~edgeclf.evaluate.decision.DecisionRequest`) fits that policy on
    validation first — whatever ``split`` is — and the evaluation reports it next to argmax.
    """
    ev = Evaluation(run_dir, log, progress)
    if decision is not None:
        ev.fit_decision(decision)
    return ev.evaluate(split, allow_test_reuse, robustness, robustness_max_images, explain)
