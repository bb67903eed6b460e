"""The shipped model is the best candidate on validation; the test split is never read by training."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeclf.models import create_model
from edgeclf.train import load_config, train
from edgeclf.train.loop import _Candidates, load_checkpoint
from edgeclf.train.partial import TrunkRunner, split_trunk
from tests.conftest import record_decoded


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import make_tiny_manifest

    return make_tiny_manifest(tmp_path_factory.mktemp("tiny"))


def cfg(manifest: Path, tmp: Path, **over: object):
    base = {
        "data.manifest": manifest,
        "data.workers": 0,
        "data.cache_dir": str(tmp / "cache"),
        "model.image_size": 64,
        "probe.epochs": 5,
        "finetune.epochs": 2,
        "batch_size": 8,
        "seed": 1,
        "amp": "off",
    }
    return load_config(None, {**base, **over})


def _logits_for(y: np.ndarray, correct: int, n_classes: int = 3) -> np.ndarray:
    """Logits that get the first ``correct`` items right and the rest wrong."""
    lg = np.zeros((len(y), n_classes), np.float32)
    for i, t in enumerate(y):
        lg[i, t if i < correct else (t + 1) % n_classes] = 4.0
    return lg


def test_selection_picks_the_best_candidate_on_crafted_metrics(tmp_path: Path) -> None:
    y = np.array([0, 1, 2] * 4)
    model, _ = create_model("tf_efficientnet_lite0", 3, source="none")
    from edgeclf.preprocess import PreprocessSpec

    spec = PreprocessSpec.from_timm_config(model.pretrained_cfg, 64)
    folder = tmp_path / "run" / "checkpoints" / "candidates"
    folder.mkdir(parents=True)
    c = _Candidates(folder, ["a", "b", "c"], y, spec, "tf_efficientnet_lite0", True)
    c.add("majority_class", "", _logits_for(y, 4), model, 0, 0.0)
    c.add("linear_probe", "", _logits_for(y, 10), model, 0, 0.0)
    with torch.no_grad():
        model.get_classifier().bias.fill_(7.0)  # marks the state saved for this candidate
    c.add("finetune", "", _logits_for(y, 8), model, 3, 0.0)
    assert c.select()["name"] == "linear_probe"
    # a tie on macro-F1 goes to the lower NLL: same predictions, more confident when right
    sharper = _logits_for(y, 10)
    sharper[:10] *= 2
    c.add("sharper", "", sharper, model, 5, 0.0)
    assert c.select()["name"] == "sharper"
    c.ship(c.select(), tmp_path / "run" / "checkpoints" / "best.pt")
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert ck["candidate"] == "sharper" and float(ck["model"]["classifier.bias"][0]) == 7.0
    with np.load(tmp_path / "run" / "candidates" / "val_predictions.npz") as z:
        assert set(z.files) == {"y_true", "majority_class", "linear_probe", "finetune", "sharper"}
        assert (z["linear_probe"][:10] == y[:10]).all() and (z["linear_probe"][10:] != y[10:]).all()


def test_run_ships_its_best_candidate_and_never_reads_test(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    test_paths, seen = record_decoded(tiny_manifest, monkeypatch)
    m = train(cfg(tiny_manifest, tmp_path), tmp_path / "run").metrics.to_json()
    assert seen and not (seen & test_paths)
    names = [c["name"] for c in m["candidates"]]
    assert names == ["majority_class", "linear_probe", "finetune"]
    best = max(m["candidates"], key=lambda c: (c["val"]["macro_f1"], -c["val"]["nll"]))
    assert m["selection"]["selected"] == best["name"] == m["finetuned"]["candidate"]
    ck = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert ck["candidate"] == best["name"]
    # the shipped checkpoint reproduces the selected candidate's validation score (full forward pass)
    from edgeclf.evaluate.predictor import load_images, load_run

    run = load_run(tmp_path / "run")
    rows = run.manifest.split_rows("val")
    logits = run.predictor()(load_images(run.data_root, [r.path for r in rows]))
    with np.load(tmp_path / "run" / "candidates" / "val_predictions.npz") as z:
        assert (logits.argmax(1) == z[best["name"]]).mean() >= 5 / 6  # fp16 cache vs fp32: at most one flip
    assert "every_class_recalled" in m["quality_gates"] and m["recipe"]["choices"]
    yaml_text = (tmp_path / "run" / "config.yaml").read_text()
    assert re.search(r"unfreeze: \d+  # auto: data size", yaml_text)


def test_weak_class_gate_fires_and_names_the_class(tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgeclf.train.loop as loop

    real_add = loop._Candidates.add

    def never_c(self, name, description, logits, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        logits = logits.copy()
        logits[:, 2] = -1e9  # no candidate ever predicts class "c"
        return real_add(self, name, description, logits, *a, **k)

    monkeypatch.setattr(loop._Candidates, "add", never_c)
    m = train(cfg(tiny_manifest, tmp_path), tmp_path / "run").metrics.to_json()
    gate = m["quality_gates"]["every_class_recalled"]
    assert gate["passed"] is False and gate["classes"] == ["c"]
    from edgeclf.build import weak_classes

    assert weak_classes({"quality_gates": m["quality_gates"]}) == ["c"]


@pytest.mark.parametrize(
    "arch,unfreeze",
    [("tf_efficientnet_lite0", 2), ("tf_efficientnet_lite0", 4), ("tf_mobilenetv3_small_100", 2), ("mobilenetv2_100", 3)],
)
def test_trunk_split_is_exact(arch: str, unfreeze: int) -> None:
    from edgeclf.train.loop import set_trainable

    torch.manual_seed(0)
    model, _ = create_model(arch, 3, source="none")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    set_trainable(model, unfreeze)
    split = split_trunk(model)
    assert split is not None and split.first_trainable.startswith("blocks.")
    assert not any(p.requires_grad for p in split.trunk.parameters())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        got = split.top(split.trunk(x))
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    runner = TrunkRunner(split.trunk, x)
    assert runner.engine == "onnxruntime" and runner.max_diff is not None and runner.max_diff <= 1e-4
    with torch.no_grad():
        torch.testing.assert_close(runner(x), split.trunk(x), rtol=1e-4, atol=1e-4)


def test_no_split_for_whole_network() -> None:
    from edgeclf.train.loop import set_trainable

    model, _ = create_model("tf_efficientnet_lite0", 3, source="none")
    set_trainable(model, "all")
    assert split_trunk(model) is None


def test_cached_run_resumes_like_an_uninterrupted_one(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeclf.train.loop import Trainer

    c = cfg(tiny_manifest, tmp_path, **{"finetune.epochs": 3})
    full = train(c, tmp_path / "full").metrics.to_json()
    real = Trainer._top_epoch
    calls = {"n": 0}

    def dying(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Trainer, "_top_epoch", dying)
    with pytest.raises(KeyboardInterrupt):
        train(c, tmp_path / "cut")
    monkeypatch.setattr(Trainer, "_top_epoch", real)
    resumed = train(c, tmp_path / "cut", resume=True).metrics.to_json()
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("seconds", "images_per_second")} for e in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(full["history"])
    assert resumed["selection"]["selected"] == full["selection"]["selected"]
    assert json.dumps([x["val"] for x in resumed["candidates"]]) == json.dumps([x["val"] for x in full["candidates"]])


def test_fast_predictor_matches_the_eager_model() -> None:
    import numpy as np

    from edgeclf.evaluate.predictor import FastPredictor, TorchPredictor
    from edgeclf.preprocess import PreprocessSpec

    torch.manual_seed(0)
    model, _ = create_model("tf_efficientnet_lite0", 3, source="none")
    model.eval()
    spec = PreprocessSpec.from_timm_config(model.pretrained_cfg, 64)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (80, 96, 3), dtype=np.uint8) for _ in range(10)]
    eager = TorchPredictor(model, spec, ["a", "b", "c"])
    fast = FastPredictor(model, spec, ["a", "b", "c"], imgs[:4])
    assert fast.engine.startswith("onnxruntime fp32")
    np.testing.assert_allclose(fast(imgs), eager(imgs), rtol=0, atol=1e-4)
    f1, l1 = fast.features_and_logits(imgs)
    f2, l2 = eager.features_and_logits(imgs)
    np.testing.assert_allclose(f1, f2, rtol=0, atol=1e-4)
    # nothing to check against: the eager model itself
    assert FastPredictor(model, spec, ["a", "b", "c"], []).engine.startswith("eager")


def test_augmentation_that_destroys_the_label_is_softened(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from edgeclf.train.data import ManifestDataset

    class Blank:  # an "augmentation" that removes everything the label depends on
        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros((x.shape[0], 64, 64), dtype=x.dtype)

    monkeypatch.setattr(ManifestDataset, "_build_augment", lambda self: Blank())
    c = cfg(tiny_manifest, tmp_path, **{"probe.epochs": 40, "probe.lr": 0.03})
    m = train(c, tmp_path / "run").metrics.to_json()
    soft = [ch for ch in m["recipe"]["choices"] if ch["reason"].startswith("probe check")]
    # every step of the ladder is measured and none survives a blank image: no crop, turn or flip is left
    assert [ch["key"] for ch in soft] == ["augment.crop_scale", "augment.rotation_deg", "augment.hflip"]
    assert "a softer crop and turn" in soft[0]["reason"] and "no flips either" in soft[0]["reason"]
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    a = stored["config"]["augment"]
    assert a["crop_scale"] == [1.0, 1.0] and a["rotation_deg"] == 0.0 and a["hflip"] == 0.0
    assert "crop_scale:" in (tmp_path / "run" / "config.yaml").read_text()
    # the user's own crop wins: no check
    c2 = cfg(tiny_manifest, tmp_path, **{"probe.epochs": 40, "probe.lr": 0.03, "augment.crop_scale": [0.5, 1.0]})
    m2 = train(c2, tmp_path / "run2").metrics.to_json()
    assert not [ch for ch in m2["recipe"]["choices"] if ch["reason"].startswith("probe check")]


def test_augmentation_check_stops_at_the_first_step_that_keeps_the_label(
    tiny_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchvision.transforms import v2

    from edgeclf.train.data import ManifestDataset

    class Blank:
        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros((x.shape[0], 64, 64), dtype=x.dtype)

    # only a turn above 5 degrees destroys the label: the softer crop and turn is enough
    monkeypatch.setattr(
        ManifestDataset,
        "_build_augment",
        lambda self: Blank() if self.augment.rotation_deg > 5.0 else v2.CenterCrop(self.spec.crop_size),
    )
    m = train(
        cfg(tiny_manifest, tmp_path, **{"probe.epochs": 40, "probe.lr": 0.03, "finetune.epochs": 0}), tmp_path / "run"
    ).metrics.to_json()
    soft = {ch["key"]: ch["value"] for ch in m["recipe"]["choices"] if ch["reason"].startswith("probe check")}
    assert soft == {"augment.crop_scale": [0.8, 1.0], "augment.rotation_deg": 5.0}
    # a turn the user set is theirs: the ladder changes only the crop, then goes on to no crop, then no flips
    c2 = cfg(
        tiny_manifest, tmp_path, **{"probe.epochs": 40, "probe.lr": 0.03, "augment.rotation_deg": 30.0, "finetune.epochs": 0}
    )
    m2 = train(c2, tmp_path / "run2").metrics.to_json()
    soft2 = {ch["key"]: ch["value"] for ch in m2["recipe"]["choices"] if ch["reason"].startswith("probe check")}
    assert soft2 == {"augment.crop_scale": [1.0, 1.0], "augment.hflip": 0.0}


def test_resolution_check_measures_both_sizes_and_the_users_size_wins(tiny_manifest: Path, tmp_path: Path) -> None:
    import yaml

    base = {
        "data.manifest": tiny_manifest,
        "data.workers": 0,
        "data.cache_dir": str(tmp_path / "cache"),
        "probe.epochs": 5,
        "finetune.epochs": 1,
        "finetune.unfreeze": 1,
        "batch_size": 8,
        "seed": 1,
        "amp": "off",
    }
    run = tmp_path / "auto"
    train(load_config(None, base), run)  # 64 px images, native 224: both measured
    m = json.loads((run / "metrics.json").read_text())
    rows = m["recipe"]["resolution_check"]
    assert [r["size"] for r in rows] == [64, 224] and "gain_over_cheapest" in rows[1]
    chosen = next(c for c in m["recipe"]["choices"] if c["key"] == "model.image_size")
    assert chosen["source"] == "auto" and chosen["reason"].startswith("resolution check")
    # 6 validation images decide nothing: the cheaper size
    assert chosen["value"] == 64
    cfg_doc = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg_doc["config"]["model"]["image_size"] == 64 and cfg_doc["run"]["preprocess"]["crop_size"] == 64
    assert "resolution check" in (run / "config.yaml").read_text()

    user = tmp_path / "user"
    train(load_config(None, {**base, "model.image_size": 96}), user)
    m = json.loads((user / "metrics.json").read_text())
    assert "resolution_check" not in m["recipe"]
    c = next(c for c in m["recipe"]["choices"] if c["key"] == "model.image_size")
    assert c["source"] == "user" and c["value"] == 96
