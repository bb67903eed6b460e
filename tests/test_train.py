"""End-to-end training on a tiny synthetic data set (lite0 at 64 px): fast, but the real loop."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from edgeclf.data._index import index_dataset
from edgeclf.data.manifest import write_manifest
from edgeclf.data.split import SplitConfig, make_split
from edgeclf.errors import ConfigError, DataError, EdgeclfError
from edgeclf.train import load_config, train
from edgeclf.train.loop import CheckpointError, Trainer, load_checkpoint
from tests.conftest import REPO, make_clean_dataset


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_tiny_manifest

    return make_tiny_manifest(tmp_path_factory.mktemp("tiny"))


def tiny_cfg(manifest: Path, tmp: Path, **over: object):
    base = {
        "data.manifest": manifest,
        "data.workers": 0,
        "data.cache_dir": str(tmp / "cache"),
        "model.image_size": 64,
        # a short SGD probe: these tests are about the fine-tuning loop, which must then win
        "probe.method": "sgd",
        "probe.epochs": 5,
        "finetune.epochs": 2,
        "finetune.warmup_epochs": 0.5,
        "batch_size": 8,
        "seed": 1,
        "amp": "off",
    }
    base.update(over)
    return load_config(None, base)


def test_run_directory_contents(tiny_manifest: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(tiny_cfg(tiny_manifest, tmp_path), run)
    for f in ("config.yaml", "metrics.json", "checkpoints/best.pt", "checkpoints/last.pt", "checkpoints/probe.pt"):
        assert (run / f).is_file(), f
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["run"]["dataset_fingerprint"].startswith("sha256:")
    assert {"torch", "timm", "python"} <= set(cfg["run"]["versions"]) and "git_commit" in cfg["run"]
    assert cfg["run"]["preprocess"]["crop_size"] == 64 and cfg["config"]["seed"] == 1
    m = json.loads((run / "metrics.json").read_text())
    assert m == result.metrics.to_json()
    assert set(m["baselines"]) == {"majority_class", "linear_probe"}
    assert 0.0 <= m["finetuned"]["macro_f1"] <= 1.0 and len(m["history"]) == 2
    best = max(m["history"], key=lambda h: h["val_macro_f1"])
    assert m["finetuned"]["epoch"] == min(h["epoch"] for h in m["history"] if h["val_macro_f1"] == best["val_macro_f1"])
    ck = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ck["classes"] == ["a", "b", "c"] and ck["candidate"] == m["selection"]["selected"]
    if ck["candidate"] == "finetune":
        assert ck["epoch"] + 1 == m["finetuned"]["epoch"]
    # an existing run is never overwritten silently
    with pytest.raises(ConfigError, match="already holds a run"):
        train(tiny_cfg(tiny_manifest, tmp_path), run)


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("unfreeze", [0, 1])
def test_freeze_really_freezes(tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unfreeze: int) -> None:
    from edgeclf import models
    from edgeclf.train.loop import head_parameter_names

    captured: dict[str, torch.nn.Module] = {}
    real = models.create_model

    def spy(*a, **k):  # noqa: ANN002, ANN003
        model, rep = real(*a, **k)
        captured["m"] = model
        return model, rep

    monkeypatch.setattr(models, "create_model", spy)
    cfg = tiny_cfg(
        tiny_manifest,
        tmp_path,
        **{"finetune.unfreeze": unfreeze, "finetune.epochs": 1, "probe.epochs": 0, "finetune.batchnorm": "frozen"},
    )
    trainer = Trainer(cfg, tmp_path / "run")
    orig_probe = trainer._linear_probe
    before: dict[str, torch.Tensor] = {}

    def probe_then_snapshot(model, *a, **k):  # noqa: ANN001, ANN002, ANN003
        out = orig_probe(model, *a, **k)
        before.update(_params(model))
        return out

    monkeypatch.setattr(trainer, "_linear_probe", probe_then_snapshot)
    trainer.run()
    model = captured["m"]
    after = _params(model)
    head = head_parameter_names(model)
    groups = models.backbone_groups(model)
    trainable = set(head) | (set(groups[-1]) if unfreeze else set())
    changed = {n for n in after if not torch.equal(after[n], before[n])}
    assert changed, "nothing trained"
    assert changed <= trainable, f"frozen parameters changed: {sorted(changed - trainable)[:5]}"
    assert head & changed
    if unfreeze:
        assert set(groups[-1]) & changed
    for n, p in model.named_parameters():
        if n not in trainable:
            assert p.grad is None


def test_early_stopping_triggers(tiny_manifest: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(
        tiny_manifest,
        tmp_path,
        **{"finetune.epochs": 6, "finetune.lr": 1e-9, "probe.epochs": 0, "finetune.early_stopping_patience": 1},
    )
    m = train(cfg, tmp_path / "run").metrics.to_json()
    assert m["stopped_early"] and len(m["history"]) == 2  # epoch 2 did not beat epoch 1
    assert next(c for c in m["candidates"] if c["name"] == "finetune")["epoch"] == 1


def test_resume_after_interruption_matches_uninterrupted(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the whole network on images (the cached partial path has its own test in test_candidates.py)
    cfg = tiny_cfg(tiny_manifest, tmp_path, **{"finetune.epochs": 3, "finetune.unfreeze": "all"})
    full = train(cfg, tmp_path / "full").metrics.to_json()

    real_epoch = Trainer._train_epoch
    calls = {"n": 0}

    def dying_epoch(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
        calls["n"] += 1
        if calls["n"] == 2:  # in the middle of the second epoch, as a kill -9 would
            raise KeyboardInterrupt
        return real_epoch(self, *a, **k)

    monkeypatch.setattr(Trainer, "_train_epoch", dying_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut")
    monkeypatch.setattr(Trainer, "_train_epoch", real_epoch)
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["epoch"] == 0
    resumed = train(cfg, tmp_path / "cut", resume=True).metrics.to_json()
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("seconds", "images_per_second")} for e in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])
    assert resumed["finetuned"] == full["finetuned"]


def test_resume_errors(tiny_manifest: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(tiny_manifest, tmp_path)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(cfg, tmp_path / "empty", resume=True)
    run = tmp_path / "run"
    train(cfg, run)
    (run / "checkpoints" / "last.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        train(cfg, run, resume=True)
    with pytest.raises(ConfigError, match="different config"):
        train(tiny_cfg(tiny_manifest, tmp_path, **{"finetune.lr": 0.5}), run, resume=True)


def test_bad_inputs(tiny_manifest: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label,sha256,group,split\n")
    with pytest.raises(DataError, match="no images"):
        train(tiny_cfg(empty, tmp_path), tmp_path / "r1")
    no_train_c = tmp_path / "m.csv"
    lines = tiny_manifest.read_text().splitlines()
    no_train_c.write_text("\n".join(ln for ln in lines if not (",c," in ln and ln.endswith(",train"))) + "\n")
    with pytest.raises(DataError, match="c have no images in the 'train' split"):
        train(tiny_cfg(no_train_c, tmp_path, **{"data.root": tiny_manifest.parent / "data"}), tmp_path / "r2")
    with pytest.raises(ConfigError, match="unknown backbone|known"):
        train(tiny_cfg(tiny_manifest, tmp_path, **{"model.backbone": "resnet9000"}), tmp_path / "r3")
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(EdgeclfError):
        train(tiny_cfg(tiny_manifest, tmp_path, **{"model.weights": wrong}), tmp_path / "r4")


def test_cli_train_from_data_dir(tmp_path: Path) -> None:
    data = make_clean_dataset(tmp_path / "data", {"x": 8, "y": 8, "z": 8})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "probe": {"epochs": 3},
                "finetune": {"epochs": 1},
                "amp": "off",
                "data": {"cache_dir": str(tmp_path / "cache"), "workers": 0},
            }
        )
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeclf.cli",
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--image-size",
            "64",
            "--config",
            str(recipe),
            "--batch-size",
            "8",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(proc.stdout)
    assert m["finetuned"]["n"] > 0 and (tmp_path / "run" / "splits.csv").is_file()


def test_ddp_two_cpu_processes(tiny_manifest: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "probe": {"epochs": 3},
                "finetune": {"epochs": 1},
                "amp": "off",
                "batch_size": 4,
                "model": {"image_size": 64},
                "data": {"cache_dir": str(tmp_path / "cache"), "workers": 0},
            }
        )
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "edgeclf.cli",
            "train",
            "--manifest",
            str(tiny_manifest),
            "--out",
            str(tmp_path / "run"),
            "--config",
            str(recipe),
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["run"]["world_size"] == 2
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["finetuned"]["n"] == len([ln for ln in tiny_manifest.read_text().splitlines() if ln.endswith(",val")])
    shutil.rmtree(tmp_path / "run")


@pytest.mark.slow  # two full CLI trainings with loader workers: minutes on 2 cores; the in-process resume test stays default
def test_resume_after_kill_9_with_workers(tiny_manifest: Path, tmp_path: Path) -> None:
    """A real ``kill -9`` of `edgeclf train` (2 loader workers) after its first epoch, then --resume."""
    import signal
    import time

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "probe": {"epochs": 3},
                "finetune": {"epochs": 3, "warmup_epochs": 0.5},
                "amp": "off",
                "batch_size": 8,
                "seed": 1,
                "model": {"image_size": 64},
                "data": {"cache_dir": str(tmp_path / "cache"), "workers": 2},
            }
        )
    )

    def cmd(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "edgeclf.cli",
            "train",
            "--manifest",
            str(tiny_manifest),
            "--out",
            str(out),
            "--config",
            str(recipe),
            "--json",
            *extra,
        ]

    full = subprocess.run(cmd(tmp_path / "full"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]
    proc = subprocess.Popen(
        cmd(tmp_path / "cut"), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its loader workers, mid-run
    proc.wait()
    assert last.exists(), "the run ended before its first checkpoint"
    done = load_checkpoint(last)["epoch"] + 1
    resumed = subprocess.run(cmd(tmp_path / "cut", "--resume"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("seconds", "images_per_second")} for e in h]  # noqa: E731
    a, b = json.loads(full.stdout), json.loads(resumed.stdout)
    assert done < 3 or "resumed" in resumed.stderr
    assert strip(b["history"]) == strip(a["history"]) and b["finetuned"] == a["finetuned"]
    # the weight average of epochs 2-3 (finetune.average_from 0.5) is a candidate, the same after the resume
    avg_a, avg_b = ({c["name"]: c for c in m["candidates"]}["finetune_average"] for m in (a, b))
    assert "epochs 2-3" in avg_a["description"] and avg_a["val"] == avg_b["val"]


@pytest.mark.slow
def test_finetune_lite0_on_trashnet_subset_beats_linear_probe(tmp_path: Path) -> None:
    """Real data, real ImageNet weights: fine-tuning must beat the linear probe on frozen features."""
    import numpy as np

    from tests.conftest import shared_dataset

    root = shared_dataset("trashnet-150")
    index = index_dataset(root)
    rows = make_split(index, SplitConfig()).rows
    rng = np.random.default_rng(0)
    keep = [r for r in rows if r.split != "test" and rng.random() < 0.4]
    m = tmp_path / "subset.csv"
    write_manifest(m, keep)
    cfg = load_config(
        None,
        {
            "data.manifest": m,
            "data.root": root,
            "data.cache_dir": str(tmp_path / "cache"),
            "model.image_size": 160,
            "finetune.epochs": 4,
            "seed": 0,
        },
    )
    metrics = train(cfg, tmp_path / "run").metrics.to_json()
    assert metrics["finetuned"]["macro_f1"] > metrics["baselines"]["linear_probe"]["macro_f1"]
