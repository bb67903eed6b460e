"""The test ledger: the test split is evaluated once per model, and the run remembers.

``RUN_DIR/test_ledger.jsonl`` gets one line per test evaluation (model hash,
manifest fingerprint, time). A second test evaluation of the same run refuses
unless the caller explicitly allows reuse, and then every output says so.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeclf.errors import EdgeclfError

LEDGER = "test_ledger.jsonl"


class TestReuseError(EdgeclfError):
    """The test split of this run was already used."""

    __test__ = False  # not a pytest test class


def read_ledger(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / LEDGER
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                entries.append(json.loads(line))
            except ValueError:
                entries.append({"corrupt_line": line})  # a damaged line still counts as a use
    return entries


def _recorded_test_evaluation(run_dir: Path) -> str | None:
    """Where the run records a test evaluation besides the ledger (metrics.json, eval/test/metrics.json)."""
    m = run_dir / "metrics.json"
    try:
        if isinstance((json.loads(m.read_text(encoding="utf-8")).get("evaluation") or {}).get("test"), dict):
            return str(m)
    except (OSError, ValueError, AttributeError):
        pass
    t = run_dir / "eval" / "test" / "metrics.json"
    return str(t) if t.is_file() else None


def check_and_record(run_dir: Path, model_sha256: str, fingerprint: str, allow_reuse: bool) -> bool:
    """Record a test evaluation; return True if this is a reuse (only possible with ``allow_reuse``)."""
    entries = read_ledger(run_dir)
    if not entries and not allow_reuse:
        recorded = _recorded_test_evaluation(Path(run_dir))
        if recorded:
            raise TestReuseError(
                f"{Path(run_dir) / LEDGER} is missing, but {recorded} records a test evaluation of this run; the "
                "test-once rule is not reset by deleting the ledger. Pass --allow-test-reuse to evaluate it again; "
                "every output will be marked as reused"
            )
    if entries and not allow_reuse:
        first = entries[0]
        raise TestReuseError(
            f"the test split of {run_dir} was already evaluated ({len(entries)} time(s), first at "
            f"{first.get('time', '?')}); evaluating it again turns it into a validation set. "
            "Pass --allow-test-reuse to do it anyway; every output will be marked as reused"
        )
    entry = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_sha256": model_sha256,
        "manifest_fingerprint": fingerprint,
        "reuse": bool(entries),
    }
    path = Path(run_dir) / LEDGER
    with open(path, "a", encoding="utf-8") as f:  # append-only: a crash loses at most this line
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return bool(entries)
