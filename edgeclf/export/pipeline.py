"""``edgeclf export RUN_DIR --out BUNDLE``: every format and precision, each held to its parity gate."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeclf._io import write_json
from edgeclf._provenance import library_versions
from edgeclf.errors import ConfigError, EdgeclfError
from edgeclf.export.bundle import (
    MIN_RUNTIME_VERSION,
    MIN_RUNTIME_VERSION_DECISION,
    SCHEMA_VERSION,
    ArtifactEntry,
    BundleManifest,
    file_entry,
    model_card_json,
    write_manifest,
    write_parity,
)
from edgeclf.export.parity import (
    ParityResult,
    decision_check,
    int8_no_retry_reason,
    point_estimate_hint,
    row_status,
    run_parity,
)
from edgeclf.export.parity_schema import (
    ArtifactRecord,
    Attempt,
    DecisionCheck,
    ParityReport,
    ParityRow,
    RobustnessSummary,
)

Log = Callable[[str], None]

DEFAULT_FORMATS = ("onnx", "openvino", "torchscript", "tensorrt")
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")
RUNTIME_TO_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt", "torch": "torchscript"}


#: Written into an export's temporary folder: who made it, so a later run can tell a stale one.
WORK_MARKER = ".edgeclf-export"
#: A temporary folder of a process on another host is stale after this long.
STALE_AFTER_S = 24 * 3600


def clean_stale_work(out_dir: Path, log: Log | None = None) -> list[Path]:
    """Remove what interrupted exports to ``out_dir`` left beside it (``.<name>.<random>`` folders).

    Only folders carrying our marker are touched, and only stale ones: their process is gone
    (same host) or they are older than STALE_AFTER_S (another host sharing the disk).
    """
    removed = []
    for d in Path(out_dir).parent.glob(f".{Path(out_dir).name}.*"):
        marker = d / WORK_MARKER
        if not d.is_dir() or d.is_symlink() or not marker.is_file():
            continue
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
            pid, host, started = int(info["pid"]), str(info["host"]), float(info["started"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if host == socket.gethostname():
            try:
                os.kill(pid, 0)
                alive = pid != os.getpid()
            except ProcessLookupError:
                alive = False
            except PermissionError:
                alive = True
        else:
            alive = time.time() - started < STALE_AFTER_S
        if not alive:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
            (log or (lambda s: None))(f"removed {d.name}: left by an interrupted export")
    return removed


class RuntimeGate(Protocol):
    """Gates the device runtime on the written bundle, as one more set of parity-table rows.

    Export owns this interface and the runtime implements it (``edgeclf.runtime.gate.c_runtime_rows``);
    the caller that composes both (the CLI, ``edgeclf build``) passes it in, so export never imports
    the layer after it. Each row is a parity table row; ``status`` ``parity_failed`` or
    ``insufficient_evidence`` marks the artifact failed.
    """

    def __call__(
        self,
        bundle: Path,
        entries: list[ArtifactEntry],
        images: list[np.ndarray],
        val: Any,
        classes: list[str],
        temperature: float,
        log: Log,
        policy: Any = None,
        int8_evidence: str = "interval",
    ) -> list[ParityRow]: ...


class ExportFailed(EdgeclfError):
    """At least one artifact failed to export or failed its parity gate.

    ``result`` is the bundle written without them (its parity table names every failure).
    """

    def __init__(self, message: str, result: ExportResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class ExportResult:
    bundle_dir: Path
    #: the bundle's ``parity.json``, as written
    parity: ParityReport
    manifest: BundleManifest
    failed: list[str] = field(default_factory=list)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The parity table's rows as JSON objects (``parity.table`` holds them typed)."""
        return [r.to_dict() for r in self.parity.table]


#: The libraries a bundle's ``creator`` names.
_CREATOR_PACKAGES = ("edgeclf", "torch", "timm", "onnx", "onnxruntime", "onnxslim", "openvino", "nncf")


def plan_jobs(formats: list[str] | None, precisions: list[str] | None, profile: Any | None) -> list[tuple[str, str]]:
    """(format, precision) pairs to build: explicit requests, else the profile's runtimes, else everything."""
    from edgeclf.export.formats import FORMATS

    if formats is None and profile is not None:
        formats = sorted({RUNTIME_TO_FORMAT[r.runtime] for r in profile.runtimes if r.runtime in RUNTIME_TO_FORMAT} | {"onnx"})
    if precisions is None and profile is not None:
        precisions = sorted({p for r in profile.runtimes for p in r.precisions} | {"fp32"})
    formats = list(formats or DEFAULT_FORMATS)
    precisions = list(precisions or DEFAULT_PRECISIONS)
    for f in formats:
        if f not in FORMATS:
            raise ConfigError(f"unknown format {f!r}; choose from {', '.join(FORMATS)}")
    for p in precisions:
        if p not in DEFAULT_PRECISIONS:
            raise ConfigError(f"unknown precision {p!r}; choose from {', '.join(DEFAULT_PRECISIONS)}")
    jobs = [(f, p) for f in formats for p in precisions if p in FORMATS[f].precisions]
    if not jobs:
        raise ConfigError(f"no format supports the requested precisions {', '.join(precisions)}")
    if ("onnx", "fp32") not in jobs:  # every other artifact is built from (or next to) the fp32 ONNX
        jobs.insert(0, ("onnx", "fp32"))
    return sorted(
        jobs, key=lambda j: (j != ("onnx", "fp32"), formats.index(j[0]) if j[0] in formats else 0, DEFAULT_PRECISIONS.index(j[1]))
    )


def export_run(
    run_dir: Path,
    out_dir: Path,
    formats: list[str] | None = None,
    precisions: list[str] | None = None,
    profile: str | None = None,
    calibration_images: int = 128,
    calibration_method: str = "minmax",
    allow_failed: bool = False,
    robustness: bool = True,
    robustness_images: int = 150,
    log: Log | None = None,
    runtime_gate: RuntimeGate | None = None,
    int8_evidence: str = "interval",
) -> ExportResult:
    """Export ``run_dir``'s shipped checkpoint into a bundle at ``out_dir``, every artifact gated.

    ``runtime_gate`` (e.g. ``edgeclf.runtime.gate.c_runtime_rows``) adds the device runtime's own
    rows to the parity table; without it only the Python engines are gated. ``int8_evidence``:
    ``interval`` (int8 gates decided for the number of validation images, see ``export.parity``)
    or ``point`` (by the point estimate alone).
    """
    if int8_evidence not in ("interval", "point"):
        raise ConfigError(f"int8 gate evidence must be interval or point, got {int8_evidence!r}")
    from edgeclf.export.formats import third_party_log

    chatter = Path(run_dir) / "logs" / EXPORT_LOG
    with third_party_log(chatter if Path(run_dir).is_dir() else None):
        if Path(run_dir).is_dir():
            (log or (lambda s: None))(f"the quantizers' and converters' own output goes to {chatter}")
        return _export_run(
            run_dir,
            out_dir,
            formats,
            precisions,
            profile,
            calibration_images,
            calibration_method,
            allow_failed,
            robustness,
            robustness_images,
            log,
            runtime_gate,
            int8_evidence,
        )


#: The run directory's log of third-party output during export (logs/ in the run).
EXPORT_LOG = "export.log"


def _export_run(
    run_dir: Path,
    out_dir: Path,
    formats: list[str] | None,
    precisions: list[str] | None,
    profile: str | None,
    calibration_images: int,
    calibration_method: str,
    allow_failed: bool,
    robustness: bool,
    robustness_images: int,
    log: Log | None,
    runtime_gate: RuntimeGate | None,
    int8_evidence: str,
) -> ExportResult:
    from edgeclf.evaluate.predictor import load_images
    from edgeclf.evaluate.run import Evaluation
    from edgeclf.export.exporters import export_artifact
    from edgeclf.export.runners import load_runner

    log = log or (lambda s: None)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; a bundle is a folder: choose a new folder name")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} already exists and is not empty; choose another --out (bundles are never overwritten)")
    prof = None
    if profile is not None:
        from edgeclf.profiles import load_profile

        prof = load_profile(profile)
    jobs = plan_jobs(formats, precisions, prof)

    ev = Evaluation(Path(run_dir), log)
    run = ev.run
    calib = ev.temperature()
    temperature = float(calib["temperature"])
    val = ev.split_data("val")
    log(f"decoding {len(val.paths)} validation images for the parity gates")
    val_images = load_images(run.data_root, val.paths)
    train_rows = run.manifest.split_rows("train")
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(train_rows), min(calibration_images, len(train_rows)), replace=False).tolist())
    calib_paths = [train_rows[i].path for i in pick]
    calib_imgs = load_images(run.data_root, calib_paths)
    train_metrics = ev_metrics(Path(run_dir))
    stored = ev.decision()
    policy = stored[0] if stored is not None else None
    if policy is not None:
        log(f"decision policy: {policy.describe()}")

    manifest = BundleManifest(
        schema_version=SCHEMA_VERSION,
        name=Path(run_dir).name,
        min_runtime_version=MIN_RUNTIME_VERSION if policy is None or policy.is_argmax else MIN_RUNTIME_VERSION_DECISION,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        creator=library_versions(_CREATOR_PACKAGES),
        labels=run.classes,
        preprocess=run.spec.to_dict(),
        temperature=temperature,
        source_run={
            "run": Path(run_dir).name,
            "checkpoint_sha256": run.checkpoint_sha256,
            "best_epoch": run.best_epoch,
            "backbone": run.config.run.backbone,
        },
        dataset_fingerprint=run.manifest.fingerprint,
        calibration_data={
            "split": "train",
            "images": len(calib_paths),
            "seed": 0,
            "method": calibration_method,
            "note": "int8 calibration uses training images only, never validation or test",
        },
        metrics=train_metrics,
        target_profile=prof.name if prof else None,
        decision=policy,
    )
    meta = model_card_json(manifest.model_card())

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_work(out_dir, log)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    write_json(work / WORK_MARKER, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
    from edgeclf.train.metrics import classification_metrics

    rows: list[ParityRow] = [
        ParityRow(
            format="eager (torch)",
            precision="fp32",
            status="reference",
            size_mb=None,
            macro_f1=classification_metrics(val.y, val.logits.argmax(1), run.classes)["macro_f1"],
            delta_macro_f1=0.0,
            agreement=1.0,
            ms_per_image=None,
        )
    ]
    records: list[ArtifactRecord] = []
    robustness_summary: RobustnessSummary | None = None
    robustness_skipped: str | None = None
    entries: list[ArtifactEntry] = []
    failed: list[str] = []
    fp32_onnx: Path | None = None
    runners: dict[str, Any] = {}
    try:
        for fmt, prec in jobs:
            key = f"{fmt}/{prec}"
            log(f"exporting {key}")
            attempts: list[Attempt] = []
            base: dict[str, Any] = {"calibration_method": calibration_method} if prec == "int8" and fmt == "onnx" else {}
            variants = [base]
            art = None
            while variants:
                options = variants.pop(0)
                art = export_artifact(
                    fmt,
                    prec,
                    run.model,
                    run.spec,
                    work,
                    calib_imgs if prec == "int8" or fmt == "tensorrt" else None,
                    meta,
                    options,
                    fp32_onnx=fp32_onnx,
                )
                if art.status != "ok":
                    attempts.append(Attempt(options=dict(options), status=art.status, error=art.error))
                    break
                runner = load_runner(work, art, run.spec, run.classes)
                res, art_logits = run_parity(
                    fmt, prec, runner, val_images, val.logits, val.y, run.classes, temperature, int8_evidence
                )
                dec = None
                if policy is not None and not policy.is_argmax:
                    dec = decision_check(policy, art_logits, val.logits, val.y, run.classes, temperature)
                    if dec["failures"]:
                        res.failures += dec["failures"]
                        res.passed, res.status = False, "failed"
                attempts.append(
                    Attempt(
                        options=dict(options),
                        status=row_status(res),
                        parity=res.record(),
                        decision=DecisionCheck.model_validate(dec) if dec is not None else None,
                    )
                )
                if res.passed or prec != "int8":
                    break
                why_not = int8_no_retry_reason(res.agreement, len(val.y), int8_evidence) if len(attempts) == 1 else None
                if why_not is not None:
                    log(f"  {key} did not pass its gate ({'; '.join(res.failures)}); not retried: {why_not}")
                    break
                if len(attempts) == 1:
                    # int8 failed its gate: retry with the sensitive layers kept in float, then (ONNX Runtime)
                    # also with percentile calibration, which clips activation outliers that MinMax keeps
                    keep = _sensitive_layers(fmt, work, art, fp32_onnx, calib_imgs, run.spec)
                    variants.append({**base, "keep_float": keep})
                    if fmt == "onnx" and calibration_method != "percentile":
                        variants.append({**base, "keep_float": keep, "calibration_method": "percentile"})
                    log(
                        f"  {key} failed its gate ({'; '.join(res.failures)}); "
                        f"retrying with {len(keep)} sensitive layers in float"
                    )
                if variants:
                    for f in [art.file, *art.extra_files]:
                        (work / f).unlink(missing_ok=True)
            assert art is not None
            last = attempts[-1]
            status = last.status
            if fmt == "onnx" and prec == "fp32" and status == "ok":
                fp32_onnx = work / art.file
            p = last.parity
            row = ParityRow(
                format=fmt,
                precision=prec,
                status=status,
                size_mb=None,
                macro_f1=p.macro_f1 if p else None,
                delta_macro_f1=p.macro_f1_delta if p else None,
                agreement=p.agreement if p else None,
                ms_per_image=p.ms_per_image if p else None,
                error=last.error or "; ".join(p.failures if p else []) or None,
                ece=p.ece_calibrated if p else None,
                gate_rules=p.rules if p else None,
                decision=last.decision,
                decision_agreement=last.decision.decision_agreement if last.decision else None,
            )
            if status == "ok":
                row.size_mb = sum((work / f).stat().st_size for f in [art.file, *art.extra_files]) / 1e6
                e = file_entry(work, art.file)
                entries.append(
                    ArtifactEntry(
                        file=art.file,
                        format=fmt,
                        runtime=art.runtime,
                        precision=prec,
                        sha256=e.sha256,
                        size_bytes=e.size_bytes,
                        extra_files=[file_entry(work, f) for f in art.extra_files],
                        status="ok",
                        details=art.details,
                    )
                )
                runners[key] = load_runner(work, art, run.spec, run.classes)
            else:
                # the first build the point estimates pass is the one `--int8-gates point` would stop at
                hint = None
                for i, a in enumerate(attempts):
                    if h := point_estimate_hint(prec, a.parity):
                        hint = f"build {i + 1} of {len(attempts)}: {h}" if len(attempts) > 1 else h
                        break
                failed.append(f"{key}: {row.error}" + (f" ({hint})" if hint else ""))
                if hint:
                    log(f"  {key}: {hint}")
                if art.status == "ok" and not (fmt == "onnx" and prec == "fp32"):
                    for f in [art.file, *art.extra_files]:  # not shipped
                        (work / f).unlink(missing_ok=True)
            if art.status == "skipped":
                row.status = "skipped"
                failed.pop()
            records.append(ArtifactRecord(format=fmt, precision=prec, status=row.status, details=art.details, attempts=attempts))
            rows.append(row)
        if robustness and runners:
            pick = _robustness_artifact(runners)
            if pick is None:
                robustness_skipped = ROBUSTNESS_FP32_ONLY
                log(f"robustness suite: not run here: {ROBUSTNESS_FP32_ONLY}")
            else:
                robustness_summary = _robustness_compare(ev, runners, pick, val, robustness_images, work, log)
        manifest.artifacts = entries
        write_manifest(work, manifest)  # the C runtime's gates below load the bundle as a device would
        for row in (
            runtime_gate(work, entries, val_images, val, run.classes, temperature, log, policy, int8_evidence=int8_evidence)
            if runtime_gate is not None
            else []
        ):
            rows.append(row)
            if row.failed:
                failed.append(f"{row.format}/{row.precision}: {row.error}")
        manifest.parity = {"gates": _gate_doc(), "summary": [_summary(r) for r in rows[1:]]}
        report = ParityReport(
            split="val",
            images=len(val.paths),
            temperature=temperature,
            artifacts=records,
            table=rows,
            robustness=robustness_summary,
            robustness_skipped=robustness_skipped,
        )
        write_parity(work, report)
        write_manifest(work, manifest)
        (work / WORK_MARKER).unlink()
        if out_dir.exists():
            out_dir.rmdir()
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    result = ExportResult(out_dir, report, manifest, failed)
    if failed and not allow_failed:
        raise ExportFailed(
            f"{len(failed)} artifact(s) failed and were not shipped: {' | '.join(failed)}. "
            f"The bundle in {out_dir} holds the rest; pass --allow-failed to accept this",
            result,
        )
    return result


def ev_metrics(run_dir: Path) -> dict[str, Any]:
    """The training run's figures a bundle carries (its manifest's ``metrics``), from the typed run record."""
    from edgeclf.train.record import read_metrics

    m = read_metrics(run_dir).to_json()
    return {
        "baselines": m.get("baselines"),
        "finetuned": {
            k: v for k, v in (m.get("finetuned") or {}).items() if k in ("epoch", "accuracy", "macro_f1", "n", "candidate")
        },
        "evaluation": m.get("evaluation", {}),
        "selection": m.get("selection"),
        "quality_gates": m.get("quality_gates"),
    }


def _sensitive_layers(
    fmt: str, work: Path, art: Any, fp32_onnx: Path | None, calib_imgs: list[np.ndarray], spec: Any
) -> list[str]:
    """Layers to keep in float on an int8 retry.

    ONNX Runtime: the first convolution and the classifier, plus the five layers whose
    float fallback most reduces the logit error in a per-layer sweep (keeping *every*
    depthwise convolution float measured worse than keeping none on lite0: the extra
    Q/DQ boundaries cost more than they save). OpenVINO: first conv, classifier and the
    depthwise convolutions, which NNCF handles well.
    """
    from edgeclf.export.quantize import per_layer_error_sweep, sensitive_onnx_nodes

    if fp32_onnx is None:
        return []
    if fmt != "onnx":
        return sensitive_onnx_nodes(fp32_onnx)
    ends = sensitive_onnx_nodes(fp32_onnx, which=("first_conv", "classifier"))
    swept = per_layer_error_sweep(fp32_onnx, calib_imgs[:32], spec, top=5)
    return list(dict.fromkeys([*ends, *swept]))


def _summary(r: ParityRow) -> dict[str, Any]:
    """A table row as the manifest's ``parity.summary`` lists it (``decision_agreement`` with a policy)."""
    out = {
        "format": r.format,
        "precision": r.precision,
        "status": r.status,
        "agreement": r.agreement,
        "delta_macro_f1": r.delta_macro_f1,
    }
    if r.decision is not None:
        out["decision_agreement"] = r.decision_agreement
    return out


#: Why the export's corruption suite does not run when only fp32 artifacts ship.
ROBUSTNESS_FP32_ONLY = (
    "every shipped artifact computes in fp32 (fp32, or fp16 weights decompressed to f32 on this engine); each "
    "equals the eager model within the parity tolerance on every input, so their corruption figures are the "
    "eager model's (the evaluation's robustness suite)"
)


def _computes_in_fp32(runner: Any) -> bool:
    """An fp16 artifact whose engine decompresses its weights and computes in f32 (OpenVINO on CPU
    with the f32 hint): its only difference from fp32 is weight rounding, within the parity gate."""
    return str(getattr(runner, "inference_precision", "")).lower() == "f32"


def _robustness_artifact(runners: dict[str, Any]) -> str | None:
    """The shipped artifact whose corruption figures can differ from eager's: int8 first, then an
    fp16 one that computes in fp16; None if the rest compute in fp32 (fp32, or fp16 weights only)."""
    for prec in ("int8", "fp16"):
        key = next((k for k in runners if k.endswith(f"/{prec}") and not _computes_in_fp32(runners[k])), None)
        if key is not None:
            return key
    return None


def _robustness_compare(
    ev: Any, runners: dict[str, Any], pick_key: str, val: Any, max_images: int, work: Path, log: Log
) -> RobustnessSummary:
    """Corruption suite on eager and on ``pick_key``, a shipped reduced-precision artifact."""
    from edgeclf.evaluate.predictor import load_images
    from edgeclf.evaluate.robustness import compare_robustness, plot_robustness, run_robustness

    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(val.paths), min(max_images, len(val.paths)), replace=False))
    imgs = load_images(ev.run.data_root, [val.paths[i] for i in idx])
    eager = ev.run.fast_predictor(imgs[:8])  # the eager model's figures, on ONNX Runtime where it matches
    log(f"robustness suite on {len(idx)} images: eager ({eager.engine}) vs {pick_key}")
    res = {"eager fp32": run_robustness(eager, imgs, val.y[idx]), pick_key: run_robustness(runners[pick_key], imgs, val.y[idx])}
    plot_robustness(res, work / "robustness.png", f"macro-F1 under corruption: eager vs {pick_key}")
    return RobustnessSummary.model_validate(
        {
            "artifact": pick_key,
            "images": int(len(idx)),
            "rows": [r.to_dict() for r in compare_robustness(res)],
            "mean_corruption_macro_f1": {k: v.mean_corruption_macro_f1 for k, v in res.items()},
        }
    )


def _gate_doc() -> dict[str, Any]:
    from edgeclf.export import parity as p

    return {
        "fp32": {"min_agreement": p.FP32_MIN_AGREEMENT, "max_abs_logit_diff": p.FP32_MAX_ABS_LOGIT_DIFF},
        "fp16": {"min_agreement": p.FP16_MIN_AGREEMENT},
        "int8": {
            "max_macro_f1_drop": p.INT8_MAX_MACRO_F1_DROP,
            "max_class_recall_drop": p.INT8_MAX_CLASS_RECALL_DROP,
            "min_agreement": p.INT8_MIN_AGREEMENT,
        },
    }


__all__ = ["ExportFailed", "ExportResult", "ParityResult", "RuntimeGate", "export_run", "plan_jobs", "row_status"]
