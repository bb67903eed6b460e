"""Training building blocks against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeclf.errors import ConfigError, DataError
from edgeclf.preprocess import PreprocessSpec
from edgeclf.train.config import load_config
from edgeclf.train.data import DecodeCache, EpochSampler, ManifestDataset
from edgeclf.train.losses import FocalLoss, LogitAdjustedLoss, build_loss, class_weights
from edgeclf.train.schedule import lr_factor
from tests.conftest import blob_image, save

SPEC = PreprocessSpec(resize_size=40, crop_size=32, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def test_inverse_and_effective_class_weights() -> None:
    w = class_weights([10, 30, 60], "inverse")
    raw = np.array([1 / 10, 1 / 30, 1 / 60])
    assert w.tolist() == pytest.approx((raw * 3 / raw.sum()).tolist(), rel=1e-6)
    beta = 0.9
    e = class_weights([10, 30, 60], "effective", beta)
    raw_e = np.array([(1 - beta) / (1 - beta**n) for n in (10, 30, 60)])
    assert e.tolist() == pytest.approx((raw_e * 3 / raw_e.sum()).tolist(), rel=1e-6)
    assert class_weights([5, 5], "none") is None
    with pytest.raises(DataError):
        class_weights([5, 0], "inverse")


def test_focal_loss_hand_computed() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([0, 0])
    p = torch.softmax(logits, 1)[:, 0]
    expected = (-((1 - p) ** 2) * torch.log(p)).mean()
    assert float(FocalLoss(2.0)(logits, target)) == pytest.approx(float(expected), rel=1e-6)
    # gamma 0 is cross-entropy; weights act like F.cross_entropy's
    w = torch.tensor([1.0, 3.0])
    t2 = torch.tensor([0, 1])
    assert float(FocalLoss(0.0, w)(logits, t2)) == pytest.approx(float(F.cross_entropy(logits, t2, weight=w)), rel=1e-6)
    assert float(FocalLoss(0.0, None, 0.1)(logits, t2)) == pytest.approx(
        float(F.cross_entropy(logits, t2, label_smoothing=0.1)), rel=1e-6
    )


def test_schedule_warmup_peak_end() -> None:
    total, warm = 100, 10
    assert lr_factor(0, total, warm) == pytest.approx(1 / 11)
    assert lr_factor(9, total, warm) == pytest.approx(10 / 11)
    assert lr_factor(10, total, warm) == pytest.approx(1.0)
    mid = lr_factor(55, total, warm, min_ratio=0.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, total, warm, min_ratio=0.01) == pytest.approx(0.01)
    assert lr_factor(10 + 25, total, warm, "step", step_every=20, gamma=0.1) == pytest.approx(0.1)


def test_sampler_depends_only_on_seed_and_epoch_and_shards_cover_everything() -> None:
    targets = [0] * 30 + [1] * 7
    a, b = EpochSampler(targets, 5), EpochSampler(targets, 5)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    shards = [EpochSampler(targets, 5, rank=r, world_size=2) for r in range(2)]
    for s in shards:
        s.set_epoch(3)
    seen = [i for s in shards for _, i in s]
    assert set(seen) == set(range(37)) and len(shards[0]) == len(shards[1]) == 19
    bal = EpochSampler(targets, 1, balanced=True)
    draws = [i for _ in range(20) for _, i in (bal.set_epoch(_), list(bal))[1]]
    frac_minority = np.mean([targets[i] for i in draws])
    assert 0.4 < frac_minority < 0.6


def test_cache_and_dataset(tmp_path: Path) -> None:
    from edgeclf.data.manifest import ManifestRow

    img = save(blob_image(1, 50), tmp_path / "d" / "a" / "x.png")
    row = ManifestRow(path="a/x.png", label="a", sha256="0" * 64, group="g", split="train")
    cache = DecodeCache(tmp_path / "cache", SPEC)
    arr = cache.get(img, row.sha256)
    assert arr.shape == (40, 40, 3) and arr.dtype == np.uint8
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    img.unlink()  # served from the cache now
    assert np.array_equal(cache.get(img, row.sha256), arr)
    ds = ManifestDataset([row], tmp_path / "d", ["a"], SPEC, cache, load_config().augment, seed=0)
    x1, y = ds[(2, 0)]
    x2, _ = ds[(2, 0)]
    x3, _ = ds[(3, 0)]
    assert x1.shape == (3, 32, 32) and y == 0
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    ev, _ = ds[0]  # evaluation item: exact spec centre crop
    assert torch.equal(ev, torch.from_numpy(arr[4:36, 4:36]).permute(2, 0, 1))


def test_config_overrides_and_errors(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune:\n  epochs: 3\n  lr: 0.01\nbatch_size: 8\n")
    cfg = load_config(recipe, {"finetune.epochs": 5})
    assert (cfg.finetune.epochs, cfg.finetune.lr, cfg.batch_size) == (5, 0.01, 8)
    recipe.write_text("finetune:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="finetune.epochz"):
        load_config(recipe)
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(None, {"batch_size": 0})


def test_logit_adjusted_loss_learns_balanced_logits_where_cross_entropy_learns_the_prior() -> None:
    # a bias-only model on a 9:1 data set: CE's optimum is the log prior (always the majority);
    # the logit-adjusted optimum is flat (the balanced posterior of an uninformative input)
    y = torch.tensor([0] * 90 + [1] * 10)
    counts = [90, 10]

    def fit(loss: torch.nn.Module) -> torch.Tensor:
        bias = torch.zeros(2, requires_grad=True)
        opt = torch.optim.LBFGS([bias], max_iter=200)

        def step() -> torch.Tensor:
            opt.zero_grad()
            value = loss(bias.expand(len(y), 2), y)
            value.backward()
            return value

        opt.step(step)
        return bias.detach()

    ce = fit(build_loss("ce", None, 0.0, 2.0))
    la = fit(build_loss("logit_adjusted", None, 0.0, 2.0, counts, 1.0))
    assert float(ce[0] - ce[1]) == pytest.approx(math.log(9), abs=1e-3)
    assert float(la[0] - la[1]) == pytest.approx(0.0, abs=1e-3)
    # tau scales the adjustment; tau 0 is plain cross-entropy
    logits, target = torch.randn(8, 2), torch.randint(0, 2, (8,))
    assert torch.allclose(LogitAdjustedLoss(counts, 0.0)(logits, target), F.cross_entropy(logits, target))
    with pytest.raises(DataError, match="every class needs training images"):
        LogitAdjustedLoss([5, 0])
    with pytest.raises(ValueError, match="class counts"):
        build_loss("logit_adjusted", None, 0.0, 2.0)


def test_weighted_smoothed_loss_weights_each_image_by_its_own_class() -> None:
    # a majority-class image, uniform logits, class-balanced weights: the smoothing must pull
    # it towards every other class equally, not towards the rare ones (torch's weighted
    # smoothing weights the uniform term by each class's weight)
    w = torch.tensor([0.2, 1.0, 2.8])
    logits = torch.zeros(1, 3, requires_grad=True)
    loss = build_loss("ce", w, 0.1, 2.0)
    loss(logits, torch.tensor([0])).backward()
    g = logits.grad[0]
    assert float(g[1]) == pytest.approx(float(g[2]), abs=1e-7)
    torch_style = torch.zeros(1, 3, requires_grad=True)
    F.cross_entropy(torch_style, torch.tensor([0]), weight=w, label_smoothing=0.1).backward()
    assert float(torch_style.grad[0, 2]) < float(torch_style.grad[0, 1]) - 1e-3  # the skew it avoids
    # a batch: each image's smoothed CE times its class weight, normalised by the weights
    logits, target = torch.randn(6, 3), torch.tensor([0, 0, 1, 2, 0, 1])
    per = F.cross_entropy(logits, target, label_smoothing=0.1, reduction="none")
    expected = (per * w[target]).sum() / w[target].sum()
    assert torch.allclose(build_loss("ce", w, 0.1, 2.0)(logits, target), expected, atol=1e-6)
    # without weights or without smoothing it is torch's own loss
    assert isinstance(build_loss("ce", w, 0.0, 2.0), torch.nn.CrossEntropyLoss)
    assert isinstance(build_loss("ce", None, 0.1, 2.0), torch.nn.CrossEntropyLoss)


def test_no_crop_augmentation_is_the_deployed_centre_crop(tmp_path: Path) -> None:
    """crop_scale (1, 1) means no crop: the training view is the deployed centre crop, not the whole
    (resized) image squeezed to the input size."""
    from edgeclf.data.manifest import ManifestRow
    from edgeclf.train.config import AugmentConfig

    save(blob_image(1, 50), tmp_path / "d" / "a" / "x.png")
    row = ManifestRow(path="a/x.png", label="a", sha256="0" * 64, group="g", split="train")
    cache = DecodeCache(tmp_path / "c", SPEC)
    aug = AugmentConfig(crop_scale=(1.0, 1.0), hflip=0.0, rotation_deg=0.0, color_jitter=0.0)
    ds = ManifestDataset([row], tmp_path / "d", ["a"], SPEC, cache, aug, seed=0)
    deployed, _ = ds[0]
    for epoch in range(3):
        x, _ = ds[(epoch, 0)]
        assert torch.equal(x, deployed)


def test_trunk_views_equal_to_an_image_already_run_are_reused(tmp_path: Path) -> None:
    """Flips-only views hold just two distinct inputs per image: the memo runs each input once, and
    the activations are those of running every view."""
    from types import SimpleNamespace

    from edgeclf.data.manifest import ManifestRow
    from edgeclf.train.config import AugmentConfig
    from edgeclf.train.loop import Trainer

    rows = []
    for i in range(6):
        save(blob_image(i, 50), tmp_path / "d" / "a" / f"x{i}.png")
        rows.append(ManifestRow(path=f"a/x{i}.png", label="a", sha256=f"{i}" * 64, group=f"g{i}", split="train"))
    cache = DecodeCache(tmp_path / "c", SPEC)
    aug = AugmentConfig(crop_scale=(1.0, 1.0), hflip=0.5, rotation_deg=0.0, color_jitter=0.0)
    ds = ManifestDataset(rows, tmp_path / "d", ["a"], SPEC, cache, aug, seed=0)
    seen = []

    def runner(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return x[:, :, ::4, ::4] * 2.0 + 1.0

    host = SimpleNamespace(cfg=load_config(None, {"data.workers": 0, "batch_size": 2}), progress=None)
    run = Trainer._run_trunk
    memo: dict = {}
    clean = run(host, runner, ds, list(range(6)), SPEC, "train", torch.float32, memo)
    assert sum(seen) == 6 and len(memo) == 6
    views = [run(host, runner, ds, [(v, i) for i in range(6)], SPEC, "view", torch.float32, memo) for v in range(4)]
    assert 0 < sum(seen) - 6 <= 6  # at most one flipped input per image was new
    seen.clear()
    plain = [run(host, runner, ds, [(v, i) for i in range(6)], SPEC, "view", torch.float32) for v in range(4)]
    assert sum(seen) == 24
    for a, b in zip(views, plain, strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(v, clean) for v in views)  # some images were flipped


def test_mixup_blends_inputs_and_losses_reproducibly() -> None:
    from edgeclf.train.loop import _mixed_loss, mixup_batch

    x = torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    # off: the batch untouched
    same, mix = mixup_batch(x, y, 0.0, np.random.default_rng(1))
    assert mix is None and same is x
    a, (partner, lam) = mixup_batch(x, y, 0.4, np.random.default_rng(1))
    b, (partner_b, lam_b) = mixup_batch(x, y, 0.4, np.random.default_rng(1))
    assert torch.equal(a, b) and torch.equal(partner, partner_b) and lam == lam_b  # seeded
    assert 0.0 <= lam <= 1.0
    # every row is lam * itself + (1 - lam) * one partner row, whose label is the partner target
    for i in range(8):
        j = [k for k in range(8) if torch.allclose(a[i], lam * x[i] + (1 - lam) * x[k])]
        assert j and int(y[j[0]]) == int(partner[i]) or lam == 1.0
    assert sorted(partner.tolist()) == sorted(y.tolist())  # a permutation of the batch
    logits = torch.randn(8, 3)
    ce = torch.nn.CrossEntropyLoss()
    want = lam * ce(logits, y) + (1 - lam) * ce(logits, partner)
    assert torch.allclose(_mixed_loss(ce, logits, y, (partner, lam)), want)
    assert torch.allclose(_mixed_loss(ce, logits, y, None), ce(logits, y))


def test_weight_average_is_the_running_mean_of_float_tensors_and_latest_counter() -> None:
    from edgeclf.train.loop import average_start_epoch, running_average

    states = [
        {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)},
        {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(4)},
        {"w": torch.tensor([5.0, 1.0]), "n": torch.tensor(9)},
    ]
    avg = None
    for epoch, st in enumerate(states, start=4):
        avg = running_average(avg, st, epoch)
    assert avg is not None and avg["n"] == 3 and (avg["first"], avg["last"]) == (4, 6)
    assert torch.allclose(avg["state"]["w"], torch.tensor([3.0, 3.0]))
    assert int(avg["state"]["n"]) == 9  # a counter is not averaged
    assert torch.equal(states[0]["w"], torch.tensor([1.0, 2.0]))  # the inputs are not modified
    assert average_start_epoch(11, 0.5) == 5 and average_start_epoch(11, 1.0) == 11 and average_start_epoch(4, 0.0) == 0
