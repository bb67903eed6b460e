"""``edgeclf build``: the whole chain for one hardware profile, resumable stage by stage.

audit -> split -> select -> train -> evaluate (val; test once) -> export (+ parity gates,
the C runtime included) -> benchmark (measured when this host is the target, else
estimated and labelled so) -> device package (bundle, C library and headers or the sources
to build them, the C example, a README for the device) -> report.

Every stage records its inputs' key in ``OUT/stages/<stage>.json`` when it finishes; a
re-run skips a stage whose key and outputs are unchanged and redoes it (and what depends on
it) otherwise. Stage outputs are written to temporary names and renamed, so an interrupted
build never leaves a stage that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgeclf._io import atomic_write_text as write_text
from edgeclf._io import canonical_json, sha256_file, write_json
from edgeclf.errors import ConfigError, EdgeclfError

Log = Callable[[str], None]
STAGES = ("audit", "split", "select", "train", "evaluate", "export", "benchmark", "package", "report")


class BuildError(EdgeclfError):
    """A build stage failed; the message names the stage and what to do."""


@dataclass
class BuildOptions:
    profile: str
    data_dir: Path
    out: Path
    budget_ms: float | None = None
    config: Path | None = None
    epochs: int | None = None
    batch_size: int | None = None
    seed: int = 0
    measure: bool | None = None  # None: measure when this host is the profile's target
    backbones: list[str] | None = None
    image_size: int | None = None  # force a resolution instead of the selection's
    robustness: bool = True
    calibration_images: int = 128
    workers: int | None = None
    extra_train: dict[str, Any] = field(default_factory=dict)
    allow_weak: bool = False
    time_budget_s: float | None = None  # search the recipe for this long (edgeclf.train.search)
    decision: Any = None  # edgeclf.evaluate.decision.DecisionRequest; None: argmax


@dataclass
class StageRecord:
    name: str
    status: str  # "done" | "cached"
    seconds: float
    result: dict[str, Any]


def _key(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def _file_key(path: Path | None) -> str | None:
    return sha256_file(path) if path is not None and Path(path).is_file() else None


def data_listing_key(root: Path) -> str:
    """A cheap fingerprint of a folder's files (relative path, size, mtime): changes when the data does."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.stat()
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{int(st.st_mtime)}\n".encode())
    return h.hexdigest()


class Stages:
    """Runs named stages, skipping those whose recorded key matches and whose outputs exist."""

    def __init__(self, out: Path, log: Log, on_stage: Callable[[str, str], None] | None = None) -> None:
        self.dir = Path(out) / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.on_stage = on_stage or (lambda name, state: None)
        self.records: list[StageRecord] = []

    def run(self, name: str, inputs: dict[str, Any], outputs: list[Path], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        key = _key(inputs)
        rec_path = self.dir / f"{name}.json"
        if rec_path.is_file():
            try:
                rec = json.loads(rec_path.read_text(encoding="utf-8"))
            except ValueError:
                rec = {}
            if rec.get("key") == key and all(Path(p).exists() for p in outputs):
                self.on_stage(name, "cached")
                self.records.append(StageRecord(name, "cached", 0.0, rec["result"]))
                return rec["result"]
            rec_path.unlink()  # stale: redo it
        self.on_stage(name, "running")
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        write_json(
            rec_path,
            {
                "stage": name,
                "key": key,
                "inputs": inputs,
                "result": result,
                "seconds": round(seconds, 2),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
        self.on_stage(name, "done")
        self.records.append(StageRecord(name, "done", seconds, result))
        return result


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished directory into place; an older one is removed only after."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def resolve_data(data: str | Path, out: Path, log: Log) -> Path:
    """``elpv`` (the embedded default data set, from PyPI) or an ImageFolder directory."""
    if str(data) == "elpv":
        from edgeclf.data.datasets import materialize_elpv

        dest = out / "data-elpv"
        if not (dest / "metadata.csv").is_file():
            log("laying out the elpv data set (PyPI elpv-dataset)")
            materialize_elpv(dest)
        return dest
    p = Path(data)
    if not p.is_dir():
        raise ConfigError(f"--data {data}: not a directory (an ImageFolder tree, one sub-folder per class), nor 'elpv'")
    return p


def host_is_target(profile: Any) -> tuple[bool, str]:
    """Whether latency measured here stands for the profile's device."""
    from edgeclf.select.calibration import _cpuinfo, match_host_profile

    info = _cpuinfo()
    arch = platform.machine().lower()
    matched = match_host_profile(arch, set(info.get("flags", info.get("Features", "")).split()))
    if profile.compute.target != "cpu":
        return False, f"the profile's models run on its {profile.compute.target.upper()}; this host has none"
    if matched != profile.name:
        return False, f"this host ({arch}, matches profile {matched or 'none'}) is not a {profile.name}"
    return True, f"this host matches {profile.name}"


def host_profile() -> str:
    """The built-in profile that describes this host (for ``--profile auto``)."""
    from edgeclf.select.calibration import _cpuinfo, match_host_profile

    info = _cpuinfo()
    name = match_host_profile(platform.machine().lower(), set(info.get("flags", info.get("Features", "")).split()))
    if name is None:
        raise ConfigError(f"no built-in profile describes this host ({platform.machine()}); pass --profile NAME")
    return name


# ------------------------------------------------------------------------------- stages


def _stage_audit(data_dir: Path, out: Path) -> dict[str, Any]:
    from edgeclf.data._index import index_dataset
    from edgeclf.data.audit import audit_index

    index = index_dataset(data_dir)
    tmp = Path(tempfile.mkdtemp(prefix=".audit.", dir=out))
    report = audit_index(index, tmp)
    _replace_dir(tmp, out / "audit")
    d = report.model_dump(mode="json")
    return {
        "num_images": d["num_images"],
        "num_classes": len(d["classes"]),
        "imbalance_ratio": d["imbalance_ratio"],
        "audit": "audit/audit.json",
    }


def _stage_split(data_dir: Path, out: Path, seed: int) -> dict[str, Any]:
    from edgeclf.data._index import index_dataset
    from edgeclf.data.split import SplitConfig, run_split

    index = index_dataset(data_dir)
    summary = run_split(index, out / "splits.csv", SplitConfig(seed=seed))
    return {"fingerprint": summary["fingerprint"], "counts": summary["counts"], "manifest": "splits.csv"}


def _weights_here(name: str) -> bool:
    from edgeclf.models import get_backbone, package_weights_installed

    return package_weights_installed(get_backbone(name))


# Runtimes a selection can time on this host (the calibration's measuring worker).
_MEASURABLE = {"onnxruntime/CPU", "openvino/CPU"}
_MAX_MEASURED = 4


def _measure_candidate(c: Any, out: Path, log: Log) -> list[Any]:
    """Time one candidate here (batch 1) and return it as selection measurements."""
    from edgeclf.bench.calibrate import measure_backbones
    from edgeclf.select import Measurement, load_calibration

    cal = load_calibration()
    threads = cal.host.threads if cal is not None else max(1, os.cpu_count() or 1)
    work = out / "stages" / "select-measure"
    work.mkdir(parents=True, exist_ok=True)
    runtime = c.runtime.split("/")[0]
    log(f"select: measuring {c.describe()} on this host")
    points = measure_backbones(
        [c.backbone],
        [c.resolution],
        [c.resolution] if c.precision == "int8" else [],
        [runtime],
        threads,
        seconds=3.0,
        work_dir=work,
        passes=1,
    )
    out_rows = []
    for p in points:
        if p.runtime != runtime or p.resolution != c.resolution:
            continue
        precisions = [p.precision]
        if runtime == "openvino" and p.precision == "fp32":
            # OpenVINO's CPU plugin runs an fp16 model in fp32 (the runtime's f32 hint):
            # the fp32 timing is the fp16 artifact's timing on a CPU.
            precisions.append("fp16")
        out_rows += [
            Measurement(
                backbone=p.backbone,
                resolution=p.resolution,
                precision=q,
                runtime=c.runtime,
                latency_ms_p95=p.p95_ms,
                file_mb=p.file_mib if q == p.precision else None,
            )
            for q in precisions
        ]
    if not any(m.precision == c.precision for m in out_rows):
        raise BuildError(f"select: measuring {c.describe()} gave no timing")
    return out_rows


def _stage_select(opts: BuildOptions, out: Path, log: Log | None = None) -> dict[str, Any]:
    from edgeclf.profiles import load_profile
    from edgeclf.select import select_backbone

    log = log or (lambda s: None)
    measured: list[Any] = []
    rounds = 0
    measure = bool(opts.measure)
    if measure:
        measure, why = host_is_target(load_profile(opts.profile))
        if not measure:
            log(f"select: estimating, not measuring: {why}")
    while True:
        res = select_backbone(opts.profile, latency_ms=opts.budget_ms, candidates=opts.backbones, measured=measured)
        fitting = sorted((c for c in res.candidates if c.fits), key=lambda c: (-(c.accuracy or 0.0), c.latency_ms_p95))
        usable = [c for c in fitting if _weights_here(c.backbone)]
        # --measure: the choice's latency is timed here instead of estimated; a choice
        # that misses the budget once measured drops out and the next one is timed.
        top = usable[0] if usable else None
        if (
            not measure
            or top is None
            or top.latency_source == "measured"
            or top.runtime not in _MEASURABLE
            or rounds >= _MAX_MEASURED
        ):
            break
        measured += _measure_candidate(top, out, log)
        rounds += 1
    if not usable:
        raise BuildError(
            "select: no candidate that fits the budgets has pretrained weights available here "
            f"(fitting: {', '.join(c.describe() for c in fitting[:5]) or 'none'}); "
            "install its weight package or widen the budget with --budget-ms"
        )
    choice = usable[0]
    note = ""
    if fitting and fitting[0] is not choice:
        note = (
            f"{fitting[0].describe()} would be the first choice, but its pretrained weights are not available "
            "offline here; the next best with weights was taken"
        )
    doc = {
        "profile": res.profile,
        "budgets": res.budgets.model_dump(mode="json"),
        "choice": choice.model_dump(mode="json"),
        "justification": res.justification
        if choice is res.choice
        else f"{choice.describe()}: the most accurate fitting candidate with weights here. {note}",
        "note": note,
        "accuracy_rule": res.accuracy_rule,
        "candidates": [c.model_dump(mode="json") | {"weights_here": _weights_here(c.backbone)} for c in res.candidates],
        "table": res.table(),
    }
    write_json(out / "selection.json", doc)
    same = [
        c
        for c in res.candidates
        if c.fits and c.backbone == choice.backbone and c.runtime == choice.runtime and c.precision == choice.precision
    ]
    return {
        "backbone": choice.backbone,
        "resolution": choice.resolution,
        "runtime": choice.runtime,
        "max_resolution": max([c.resolution for c in same] + [choice.resolution]),
        "precision": choice.precision,
        "latency_ms_p95_estimate": choice.latency_ms_p95,
        "latency_source": choice.latency_source,
        "memory_mb": choice.memory_mb,
        "file_mb": choice.file_mb,
        "accuracy": choice.accuracy,
        "justification": doc["justification"],
        "selection": "selection.json",
    }


def _stage_train(
    opts: BuildOptions, out: Path, sel: dict[str, Any], log: Log, progress: Callable[[str, int, int], None] | None
) -> dict[str, Any]:
    from edgeclf.train import load_config, train

    run_dir = out / "run"
    overrides: dict[str, Any] = {
        "data.manifest": out / "splits.csv",
        "model.backbone": sel["backbone"],
        "model.image_size": opts.image_size,
        "seed": opts.seed,
        "finetune.epochs": opts.epochs,
        "batch_size": opts.batch_size,
        "data.workers": opts.workers,
        **opts.extra_train,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)  # a run that never reached its first checkpoint
    if resume:
        log("train: resuming the interrupted run")
    # The input size is the training data's choice (edgeclf.train.recipe) within what the
    # selected configuration's latency budget allows: the largest fitting resolution.
    cfg = load_config(opts.config, overrides)
    max_size = sel.get("max_resolution") or sel["resolution"]
    if opts.time_budget_s:
        from edgeclf.train.search import search

        # the recipe and the backbone, among the selection's fitting ones with weights here
        doc = json.loads((out / "selection.json").read_text(encoding="utf-8"))
        others = sorted(
            {c["backbone"] for c in doc["candidates"] if c["fits"] and c.get("weights_here") and c["backbone"] != sel["backbone"]}
        )
        log(f"train: searching the recipe for {opts.time_budget_s:.0f} s over {', '.join([sel['backbone'], *others])}")
        table = search(cfg, run_dir, opts.time_budget_s, backbones=[sel["backbone"], *others], log=log, max_image_size=max_size)
        doc["search"] = table
        write_json(out / "selection.json", doc)
    else:
        train(cfg, run_dir, resume=resume, log=log, progress=progress, max_image_size=max_size)
    m = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    ft = m.get("finetuned") or {}
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    return {
        "run": "run",
        "checkpoint_sha256": sha256_file(run_dir / "checkpoints" / "best.pt"),
        "backbone": cfg["config"]["model"]["backbone"],
        "search": bool(opts.time_budget_s),
        "val_macro_f1": ft.get("macro_f1"),
        "val_accuracy": ft.get("accuracy"),
        "best_epoch": ft.get("epoch"),
        "candidate": ft.get("candidate"),
        "image_size": cfg["config"]["model"]["image_size"],
        "baselines": {k: v.get("macro_f1") for k, v in m.get("baselines", {}).items()},
        "candidates": {c["name"]: c["val"]["macro_f1"] for c in m.get("candidates", [])},
        "selection": m.get("selection"),
        "quality_gates": m.get("quality_gates"),
        "recipe": (m.get("recipe") or {}).get("choices", []),
    }


def _select_at(out: Path, sel: dict[str, Any], resolution: int, backbone: str) -> dict[str, Any]:
    """The selection's figures for the backbone and resolution training chose (the data's resolution
    rule or the recipe search, within the budget's fitting configurations)."""
    doc = json.loads((out / "selection.json").read_text(encoding="utf-8"))
    why = (
        f" Trained {backbone} at {resolution} px: "
        + ("the recipe search's choice" if backbone != sel["backbone"] else "the data's resolution rule")
        + ", within the latency budget."
    )
    rows = [c for c in doc.get("candidates", []) if c["backbone"] == backbone and c["resolution"] == resolution]
    same = [c for c in rows if (c["runtime"], c["precision"]) == (sel["runtime"], sel["precision"])]
    pick = (same or sorted([c for c in rows if c["fits"]], key=lambda c: c["latency_ms_p95"]) or rows or [None])[0]
    if pick is None:
        return {**sel, "backbone": backbone, "resolution": resolution, "justification": sel["justification"] + why}
    return {
        **sel,
        "backbone": backbone,
        "resolution": resolution,
        "runtime": pick["runtime"],
        "precision": pick["precision"],
        "latency_ms_p95_estimate": pick["latency_ms_p95"],
        "latency_source": pick["latency_source"],
        "memory_mb": pick["memory_mb"],
        "file_mb": pick["file_mb"],
        "accuracy": pick.get("accuracy"),
        "justification": sel["justification"] + why,
    }


def _stage_evaluate(opts: BuildOptions, out: Path, log: Log) -> dict[str, Any]:
    from edgeclf.evaluate.decision import DecisionRequest
    from edgeclf.evaluate.run import Evaluation

    run_dir = out / "run"
    ev = Evaluation(run_dir, log)  # one model load for the policy fit, validation and test
    # the decision policy is fitted on validation before the test split is touched (argmax when none is asked)
    policy_doc = ev.fit_decision(opts.decision or DecisionRequest())
    val = ev.evaluate("val", robustness=opts.robustness, explain=False)
    test_path = run_dir / "eval" / "test" / "metrics.json"
    if test_path.is_file():  # touched once already (an interrupted build): read, never re-evaluate
        test = json.loads(test_path.read_text(encoding="utf-8"))
        if (test.get("decision") or {}).get("policy_document") != policy_doc["policy"] and opts.decision is not None:
            log(
                "the test split was evaluated before this decision policy was fitted; its test figures are not "
                "reported (the test split is touched once; evaluate it again with --allow-test-reuse, marked as reused)"
            )
    else:
        test = ev.evaluate("test", robustness=False, explain=False)
    pick = ("accuracy", "balanced_accuracy", "macro_f1")
    res = {
        "val": {k: val.get(k) for k in pick},
        "test": {k: test.get(k) for k in pick},
        "val_ci": val.get("ci"),
        "test_ci": test.get("ci"),
        "temperature": val.get("calibration", {}).get("temperature"),
        "report": "run/report/index.html",
    }
    if opts.decision is not None:
        res["decision"] = {
            "describe": (val.get("decision") or {}).get("describe"),
            **{
                s: _decision_summary(m)
                for s, m in (("val", val), ("test", test))
                if (m.get("decision") or {}).get("policy_document") == policy_doc["policy"]
            },
        }
    return res


def _decision_summary(m: dict[str, Any]) -> dict[str, Any]:
    d = m["decision"]
    out = {
        side: {
            "macro_f1": d[side]["macro_f1"],
            "accuracy": d[side]["accuracy"],
            "coverage": d[side]["coverage"],
            "selective_accuracy": d[side]["selective_accuracy"],
            "recall": {c: v["recall"] for c, v in d[side]["per_class"].items()},
        }
        for side in ("policy", "argmax")
    }
    return {**out["policy"], "argmax": out["argmax"], **({"ood": d["ood"]} if "ood" in d else {})}


def _stage_export(opts: BuildOptions, out: Path, log: Log) -> dict[str, Any]:
    from edgeclf.export.pipeline import export_run

    tmp = out / f".bundle.{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    from edgeclf.runtime.gate import c_runtime_rows

    res = export_run(
        out / "run",
        tmp,
        profile=opts.profile,
        allow_failed=True,
        robustness=opts.robustness,
        calibration_images=opts.calibration_images,
        log=log,
        runtime_gate=c_runtime_rows,
    )
    _replace_dir(tmp, out / "bundle")
    rows = [
        {
            k: r.get(k)
            for k in (
                "format",
                "precision",
                "status",
                "size_mb",
                "macro_f1",
                "delta_macro_f1",
                "agreement",
                "ms_per_image",
                "error",
                "decision_agreement",
                "decision_match",
            )
        }
        for r in res.rows
    ]
    return {
        "bundle": "bundle",
        "artifacts": [f"{a.format}/{a.precision}" for a in res.manifest.artifacts],
        "failed": res.failed,
        "parity": rows,
    }


def _frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)


def _stage_benchmark(opts: BuildOptions, out: Path, sel: dict[str, Any], log: Log) -> dict[str, Any]:
    from edgeclf.profiles import load_profile

    profile = load_profile(opts.profile)
    here, why = host_is_target(profile)
    measure = here if opts.measure is None else opts.measure
    budget = opts.budget_ms or profile.budgets.latency_ms_p95
    if not measure:
        est = sel["latency_ms_p95_estimate"]
        log(f"benchmark: ESTIMATED for {profile.name} ({why}): p95 {est:.2f} ms")
        return {
            "source": "estimate",
            "why": why,
            "latency_ms_p95": est,
            "budget_ms": budget,
            "fits": est <= budget,
            "label": f"estimated by the cost model ({why}); measure on the device "
            "with `edgeclf bench` or `pytest benchmarks --benchmark-only`",
        }
    from edgeclf.runtime import Classifier

    frame = _frame()
    rows = []
    # The selected configuration (what the budget was checked against), then the runtime's
    # own default (`auto`: the fastest artifact it can run) when that is another artifact.
    backend = str(sel["runtime"]).split("/")[0]
    for want in ((backend, sel["precision"], "selected"), ("auto", "auto", "runtime default")):
        try:
            clf = Classifier(out / "bundle", backend=want[0], precision=want[1])
        except EdgeclfError as e:
            log(f"benchmark: {want[2]} configuration not runnable here: {e}")
            continue
        with clf:
            if any(r["artifact"] == clf.artifact and r["runtime"] == f"c-runtime/{clf.backend}" for r in rows):
                continue
            for _ in range(10):
                clf.classify(frame, top_k=5)
            ts = []
            for _ in range(100):
                t0 = time.perf_counter()
                clf.classify(frame, top_k=5)
                ts.append((time.perf_counter() - t0) * 1000)
            rows.append(
                {
                    "runtime": f"c-runtime/{clf.backend}",
                    "precision": clf.precision,
                    "artifact": clf.artifact,
                    "configuration": want[2],
                    "p50_ms": float(np.percentile(ts, 50)),
                    "p95_ms": float(np.percentile(ts, 95)),
                    "p99_ms": float(np.percentile(ts, 99)),
                }
            )
    if not rows:
        raise BuildError("benchmark: the C runtime could run no artifact of the bundle here")
    p95 = rows[0]["p95_ms"]
    log(f"benchmark: MEASURED on this host: p95 {p95:.2f} ms ({rows[0]['artifact']}, 640x480 frame -> top-5, C runtime)")
    return {
        "source": "measured",
        "why": why if here else "forced with --measure",
        "latency_ms_p95": p95,
        "budget_ms": budget,
        "fits": p95 <= budget,
        "rows": rows,
        "label": "measured on this host, end to end through the C runtime (640x480 RGB8 frame -> top-5)",
    }


def _runtime_files() -> Path:
    try:
        from edgeclf import _runtime
    except ImportError as e:
        raise BuildError(f"package: the C runtime is not built in this installation ({e})") from None
    return Path(_runtime.__file__).resolve().parent


DEVICE_README = """# {name}: edgeclf device package for {device}

Built {created} by `edgeclf build --profile {profile}`.

* Model: {backbone} at {resolution} px, classes: {labels}
* Chosen for {profile}: {justification}
* Latency (p95, batch 1): {latency:.2f} ms — {latency_label}
* Validation macro-F1 {val_f1}; test macro-F1 {test_f1} (test set evaluated once)

## Contents

* `bundle/` — `edgeclf.json` (labels, preprocessing, temperature, hashes), the artifacts, `parity.json`
{lib_line}
* `include/edgeclf/edgeclf.h` — the C API (and `edgeclf.hpp`, a C++ wrapper)
* `src/` — the runtime's sources (CMake project)
* `examples/classify.c` — classifies a JPEG, PNG, PPM/PGM or raw camera frame and prints the top 5;
  `examples/third_party/stb/` holds the single-header JPEG/PNG decoder it uses (stb_image, public
  domain or MIT); libedgeclf itself takes decoded pixels

## Build on the device

```sh
cmake -S src -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j
```

It prints the backends it found: ONNX Runtime needs its C headers (`-DEDGECLF_ORT_INCLUDE_DIR=...`;
the library is opened at run time) and OpenVINO its CMake package. Then, on an image file as it is:

```sh
./build/edgeclf_classify bundle image.jpg
{sample}```

A raw frame: `./build/edgeclf_classify bundle frame.yuv 640 480 NV12` (or RGB8, BGR8, RGBA8, BGRA8, GRAY8).
{trt}
## Use from C

```c
edgeclf_model* model; edgeclf_session* session;
edgeclf_model_load("bundle", NULL, &model);          /* verifies every file's SHA-256 */
edgeclf_session_create(model, &session);            /* one session per thread */
edgeclf_image frame = {{pixels, width, height, stride, EDGECLF_PIXEL_NV12, NULL, 0}};
edgeclf_class_score top[5]; size_t n;
edgeclf_classify(session, &frame, top, 5, &n);      /* n = min(5, classes) */
```
"""


EXAMPLE_CMAKE = """cmake_minimum_required(VERSION 3.18)
project(edgeclf_example C)
find_package(edgeclf REQUIRED)
add_executable(edgeclf_classify classify.c)
target_link_libraries(edgeclf_classify PRIVATE edgeclf::edgeclf)
target_include_directories(edgeclf_classify SYSTEM PRIVATE third_party/stb)
"""

PREBUILT_USE = """
## Use the prebuilt library (this architecture)

```sh
cmake -S examples -B build-example -DCMAKE_PREFIX_PATH=$PWD && cmake --build build-example
./build-example/edgeclf_classify bundle image.jpg
{sample}```

`lib/` holds libedgeclf and the inference libraries it needs, found through its `$ORIGIN`
RUNPATH: nothing else to install. `EDGECLF_ONNXRUNTIME_LIBRARY` points it at another ONNX
Runtime (a CUDA/TensorRT build, say).
"""

# Inference libraries copied next to libedgeclf in a same-architecture device package.
_OPENVINO_LIBS = (
    "libopenvino.so.*",
    "libopenvino_intel_cpu_plugin.so",
    "libopenvino_ir_frontend.so.*",
    "libtbb.so.*",
    "libtbbmalloc.so.*",
    "libhwloc.so.*",
)


def _relocate_cmake_package(cmake_dir: Path) -> None:
    """Rewrite the wheel's CMake package (prefix: site-packages, files under edgeclf/) for the
    device package's layout (prefix: the package folder, files at its top): one folder level
    less above lib/cmake/edgeclf. A file of another shape is an error, not a broken package."""
    step = 'get_filename_component(_IMPORT_PREFIX "${_IMPORT_PREFIX}" PATH)\n'
    config_prefix = '"${CMAKE_CURRENT_LIST_DIR}/../../../../"'
    for f in sorted(cmake_dir.glob("*.cmake")):
        text = f.read_text(encoding="utf-8").replace("${_IMPORT_PREFIX}/edgeclf/", "${_IMPORT_PREFIX}/")
        if step in text:  # a targets file: it computes the prefix
            if text.count(step) != 4:
                raise BuildError(f"package: {f.name} does not have the wheel's layout; cannot relocate it")
            text = text.replace(step, "", 1)
        elif f.name == "edgeclfConfig.cmake":
            if config_prefix not in text:
                raise BuildError(f"package: {f.name} does not have the wheel's layout; cannot relocate it")
            text = text.replace(config_prefix, '"${CMAKE_CURRENT_LIST_DIR}/../../../"')
        write_text(f, text)


def _bundle_backend_libraries(manifest: Any, lib: Path) -> list[str]:
    """Copy the inference libraries the bundle's artifacts need next to libedgeclf."""
    import importlib.util

    formats = {a.format for a in manifest.artifacts}
    done: list[str] = []
    if "onnx" in formats and (spec := importlib.util.find_spec("onnxruntime")) and spec.origin:
        libs = sorted((Path(spec.origin).parent / "capi").glob("libonnxruntime.so*"))
        libs = [p for p in libs if "providers" not in p.name]
        if libs:
            shutil.copy2(libs[-1], lib / libs[-1].name)
            done.append("onnxruntime")
    if "openvino" in formats and (spec := importlib.util.find_spec("openvino")) and spec.origin:
        src = Path(spec.origin).parent / "libs"
        for pattern in _OPENVINO_LIBS:
            for p in sorted(src.glob(pattern)):
                shutil.copy2(p, lib / p.name)
        done.append("openvino")
    return done  # libedgeclf's RUNPATH has $ORIGIN (cpp/CMakeLists.txt): it finds them there


def _stage_package(
    opts: BuildOptions, out: Path, sel: dict[str, Any], ev: dict[str, Any], bench: dict[str, Any]
) -> dict[str, Any]:
    from edgeclf.export.bundle import read_bundle
    from edgeclf.profiles import load_profile

    profile = load_profile(opts.profile)
    pkg = _runtime_files()
    manifest = read_bundle(out / "bundle", verify=True)
    same_arch = profile.cpu.arch == platform.machine().lower() or (
        profile.cpu.arch in ("x86_64", "x86-64", "amd64") and platform.machine().lower() in ("x86_64", "amd64")
    )
    name = f"{Path(opts.out).name}-{profile.name}"
    tmp = Path(tempfile.mkdtemp(prefix=".package.", dir=out))
    root = tmp / name
    shutil.copytree(out / "bundle", root / "bundle")
    shutil.copytree(pkg / "include", root / "include")
    src = pkg / "cpp-src"
    shutil.copytree(src, root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "examples").mkdir()
    shutil.copy(src / "examples" / "classify.c", root / "examples" / "classify.c")
    stb = src / "third_party" / "stb"  # the example's JPEG/PNG decoder and its licence
    if not (stb / "stb_image.h").is_file():
        raise BuildError(
            f"package: {stb / 'stb_image.h'} (the C example's image decoder) is missing from this "
            "installation's runtime sources; reinstall edgeclf"
        )
    shutil.copytree(stb, root / "examples" / "third_party" / "stb")
    # A test image of the data set, for the README's second command line (JPEG first: the
    # example reads the file as it is, as `edgeclf predict` does).
    import shlex

    from edgeclf.data.manifest import read_manifest

    try:
        tests = read_manifest(out / "splits.csv").split_rows("test")
    except EdgeclfError:
        tests = []
    rank = {".jpg": 0, ".jpeg": 0, ".png": 1, ".ppm": 2, ".pgm": 2}
    tests = sorted(
        (r for r in tests if Path(r.path).suffix.lower() in rank), key=lambda r: (rank[Path(r.path).suffix.lower()], r.path)
    )
    shown = (
        (
            f"bundle {shlex.quote(f'{Path(opts.data_dir).name}/{tests[0].path}')}   "
            f"# a test image of the data set (labelled {tests[0].label}), copied over\n"
        )
        if tests
        else ""
    )

    def sample(exe: str) -> str:
        return f"{exe} {shown}" if shown else ""

    if same_arch:
        (root / "lib").mkdir()
        for f in sorted((pkg / "lib").glob("libedgeclf*")):
            if f.is_symlink():
                os.symlink(os.readlink(f), root / "lib" / f.name)
            else:
                shutil.copy2(f, root / "lib" / f.name)
        shutil.copytree(pkg / "lib" / "cmake", root / "lib" / "cmake")
        _relocate_cmake_package(root / "lib" / "cmake" / "edgeclf")
        backends = _bundle_backend_libraries(manifest, root / "lib")
        lib_line = (
            f"* `lib/` — libedgeclf built for {platform.machine()} (shared + static), its CMake package "
            "(`find_package(edgeclf)` with `-DCMAKE_PREFIX_PATH=<this folder>`) and the inference "
            f"libraries it runs the bundle with ({', '.join(backends) or 'none'}; RUNPATH `$ORIGIN`)"
        )
        (root / "examples" / "CMakeLists.txt").write_text(EXAMPLE_CMAKE, encoding="utf-8")
        prebuilt = PREBUILT_USE.format(sample=sample("./build-example/edgeclf_classify"))
    else:
        lib_line = (
            f"* no prebuilt library: this host is {platform.machine()}, the device is {profile.cpu.arch}; "
            "build it from `src/` (one line below)"
        )
        prebuilt = ""
    trt = ""
    for a in json.loads((out / "bundle" / "parity.json").read_text(encoding="utf-8")).get("artifacts", []):
        cmd = (a.get("details") or {}).get("trt_command")
        if cmd:
            cal = (a.get("details") or {}).get("trt_calibration_command")
            if cal:
                trt += (
                    "\nTensorRT int8: first the calibration cache, with TensorRT's entropy calibrator over "
                    "`model.calib.npy` (the calibration batch, preprocessed; needs the `tensorrt` Python "
                    f"package and edgeclf on the device), in `bundle/`:\n\n```sh\n{cal}\n```\n\nthen the engine:\n"
                )
            else:
                trt += f"\nTensorRT {a['precision']} engine (build it on the device, in `bundle/`):\n"
            trt += f"\n```sh\n{cmd}\n```\n"
    test = ev.get("test", {}) or {}
    val = ev.get("val", {}) or {}
    write_text(
        root / "README.md",
        DEVICE_README.format(
            name=name,
            device=profile.device,
            created=datetime.now(timezone.utc).date().isoformat(),
            profile=profile.name,
            backbone=sel["backbone"],
            resolution=sel["resolution"],
            labels=", ".join(manifest.labels),
            justification=sel["justification"],
            latency=bench["latency_ms_p95"],
            latency_label=bench["label"],
            val_f1=_fmt(val.get("macro_f1")),
            test_f1=_fmt(test.get("macro_f1")),
            lib_line=lib_line,
            sample=sample("./build/edgeclf_classify"),
            trt=trt + prebuilt,
        ),
    )
    tar_tmp = out / f".{name}.tar.gz.tmp"
    with tarfile.open(tar_tmp, "w:gz") as tar:
        tar.add(root, arcname=name)
    final = out / f"{name}.tar.gz"
    os.replace(tar_tmp, final)
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "package": final.name,
        "sha256": sha256_file(final),
        "size_mb": round(final.stat().st_size / 1e6, 2),
        "prebuilt_library": same_arch,
    }


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "n/a"


def _stage_report(opts: BuildOptions, out: Path, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    sel = json.loads((out / "selection.json").read_text(encoding="utf-8"))
    b = results["benchmark"]
    lines = [
        f"# edgeclf build: {opts.profile}",
        "",
        f"Data: `{opts.data_dir}` — {results['audit'].get('num_images')} images, {results['audit'].get('num_classes')} classes; "
        f"split fingerprint `{results['split']['fingerprint'][:16]}`.",
        "",
        "## Backbone selection",
        "",
        f"Budgets: p95 {sel['budgets']['latency_ms_p95']} ms, memory {sel['budgets']['memory_mb']} MB, "
        f"file {sel['budgets']['model_file_mb']} MB. Choice: **{sel['choice']['backbone']} at "
        f"{sel['choice']['resolution']} px, {sel['choice']['precision']} on {sel['choice']['runtime']}** — "
        f"{sel['justification']}",
        "",
        f"Accuracy rule: {sel['accuracy_rule']}",
        "",
        "Per backbone, its best configuration under the budgets (the most accurate that fits; "
        "the closest to fitting when none does), and its native-resolution fp32 cost for scale. "
        f"All {len(sel['candidates'])} configurations (resolution x runtime x precision) are in `selection.json`.",
        "",
        "| backbone | weights here | fp32 @ native: p95 ms / MB / file MB | best configuration | p95 ms | "
        "memory MB | file MB | accuracy % | fits (configs) | why not |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_backbone: dict[str, list[dict[str, Any]]] = {}
    for c in sel["candidates"]:
        by_backbone.setdefault(c["backbone"], []).append(c)
    chosen = sel["choice"]
    for name, rows in by_backbone.items():
        fit = [c for c in rows if c["fits"]]
        best = (
            min(fit, key=lambda c: (-(c["accuracy"] or 0.0), c["latency_ms_p95"]))
            if fit
            else min(rows, key=lambda c: c["overshoot"])
        )
        if name == chosen["backbone"]:
            best = next((c for c in rows if all(c[k] == chosen[k] for k in ("resolution", "runtime", "precision"))), best)
        native = next((c for c in rows if c["resolution"] == c["native_resolution"] and c["precision"] == "fp32"), rows[0])
        mark = " **(chosen)**" if name == chosen["backbone"] else ""
        lines.append(
            f"| {name}{mark} | {'yes' if best['weights_here'] else 'no'} | "
            f"{native['latency_ms_p95']:.2f} / {native['memory_mb']:.0f} / {native['file_mb']:.1f} | "
            f"{best['resolution']} px {best['precision']} {best['runtime']} | "
            f"{best['latency_ms_p95']:.2f} ({best['latency_source']}) | {best['memory_mb']:.0f} | "
            f"{best['file_mb']:.1f} | {_fmt1(best['accuracy'])} | {'yes' if best['fits'] else 'no'} "
            f"({len(fit)}/{len(rows)}) | "
            f"{best.get('reason') or ('no pretrained weights here' if not best['weights_here'] else '')} |"
        )
    lines += [
        "",
        f"<details><summary>All {len(sel['candidates'])} candidate configurations</summary>",
        "",
        "| backbone | px | runtime | precision | p95 ms | memory MB | file MB | accuracy % | fits | why not |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {c['backbone']} | {c['resolution']} | {c['runtime']} | {c['precision']} | "
        f"{c['latency_ms_p95']:.2f} ({c['latency_source']}) | {c['memory_mb']:.0f} | {c['file_mb']:.1f} | "
        f"{_fmt1(c['accuracy'])} | {'yes' if c['fits'] else 'no'} | {c.get('reason') or ''} |"
        for c in sel["candidates"]
    ]
    lines += ["", "</details>"]
    t = results["train"]
    e = results["evaluate"]
    lines += [
        "",
        "## Training and evaluation",
        "",
        f"Shipped: **{t.get('candidate') or 'finetune'}**, validation macro-F1 {_fmt(t.get('val_macro_f1'))}"
        + (f" (epoch {t['best_epoch']})" if t.get("best_epoch") else "")
        + _fmt_ci(e.get("val_ci"))
        + ".",
        f"Test (touched once): accuracy {_fmt(e['test'].get('accuracy'))}, macro-F1 {_fmt(e['test'].get('macro_f1'))}"
        + _fmt_ci(e.get("test_ci"))
        + ". Full report: `run/report/index.html`.",
        "",
    ]
    cands = t.get("candidates") or {}
    if cands:
        lines += ["| candidate (validation) | macro-F1 | shipped |", "|---|---|---|"]
        lines += [f"| {name} | {_fmt(f1)} | {'**yes**' if name == t.get('candidate') else ''} |" for name, f1 in cands.items()]
        picked = t.get("selection") or {}
        lines += ["", f"Rule: {picked.get('rule', '')}. {picked.get('reason', '')}.", ""]
    weak = weak_classes(t)
    if weak:
        lines += [
            f"**Quality gate every_class_recalled FAILED:** the shipped model never predicts {', '.join(weak)} on "
            "validation. The bundle is written, but the registry will not promote it.",
            "",
        ]
    search = sel.get("search")
    if search:
        lines += [
            f"Recipe search ({search['sampler']}, {search['pruner']}): {len(search['trials'])} trials in "
            f"{search['seconds']:.0f} s of a {search['time_budget_s']:.0f} s budget; trial {search['best_trial']} "
            "shipped. Chosen on validation macro-F1 only; no trial saw the test split.",
            "",
            "| trial | state | settings | val macro-F1 [95 % CI] | shipped candidate | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for tr in search["trials"]:
            ci = tr.get("val_macro_f1_ci")
            f1 = (f"{tr['val_macro_f1']:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")) if "val_macro_f1" in tr else "—"
            conf = ", ".join(
                f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                for k, v in (tr.get("config") or tr["params"]).items()
            )
            lines.append(f"| {tr['trial']} | {tr['state']} | {conf} | {f1} | {tr.get('shipped', '')} | {tr['seconds']:.0f} |")
        lines += [""]
    if t.get("recipe"):
        lines += ["Automatic recipe choices (the training data's rules; a user's setting always wins):", ""]
        lines += [f"- `{c['key']}: {c['value']}` — {c['source']}: {c['reason']}" for c in t["recipe"]]
        lines += [""]
    dec = results["evaluate"].get("decision")
    if dec:
        lines += _decision_lines(dec)
    has_dec = any(r.get("decision_agreement") is not None for r in results["export"]["parity"])
    lines += [
        "## Export and parity",
        "",
        "| artifact | precision | status | size MB | macro-F1 | Δ vs eager | agreement | ms/img |"
        + (" decisions vs eager | C = Python decisions |" if has_dec else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if has_dec else ""),
    ]
    for r in results["export"]["parity"]:
        lines.append(
            f"| {r['format']} | {r['precision']} | {r['status']} | {_fmt2(r['size_mb'])} | {_fmt(r['macro_f1'])} | "
            f"{_fmt(r['delta_macro_f1'])} | {_fmt(r['agreement'])} | {_fmt2(r['ms_per_image'])} |"
            + (f" {_fmt(r.get('decision_agreement'))} | {_fmt(r.get('decision_match'))} |" if has_dec else "")
        )
    lines += [
        "",
        "## Latency on the target",
        "",
        f"p95 **{b['latency_ms_p95']:.2f} ms** vs budget {b['budget_ms']} ms — "
        f"{'fits' if b['fits'] else 'OVER BUDGET'}. Source: **{b['source'].upper()}** — {b['label']}"
        + (
            f" (the selected artifact `{b['rows'][0]['artifact']}`, {b['rows'][0]['precision']}, "
            f"{b['rows'][0]['runtime']}; p50 {b['rows'][0]['p50_ms']:.2f} ms)"
            if b.get("rows")
            else ""
        )
        + ".",
        "",
    ]
    if b["source"] == "measured":
        lines += [
            f"The selection's {sel['choice']['latency_source']} for this configuration was "
            f"{sel['choice']['latency_ms_p95']:.2f} ms (the model alone, on the profile's nominal device); "
            "the measurement includes the preprocessing of a 640x480 frame and this host's own speed.",
            "",
        ]
    if len(b.get("rows") or []) > 1:
        lines += [
            "| configuration | runtime | artifact | precision | p50 ms | p95 ms | p99 ms |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.get('configuration', '')} | {r['runtime']} | `{r['artifact']}` | {r['precision']} | "
            f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} |"
            for r in b["rows"]
        ]
        lines += [""]
    lines += [f"Device package: `{results['package']['package']}` ({results['package']['size_mb']} MB).", ""]
    write_text(out / "report.md", "\n".join(lines))
    summary = {
        "profile": opts.profile,
        "choice": sel["choice"],
        "benchmark": b,
        "package": results["package"],
        "test": e["test"],
        "val": e["val"],
    }
    write_json(out / "build.json", summary)
    return {"report": "report.md", "summary": "build.json"}


def _decision_lines(dec: dict[str, Any]) -> list[str]:
    """The decision policy's operating point next to argmax, validation and test (touched once)."""
    lines = [
        "## Decision policy",
        "",
        f"Policy **{dec.get('describe')}**, fitted on validation only; the C runtime "
        "applies it on the device (`edgeclf_classify_decision`).",
        "",
    ]
    splits = [s for s in ("val", "test") if s in dec]
    if not splits:
        return [*lines, "No split was evaluated with this policy.", ""]
    classes = list(dec[splits[0]]["recall"])
    head = "| figure | " + " | ".join(f"{s} policy | {s} argmax" for s in splits) + " |"
    lines += [head, "|---|" + "---|---|" * len(splits)]
    for key, label in (
        ("macro_f1", "macro-F1"),
        ("accuracy", "accuracy"),
        ("coverage", "coverage"),
        ("selective_accuracy", "selective accuracy"),
    ):
        lines.append(
            f"| {label} | " + " | ".join(f"{_fmt(dec[s].get(key))} | {_fmt(dec[s]['argmax'].get(key))}" for s in splits) + " |"
        )
    for c in classes:
        lines.append(
            f"| recall {c} | "
            + " | ".join(f"{_fmt(dec[s]['recall'][c])} | {_fmt(dec[s]['argmax']['recall'][c])}" for s in splits)
            + " |"
        )
    for s in splits:
        o = dec[s].get("ood")
        if o:
            lines.append(
                f"\nOut-of-distribution ({s} half of {o.get('dir')}, {o['ood_images']} images): AUROC "
                f"{o['auroc']:.4f}, FPR at 95 % TPR {o['fpr_at_95_tpr']:.4f}"
                + (f", answered unknown {o['ood_unknown_rate']:.1%}" if "ood_unknown_rate" in o else "")
                + "."
            )
    return [*lines, ""]


def _fmt_ci(ci: Any) -> str:
    m = (ci or {}).get("macro_f1") if isinstance(ci, dict) else None
    return f" (95 % CI {m['low']:.3f}–{m['high']:.3f})" if isinstance(m, dict) and m.get("low") is not None else ""


def _fmt1(v: Any) -> str:
    return f"{v:.1f}" if isinstance(v, (int, float)) else "n/a"


def _fmt2(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) else "—"


def build(
    opts: BuildOptions,
    log: Log | None = None,
    on_stage: Callable[[str, str], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run (or resume) every stage; returns each stage's result and how it ran."""
    from edgeclf.profiles import load_profile

    log = log or (lambda s: None)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.profile == "auto":
        opts.profile = host_profile()
        log(f"profile auto: this host is a {opts.profile}")
    profile = load_profile(opts.profile)  # fail early on a bad name
    opts.profile = profile.name
    data_dir = resolve_data(opts.data_dir, out, log)
    opts.data_dir = data_dir
    stages = Stages(out, log, on_stage)
    r: dict[str, dict[str, Any]] = {}
    data_key = data_listing_key(data_dir)
    try:
        r["audit"] = stages.run("audit", {"data": data_key}, [out / "audit"], lambda: _stage_audit(data_dir, out))
        r["split"] = stages.run(
            "split", {"data": data_key, "seed": opts.seed}, [out / "splits.csv"], lambda: _stage_split(data_dir, out, opts.seed)
        )
        from edgeclf.select import load_calibration

        cal = load_calibration()
        r["select"] = stages.run(
            "select",
            {
                "profile": profile.to_json_dict(),
                "budget_ms": opts.budget_ms,
                "backbones": opts.backbones,
                "measure": bool(opts.measure),
                "calibration": cal.model_dump(mode="json") if cal is not None else None,
            },
            [out / "selection.json"],
            lambda: _stage_select(opts, out, log),
        )
        train_key = {
            "split": r["split"]["fingerprint"],
            "backbone": r["select"]["backbone"],
            "resolution": opts.image_size or r["select"]["resolution"],
            "config": _file_key(opts.config),
            "epochs": opts.epochs,
            "batch_size": opts.batch_size,
            "seed": opts.seed,
            "extra": opts.extra_train,
            "time_budget_s": opts.time_budget_s,
            "max_resolution": r["select"].get("max_resolution"),
            "recipe_version": 2,
        }
        if opts.image_size:
            r["select"] = {
                **r["select"],
                "resolution": opts.image_size,
                "justification": r["select"]["justification"] + f" Trained at {opts.image_size} px (--image-size).",
            }
        r["train"] = stages.run(
            "train",
            train_key,
            [out / "run" / "checkpoints" / "best.pt"],
            lambda: _stage_train(opts, out, r["select"], log, progress),
        )
        best = out / "run" / "checkpoints" / "best.pt"
        if sha256_file(best) != r["train"]["checkpoint_sha256"]:  # a cached stage's output is data too
            raise BuildError(
                f"train: {best} does not match the SHA-256 recorded when it was trained "
                f"({r['train']['checkpoint_sha256'][:12]}...): the file is damaged; restore it or delete "
                f"{out / 'stages' / 'train.json'} to train again"
            )
        trained_at = r["train"].get("image_size") or r["select"]["resolution"]
        trained = r["train"].get("backbone") or r["select"]["backbone"]
        if (trained, trained_at) != (r["select"]["backbone"], r["select"]["resolution"]):
            r["select"] = _select_at(out, r["select"], int(trained_at), trained)
        ck = r["train"]["checkpoint_sha256"]
        decision_key = opts.decision.key() if opts.decision is not None else None
        r["evaluate"] = stages.run(
            "evaluate",
            {"checkpoint": ck, "robustness": opts.robustness, "decision": decision_key},
            [out / "run" / "report" / "index.html"],
            lambda: _stage_evaluate(opts, out, log),
        )
        r["export"] = stages.run(
            "export",
            {"checkpoint": ck, "profile": profile.name, "calibration_images": opts.calibration_images, "decision": decision_key},
            [out / "bundle" / "edgeclf.json"],
            lambda: _stage_export(opts, out, log),
        )
        bundle_key = _file_key(out / "bundle" / "edgeclf.json")
        r["benchmark"] = stages.run(
            "benchmark",
            {
                "bundle": bundle_key,
                "measure": opts.measure,
                "budget_ms": opts.budget_ms,
                "selected": [r["select"]["runtime"], r["select"]["precision"]],
                "host": platform.node() if opts.measure is not False else None,
            },
            [],
            lambda: _stage_benchmark(opts, out, r["select"], log),
        )
        # the package's own layout (README, example, its decoder) is part of its key: an upgrade re-packages
        layout = _key(
            [DEVICE_README, PREBUILT_USE, EXAMPLE_CMAKE, _file_key(_runtime_files() / "cpp-src" / "examples" / "classify.c")]
        )
        r["package"] = stages.run(
            "package",
            {"bundle": bundle_key, "benchmark": r["benchmark"], "version": _runtime_version(), "layout": layout},
            [out / f"{out.name}-{profile.name}.tar.gz"],
            lambda: _stage_package(opts, out, r["select"], r["evaluate"], r["benchmark"]),
        )
        r["report"] = stages.run(
            "report", {"all": _key({k: v for k, v in r.items()})}, [out / "report.md"], lambda: _stage_report(opts, out, r)
        )
    except EdgeclfError as e:
        stage = next((s for s in STAGES if s not in r), "build")
        raise BuildError(f"{stage}: {e}") from e
    return {
        "out": str(out),
        "stages": [{"stage": s.name, "status": s.status, "seconds": round(s.seconds, 1)} for s in stages.records],
        "results": r,
    }


def weak_classes(train_result: dict[str, Any]) -> list[str]:
    """Classes the shipped candidate never recalls on validation (the every_class_recalled gate)."""
    gate = (train_result.get("quality_gates") or {}).get("every_class_recalled") or {}
    return list(gate.get("classes") or []) if gate.get("passed") is False else []


def _runtime_version() -> str:
    try:
        from edgeclf import _runtime

        return str(_runtime.version())
    except ImportError:
        return "none"
