"""``RUN_DIR/report/index.html``: one self-contained page (figures embedded) per run."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from edgeclf._io import atomic_write_text
from edgeclf.evaluate.record import read_split_evaluation
from edgeclf.train.record import read_metrics, read_run_config


def _img(path: Path) -> str | None:
    if not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _find_data_docs(run_dir: Path, manifest: Path) -> tuple[Any, Any]:
    split_summary = _load_json(manifest.with_name(manifest.stem + ".summary.json"))
    audit = None
    for cand in (run_dir / "audit" / "audit.json", manifest.parent / "audit" / "audit.json", manifest.parent / "audit.json"):
        audit = _load_json(cand)
        if audit:
            break
    return audit, split_summary


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def fmt_ci(ci: Any, digits: int = 3, percent: bool = False) -> str:
    """``0.812 [0.781, 0.843]`` (or ``81.2% [78.1%, 84.3%]``) from ``{"value", "low", "high"}``; "–" when absent."""
    if not isinstance(ci, dict) or _num(ci.get("value")) is None:
        return "–"

    def f(v: float) -> str:
        return f"{100 * v:.{max(0, digits - 2)}f}%" if percent else f"{v:.{digits}f}"

    value = f(float(ci["value"]))
    lo, hi = _num(ci.get("low")), _num(ci.get("high"))
    return value if lo is None or hi is None else f"{value} [{f(lo)}, {f(hi)}]"


def _signed(v: float) -> str:
    return f"{v:+.3f}".replace("-", "\u2212")


def model_selection(train: dict[str, Any], splits: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """What the report's "Model selection" section shows, from the run's metrics.json and the evaluations.

    Every key training may write (candidates, selection, recipe, quality_gates) is optional;
    None when the run records none of them (runs from before candidate selection).
    """
    raw = train.get("candidates")
    candidates = [c for c in (raw if isinstance(raw, list) else []) if isinstance(c, dict) and isinstance(c.get("name"), str)]
    selection = train.get("selection") if isinstance(train.get("selection"), dict) else {}
    recipe = train.get("recipe") if isinstance(train.get("recipe"), dict) else {}
    raw = recipe.get("choices")
    choices = [c for c in (raw if isinstance(raw, list) else []) if isinstance(c, dict) and "key" in c]
    quality = train.get("quality_gates") if isinstance(train.get("quality_gates"), dict) else {}
    if not (candidates or selection or choices or quality):
        return None
    selected = selection.get("selected") if isinstance(selection.get("selected"), str) else None
    rows = []
    for c in candidates:
        val = c.get("val") if isinstance(c.get("val"), dict) else {}
        rows.append(
            {
                "name": c["name"],
                "description": c.get("description") or "",
                "accuracy": _num(val.get("accuracy")),
                "macro_f1": _num(val.get("macro_f1")),
                "nll": _num(val.get("nll")),
                "seconds": _num(c.get("seconds")),
                "shippable": c.get("shippable"),
                "shipped": c["name"] == selected,
            }
        )
    f1 = {r["name"]: r["macro_f1"] for r in rows}
    # the per-image paired comparison (with intervals) when an evaluation made one, else training's bare margins
    comparison = next(
        (s["candidate_comparison"] for s in (splits.get("val"), splits.get("test")) if s and s.get("candidate_comparison")), None
    )
    compared = []
    if comparison:
        for r in comparison:
            if not isinstance(r, dict):
                continue
            diff, lo, hi = _num(r.get("diff")), _num(r.get("low")), _num(r.get("high"))
            if diff is None or lo is None or hi is None:
                continue
            level = _num(r.get("level")) or 0.95
            compared.append(
                {
                    "candidate": str(r.get("candidate")),
                    "their_macro_f1": _num(r.get("val_macro_f1")),
                    "diff": diff,
                    "interval": f"[{_signed(lo)}, {_signed(hi)}]",
                    "significant": bool(r.get("significant")),
                    "level": f"{100 * level:.0f} %",
                    "n_resamples": r.get("n_resamples"),
                }
            )
    else:
        margins = selection.get("margins") if isinstance(selection.get("margins"), dict) else {}
        for name, diff in margins.items():
            if _num(diff) is not None:
                compared.append(
                    {
                        "candidate": name,
                        "their_macro_f1": f1.get(name),
                        "diff": float(diff),
                        "interval": None,
                        "significant": None,
                        "level": None,
                    }
                )
    for c in compared:
        c["verb"] = "beats" if c["diff"] > 0 else "trails" if c["diff"] < 0 else "ties with"
        c["by"] = f"{abs(c['diff']):.3f}"
    gates = []
    for name, g in quality.items():
        if isinstance(g, dict):
            gates.append(
                {
                    "name": name,
                    "passed": bool(g.get("passed")),
                    "rule": g.get("rule") or "",
                    "classes": [str(x) for x in g.get("classes") or []],
                }
            )
    return {
        "candidates": rows,
        "selected": selected,
        "selected_macro_f1": f1.get(selected) if selected else None,
        "rule": selection.get("rule"),
        "reason": selection.get("reason"),
        "compared": compared,
        "paired": bool(compared) and compared[0]["interval"] is not None,
        "n_resamples": next((c.get("n_resamples") for c in compared if c.get("n_resamples")), None),
        "choices": choices,
        "quality_gates": gates,
    }


def write_report(run_dir: Path) -> Path:
    """Render the report from what the run directory holds now (training + any evaluations)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    run_dir = Path(run_dir)
    doc = read_run_config(run_dir)
    cfg = doc.model_dump(mode="json")
    train_metrics = read_metrics(run_dir).to_json() if (run_dir / "metrics.json").is_file() else {}
    audit, split_summary = _find_data_docs(run_dir, doc.manifest)
    splits = {}
    for s in ("val", "test"):
        doc = read_split_evaluation(run_dir, s)  # typed: a damaged evaluation is an error naming the field
        m = doc.to_json() if doc is not None else None
        if m:
            fig = run_dir / "report" / "figures" / s
            m["figures"] = {
                k: _img(fig / f"{k}.png")
                for k in (
                    "confusion",
                    "reliability",
                    "mistakes",
                    "robustness",
                    "embeddings",
                    "gradcam",
                    "pr_curves",
                    "risk_coverage",
                    "ood_scores",
                )
            }
            splits[s] = m
    env = Environment(loader=PackageLoader("edgeclf.evaluate", "templates"), autoescape=select_autoescape(["html", "html.j2"]))
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * float(v):.1f}%"
    env.filters["f4"] = lambda v: "–" if v is None else f"{float(v):.4f}"
    env.filters["f3"] = lambda v: "–" if v is None else f"{float(v):.3f}"
    env.filters["ci"] = fmt_ci
    env.filters["cipct"] = lambda ci: fmt_ci(ci, digits=3, percent=True)
    html = env.get_template("report.html.j2").render(
        run_dir=run_dir.name,
        cfg=cfg,
        config_yaml=yaml.safe_dump(cfg["config"], sort_keys=False),
        train=train_metrics,
        selection=model_selection(train_metrics, splits),
        audit=audit,
        split_summary=split_summary,
        splits=splits,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    out = run_dir / "report" / "index.html"
    atomic_write_text(out, html)
    return out
