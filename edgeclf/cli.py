"""The ``edgeclf`` command line: parses, calls the library, renders with rich.

User errors (:class:`edgeclf.errors.EdgeclfError`) end in one red line on
stderr and exit code 1; ``--json`` prints exactly one JSON document on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from edgeclf.errors import EdgeclfError

app = typer.Typer(
    name="edgeclf",
    help="From a folder of labelled images to a calibrated classifier running inside an edge device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Audit and split image folders.", no_args_is_help=True)
profiles_app = typer.Typer(help="Hardware profiles: the devices edgeclf builds for.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(profiles_app, name="profiles")

out = Console()
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout and nothing else there.")]


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


@contextmanager
def _progress(label: str, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr (elapsed time and ETA); yields a ``(done, total, step=None)``
    callback: ``step`` names what is running now (a new step restarts the bar and its ETA)."""
    if not enabled or not err.is_terminal:
        yield lambda done, total, step=None: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as prog:
        task = prog.add_task(label, total=None)
        current = [label]

        def update(done: int, total: int, step: str | None = None) -> None:
            if step is not None and step != current[0]:
                current[0] = step
                prog.reset(task, description=step, total=total, completed=done)
                return
            prog.update(task, completed=done, total=total)

        yield update


# ----------------------------------------------------------------------------- data


def _render_audit(report: Any, out_dir: Path | None) -> None:
    t = Table(title=f"{report.data_dir}: {report.num_images:,} images in {len(report.classes)} classes")
    t.add_column("class")
    t.add_column("images", justify="right")
    t.add_column("share", justify="right")
    for c in report.classes:
        share = c.images / report.num_images if report.num_images else 0.0
        t.add_row(c.name, f"{c.images:,}", f"{share:.1%}")
    out.print(t)
    ratio = f"{report.imbalance_ratio:.2f}" if report.imbalance_ratio is not None else "n/a"
    out.print(f"imbalance ratio (largest / smallest class): [bold]{ratio}[/]")
    out.print(f"modes: {report.modes}   formats: {report.formats}")
    if report.sizes:
        s = report.sizes
        out.print(
            f"sizes: width {s.width_min}..{s.width_max} (median {s.width_median:g}), "
            f"height {s.height_min}..{s.height_max} (median {s.height_median:g}), "
            f"{s.distinct_sizes} distinct, most common {s.most_common_size}"
        )
    n_exact = sum(len(e.paths) - 1 for e in report.exact_duplicates)
    out.print(
        f"exact duplicates: {len(report.exact_duplicates)} sets ({n_exact} redundant files); "
        f"near-duplicate pairs (pHash <= {report.near_duplicate_max_bits} bits): {len(report.near_duplicates)}; "
        f"label conflicts: [bold]{report.label_conflicts}[/]"
    )
    for title, items, style in (
        ("unreadable (skipped)", report.unreadable, "red"),
        ("warnings", report.warnings, "yellow"),
        ("ignored", report.ignored, "dim"),
    ):
        if items:
            out.print(f"[{style}]{title}: {len(items)}[/]")
            for p in items[:20]:
                out.print(f"  [{style}]{p.path}[/]: {p.reason}")
            if len(items) > 20:
                out.print(f"  ... {len(items) - 20} more in audit.json")
    if report.empty_classes:
        out.print(f"[red]empty classes: {', '.join(report.empty_classes)}[/]")
    if out_dir is not None:
        out.print(f"wrote {out_dir / 'audit.json'} and {len(report.sample_grids)} sample grids in {out_dir / 'samples'}")


@data_app.command("audit")
def data_audit(
    data_dir: Annotated[Path, typer.Argument(help="ImageFolder tree: one sub-folder per class.")],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write audit.json and samples/<class>.png here.")] = None,
    near_dup_bits: Annotated[
        int | None, typer.Option(help="Max pHash Hamming distance (of 64 bits) for near-duplicates.")
    ] = None,
    grid: Annotated[int, typer.Option(help="Images per class in each sample grid.")] = 16,
    seed: Annotated[int, typer.Option(help="Seed for choosing sample-grid images.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Classes, counts, imbalance, unreadable files, modes and sizes, duplicates, label conflicts."""
    from edgeclf.data.audit import audit

    with _progress("decoding + hashing", not as_json) as cb:
        report = audit(data_dir, out_dir, near_duplicate_bits=near_dup_bits, grid_per_class=grid, seed=seed, progress=cb)
    if as_json:
        _print_json(report.model_dump(mode="json"))
    else:
        _render_audit(report, out_dir)


def _render_split(summary: Any) -> None:
    counts = summary.counts
    labels = list(next(iter(counts.values())).keys())
    t = Table(title=f"{summary.manifest}: {summary.images:,} images, {summary.groups:,} duplicate-free groups")
    t.add_column("class")
    for s in counts:
        t.add_column(s, justify="right")
    for lab in labels:
        t.add_row(lab, *(f"{counts[s][lab]:,}" for s in counts))
    t.add_row("[bold]total", *(f"[bold]{sum(counts[s].values()):,}" for s in counts))
    out.print(t)
    for cls, why in summary.dropped_classes.items():
        out.print(f"[yellow]dropped {cls}[/]: {why}")
    out.print(
        f"near-duplicate pairs across splits: [bold green]{summary.cross_split_duplicate_pairs}[/] "
        f"(a naive random split would have leaked {summary.naive_random_split_duplicate_pairs})"
    )
    out.print(f"data set fingerprint: [bold]{summary.fingerprint}[/]")


@data_app.command("split")
def data_split(
    data_dir: Annotated[Path, typer.Argument(help="ImageFolder tree: one sub-folder per class.")],
    manifest: Annotated[Path, typer.Option("--out", help="Manifest CSV to write (path,label,sha256,group,split).")],
    val: Annotated[float, typer.Option(help="Fraction of each class for validation.")] = 0.15,
    test: Annotated[float, typer.Option(help="Fraction of each class for the test set.")] = 0.15,
    seed: Annotated[int, typer.Option(help="Seed of the group order; same seed, same manifest.")] = 0,
    drop_small_classes: Annotated[
        bool, typer.Option(help="Leave out classes too small for every split instead of failing.")
    ] = False,
    near_dup_bits: Annotated[
        int | None, typer.Option(help="Max pHash Hamming distance (of 64 bits) for near-duplicates.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Stratified, duplicate-grouped train/val/test split; writes the manifest and its fingerprint."""
    from edgeclf.data.split import SplitConfig, split_folder

    cfg = SplitConfig(val=val, test=test, seed=seed, drop_small_classes=drop_small_classes)
    with _progress("decoding + hashing", not as_json) as cb:
        summary = split_folder(data_dir, manifest, cfg, near_duplicate_bits=near_dup_bits, progress=cb)
    if as_json:
        _print_json(summary.model_dump(mode="json"))
    else:
        _render_split(summary)


@data_app.command("elpv")
def data_elpv(
    out_dir: Annotated[Path, typer.Argument(help="Folder to lay the elpv data set out in (one sub-folder per class).")],
) -> None:
    """Lay out the elpv solar-cell data set (PyPI elpv-dataset) as an ImageFolder tree."""
    from edgeclf.data.datasets import materialize_elpv

    path = materialize_elpv(out_dir)
    out.print(f"elpv data set ready in {path}")


# ----------------------------------------------------------------------------- profiles


@profiles_app.command("list")
def profiles_list(as_json: JsonOpt = False) -> None:
    """The built-in hardware profiles."""
    from edgeclf.profiles import profile_summaries

    rows = [s.model_dump(mode="json") for s in profile_summaries()]
    if as_json:
        _print_json(rows)
        return
    t = Table(title="hardware profiles")
    for col in rows[0] if rows else []:
        t.add_column(col.replace("_", " "))
    for r in rows:
        t.add_row(*(", ".join(v) if isinstance(v, list) else str(v) for v in r.values()))
    out.print(t)


@profiles_app.command("show")
def profiles_show(
    name: Annotated[str, typer.Argument(help="A built-in profile name, or the path of a profile YAML file.")],
    as_json: JsonOpt = False,
) -> None:
    """Every field of one hardware profile (validated)."""
    from edgeclf.profiles import load_profile

    prof = load_profile(name)
    doc = prof.model_dump(mode="json")
    if as_json:
        _print_json(doc)
        return
    import yaml

    out.print(f"[bold]{prof.name}[/]: {prof.device}")
    out.print(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).rstrip())


@contextmanager
def _log_to_stderr(name: str) -> Iterator[None]:
    """Show the INFO log of logger ``name`` (a long measurement's progress) on stderr."""
    import logging

    logger = logging.getLogger(name)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _refuse_measuring_options(mode: str, *given: tuple[str, object]) -> None:
    """Options that only apply when measuring, given with a mode that does not measure: one clear error."""
    names = [name for name, value in given if value is not None]
    if names:
        raise typer.BadParameter(f"{', '.join(names)} apply to measuring, not to {mode}")


def _int_list(option: str, value: str | None) -> list[int] | None:
    """A comma list of integers; None when the option is not given, [] for an empty one."""
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option} {value!r}: expected integers such as 224,160") from None


@profiles_app.command("calibrate")
def profiles_calibrate(
    out_file: Annotated[Path, typer.Option("--out", help="Profile YAML file to write (.yaml or .yml).")],
    name: Annotated[
        str | None, typer.Option(help="Profile name (a slug such as my-device); default: from the host name.")
    ] = None,
    base: Annotated[
        str | None, typer.Option(help="Copy the budgets from this profile (a built-in name or a profile YAML file).")
    ] = None,
    latency_ms: Annotated[
        float | None, typer.Option("--latency-ms", help="p95 latency budget at batch 1, ms (default: 50, or the base's).")
    ] = None,
    memory_mb: Annotated[
        float | None,
        typer.Option("--memory-mb", help="Peak memory budget, MB (default: 1024 but at most half the RAM, or the base's)."),
    ] = None,
    file_mb: Annotated[
        float | None, typer.Option("--file-mb", help="Model file budget, MB (default: 100, or the base's).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Intra-op threads the profile assumes (default: one per physical core).")
    ] = None,
    runtimes: Annotated[
        str | None, typer.Option(help="Comma list of onnxruntime, openvino (default: both where installed).")
    ] = None,
    measure_backbones: Annotated[
        bool,
        typer.Option(
            "--measure-backbones",
            help="Also export and time a few real backbones here and fit the cost model's efficiency factors "
            "(minutes); without it they are copied from the stored calibration.",
        ),
    ] = False,
    backbones: Annotated[
        str | None, typer.Option(help="With --measure-backbones: comma list of backbones to time (default: four).")
    ] = None,
    seconds: Annotated[
        float, typer.Option(min=0.1, help="With --measure-backbones: timed seconds per model file and pass.")
    ] = 1.0,
    as_json: JsonOpt = False,
) -> None:
    """Measure this device (GEMM rate, memory bandwidth, cores, ISA, RAM) and write its hardware profile.

    Use the file with `edgeclf build --profile FILE`: the cost model then estimates from this
    device's measured figures instead of a built-in profile's nominal ones."""
    from edgeclf.bench.device_profile import calibrate_profile

    if backbones is not None and not measure_backbones:
        raise typer.BadParameter("--backbones applies with --measure-backbones")
    with _log_to_stderr("edgeclf.select"):
        res = calibrate_profile(
            out_file,
            name=name,
            base=base,
            latency_ms=latency_ms,
            memory_mb=memory_mb,
            file_mb=file_mb,
            threads=threads,
            runtimes=_csv_list(runtimes),
            measure_backbones=measure_backbones,
            backbones=_csv_list(backbones),
            seconds_per_point=seconds,
        )
    prof = res.profile
    if as_json:
        _print_json(res.to_json_dict())
        return
    c, b = prof.compute, prof.budgets
    t = Table(title=f"{res.path}: profile {prof.name}")
    t.add_column("figure")
    t.add_column("value")
    t.add_row("CPU", f"{prof.cpu.model} ({prof.cpu.arch}), {prof.cpu.cores} cores / {prof.cpu.hardware_threads} threads")
    t.add_row("ISA features", ", ".join(prof.cpu.isa_features) or "–")
    t.add_row("fp32 GEMM (measured)", f"{res.host.gemm_gflops:g} GFLOP/s at {c.threads} threads")
    t.add_row("peak fp32 / int8", f"{c.peak_fp32_gflops:g} GFLOP/s / {c.peak_int8_gops:g} GOP/s")
    t.add_row("memory bandwidth (measured)", f"{c.memory_bandwidth_gb_per_s:g} GB/s")
    t.add_row("effective clock", f"{prof.cpu.max_freq_ghz:g} GHz")
    t.add_row("RAM", f"{prof.memory.ram_gb:g} GB")
    t.add_row("runtimes", ", ".join(f"{rt.label} ({', '.join(rt.precisions)})" for rt in prof.runtimes))
    t.add_row("budgets", f"p95 {b.latency_ms_p95:g} ms, memory {b.memory_mb:g} MB, file {b.model_file_mb:g} MB")
    t.add_row("efficiency factors", prof.cost_model.origin if prof.cost_model else "–")
    out.print(t)
    for note in res.notes:
        out.print(f"[yellow]note:[/] {note}", highlight=False)
    out.print(f"wrote {res.path}; use it with `edgeclf build --profile {res.path}`", soft_wrap=True, highlight=False)


@profiles_app.command("calibrate-costmodel")
def profiles_calibrate_costmodel(
    backbones: Annotated[str | None, typer.Option(help="Comma list of backbones (default: every registered one).")] = None,
    resolutions: Annotated[
        str | None, typer.Option(help="Comma list of fp32 resolutions besides each native one (default: 192,128).")
    ] = None,
    int8_resolutions: Annotated[
        str | None,
        typer.Option(
            "--int8-resolutions", help="Comma list of resolutions also measured at int8, '' for none (default: 224,160)."
        ),
    ] = None,
    runtimes: Annotated[
        str | None, typer.Option(help="Comma list of onnxruntime, openvino (default: both where installed).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Intra-op threads (default: every CPU this process may use).")
    ] = None,
    seconds: Annotated[float, typer.Option(min=0.1, help="Timed seconds per model file and pass.")] = 1.0,
    passes: Annotated[int | None, typer.Option(min=1, help="Timing passes; each file keeps its quietest (default: 2).")] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="calibration.json to write (default: the one edgeclf reads).")
    ] = None,
    validation_out: Annotated[
        Path | None, typer.Option("--validation-out", help="validation.json to write (default: next to edgeclf's calibration).")
    ] = None,
    work_dir: Annotated[Path | None, typer.Option("--work-dir", help="Keep (and reuse) the model files here.")] = None,
    validate_only: Annotated[
        bool,
        typer.Option("--validate-only", "--validate", help="Only recompute the estimated-vs-measured table of a calibration."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Calibrate the cost model on this host: time the backbones, fit its factors, store calibration.json.

    Prints the estimated-vs-measured table (validation.json). Takes long: every backbone is exported
    and timed at several resolutions, each in its own process, on (mostly) idle CPUs."""
    from edgeclf.bench.calibrate import calibrate_cost_model
    from edgeclf.select.calibration import format_validation

    if validate_only:
        _refuse_measuring_options(
            "--validate-only",
            ("--backbones", backbones),
            ("--resolutions", resolutions),
            ("--int8-resolutions", int8_resolutions),
            ("--runtimes", runtimes),
            ("--threads", threads),
            ("--passes", passes),
            ("--work-dir", work_dir),
        )
    resolutions_px = _int_list("--resolutions", resolutions)
    int8_px = _int_list("--int8-resolutions", int8_resolutions)
    with _log_to_stderr("edgeclf.select"):
        res = calibrate_cost_model(
            _csv_list(backbones),
            resolutions=resolutions_px,
            int8_resolutions=int8_px,
            runtimes=_csv_list(runtimes),
            threads=threads,
            seconds_per_point=seconds,
            passes=passes,
            out=out_file,
            validation_out=validation_out,
            work_dir=work_dir,
            validate_only=validate_only,
        )
    if as_json:
        _print_json(res.validation.model_dump(mode="json"))
        return
    sys.stdout.write(format_validation(res.validation) + "\n")  # fixed-width text, as is
    if res.measured:
        err.print(f"wrote {res.calibration_path} and {res.validation_path}", soft_wrap=True, highlight=False)


# ----------------------------------------------------------------------------- models + training


@app.command("backbones")
def backbones(as_json: JsonOpt = False) -> None:
    """Supported backbones: architecture, weight source, input size, size, FLOPs, ImageNet top-1."""
    from edgeclf.models import list_backbones

    infos = list_backbones()
    if as_json:
        _print_json([i.to_dict() for i in infos])
        return
    t = Table(title="backbones")
    for col in ("name", "weights", "input", "interp", "params (M)", "GFLOPs", "ImageNet top-1"):
        t.add_column(col, justify="right" if col[0] in "pGI" else "left")
    for i in infos:
        t.add_row(
            i.name + (" [bold](default)[/]" if i.default else ""),
            i.weight_package or "hub / --weights",
            f"{i.input_size}",
            i.interpolation,
            f"{i.params_m:.2f}",
            f"{i.gflops:.2f}",
            f"{i.imagenet_top1:.1f}" if i.imagenet_top1 else "?",
        )
    out.print(t)


@app.command("train")
def train_cmd(
    run_dir: Annotated[Path, typer.Option("--out", help="Run directory to create (or continue with --resume).")],
    manifest: Annotated[Path | None, typer.Option("--manifest", help="Split manifest from `edgeclf data split`.")] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="ImageFolder tree: audit + split it into RUN_DIR/splits.csv first.")
    ] = None,
    data_root: Annotated[Path | None, typer.Option("--data-root", help="Folder the manifest paths are relative to.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone name (see `edgeclf backbones`).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Pretrained weights file (.pth/.safetensors) for the backbone.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Fine-tuning epochs (after the linear probe).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input resolution; default: the backbone's native one.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for everything.")] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader worker processes.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML recipe; flags override it.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in RUN_DIR.")] = False,
    time_budget: Annotated[
        str | None,
        typer.Option(
            "--time-budget", help="Search the recipe for this long (15m, 1h, 900s); trials chosen on validation macro-F1."
        ),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option("--seeds", help="Comma list of seeds: one run each, the spread reported, the best on validation shipped."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Candidates on validation (majority class, linear probe, fine-tuning); the best one is shipped."""
    from edgeclf.train import load_config, train
    from edgeclf.train.record import read_metrics
    from edgeclf.train.search import parse_duration, search, train_seeds

    if (manifest is None) == (data is None) and not resume:
        raise typer.BadParameter("pass exactly one of --manifest and --data")
    if time_budget and seeds:
        raise typer.BadParameter("pass --time-budget or --seeds, not both")
    if time_budget:
        parse_duration(time_budget)
    # every flag is checked before anything is written into the run folder
    load_config(
        config,
        {
            "data.root": data_root,
            "data.workers": workers,
            "model.backbone": backbone,
            "model.weights": weights,
            "model.image_size": image_size,
            "finetune.epochs": epochs,
            "batch_size": batch_size,
            "seed": seed,
        },
    )
    if data is not None and manifest is None:
        from edgeclf.data.prepare import audit_and_split

        with _progress("decoding + hashing", not as_json) as cb:
            prepared = audit_and_split(data, run_dir, seed=seed, keep_existing=resume, progress=cb)
        manifest = prepared.manifest
        if prepared.split is not None and not as_json:
            _render_split(prepared.split)
    overrides = {
        "data.manifest": manifest,
        "data.root": data_root,
        "data.workers": workers,
        "model.backbone": backbone,
        "model.weights": weights,
        "model.image_size": image_size,
        "finetune.epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
    }
    if resume and manifest is None and (run_dir / "config.yaml").is_file():
        from edgeclf.train.record import read_run_config

        stored = read_run_config(run_dir).config.model_dump(mode="json")
        cfg = load_config(
            None, {**{k: v for k, v in _flatten(stored).items()}, **{k: v for k, v in overrides.items() if v is not None}}
        )
    else:
        cfg = load_config(config, overrides)
    log = (lambda m: err.print(m)) if as_json else (lambda m: out.print(m))
    if time_budget:
        search(cfg, run_dir, parse_duration(time_budget), log=log)
        m = read_metrics(run_dir)
    elif seeds:
        try:
            seed_list = [int(x) for x in seeds.split(",") if x.strip()]
        except ValueError:
            raise typer.BadParameter(f"--seeds {seeds!r}: expected integers such as 0,1,2") from None
        train_seeds(cfg, run_dir, seed_list, log=log)
        m = read_metrics(run_dir)
    else:
        with _progress("training", True) as cb:
            result = train(cfg, run_dir, resume=resume, log=log, progress=lambda label, d, t: cb(d, t, label))
        m = result.metrics
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    if as_json:
        _print_json(m.to_json())
        return
    t = Table(title=f"{run_dir}: validation candidates (test split untouched)")
    for col in ("candidate", "accuracy", "macro-F1", "seconds"):
        t.add_column(col)
    selected = m.selection.selected if m.selection else None
    for c in m.candidates:
        b = "[bold]" if c.name == selected else ""
        t.add_row(
            f"{b}{c.name}{' (shipped)' if c.name == selected else ''}",
            f"{b}{c.val.accuracy:.4f}",
            f"{b}{c.val.macro_f1:.4f}",
            f"{c.seconds:.0f}",
        )
    out.print(t)
    if m.selection:
        out.print(m.selection.reason)
    sd = (m.model_extra or {}).get("seeds")
    if sd:
        out.print(
            f"over seeds {sd['seeds']}: val macro-F1 {sd['mean']:.4f} ± {sd['std']:.4f} "
            f"(min {sd['min']:.4f}, max {sd['max']:.4f})"
        )
    gate = m.quality_gates.get("every_class_recalled")
    if gate is not None and not gate.passed:
        err.print(f"[yellow]warning:[/] the shipped model never predicts {', '.join(gate.classes)} on validation")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


# ----------------------------------------------------------------------------- evaluation


OptimizeOpt = Annotated[
    str | None,
    typer.Option(
        "--optimize",
        help="Decision policy: 'macro-f1' fits per-class biases (prior correction) that maximise validation macro-F1.",
        rich_help_panel="Decision policy",
    ),
]
MinRecallOpt = Annotated[
    str | None,
    typer.Option(
        "--min-recall",
        help="Decision policy: recall targets, CLASS=0.95[,CLASS=...], met on validation with the least change elsewhere.",
        rich_help_panel="Decision policy",
    ),
]
CostsOpt = Annotated[
    Path | None,
    typer.Option(
        "--costs",
        help="Decision policy: cost matrix YAML (cost of deciding j when the truth is i); decides Bayes-optimally.",
        rich_help_panel="Decision policy",
    ),
]
RejectOpt = Annotated[
    bool,
    typer.Option(
        "--reject", help="Decision policy: answer 'unknown' when the evidence is too weak.", rich_help_panel="Decision policy"
    ),
]
CoverageOpt = Annotated[
    float | None,
    typer.Option(
        "--coverage",
        help="Reject target without --ood-dir: keep at least this share of validation images (default 0.95).",
        rich_help_panel="Decision policy",
    ),
]
OodDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--ood-dir",
        help="Reject target: a folder of out-of-distribution images, split in "
        "halves (threshold fitted on one, reported on the other).",
        rich_help_panel="Decision policy",
    ),
]
OodAcceptOpt = Annotated[
    float | None,
    typer.Option(
        "--ood-accept",
        help="With --ood-dir: accept at most this share of its validation half (default 0.05).",
        rich_help_panel="Decision policy",
    ),
]


def _decision_request(
    optimize: str | None,
    min_recall: str | None,
    costs: Path | None,
    reject: bool,
    coverage: float | None,
    ood_dir: Path | None,
    ood_accept: float | None,
) -> Any:
    from edgeclf.evaluate.decision import make_request

    req = make_request(optimize, min_recall, costs, reject, coverage, ood_dir, ood_accept)
    return None if req.is_argmax else req


def _render_decision(m: dict[str, Any]) -> None:
    d = m.get("decision")
    if not d:
        return
    pol, base = d["policy"], d["argmax"]
    t = Table(title=f"decision policy: {d['describe']} (fitted on validation)")
    t.add_column("class")
    for col in ("recall (policy)", "recall (argmax)", "precision (policy)", "precision (argmax)"):
        t.add_column(col, justify="right")
    for c, v in pol["per_class"].items():
        b = base["per_class"][c]
        t.add_row(c, f"{v['recall']:.3f}", f"{b['recall']:.3f}", f"{v['precision']:.3f}", f"{b['precision']:.3f}")
    out.print(t)
    sel = pol["selective_accuracy"]
    out.print(
        f"policy: macro-F1 {pol['macro_f1']:.4f} (argmax {base['macro_f1']:.4f}) · coverage {pol['coverage']:.3f} · "
        f"selective accuracy {'–' if sel is None else f'{sel:.4f}'}"
        + (
            f" · expected cost {pol['expected_cost']:.4f} (argmax {base.get('expected_cost', 0):.4f})"
            if "expected_cost" in pol
            else ""
        )
    )
    if "ood" in d:
        o = d["ood"]
        out.print(
            f"out-of-distribution ({o['ood_images']} images): AUROC {o['auroc']:.4f}, FPR at 95% TPR "
            f"{o['fpr_at_95_tpr']:.4f}" + (f", unknown rate {o['ood_unknown_rate']:.3f}" if "ood_unknown_rate" in o else "")
        )


@app.command("evaluate")
def evaluate_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory.")],
    split: Annotated[str, typer.Option(help="val, or test (once per model: see --allow-test-reuse).")] = "val",
    allow_test_reuse: Annotated[
        bool, typer.Option(help="Evaluate the test split again; every output is marked as reused.")
    ] = False,
    robustness: Annotated[bool, typer.Option(help="Run the corruption suite.")] = True,
    robustness_images: Annotated[int, typer.Option(help="Images (sampled) for the corruption suite.")] = 300,
    explain: Annotated[bool, typer.Option(help="Embeddings projection and Grad-CAM figures.")] = True,
    optimize: OptimizeOpt = None,
    min_recall: MinRecallOpt = None,
    costs: CostsOpt = None,
    reject: RejectOpt = False,
    coverage: CoverageOpt = None,
    ood_dir: OodDirOpt = None,
    ood_accept: OodAcceptOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Metrics, confusion, mistakes, calibration, robustness, embeddings, Grad-CAM, slices, HTML report.

    With a decision-policy option, the policy is fitted on validation first (whatever --split
    is), stored in RUN_DIR/decision.json for export, and reported next to argmax."""
    from edgeclf.evaluate.run import evaluate

    req = _decision_request(optimize, min_recall, costs, reject, coverage, ood_dir, ood_accept)
    log = (lambda m: err.print(m)) if as_json else (lambda m: out.print(m))
    with _progress("evaluating", True) as cb:
        m = evaluate(
            run_dir,
            split,
            allow_test_reuse,
            robustness,
            explain,
            robustness_images,
            log=log,
            progress=lambda label, d, t: cb(d, t, label),
            decision=req,
        )
    if as_json:
        _print_json(m.to_json())
        return
    t = Table(title=f"{run_dir} — {split}{' (TEST REUSED)' if m.test_reused else ''}")
    t.add_column("class")
    for col in ("precision", "recall", "F1", "support"):
        t.add_column(col, justify="right")
    for c, v in m.per_class.items():
        t.add_row(c, f"{v.precision:.3f}", f"{v.recall:.3f}", f"{v.f1:.3f}", str(v.support))
    out.print(t)
    cal = m.calibration
    out.print(
        f"accuracy {m.accuracy:.4f} · balanced {m.balanced_accuracy:.4f} · macro-F1 [bold]{m.macro_f1:.4f}[/] · "
        f"weighted-F1 {m.weighted_f1:.4f}"
    )
    out.print(
        f"calibration: T = {cal.temperature:.3f} (fitted on val); ECE {cal.ece_before:.4f} -> {cal.ece_after:.4f}; "
        f"NLL {cal.nll_before:.4f} -> {cal.nll_after:.4f}"
    )
    for g, v in m.verdict.gates.items():
        out.print(f"  {'[green]pass[/]' if v.passed else '[red]FAIL[/]'}  {g}: {v.rule}")
    _render_decision(m.to_json())
    out.print(f"report: {run_dir / 'report' / 'index.html'}")


label_app = typer.Typer(help="Label assistance: what to label next, which labels look wrong.", no_args_is_help=True)
app.add_typer(label_app, name="label")


@label_app.command("suggest")
def label_suggest(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory.")],
    unlabeled_dir: Annotated[Path, typer.Argument(help="Folder of unlabelled images (searched recursively).")],
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write suggestions.csv and the grid (default: UNLABELED_DIR/edgeclf-suggestions)."),
    ] = None,
    top_k: Annotated[int, typer.Option(help="Labels listed per image.")] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Predicted label + calibrated confidence per image, most uncertain first (label those next)."""
    from edgeclf.evaluate.labeling import suggest_run_labels

    with _progress("predicting", not as_json) as cb:
        res = suggest_run_labels(run_dir, unlabeled_dir, out_dir, top_k=top_k, progress=cb)
    if as_json:
        _print_json(res.to_json_dict())
        return
    t = Table(title=f"{len(res.suggestions)} images, most uncertain first (temperature {res.temperature:.3f})")
    for col in ("rank", "path", "suggested", "confidence", "margin"):
        t.add_column(col, justify="right" if col in ("rank", "confidence", "margin") else "left")
    for sg in res.suggestions[:20]:
        t.add_row(str(sg.rank), sg.path, sg.suggested_label, f"{sg.confidence:.3f}", f"{sg.margin:.3f}")
    out.print(t)
    if res.skipped:
        out.print(f"[yellow]{len(res.skipped)} unreadable images skipped[/] (see {res.skipped_csv_path})")
    out.print(f"wrote {res.csv_path} and {res.grid_path}")


@label_app.command("audit")
def label_audit(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where to write label_audit.csv/png (default: RUN_DIR/label-audit).")
    ] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds for out-of-fold predictions.")] = 5,
    threshold: Annotated[float, typer.Option(help="Flag when another class gets at least this out-of-fold probability.")] = 0.7,
    as_json: JsonOpt = False,
) -> None:
    """Likely-mislabelled training images: out-of-fold predictions that confidently disagree with the label."""
    from edgeclf.evaluate.labeling import audit_run_labels

    with _progress("features", not as_json) as cb:
        res = audit_run_labels(run_dir, out_dir, folds=folds, threshold=threshold, progress=cb)
    if as_json:
        _print_json(res.to_json_dict())
        return
    t = Table(
        title=f"{len(res.suspects)} suspects among {res.n_images} training images ({res.folds}-fold, "
        f"{'grouped' if res.grouped else 'not grouped'}, threshold {threshold})"
    )
    for col in ("path", "given", "suggested", "p(suggested)", "p(given)"):
        t.add_column(col)
    for sp in res.suspects[:25]:
        t.add_row(sp.path, sp.given_label, sp.suggested_label, f"{sp.p_suggested:.3f}", f"{sp.p_given:.3f}")
    out.print(t)
    out.print(f"wrote {res.csv_path} and {res.grid_path}")


# ----------------------------------------------------------------------------- export + predict


def _csv_list(v: str | None) -> list[str] | None:
    return [x.strip() for x in v.split(",") if x.strip()] if v else None


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A training run directory.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Bundle directory to create.")],
    formats: Annotated[
        str | None, typer.Option(help="Comma list of onnx,openvino,torchscript,tensorrt (default: all, or the profile's).")
    ] = None,
    precision: Annotated[str | None, typer.Option(help="Comma list of fp32,fp16,int8 (default: all, or the profile's).")] = None,
    profile: Annotated[
        str | None, typer.Option(help="Target hardware profile: picks formats/precisions, recorded in the bundle.")
    ] = None,
    calibration_images: Annotated[int, typer.Option(help="Training images used to calibrate int8.")] = 128,
    calibration_method: Annotated[
        str, typer.Option(help="ONNX Runtime int8 calibration: minmax, entropy or percentile.")
    ] = "minmax",
    allow_failed: Annotated[
        bool, typer.Option(help="Exit 0 even if some artifact failed its gate (it is still not shipped).")
    ] = False,
    robustness: Annotated[bool, typer.Option(help="Run the corruption suite on eager vs the best int8 artifact.")] = True,
    int8_gates: Annotated[
        str,
        typer.Option(
            "--int8-gates",
            help="How int8 gates are decided: 'interval' (for the number of validation images: a 95 % interval "
            "where one image could swing the verdict, else the point estimate) or 'point' (the point estimate alone).",
        ),
    ] = "interval",
    as_json: JsonOpt = False,
) -> None:
    """Export, quantize and hold every artifact to its parity gate; write a self-describing bundle."""
    from edgeclf.export.pipeline import ExportFailed, export_run

    if calibration_method not in ("minmax", "entropy", "percentile"):
        raise typer.BadParameter("--calibration-method must be minmax, entropy or percentile")
    log = (lambda m: err.print(m)) if as_json else (lambda m: out.print(m))
    failure: ExportFailed | None = None
    try:
        from edgeclf.runtime.gate import c_runtime_rows

        res = export_run(
            run_dir,
            out_dir,
            _csv_list(formats),
            _csv_list(precision),
            profile,
            calibration_images,
            calibration_method,
            allow_failed,
            robustness,
            log=log,
            runtime_gate=c_runtime_rows,
            int8_evidence=int8_gates,
        )
        rows = res.parity.table
    except ExportFailed as e:
        failure = e
        rows = e.result.parity.table if e.result is not None else []
    if as_json:
        _print_json({"bundle": str(out_dir), "table": [r.to_dict() for r in rows], "failed": str(failure) if failure else None})
    else:
        t = Table(title=f"{out_dir}: parity on validation")
        for col in ("format", "precision", "status", "size MB", "macro-F1", "Δ vs eager", "agreement", "ms/img"):
            t.add_column(col, justify="left" if col in ("format", "precision", "status") else "right")
        fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
        for r in rows:
            style = {"ok": "green", "reference": "bold"}.get(r.status or "", "red" if r.status != "skipped" else "yellow")
            t.add_row(
                r.format,
                r.precision,
                f"[{style}]{r.status}[/]",
                fmt(r.size_mb, ".2f"),
                fmt(r.macro_f1, ".4f"),
                fmt(r.delta_macro_f1, "+.4f"),
                fmt(r.agreement, ".4f"),
                fmt(r.ms_per_image, ".2f"),
            )
        out.print(t)
        for r in rows:
            if r.error and r.status != "ok":
                out.print(f"  [yellow]{r.format}/{r.precision}[/]: {r.error}")
    if failure is not None:
        raise failure


@app.command("build")
def build_cmd(
    profile: Annotated[str, typer.Option("--profile", help="Hardware profile name or YAML file (see `edgeclf profiles list`).")],
    data: Annotated[str, typer.Option("--data", help="ImageFolder tree, or 'elpv' for the embedded elpv data set.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Build folder (re-running it resumes finished stages).")] = Path(
        "edgeclf-build"
    ),
    budget_ms: Annotated[
        float | None, typer.Option("--budget-ms", help="p95 latency budget (ms), instead of the profile's.")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="Training YAML recipe.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Fine-tuning epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    image_size: Annotated[int | None, typer.Option(help="Force this input resolution instead of the selection's.")] = None,
    backbones: Annotated[str | None, typer.Option(help="Comma list of candidate backbones (default: all registered).")] = None,
    measure: Annotated[
        bool | None,
        typer.Option(
            "--measure/--estimate",
            help="On the target: time the leading candidates for the selection and the final bundle here instead of "
            "estimating (default: the bundle is measured when this host is the target; the selection is estimated).",
        ),
    ] = None,
    robustness: Annotated[bool, typer.Option(help="Run the corruption suites (evaluation and export).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of the split and the training.")] = 0,
    time_budget: Annotated[
        str | None,
        typer.Option(
            "--time-budget",
            help="Search the training recipe (and backbone) for this long, e.g. 15m, 1h, 900s; "
            "chosen on validation macro-F1 only.",
        ),
    ] = None,
    allow_weak: Annotated[
        bool,
        typer.Option(
            "--allow-weak",
            help="Exit 0 even when the shipped model never predicts some class on validation "
            "(the registry still refuses to promote it).",
        ),
    ] = False,
    optimize: OptimizeOpt = None,
    min_recall: MinRecallOpt = None,
    costs: CostsOpt = None,
    reject: RejectOpt = False,
    coverage: CoverageOpt = None,
    ood_dir: OodDirOpt = None,
    ood_accept: OodAcceptOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """audit -> split -> select -> train -> evaluate -> export + parity -> benchmark -> device package, for one profile."""
    from edgeclf.build import BuildOptions
    from edgeclf.train.search import parse_duration

    req = _decision_request(optimize, min_recall, costs, reject, coverage, ood_dir, ood_accept)
    opts = BuildOptions(
        decision=req,
        profile=profile,
        data_dir=Path(data),
        out=out_dir,
        budget_ms=budget_ms,
        config=config,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        measure=measure,
        image_size=image_size,
        robustness=robustness,
        backbones=_csv_list(backbones),
        allow_weak=allow_weak,
        time_budget_s=parse_duration(time_budget) if time_budget else None,
    )
    _run_build(opts, as_json)


def _run_build(opts: Any, as_json: bool) -> None:
    """Run :func:`edgeclf.build.build` with ``opts``; render its stages and its summary table."""
    from edgeclf.build import build, weak_classes

    console = err if as_json else out
    log = lambda m: console.print(f"  [dim]{m}[/]")  # noqa: E731
    marks = {"running": "[bold cyan]▶[/]", "done": "[green]✓[/]", "cached": "[green]✓[/] [dim](cached)[/]"}
    with _progress("building", not as_json) as cb:
        res = build(
            opts,
            log=log,
            on_stage=lambda name, state: console.print(f"{marks[state]} [bold]{name}[/]"),
            progress=lambda label, d, t: cb(d, t, label),
        )
    r = res.results
    weak = weak_classes(r.train)
    if as_json:
        _print_json(res.model_dump(mode="json"))
        if weak and not opts.allow_weak:
            raise typer.Exit(1)
        return
    t = Table(title=f"edgeclf build — {opts.profile} — {opts.out}")
    t.add_column("stage")
    t.add_column("status")
    t.add_column("seconds", justify="right")
    t.add_column("result")
    sel, ev, b = r.select, r.evaluate, r.benchmark
    dec_test = ev.decision.test if ev.decision is not None else None
    summary = {
        "audit": f"{r.audit.num_images} images",
        "split": f"fingerprint {r.split.fingerprint[:12]}",
        "select": f"{sel.backbone} @ {sel.resolution} px, {sel.precision} on {sel.runtime}",
        "train": f"val macro-F1 {r.train.val_macro_f1 or 0:.4f} ({r.train.candidate or 'finetune'})",
        "evaluate": f"test macro-F1 {ev.test.macro_f1 or 0:.4f} (once)"
        + (
            f"; policy {ev.decision.describe}: test macro-F1 {dec_test.macro_f1:.4f}, coverage {dec_test.coverage:.3f}"
            if ev.decision is not None and dec_test is not None
            else ""
        ),
        "export": f"{len(r.export.artifacts)} artifacts, {len(r.export.failed)} failed",
        "benchmark": f"p95 {b.latency_ms_p95:.2f} ms [{b.source.upper()}] vs {b.budget_ms} ms: {'fits' if b.fits else 'OVER'}",
        "package": r.package.package,
        "report": "report.md",
    }
    for s in res.stages:
        t.add_row(s.stage, s.status, f"{s.seconds:.1f}", summary.get(s.stage, ""))
    out.print(t)
    if b.source == "estimate":
        out.print(f"[yellow]latency is an ESTIMATE[/]: {b.label}")
    if weak:
        msg = (
            f"quality gate every_class_recalled FAILED: the shipped model never predicts {', '.join(weak)} on "
            "validation; the bundle is written but the registry will not promote it"
        )
        if opts.allow_weak:
            out.print(f"[yellow]warning:[/] {msg} (--allow-weak)")
        else:
            err.print(f"[bold red]error:[/] {msg} (pass --allow-weak to exit 0)")
            raise typer.Exit(1)


@app.command("predict")
def predict_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory from `edgeclf export`.")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    top_k: Annotated[int, typer.Option("--top-k", help="Labels per image.")] = 5,
    runtime: Annotated[str | None, typer.Option(help="Force a runtime: onnxruntime, openvino, torch, tensorrt.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Calibrated top-k labels for each image, on the fastest artifact available here."""
    from edgeclf.runtime.reference import BundleClassifier

    clf = BundleClassifier(bundle, runtime)
    preds = clf.classify(images, top_k)
    art = f"{clf.artifact.format}/{clf.artifact.precision}"
    if as_json:
        _print_json(
            {
                "artifact": art,
                "decision_policy": clf.manifest.policy().describe(),
                "predictions": [{"image": str(p), **pr.to_dict()} for p, pr in zip(images, preds, strict=False)],
            }
        )
        return
    policy = clf.manifest.policy()
    for p, pr in zip(images, preds, strict=False):
        line = f"[bold]{p}[/]: " + ", ".join(f"{lab} {prob:.3f}" for lab, prob in zip(pr.labels, pr.probabilities, strict=False))
        if not policy.is_argmax and pr.decision is not None:
            d = pr.decision
            line += f"  → decision [bold]{'UNKNOWN' if d.unknown else d.label}[/] ({d.rule})"
        out.print(line)
    err.print(f"(artifact {art}, temperature {clf.manifest.temperature:.3f}, decision policy {policy.describe()})")


# ----------------------------------------------------------------------------- tensorrt

tensorrt_app = typer.Typer(help="TensorRT engines, built on the device from a bundle's ONNX model.", no_args_is_help=True)
app.add_typer(tensorrt_app, name="tensorrt")


@tensorrt_app.command("build")
def tensorrt_build(
    onnx: Annotated[Path, typer.Option("--onnx", help="The bundle's fp32 ONNX model; the engine is written next to it.")],
    precision: Annotated[str, typer.Option(help="fp32, fp16 or int8.")] = "fp16",
    calibration: Annotated[
        Path | None, typer.Option(help="int8: the bundle's calibration batch (model.calib.npy, N x 3 x H x W float32).")
    ] = None,
    cache: Annotated[Path, typer.Option(help="int8: the calibration cache to read or write.")] = Path("model.int8.calib"),
    max_batch: Annotated[
        int | None, typer.Option(min=1, help="Largest batch of the engine's optimisation profile (default: 32).")
    ] = None,
    opt_batch: Annotated[int | None, typer.Option(min=1, help="Batch the engine is tuned for (default: 1).")] = None,
    workspace_mb: Annotated[int | None, typer.Option(min=1, help="Builder workspace, MiB (default: 1024).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a TensorRT engine (and the int8 calibration cache) on this device, where TensorRT and a CUDA GPU are."""
    if precision not in ("fp32", "fp16", "int8"):
        raise typer.BadParameter(f"--precision {precision!r}: use fp32, fp16 or int8")
    from edgeclf.export.tensorrt_export import build_engine_from_files

    res = build_engine_from_files(onnx, precision, calibration, cache, max_batch, opt_batch, workspace_mb)
    if as_json:
        _print_json(res)
        return
    rec = res["details"].get("tensorrt", {})
    out.print(
        f"built {res['path']} ({precision}, TensorRT {rec.get('trt_version', '?')} on {rec.get('device', '?')})",
        soft_wrap=True,
        highlight=False,
    )


# ----------------------------------------------------------------------------- registry

registry_app = typer.Typer(help="Bundle versions: add, list, promote, roll back, locate the current one.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")

RootOpt = Annotated[
    Path | None,
    typer.Option(
        "--root",
        envvar="EDGECLF_REGISTRY",
        show_envvar=True,
        help="Registry folder (default: $EDGECLF_REGISTRY, else ./edgeclf-registry).",
    ),
]


def _registry(root: Path | None) -> Any:
    from edgeclf.registry import Registry

    return Registry(root)


@registry_app.command("add")
def registry_add(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory from `edgeclf export`.")],
    version: Annotated[
        str | None, typer.Option("--version", help="Version to store it as (MAJOR.MINOR.PATCH); default: next patch.")
    ] = None,
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify a bundle's hashes and store a copy of it as a new version."""
    res = _registry(root).add(bundle, version)
    if as_json:
        _print_json(res.model_dump(mode="json"))
        return
    e = res.entry
    if res.already_present:
        out.print(f"{bundle} is already in the registry as version [bold]{e.version}[/] ({e.content_hash[:19]})", soft_wrap=True)
        return
    style = "green" if e.parity.verdict == "passed" else "red"
    out.print(
        f"added {e.name} as version [bold]{e.version}[/] ({e.content_hash[:19]}), parity [{style}]{e.parity.verdict}[/]",
        soft_wrap=True,
    )
    for f in e.parity.failures:
        out.print(f"  [red]{f}[/]", soft_wrap=True)


@registry_app.command("list")
def registry_list(root: RootOpt = None, as_json: JsonOpt = False) -> None:
    """Stored versions with content hash, macro-F1, parity verdict and the current marker."""
    reg = _registry(root)
    listing = reg.listing()
    if as_json:
        _print_json(listing.model_dump(mode="json"))
        return
    t = Table(title=f"{reg.root}: {len(listing.versions)} version(s)")
    for col in ("", "version", "hash", "added", "name", "macro-F1", "parity", "decision"):
        t.add_column(col, justify="right" if col == "macro-F1" else "left", no_wrap=col in ("version", "hash", "added"))
    for e in listing.versions:
        f1 = "–" if e.metrics.macro_f1 is None else f"{e.metrics.macro_f1:.4f}"
        style = "green" if e.parity.verdict == "passed" else "red"
        t.add_row(
            "*" if e.current else "",
            e.version,
            e.content_hash.removeprefix("sha256:")[:12],
            e.added[:16].replace("T", " "),
            e.name,
            f1,
            f"[{style}]{e.parity.verdict}[/]",
            e.decision,
        )
    out.print(t)
    cur = listing.current
    out.print(f"current: [bold]{cur}[/]" if cur else "current: none (run `edgeclf registry promote VERSION`)")


def _render_change(ch: Any, as_json: bool) -> None:
    if as_json:
        _print_json(ch.model_dump(mode="json"))
    elif not ch.changed:
        out.print(f"{ch.current} is already current", soft_wrap=True)
    else:
        out.print(f"current: {ch.previous or 'none'} -> [bold]{ch.current}[/] ({ch.action})", soft_wrap=True)


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="A stored version (see `edgeclf registry list`).")],
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Switch the current pointer to VERSION atomically; refused when its parity gates failed."""
    _render_change(_registry(root).promote(version), as_json)


@registry_app.command("rollback")
def registry_rollback(root: RootOpt = None, as_json: JsonOpt = False) -> None:
    """Switch the current pointer back to the version promoted before it."""
    _render_change(_registry(root).rollback(), as_json)


@registry_app.command("path")
def registry_path(
    which: Annotated[str, typer.Argument(help="`current`, or a stored version.")] = "current",
    root: RootOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the folder of the current bundle (or of a version), for scripts."""
    reg = _registry(root)
    path = reg.path(which)
    if as_json:
        _print_json({"which": which, "version": path.name, "path": str(path)})
    else:
        sys.stdout.write(f"{path}\n")  # plain: no wrapping or markup, so scripts can use it as is


# ----------------------------------------------------------------------------- demo


@app.command("demo")
def demo(
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Build folder (default: demo-out; re-running it resumes finished stages)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The whole build on the embedded elpv data set (from PyPI) for this machine's profile; what `make demo` runs.

    The same as `edgeclf build --profile auto --data elpv --out demo-out --backbones tf_efficientnet_lite0 --image-size 224`
    with `finetune.unfreeze: 2` in the recipe (the recipe's 4 stages take about 3x the time on elpv for the same quality)."""
    from edgeclf.build import demo_options

    _run_build(demo_options(out_dir), as_json)


# ----------------------------------------------------------------------------- bench


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


_VERDICT_STYLE = {"fits": "[green]fits[/]", "over": "[bold red]over[/]", "not_checked": "[dim]–[/]"}


def _render_bench(rep: Any) -> None:
    from rich import box

    env, s = rep.environment, rep.settings
    threads = s.threads if s.threads else "runtime default"
    start = "frames + preprocessing" if s.include_preprocess else "preprocessed tensor"
    t = Table(
        title=f"{rep.bundle.name} ({rep.bundle.input_size} px): latency in ms, {s.rounds} rounds after "
        f"{s.warmup} warm-up, threads {threads}, from the {start}",
        caption=f"{env.cpu_model} · {env.machine} · {env.cpu_count} CPUs · "
        + " ".join(f"{k} {v}" for k, v in env.versions.items()),
        box=box.SIMPLE_HEAD,
        padding=0,
    )
    for col in ("runtime", "precision", "batch", "p50", "p90", "p95", "p99", "img/s", "RSS MB"):
        t.add_column(col, justify="left" if col in ("runtime", "precision") else "right", no_wrap=True)
    if rep.profile is not None:
        t.add_column(f"p95≤{rep.profile.latency_ms_p95:g}", no_wrap=True)
    for r in rep.results:
        lat = r.latency
        delta = f"+{r.rss_delta_mb:.0f}" if r.rss_delta_mb is not None else ""
        runtime = r.runtime if r.runtime == r.engine else f"{r.runtime} ({r.format})"
        row = [
            runtime,
            r.precision,
            str(r.batch),
            _ms(lat.p50_ms),
            _ms(lat.p90_ms),
            _ms(lat.p95_ms),
            _ms(lat.p99_ms),
            f"{r.images_per_s:.1f}",
            f"{r.peak_rss_mb:.0f}{delta}",
        ]
        if rep.profile is not None:
            row.append(_VERDICT_STYLE[r.budget.verdict] if r.budget else "")
        t.add_row(*row)
    out.print(t)
    out.print(
        "[dim]RSS MB: peak resident memory of the process, + what loading and running the artifact added"
        + (
            ""
            if not rep.results or rep.results[0].rss_method == "vmhwm_reset"
            else " (lifetime peak: the per-artifact reset is not available here)"
        )
        + "[/]"
    )
    for sk in rep.skipped:
        out.print(f"[yellow]skipped {sk.runtime} {sk.format}/{sk.precision}[/]: {sk.reason}", highlight=False)
    for note in rep.notes:
        out.print(f"[bold yellow]note:[/] {note}", highlight=False)


def _render_compare(cmp: Any) -> None:
    from rich import box

    ids = {src.label: str(i + 1) for i, src in enumerate(cmp.sources)}
    for src in cmp.sources:
        out.print(
            f"[bold]{ids[src.label]}[/] {src.label}: {src.kind}, bundle {src.bundle or '?'}, profile {src.profile or '–'}, "
            f"{'; '.join(src.cpu_models) or 'CPU unknown'}" + (f", {src.created}" if src.created else ""),
            highlight=False,
        )
    t = Table(title=f"{len(cmp.rows)} rows from {len(cmp.sources)} file(s): latency in ms", box=box.SIMPLE_HEAD, padding=0)
    verdicts = any(r.verdict for r in cmp.rows)
    ratios = len(cmp.sources) > 1
    for col in (
        ("#", "runtime", "precision", "batch", "p50", "p95", "p99", "img/s", "RSS MB")
        + (("budget",) if verdicts else ())
        + (("×p50",) if ratios else ())
    ):
        t.add_column(col, justify="left" if col in ("runtime", "precision", "budget") else "right", no_wrap=True)
    formats = {"onnxruntime": "onnx", "openvino": "openvino", "torch": "torchscript", "tensorrt": "tensorrt"}
    for r in cmp.rows:
        runtime = r.runtime if r.format in ("-", formats.get(r.runtime)) else f"{r.runtime} ({r.format})"
        row = [
            ids[r.source],
            runtime,
            r.precision + (" +pre" if r.includes_preprocess else ""),
            str(r.batch),
            _ms(r.p50_ms),
            _ms(r.p95_ms),
            _ms(r.p99_ms),
            "–" if r.images_per_s is None else f"{r.images_per_s:.1f}",
            "–" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}",
        ]
        if verdicts:
            row.append(_VERDICT_STYLE.get(r.verdict or "", r.verdict or "–"))
        if ratios:
            row.append("–" if r.p50_ratio is None else f"{r.p50_ratio:.2f}")
        t.add_row(*row)
    out.print(t)
    for note in cmp.notes:
        out.print(f"[dim]{note}[/]", highlight=False)


@app.command("bench")
def bench_cmd(
    paths: Annotated[
        list[Path], typer.Argument(help="A bundle directory; with --compare, bench result JSON files.", show_default=False)
    ],
    runtime: Annotated[
        str | None,
        typer.Option(help="Comma list: onnxruntime, openvino, torch, tensorrt, or a registered runner (e.g. cpp). Default: all."),
    ] = None,
    precision: Annotated[str | None, typer.Option(help="Comma list of fp32,fp16,int8. Default: every shipped artifact.")] = None,
    batch: Annotated[str | None, typer.Option(help="Comma list of batch sizes. [default: 1,8]")] = None,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Timed calls per runtime, artifact and batch size. [default: 50]")
    ] = None,
    warmup: Annotated[int | None, typer.Option(min=0, help="Untimed warm-up calls before them. [default: 5]")] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Intra-op threads (default: the profile's, else the runtime's).")
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(help="Mark batch-1 rows against this profile's p95 budget; meaningful only when run on that device."),
    ] = None,
    preprocess: Annotated[
        bool, typer.Option("--preprocess", help="Time the reference preprocessing of 640x480 frames as well.")
    ] = False,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Also write the result (or comparison) JSON to this file.")
    ] = None,
    compare_files: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Compare result files (edgeclf bench --out; pytest-benchmark --benchmark-json) instead of measuring.",
        ),
    ] = False,
    tune: Annotated[
        bool,
        typer.Option(
            "--tune",
            help="Time the candidate artifacts in the C runtime now and record the fastest for this host in the "
            "bundle's autotune.json (what precision=auto then loads here without timing).",
        ),
    ] = False,
    tune_cache: Annotated[
        Path | None, typer.Option("--tune-cache", help="With --tune: the cache file to update (default: BUNDLE/autotune.json).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Latency (p50/p90/p95/p99), throughput and peak memory of a bundle's artifacts on this machine."""
    from edgeclf.bench import compare, run_bench, write_comparison, write_report

    if tune:
        _refuse_measuring_options(
            "--tune",
            ("--runtime", runtime),
            ("--precision", precision),
            ("--batch", batch),
            ("--rounds", rounds),
            ("--warmup", warmup),
            ("--profile", profile),
            ("--preprocess", preprocess or None),
            ("--compare", compare_files or None),
            ("--out", out_file),
        )
        if len(paths) != 1 or not paths[0].is_dir():
            raise typer.BadParameter("--tune takes one bundle directory")
        from edgeclf.bench.tune import tune_bundle

        res = tune_bundle(paths[0], threads=threads or 0, cache=tune_cache)
        if as_json:
            _print_json(res.to_json_dict())
            return
        t = Table(title=f"{paths[0]}: candidate artifacts timed on this host (C runtime, batch 1, median)")
        t.add_column("artifact")
        t.add_column("ms / image", justify="right")
        for name, ms in sorted(res.ms.items(), key=lambda kv: kv[1]):
            t.add_row(f"[bold]{name} (chosen)[/]" if name == res.chosen else name, f"{ms:.3f}")
        out.print(t)
        out.print(f"precision=auto loads {res.chosen} ({res.backend}/{res.precision}) here; recorded in {res.cache}")
        return

    if compare_files:
        _refuse_measuring_options(
            "--compare",
            ("--runtime", runtime),
            ("--precision", precision),
            ("--batch", batch),
            ("--rounds", rounds),
            ("--warmup", warmup),
            ("--threads", threads),
            ("--profile", profile),
            ("--preprocess", preprocess or None),
        )
        cmp = compare(paths)
        if out_file is not None:
            write_comparison(out_file, cmp)
        if as_json:
            _print_json(cmp.to_json_dict())
        else:
            _render_compare(cmp)
        return
    if len(paths) != 1:
        raise typer.BadParameter("give one bundle directory (or --compare with result files)")
    if paths[0].is_file() and paths[0].suffix == ".json":
        raise typer.BadParameter(f"{paths[0]} is a file; to compare result files, pass --compare")
    with _progress("benchmarking", not as_json) as cb:
        rep = run_bench(
            paths[0],
            batches=batch or None,  # an empty --batch is the default, as an absent one
            rounds=rounds,
            warmup=warmup,
            runtimes=_csv_list(runtime),
            precisions=_csv_list(precision),
            threads=threads,
            profile=profile,
            include_preprocess=preprocess,
            progress=lambda label, done, total: cb(done, total),
        )
    if out_file is not None:
        write_report(out_file, rep)
    if as_json:
        _print_json(rep.to_json_dict())
        return
    _render_bench(rep)
    if out_file is not None:
        out.print(f"wrote {out_file}")


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the edgeclf version and exit.")] = False,
) -> None:
    if version:
        from edgeclf import __version__

        out.print(f"edgeclf {__version__}")
        raise typer.Exit()


@app.command("serve")
def serve_cmd(
    bundle: Annotated[Path | None, typer.Argument(help="A bundle directory (or --registry ROOT).", show_default=False)] = None,
    registry_root: Annotated[
        Path | None, typer.Option("--registry", help="Serve the registry's current version; follow promote/rollback.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8080,
    max_batch: Annotated[int, typer.Option(min=1, help="Images per inference call at most.")] = 8,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="How long a batch waits to fill.")] = 2.0,
    max_queue: Annotated[int, typer.Option(min=1, help="Images waiting at most; beyond: 429 with Retry-After.")] = 64,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body; beyond: 413.")] = 16.0,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the API key /v1/ routes require (401 without it).")
    ] = None,
    threads: Annotated[
        int, typer.Option(min=0, help="Backend intra-op threads per lane (0: the cores divided among the lanes).")
    ] = 0,
    lanes: Annotated[
        int,
        typer.Option(
            min=0, help="Batches classified at once, each on its own inference thread (0: 2, or 1 with --threads = the cores)."
        ),
    ] = 0,
    workers: Annotated[
        int, typer.Option(min=1, help="Server processes (each loads the model; --threads divides the cores among them).")
    ] = 1,
    use_ray: Annotated[bool, typer.Option("--ray", help="Serve as a Ray Serve deployment (pip install 'edgeclf[ray]').")] = False,
    replicas: Annotated[int, typer.Option(min=1, help="--ray: replicas (the initial count with --autoscale).")] = 1,
    autoscale: Annotated[bool, typer.Option(help="--ray: scale between --min-replicas and --max-replicas.")] = False,
    min_replicas: Annotated[int, typer.Option(min=1)] = 1,
    max_replicas: Annotated[int, typer.Option(min=1)] = 4,
    ray_cpus: Annotated[float, typer.Option(help="--ray: CPUs each replica reserves.")] = 1.0,
    ray_address: Annotated[
        str | None, typer.Option(help="--ray: join this Ray cluster (e.g. auto, ray://head:10001) instead of starting one.")
    ] = None,
) -> None:
    """Serve a bundle over HTTP through the C runtime: POST /v1/classify, GET /v1/model, /healthz, /readyz, /metrics, /docs."""
    ray_flags = replicas != 1 or autoscale or ray_address is not None
    if ray_flags and not use_ray:
        raise typer.BadParameter("--replicas, --autoscale and --ray-address need --ray")
    try:
        import uvicorn

        from edgeclf.serve import ServeOptions, create_app
    except ImportError as e:
        raise EdgeclfError(f"edgeclf serve needs its extra: pip install 'edgeclf[serve]' ({e})") from None
    opts = ServeOptions(
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        max_body_mb=max_body_mb,
        api_key_env=api_key_env,
        threads=threads,
        lanes=lanes,
    )
    if use_ray:
        from edgeclf.serve.ray_serve import RayOptions, run

        ray_opts = RayOptions(replicas, autoscale, min_replicas, max_replicas, cpus_per_replica=ray_cpus)
        err.print(f"edgeclf serve (Ray Serve, {replicas} replica(s)): http://{host}:{port} (docs: /docs, metrics: /metrics)")
        run(bundle, registry=registry_root, options=opts, ray=ray_opts, host=host, port=port, address=ray_address)
        return
    if workers > 1:
        import dataclasses

        from edgeclf.serve.app import WORKER_ENV

        if (bundle is None) == (registry_root is None):
            raise typer.BadParameter("serve a bundle or --registry ROOT, not both (and not neither)")
        if threads == 0:  # the workers share the cores rather than each taking all of them
            opts = dataclasses.replace(opts, threads=max(1, (os.cpu_count() or 1) // workers))
        if lanes == 0:  # the processes are the parallel lanes
            opts = dataclasses.replace(opts, lanes=1)
        os.environ[WORKER_ENV] = json.dumps(
            {
                "bundle": None if bundle is None else str(Path(bundle).resolve()),
                "registry": None if registry_root is None else str(Path(registry_root).resolve()),
                "options": dataclasses.asdict(opts),
            }
        )
        err.print(f"edgeclf serve: http://{host}:{port} ({workers} worker processes; docs: /docs, metrics: /metrics per worker)")
        uvicorn.run(
            "edgeclf.serve.app:app_from_environment",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level="info",
            timeout_graceful_shutdown=30,
        )
        return
    app_ = create_app(bundle, registry=registry_root, options=opts)
    err.print(f"edgeclf serve: http://{host}:{port} (docs: /docs, metrics: /metrics)")
    uvicorn.run(app_, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)


@app.command("triton")
def triton_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle directory.", show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", help="The model repository to write.")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the bundle's name).")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="max_batch_size and dynamic batching's largest batch.")] = 8,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="Dynamic batching's queue delay.")] = 2.0,
    instances: Annotated[int, typer.Option(min=1, help="Model instances (instance_group count).")] = 1,
    device: Annotated[str, typer.Option(help="cpu or gpu (instance_group kind; TensorRT engines are always gpu).")] = "cpu",
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a Triton Inference Server model repository (config.pbtxt, labels, calibrated outputs, client) from a bundle."""
    from edgeclf.serve.triton import write_repository

    repo = write_repository(
        bundle, out_dir, name=name, max_batch=max_batch, max_wait_ms=max_wait_ms, instances=instances, device=device, force=force
    )
    if as_json:
        _print_json(repo.to_dict())
        return
    for m in repo.models:
        outs = ", ".join(t["name"] for t in m.outputs)
        out.print(f"  {m.name}: {m.platform} ({m.precision}) from {m.artifact} -> {outs}", highlight=False, soft_wrap=True)
    for s in repo.skipped:
        out.print(f"  [yellow]skipped[/] {s}", highlight=False, soft_wrap=True)
    out.print(f"wrote {out_dir} (tritonserver --model-repository {out_dir}; see its README.md)", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one red line, never a traceback.

    Usage errors (missing argument, bad option) are reported by typer itself
    with exit code 2; :class:`EdgeclfError` from the library exits 1.
    """
    try:
        app(args=argv)
    except EdgeclfError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
