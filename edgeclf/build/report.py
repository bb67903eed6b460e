"""The build's report: ``report.md`` (selection, training, decision policy, parity, latency) and
``build.json``, its summary."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeclf._io import atomic_write_text as write_text
from edgeclf._io import write_json
from edgeclf.build.options import BuildOptions
from edgeclf.build.results import BuildRecord, BuildResults, DecisionResult, ReportResult, TrainResult


def weak_classes(train_result: TrainResult | Mapping[str, Any] | None) -> list[str]:
    """Classes the shipped candidate never recalls on validation (the every_class_recalled gate);
    ``train_result`` is the train stage's result, or a mapping with its ``quality_gates``."""
    if isinstance(train_result, TrainResult):
        gates = train_result.quality_gates
    else:
        gates = (train_result or {}).get("quality_gates")
    gate = (gates or {}).get("every_class_recalled") or {}
    return list(gate.get("classes") or []) if gate.get("passed") is False else []


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "n/a"


def _stage_report(opts: BuildOptions, out: Path, results: BuildResults) -> ReportResult:
    from edgeclf.select.document import read_selection

    sel = read_selection(out).to_json()
    b = results.benchmark
    lines = [
        f"# edgeclf build: {sel.get('profile') or opts.profile}",
        "",
        f"Data: `{opts.data_dir}` — {results.audit.num_images} images, {results.audit.num_classes} classes; "
        f"split fingerprint `{results.split.fingerprint[:16]}`.",
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
    t = results.train
    e = results.evaluate
    lines += [
        "",
        "## Training and evaluation",
        "",
        f"Shipped: **{t.candidate or 'finetune'}**, validation macro-F1 {_fmt(t.val_macro_f1)}"
        + (f" (epoch {t.best_epoch})" if t.best_epoch else "")
        + _fmt_ci(e.val_ci)
        + ".",
        f"Test (touched once): accuracy {_fmt(e.test.accuracy)}, macro-F1 {_fmt(e.test.macro_f1)}"
        + _fmt_ci(e.test_ci)
        + ". Full report: `run/report/index.html`.",
        "",
    ]
    cands = t.candidates
    if cands:
        lines += ["| candidate (validation) | macro-F1 | shipped |", "|---|---|---|"]
        lines += [f"| {name} | {_fmt(f1)} | {'**yes**' if name == t.candidate else ''} |" for name, f1 in cands.items()]
        picked = t.selection or {}
        lines += ["", f"Rule: {picked.get('rule', '')}. {picked.get('reason', '')}.", ""]
    from edgeclf.evaluate.metrics import thin_evidence, thin_evidence_note

    for split, where in (("val", "validation"), ("test", "test")):
        thin = thin_evidence(results.split.counts.get(split, {}))
        if thin:
            lines += [f"Note: {thin_evidence_note(thin, where)}.", ""]
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
    if t.recipe:
        lines += ["Automatic recipe choices (the training data's rules; a user's setting always wins):", ""]
        lines += [f"- `{c.key}: {c.value}` — {c.source}: {c.reason}" for c in t.recipe]
        lines += [""]
    dec = e.decision
    if dec:
        lines += _decision_lines(dec)
    has_dec = any(r.decision_agreement is not None for r in results.export.parity)
    lines += [
        "## Export and parity",
        "",
        "| artifact | precision | status | size MB | macro-F1 | Δ vs eager | agreement | ms/img |"
        + (" decisions vs eager | C = Python decisions |" if has_dec else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if has_dec else ""),
    ]
    for r in results.export.parity:
        lines.append(
            f"| {r.format} | {r.precision} | {r.status} | {_fmt2(r.size_mb)} | {_fmt(r.macro_f1)} | "
            f"{_fmt(r.delta_macro_f1)} | {_fmt(r.agreement)} | {_fmt2(r.ms_per_image)} |"
            + (f" {_fmt(r.decision_agreement)} | {_fmt(r.decision_match)} |" if has_dec else "")
        )
    lines += [
        "",
        "## Latency on the target",
        "",
        f"p95 **{b.latency_ms_p95:.2f} ms** vs budget {b.budget_ms} ms — "
        f"{'fits' if b.fits else 'OVER BUDGET'}. Source: **{b.source.upper()}** — {b.label}"
        + (
            f" (the selected artifact `{b.rows[0].artifact}`, {b.rows[0].precision}, "
            f"{b.rows[0].runtime}; p50 {b.rows[0].p50_ms:.2f} ms)"
            if b.rows
            else ""
        )
        + ".",
        "",
    ]
    if b.source == "measured":
        lines += [
            f"The selection's {sel['choice']['latency_source']} for this configuration was "
            f"{sel['choice']['latency_ms_p95']:.2f} ms (the model alone, on the profile's nominal device); "
            "the measurement includes the preprocessing of a 640x480 frame and this host's own speed.",
            "",
        ]
    if len(b.rows or []) > 1:
        lines += [
            "| configuration | runtime | artifact | precision | p50 ms | p95 ms | p99 ms |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {row.configuration or ''} | {row.runtime} | `{row.artifact}` | {row.precision} | "
            f"{row.p50_ms:.2f} | {row.p95_ms:.2f} | {row.p99_ms:.2f} |"
            for row in b.rows
        ]
        lines += [""]
    lines += [f"Device package: `{results.package.package}` ({results.package.size_mb} MB).", ""]
    write_text(out / "report.md", "\n".join(lines))
    record = BuildRecord(
        profile=sel.get("profile") or str(opts.profile),
        choice=sel["choice"],
        benchmark=b,
        package=results.package,
        test=e.test,
        val=e.val,
    )
    write_json(out / "build.json", record.model_dump(mode="json"))
    return ReportResult(report="report.md", summary="build.json")


def _decision_lines(dec: DecisionResult) -> list[str]:
    """The decision policy's operating point next to argmax, validation and test (touched once)."""
    lines = [
        "## Decision policy",
        "",
        f"Policy **{dec.describe}**, fitted on validation only; the C runtime "
        "applies it on the device (`edgeclf_classify_decision`).",
        "",
    ]
    splits = [(s, d) for s, d in (("val", dec.val), ("test", dec.test)) if d is not None]
    if not splits:
        return [*lines, "No split was evaluated with this policy.", ""]
    classes = list(splits[0][1].recall)
    head = "| figure | " + " | ".join(f"{s} policy | {s} argmax" for s, _ in splits) + " |"
    lines += [head, "|---|" + "---|---|" * len(splits)]
    for key, label in (
        ("macro_f1", "macro-F1"),
        ("accuracy", "accuracy"),
        ("coverage", "coverage"),
        ("selective_accuracy", "selective accuracy"),
    ):
        lines.append(
            f"| {label} | " + " | ".join(f"{_fmt(getattr(d, key))} | {_fmt(getattr(d.argmax, key))}" for _, d in splits) + " |"
        )
    for c in classes:
        lines.append(
            f"| recall {c} | " + " | ".join(f"{_fmt(d.recall[c])} | {_fmt(d.argmax.recall[c])}" for _, d in splits) + " |"
        )
    for s, d in splits:
        o = d.ood
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
