"""``RUN_DIR/report/index.html``: one self-contained page (figures embedded) per run."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from edgeclf._io import atomic_write_text


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


def write_report(run_dir: Path) -> Path:
    """Render the report from what the run directory holds now (training + any evaluations)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    train_metrics = _load_json(run_dir / "metrics.json") or {}
    audit, split_summary = _find_data_docs(run_dir, Path(cfg["config"]["data"]["manifest"]))
    splits = {}
    for s in ("val", "test"):
        m = _load_json(run_dir / "eval" / s / "metrics.json")
        if m:
            fig = run_dir / "report" / "figures" / s
            m["figures"] = {k: _img(fig / f"{k}.png") for k in
                            ("confusion", "reliability", "mistakes", "robustness", "embeddings", "gradcam")}
            splits[s] = m
    env = Environment(loader=PackageLoader("edgeclf.evaluate", "templates"), autoescape=select_autoescape(["html"]))
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * float(v):.1f}%"
    env.filters["f4"] = lambda v: "–" if v is None else f"{float(v):.4f}"
    html = env.get_template("report.html.j2").render(
        run_dir=run_dir.name, cfg=cfg, config_yaml=yaml.safe_dump(cfg["config"], sort_keys=False),
        train=train_metrics, audit=audit, split_summary=split_summary, splits=splits,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    out = run_dir / "report" / "index.html"
    atomic_write_text(out, html)
    return out
