"""The time-budgeted recipe search (Optuna TPE + successive halving) and the seed spread."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edgeclf.errors import ConfigError
from edgeclf.train import load_config
from edgeclf.train.search import parse_duration, search, train_seeds
from tests.conftest import record_decoded


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_tiny_manifest

    return make_tiny_manifest(tmp_path_factory.mktemp("tiny"))


def cfg(manifest: Path, tmp: Path):
    return load_config(
        None,
        {
            "data.manifest": manifest,
            "data.workers": 0,
            "data.cache_dir": str(tmp / "cache"),
            "model.image_size": 64,
            "probe.epochs": 5,
            "finetune.epochs": 3,
            "batch_size": 8,
            "amp": "off",
        },
    )


def test_parse_duration() -> None:
    assert parse_duration("15m") == 900 and parse_duration("1h") == 3600 and parse_duration("90") == 90
    assert parse_duration("2.5 min") == 150
    for bad in ("", "soon", "-5m", "0"):
        with pytest.raises(ConfigError, match="time-budget"):
            parse_duration(bad)


def test_search_respects_its_budget_and_never_reads_test(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    test_paths, seen = record_decoded(tiny_manifest, monkeypatch)
    budget = 40.0
    t0 = time.perf_counter()
    table = search(cfg(tiny_manifest, tmp_path), tmp_path / "run", budget)
    took = time.perf_counter() - t0
    # generous: the search stops starting trials when the slowest one would not fit; one
    # trial may still be running when the budget ends
    slowest = max(r["seconds"] for r in table["trials"])
    assert took <= budget + slowest + 10
    assert table["trials"][0]["trial"] == 0
    # a second trial starts when the first one's time (with the rule's 20 % margin) still fits in
    # what was left when it ended (on a loaded host the first trial alone can take half the budget)
    first = table["trials"][0]
    assert len(table["trials"]) >= 2 or budget - first["ended_s"] < 1.2 * first["seconds"] + 0.2
    assert all(r["ended_s"] >= r["seconds"] for r in table["trials"])
    assert seen and not (seen & test_paths)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    done = [r for r in table["trials"] if r["state"] == "complete"]
    assert m["search"]["best_trial"] == max(done, key=lambda r: (r["val_macro_f1"], -r["val_nll"]))["trial"]
    assert m["finetuned"]["macro_f1"] == max(r["val_macro_f1"] for r in done)
    assert all("val_macro_f1_ci" in r and r["val_macro_f1_ci"][0] <= r["val_macro_f1"] <= r["val_macro_f1_ci"][1] for r in done)
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    # trial 0 is the recipe as given
    assert table["trials"][0]["config"]["finetune.epochs"] == 3


def test_seed_spread(tiny_manifest: Path, tmp_path: Path) -> None:
    spread = train_seeds(cfg(tiny_manifest, tmp_path), tmp_path / "run", [0, 1])
    assert spread["seeds"] == [0, 1] and spread["min"] <= spread["mean"] <= spread["max"]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["seeds"]["adopted"] in (0, 1) and m["finetuned"]["macro_f1"] == spread["max"]
    with pytest.raises(ConfigError):
        train_seeds(cfg(tiny_manifest, tmp_path), tmp_path / "run2", [1, 1])
