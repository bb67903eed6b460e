"""Robustness suite: corruptions are deterministic and do what they say; the runner's numbers are right."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from edgeclf.errors import ConfigError, DataError
from edgeclf.evaluate.predictor import Predictor
from edgeclf.evaluate.robustness import (
    CORRUPTIONS,
    Corruption,
    RobustnessResult,
    apply_corruption,
    compare_robustness,
    corruption_rng,
    plot_robustness,
    robustness_table_rows,
    run_robustness,
)
from edgeclf.preprocess import PreprocessSpec

SIZE = 24


def spec(resize: int = SIZE, crop: int = SIZE) -> PreprocessSpec:
    return PreprocessSpec(resize_size=resize, crop_size=crop, interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class FakePredictor:
    """Implements the Predictor protocol with a hand-written rule on the raw pixels."""

    def __init__(self, classes: list[str], rule: Callable[[np.ndarray], np.ndarray], resize: int = SIZE) -> None:
        self.classes = classes
        self.spec = spec(resize)
        self.rule = rule
        self.calls: list[int] = []

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self.calls.append(len(images))
        return np.stack([self.rule(im) for im in images]).astype(np.float32)


def mean_colour_predictor() -> FakePredictor:
    """Class = the channel with the largest mean (red, green, blue)."""
    return FakePredictor(["red", "green", "blue"], lambda im: im.reshape(-1, 3).mean(0))


def brightness_predictor() -> FakePredictor:
    """Class 'bright' iff the mean level exceeds 128."""
    return FakePredictor(["dark", "bright"], lambda im: np.array([128.0 - im.mean(), im.mean() - 128.0]))


def textured(seed: int, h: int = SIZE, w: int = SIZE + 8) -> np.ndarray:
    """A smooth random image with texture (so blur, JPEG and shifts change it)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)).copy()


def tinted(channel: int, seed: int, strength: int = 70) -> np.ndarray:
    img = textured(seed).astype(np.int16) // 2 + 40
    img[..., channel] += strength
    return np.clip(img, 0, 255).astype(np.uint8)


def flat(level: int, seed: int) -> np.ndarray:
    """Mean ~level, small texture that does not cross 128 by itself."""
    noise = (textured(seed).astype(np.int16) - 128) // 32
    return np.clip(level + noise, 0, 255).astype(np.uint8)


# --- corruptions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_is_deterministic_uint8_and_shaped(name: str) -> None:
    c = CORRUPTIONS[name]
    img = textured(1)
    before = img.copy()
    for sev in c.severities:
        a = apply_corruption(img, name, sev, seed=3, index=5)
        b = c.apply(img, sev, corruption_rng(3, name, sev, 5))
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
        expected = (img.shape[1], img.shape[0], 3) if name == "rotate" and sev % 180 == 90 else img.shape
        assert a.shape == expected
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, img), f"{name} at {c.label(sev)} left the image unchanged"
    np.testing.assert_array_equal(img, before)  # inputs are never modified in place


@pytest.mark.parametrize("name", [n for n, c in CORRUPTIONS.items() if c.random])
def test_random_corruptions_depend_on_seed_and_index(name: str) -> None:
    img = textured(2, 40, 40)
    sev = CORRUPTIONS[name].severities[-1]
    a = apply_corruption(img, name, sev, seed=0, index=0)
    assert not np.array_equal(a, apply_corruption(img, name, sev, seed=1, index=0))
    assert not np.array_equal(a, apply_corruption(img, name, sev, seed=0, index=1))


def test_deterministic_corruptions_ignore_the_rng() -> None:
    img = textured(3)
    for name, c in CORRUPTIONS.items():
        if not c.random:
            sev = c.severities[0]
            np.testing.assert_array_equal(apply_corruption(img, name, sev, seed=0), apply_corruption(img, name, sev, seed=9))


def test_rng_is_stable_and_keyed_on_every_part() -> None:
    draw = lambda *k: corruption_rng(*k).integers(0, 2**62)  # noqa: E731
    assert draw(0, "gaussian_noise", 8, 0) == draw(0, "gaussian_noise", 8.0, 0)
    others = {
        draw(1, "gaussian_noise", 8, 0),
        draw(0, "translate", 8, 0),
        draw(0, "gaussian_noise", 16, 0),
        draw(0, "gaussian_noise", 8, 1),
    }
    assert draw(0, "gaussian_noise", 8, 0) not in others and len(others) == 4


@pytest.mark.parametrize(
    ("name", "identity"),
    [
        ("translate", 0.0),
        ("rotate", 0.0),
        ("brightness", 0.0),
        ("contrast", 1.0),
        ("gaussian_noise", 0.0),
        ("gaussian_blur", 0.0),
    ],
)
def test_identity_severity(name: str, identity: float) -> None:
    img = textured(4)
    np.testing.assert_array_equal(apply_corruption(img, name, identity, seed=7), img)


def test_rotate_multiples_of_90_are_rot90() -> None:
    img = textured(5)
    np.testing.assert_array_equal(apply_corruption(img, "rotate", 90), np.rot90(img))
    np.testing.assert_array_equal(apply_corruption(img, "rotate", -90), np.rot90(img, -1))
    np.testing.assert_array_equal(apply_corruption(img, "rotate", 180), img[::-1, ::-1])


def test_small_rotation_keeps_canvas_and_fills_corners_with_mean_colour() -> None:
    img = tinted(0, 6)
    out = apply_corruption(img, "rotate", 30)
    assert out.shape == img.shape
    mean = np.rint(img.reshape(-1, 3).mean(0)).astype(np.uint8)
    np.testing.assert_array_equal(out[0, 0], mean)
    np.testing.assert_array_equal(out[-1, -1], mean)
    # the centre pixel stays (rotation about the centre)
    assert np.abs(out[SIZE // 2, (SIZE + 8) // 2].astype(int) - img[SIZE // 2, (SIZE + 8) // 2]).max() <= 25
    # the sign is the direction: +15 and -15 are different images
    assert not np.array_equal(apply_corruption(img, "rotate", 15), apply_corruption(img, "rotate", -15))


def test_translate_shifts_by_the_fraction_with_edge_fill() -> None:
    img = textured(7, 40, 40)
    for index in range(6):
        out = apply_corruption(img, "translate", 0.1, seed=0, index=index)
        # find the shift: the one integer (dy, dx) with |(dy,dx)| ~ 4 px that explains the interior
        found = []
        for dy in range(-5, 6):
            for dx in range(-5, 6):
                inner = out[max(dy, 0) : 40 + min(dy, 0), max(dx, 0) : 40 + min(dx, 0)]
                src = img[max(-dy, 0) : 40 + min(-dy, 0), max(-dx, 0) : 40 + min(-dx, 0)]
                if np.array_equal(inner, src):
                    found.append((dy, dx))
        assert len(found) == 1
        dy, dx = found[0]
        assert abs(np.hypot(dy, dx) - 4.0) <= 0.75
        # the uncovered border repeats the image's edge pixels
        if dx > 0:
            np.testing.assert_array_equal(out[max(dy, 0) : 40 + min(dy, 0), 0], out[max(dy, 0) : 40 + min(dy, 0), dx])


def test_jpeg_lower_quality_changes_more() -> None:
    img = textured(8, 64, 64)
    diffs = [np.abs(apply_corruption(img, "jpeg", q).astype(int) - img).mean() for q in CORRUPTIONS["jpeg"].severities]
    assert CORRUPTIONS["jpeg"].severities == (50.0, 30.0, 10.0)
    assert 0 < diffs[0] < diffs[1] < diffs[2]


@pytest.mark.parametrize("name", ["gaussian_noise", "gaussian_blur"])
def test_stronger_severity_changes_more(name: str) -> None:
    img = textured(9, 48, 48)
    diffs = [np.abs(apply_corruption(img, name, s).astype(int) - img).mean() for s in CORRUPTIONS[name].severities]
    assert diffs == sorted(diffs) and diffs[0] > 0


def test_brightness_and_contrast_directions() -> None:
    img = flat(128, 10)
    assert apply_corruption(img, "brightness", -32).mean() < img.mean() < apply_corruption(img, "brightness", 32).mean()
    np.testing.assert_array_equal(apply_corruption(np.full((4, 4, 3), 250, np.uint8), "brightness", 64), 255)
    lo, hi = apply_corruption(img, "contrast", 0.5), apply_corruption(img, "contrast", 2.0)
    assert lo.std() < img.std() < hi.std()
    assert abs(lo.mean() - img.mean()) < 1.5  # contrast pivots about the mean


def test_labels() -> None:
    labels = {n: [c.label(s) for s in c.severities] for n, c in CORRUPTIONS.items()}
    assert labels["gaussian_noise"] == ["sigma=8", "sigma=16", "sigma=32"]
    assert labels["jpeg"] == ["q=50", "q=30", "q=10"]
    assert labels["rotate"] == ["-30°", "-15°", "+15°", "+30°", "90°"]
    assert labels["translate"] == ["5%", "10%", "15%"]
    assert labels["brightness"] == ["-64", "-32", "+32", "+64"]


def test_bad_input_is_a_user_error() -> None:
    with pytest.raises(DataError):
        apply_corruption(np.zeros((4, 4), np.uint8), "jpeg", 30)
    with pytest.raises(ConfigError, match="unknown corruption"):
        apply_corruption(textured(0), "fog", 1)


# --- the runner ----------------------------------------------------------------------------------


def colour_set(n_per_class: int = 4) -> tuple[list[np.ndarray], np.ndarray]:
    images = [tinted(c, 100 * c + i) for c in range(3) for i in range(n_per_class)]
    return images, np.repeat(np.arange(3), n_per_class)


def test_fake_predictors_implement_the_protocol() -> None:
    assert isinstance(mean_colour_predictor(), Predictor)


def test_clean_row_equals_direct_evaluation_and_identity_has_no_flips() -> None:
    images, y = colour_set()
    y = y.copy()
    y[0] = 1  # one wrong label so the metrics are not trivially 1
    p = mean_colour_predictor()
    ident = Corruption("identity", (0.0,), lambda im, s, rng: im.copy())
    res = run_robustness(p, images, y, seed=0, corruptions=[ident, "brightness"], batch_size=5)
    pred = p(images).argmax(1)
    assert res.clean.accuracy == pytest.approx(np.mean(pred == y))
    assert res.clean.macro_f1 == pytest.approx(f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=0))
    assert res.clean.accuracy < 1.0
    row = res.row("identity", 0.0)
    assert row.flip_rate == 0.0 and row.delta_macro_f1 == 0.0 and row.macro_f1 == res.clean.macro_f1
    # a uniform brightness shift (no clipping here) keeps the dominant channel
    assert all(r.flip_rate == 0.0 for r in res.rows if r.corruption == "brightness")


def test_batches_call_the_predictor_once_per_batch() -> None:
    images, y = colour_set(4)  # 12 images
    p = mean_colour_predictor()
    ticks: list[tuple[int, int]] = []
    res = run_robustness(p, images, y, corruptions=["jpeg"], batch_size=5, progress=lambda d, t: ticks.append((d, t)))
    assert p.calls == [5, 5, 2] * 4  # clean + 3 severities
    assert ticks[0] == (5, 48) and ticks[-1] == (48, 48) and len(ticks) == 12
    again = run_robustness(mean_colour_predictor(), images, y, corruptions=["jpeg"], batch_size=64)
    assert again.to_dict() == res.to_dict()


def test_brightness_flips_the_dark_bright_predictor_as_expected() -> None:
    images = [flat(90, i) for i in range(6)] + [flat(170, 10 + i) for i in range(4)]  # means within +-4 of 90 / 170
    y = np.array([0] * 6 + [1] * 4)
    res = run_robustness(brightness_predictor(), images, y, corruptions=["brightness"])
    assert res.clean.accuracy == 1.0 and res.clean.macro_f1 == 1.0
    # +-32 keeps every image on its side of 128 (122 / 138); -64 darkens the bright ones to ~106,
    # +64 brightens the dark ones to ~154
    assert res.row("brightness", -32).flip_rate == 0.0 and res.row("brightness", 32).flip_rate == 0.0
    assert res.row("brightness", -64).flip_rate == pytest.approx(0.4)
    r = res.row("brightness", 64)
    assert r.flip_rate == pytest.approx(0.6)
    assert r.accuracy == pytest.approx(0.4)
    assert r.macro_f1 == pytest.approx(f1_score(y, np.ones(10, int), average="macro", zero_division=0))
    assert r.delta_macro_f1 == pytest.approx(r.macro_f1 - 1.0)
    assert res.mean_macro_f1_by_corruption["brightness"] < res.clean.macro_f1


def test_same_seed_same_result() -> None:
    images = [flat(126, i) for i in range(10)]  # near the threshold: noise decides some
    y = np.zeros(10, int)
    a = run_robustness(brightness_predictor(), images, y, seed=1, corruptions=["gaussian_noise"])
    b = run_robustness(brightness_predictor(), images, y, seed=1, corruptions=["gaussian_noise"])
    assert a.to_dict() == b.to_dict()


def test_model_resolution_resize_is_exact_for_a_spec_following_predictor() -> None:
    torch = pytest.importorskip("torch")
    from edgeclf.evaluate.predictor import TorchPredictor

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)
    )
    p = TorchPredictor(
        model,
        PreprocessSpec(resize_size=20, crop_size=16, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
        ["a", "b", "c"],
    )
    images = [textured(i, 37, 53) for i in range(8)]
    y = np.arange(8) % 3
    res = run_robustness(p, images, y, corruptions=["rotate"])
    pred = p(images).argmax(1)
    assert res.resolution == 20
    assert res.clean.accuracy == pytest.approx(np.mean(pred == y))
    assert res.clean.macro_f1 == pytest.approx(f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=0))


def test_result_to_dict_is_json_and_round_trips() -> None:
    images, y = colour_set(3)
    res = run_robustness(mean_colour_predictor(), images, y, corruptions=["gaussian_noise", "rotate"])
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert [r["severity_label"] for r in d["rows"]][:3] == ["sigma=8", "sigma=16", "sigma=32"]
    assert set(d["rows"][0]) == {
        "corruption",
        "severity",
        "severity_label",
        "accuracy",
        "macro_f1",
        "flip_rate",
        "delta_macro_f1",
    }
    assert d["clean"]["corruption"] == "clean"
    per = d["mean_corruption_macro_f1"]["per_corruption"]
    assert per["rotate"] == pytest.approx(np.mean([r["macro_f1"] for r in d["rows"] if r["corruption"] == "rotate"]))
    assert d["mean_corruption_macro_f1"]["overall"] == pytest.approx(np.mean(list(per.values())))
    assert RobustnessResult.from_dict(d).to_dict() == res.to_dict()


def test_runner_rejects_bad_input() -> None:
    images, y = colour_set(2)
    p = mean_colour_predictor()
    with pytest.raises(DataError):
        run_robustness(p, images, y[:-1])
    with pytest.raises(DataError):
        run_robustness(p, images, y + 3)
    with pytest.raises(DataError):
        run_robustness(p, [], np.zeros(0, int))
    with pytest.raises(ConfigError):
        run_robustness(p, images, y, corruptions=["fog"])
    bad = FakePredictor(["a", "b"], lambda im: np.zeros(3))
    with pytest.raises(ConfigError, match="logits of shape"):
        run_robustness(bad, images, y % 2, corruptions=[])


# --- comparing and rendering ---------------------------------------------------------------------


def two_models() -> dict[str, RobustnessResult]:
    images, y = colour_set(4)
    a = run_robustness(mean_colour_predictor(), images, y, corruptions=["brightness", "jpeg"])
    # a worse "model": ignores blue
    worse = FakePredictor(["red", "green", "blue"], lambda im: im.reshape(-1, 3).mean(0) * np.array([1, 1, 0.5]))
    b = run_robustness(worse, images, y, corruptions=["brightness", "jpeg", "gaussian_blur"])
    return {"eager": a, "int8": b}


def test_compare_and_table_rows() -> None:
    res = two_models()
    rows = compare_robustness(res)
    assert rows[0].corruption == "clean"
    assert [r.severity_label for r in rows[1:5]] == ["-64", "-32", "+32", "+64"]
    assert rows[1].macro_f1["eager"] == res["eager"].rows[0].macro_f1
    assert rows[1].macro_f1["int8"] == res["int8"].rows[0].macro_f1
    assert rows[-1].corruption == "gaussian_blur" and rows[-1].macro_f1["eager"] is None
    assert res["int8"].clean.macro_f1 < res["eager"].clean.macro_f1
    json.dumps([r.to_dict() for r in rows], allow_nan=False)

    single = robustness_table_rows(res["eager"])
    assert list(single[0]) == ["corruption", "severity", "accuracy", "macro-F1", "Δ macro-F1", "flips"]
    assert len(single) == 1 + len(res["eager"].rows)
    both = robustness_table_rows(res)
    assert "macro-F1 (int8)" in both[0] and both[-1]["macro-F1 (eager)"] == "–"


def test_plot_writes_a_png(tmp_path: Path) -> None:
    res = two_models()
    out = plot_robustness(res, tmp_path / "figs" / "robustness.png", "macro-F1 under corruption")
    with Image.open(out) as im:
        im.verify()
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 800 and im.height > 400
    single = plot_robustness(res["eager"], tmp_path / "one.png", "one model")
    assert single.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs", "one.png"]  # no temporary files left


def test_custom_severities_via_replace() -> None:
    images, y = colour_set(2)
    c = dataclasses.replace(CORRUPTIONS["jpeg"], severities=(20,))
    res = run_robustness(mean_colour_predictor(), images, y, corruptions=[c])
    assert [r.severity_label for r in res.rows] == ["q=20"]
