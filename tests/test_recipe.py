"""Data-aware recipe rules: each fires on data built to trigger it, and a user's setting always wins."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeclf.data.manifest import ManifestRow
from edgeclf.train import load_config
from edgeclf.train.recipe import (
    DataFacts,
    annotate_yaml,
    epochs_for,
    explicit_keys,
    measure_facts,
    resolve_recipe,
    unfreeze_for,
)


def facts(counts: dict[str, int], gray: int = 0, of: int = 10, side: int = 128) -> DataFacts:
    n = sum(counts.values())
    small = min(counts, key=counts.get)
    return DataFacts(
        num_train=n,
        class_counts=counts,
        imbalance_ratio=max(counts.values()) / min(counts.values()),
        min_class_share=counts[small] / n,
        smallest_class=small,
        grayscale_sampled=gray,
        grayscale_of=of,
        median_short_side=side,
    )


def choice(choices, key):  # noqa: ANN001, ANN201
    return next(c for c in choices if c.key == key)


def test_imbalance_switches_on_class_balanced_loss() -> None:
    cfg, ch = resolve_recipe(load_config(), facts({"a": 1400, "b": 100}), 224, 8)
    assert cfg.loss.class_weights == "effective"
    assert "imbalance ratio 14.0 > 3" in choice(ch, "loss.class_weights").reason
    # a small share alone triggers it too (ratio 2.5, but one class under 5 % of 22 classes' data)
    many = {f"c{i}": 100 for i in range(20)} | {"tiny": 40}
    cfg, ch = resolve_recipe(load_config(), facts(many), 224, 8)
    assert cfg.loss.class_weights == "effective" and "tiny" in choice(ch, "loss.class_weights").reason
    cfg, ch = resolve_recipe(load_config(), facts({"a": 100, "b": 90}), 224, 8)
    assert cfg.loss.class_weights == "none" and choice(ch, "loss.class_weights").source == "auto"


def test_users_setting_wins_and_is_recorded_as_theirs() -> None:
    user = load_config(None, {"loss.class_weights": "none", "augment.color_jitter": 0.3, "finetune.epochs": 2})
    assert {"loss.class_weights", "augment.color_jitter", "finetune.epochs"} <= explicit_keys(user)
    cfg, ch = resolve_recipe(user, facts({"a": 1400, "b": 100}, gray=10), 224, 8)
    assert cfg.loss.class_weights == "none" and cfg.augment.color_jitter == 0.3 and cfg.finetune.epochs == 2
    c = choice(ch, "loss.class_weights")
    assert c.source == "user" and "rule would say: 'effective'" in c.reason
    assert choice(ch, "finetune.warmup_epochs").value == 0.5  # from the user's 2 epochs, not the rule's


def test_grayscale_data_gets_no_colour_jitter() -> None:
    cfg, ch = resolve_recipe(load_config(), facts({"a": 50, "b": 50}, gray=10, of=10), 224, 8)
    assert cfg.augment.color_jitter == 0.0 and "10/10 sampled images are grayscale" in choice(ch, "augment.color_jitter").reason
    cfg, ch = resolve_recipe(load_config(), facts({"a": 50, "b": 50}, gray=3, of=10), 224, 8)
    assert cfg.augment.color_jitter == load_config().augment.color_jitter
    assert not any(c.key == "augment.color_jitter" for c in ch)


def test_resolution_follows_the_images_within_the_budget() -> None:
    big = facts({"a": 50, "b": 50}, side=300)
    assert resolve_recipe(load_config(), big, 224, 8, max_image_size=320)[0].model.image_size == 288
    assert resolve_recipe(load_config(), big, 224, 8, max_image_size=256)[0].model.image_size == 256
    assert resolve_recipe(load_config(), big, 224, 8)[0].model.image_size == 224  # no budget known: native
    small = facts({"a": 50, "b": 50}, side=128)
    cfg, ch = resolve_recipe(load_config(), small, 224, 8, max_image_size=320)
    assert cfg.model.image_size == 224 and "never larger" in choice(ch, "model.image_size").reason
    # the budget caps even the native size
    assert resolve_recipe(load_config(), small, 224, 8, max_image_size=192)[0].model.image_size == 192


def test_data_size_scales_epochs_and_depth() -> None:
    assert epochs_for(100, 32) == 30 and epochs_for(100_000, 32) == 4
    assert epochs_for(2000, 32) < epochs_for(500, 32)
    assert unfreeze_for(500, 8) == 4 and unfreeze_for(5000, 8) == 4 and unfreeze_for(50_000, 8) == 5
    assert unfreeze_for(50_000, 3) == 3 and unfreeze_for(500, 2) == 2
    cfg, ch = resolve_recipe(load_config(), facts({"a": 3000, "b": 3000}), 224, 8)
    assert cfg.finetune.unfreeze == 4 and cfg.finetune.epochs == epochs_for(6000, 32)
    assert "6000 training images" in choice(ch, "finetune.epochs").reason


def test_measure_facts_on_images(tmp_path: Path) -> None:
    rows = []
    rng = np.random.default_rng(0)
    for i in range(12):
        label = "ok" if i < 10 else "bad"
        g = rng.integers(0, 256, (300, 320), dtype=np.uint8)
        im = Image.fromarray(g, "L") if i % 2 else Image.fromarray(np.stack([g] * 3, -1), "RGB")
        p = tmp_path / label / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        im.save(p)
        rows.append(ManifestRow(path=f"{label}/{i}.png", label=label, sha256="0" * 64, group=str(i), split="train"))
    f = measure_facts(rows, tmp_path, ["bad", "ok"])
    assert f.class_counts == {"bad": 2, "ok": 10} and f.imbalance_ratio == 5.0 and f.smallest_class == "bad"
    assert f.grayscale and f.grayscale_sampled == 12 and f.median_short_side == 300
    colour = tmp_path / "ok" / "0.png"
    Image.fromarray(rng.integers(0, 256, (300, 320, 3), dtype=np.uint8), "RGB").save(colour)
    assert measure_facts(rows, tmp_path, ["bad", "ok"]).grayscale_sampled == 11


def test_config_yaml_says_why() -> None:
    cfg, ch = resolve_recipe(load_config(), facts({"a": 1400, "b": 100}), 224, 8)
    text = "config:\n  loss:\n    type: ce\n    class_weights: effective\n  finetune:\n    epochs: 30\n"
    out = annotate_yaml(text, ch)
    assert "    class_weights: effective  # auto: audit: imbalance ratio 14.0 > 3" in out
    assert "    type: ce\n" in out


@pytest.mark.parametrize("bad", [{"finetune.cache_views": -1}, {"finetune.cache_max_gb": 0}])
def test_cache_settings_validated(bad: dict) -> None:
    from edgeclf.errors import ConfigError

    with pytest.raises(ConfigError):
        load_config(None, bad)


def test_resolution_candidates_are_native_and_the_images_own_size() -> None:
    from edgeclf.train.recipe import resolution_candidates

    def f(side: int) -> DataFacts:
        return facts({"a": 50, "b": 50}, side=side)

    assert resolution_candidates(f(128), 224) == [128, 224]  # small images: their size vs up-sampled
    assert resolution_candidates(f(100), 224) == [128, 224]  # rounded up to a multiple of 32
    assert resolution_candidates(f(20), 224) == [64, 224]  # never below 64 px
    assert resolution_candidates(f(224), 224) == [224]
    assert resolution_candidates(f(300), 224, max_image_size=320) == [224, 288]  # large: native vs theirs
    assert resolution_candidates(f(300), 224, max_image_size=256) == [224, 256]  # within the budget
    assert resolution_candidates(f(300), 224) == [224]  # no budget known: nothing to measure
    assert resolution_candidates(f(0), 224) == [224]


def test_choose_resolution_pays_for_a_larger_input_only_beyond_the_noise() -> None:
    from edgeclf.train.recipe import RESOLUTION_CHECK, choose_resolution

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 100)
    cheap = np.where(rng.random(300) < 0.6, y, (y + 1) % 3)  # 60 % right
    better = np.where(rng.random(300) < 0.9, y, (y + 1) % 3)  # 90 % right
    size, why, rows = choose_resolution([128, 224], y, {128: cheap, 224: better}, ["a", "b", "c"])
    assert size == 224 and why.startswith(RESOLUTION_CHECK) and "95% interval" in why
    assert rows[1]["gain_over_cheapest"]["low"] > 0
    # one image better is noise: the cheaper size stays
    one_more = cheap.copy()
    one_more[np.flatnonzero(one_more != y)[0]] = y[np.flatnonzero(one_more != y)[0]]
    size, why, rows = choose_resolution([128, 224], y, {128: cheap, 224: one_more}, ["a", "b", "c"])
    assert size == 128 and "not better beyond the noise" in why
    # the larger size worse: the cheaper one, whatever the order of the dict
    size, _, _ = choose_resolution([224, 288], y, {288: cheap, 224: better}, ["a", "b", "c"])
    assert size == 224


def test_the_demo_pins_two_stages_as_a_user_choice() -> None:
    """`edgeclf demo` fine-tunes the last 2 stages; config.yaml says the user set it and what the rule says."""
    from edgeclf.build.options import demo_options

    cfg, ch = resolve_recipe(load_config(None, demo_options().extra_train), facts({"a": 1500, "b": 300}), 224, 8)
    c = choice(ch, "finetune.unfreeze")
    assert cfg.finetune.unfreeze == 2 and c.source == "user" and "rule would say: 4" in c.reason
