"""``edgeclf bench BUNDLE --tune``: time the bundle's candidate artifacts on this host now and keep
the result in the bundle's autotune cache, so that the runtime's ``precision="auto"`` loads the
fastest one here without timing anything (see ``edgeclf_options_set_autotune`` in ``edgeclf.h``).

The timing itself is the C runtime's, at load: this module asks for a fresh measurement (into a
temporary cache file) and merges its entry into the bundle's ``autotune.json`` atomically, keeping
the entries of other hosts, so one bundle can carry the timings of every device it was tuned on.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeclf._io import atomic_write_text
from edgeclf.errors import ConfigError

CACHE_FILE = "autotune.json"


@dataclass(frozen=True)
class TuneResult:
    bundle: Path
    cache: Path
    #: the artifact file precision="auto" loads on this host
    chosen: str
    backend: str
    precision: str
    #: candidate artifact file -> median milliseconds per image on this host (batch 1)
    ms: dict[str, float]

    def to_json_dict(self) -> dict[str, object]:
        return {
            "bundle": str(self.bundle),
            "cache": str(self.cache),
            "chosen": self.chosen,
            "backend": self.backend,
            "precision": self.precision,
            "ms": self.ms,
        }


def _entries(path: Path) -> dict[str, object]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != "edgeclf-autotune" or not isinstance(doc.get("entries"), dict):
        return {}
    return dict(doc["entries"])


def tune_bundle(bundle: Path, threads: int = 0, device: str = "cpu", cache: Path | None = None) -> TuneResult:
    """Measure now (never from a cache) and record the result in ``cache`` (default: the bundle's)."""
    from edgeclf.runtime import Classifier

    bundle = Path(bundle)
    target = Path(cache) if cache is not None else bundle / CACHE_FILE
    with tempfile.TemporaryDirectory(prefix="edgeclf-tune-") as tmp:
        fresh = Path(tmp) / CACHE_FILE
        with Classifier(bundle, threads=threads, device=device, autotune_cache=fresh) as clf:
            info = clf.autotune
            chosen, backend, precision = clf.artifact, clf.backend, clf.precision
        if not info["state"].startswith("measured"):
            raise ConfigError(
                f"{bundle}: nothing to tune ({info['state']}); precision=auto chooses among two or more shipped artifacts"
            )
        new = _entries(fresh)
    if not new:
        raise ConfigError(f"the runtime measured {bundle} but wrote no timing ({info['state']})")
    entries = _entries(target)
    entries.update(new)  # this host's entry replaces its previous one; other hosts' entries stay
    doc = {"format": "edgeclf-autotune", "version": 1, "entries": entries}
    try:
        atomic_write_text(target, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    except OSError as e:
        raise ConfigError(f"cannot write the autotune cache {target} ({e}); pass --tune-cache to write it elsewhere") from None
    ms = {k: float(v) for k, v in info["ms"].items() if isinstance(v, (int, float))}
    return TuneResult(bundle, target, chosen, backend, precision, ms)
