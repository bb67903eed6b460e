"""Grad-CAM, 2-D embeddings + projector export, label suggestions and the label audit.

Most tests use :class:`ColorNet`, a tiny model whose "feature map" is the
normalised image itself and whose logit for class k is the mean of colour
channel k: its Grad-CAM, confidences and features are known in closed form.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import edgeclf.evaluate.labeling as labeling
from edgeclf.data.manifest import Manifest, ManifestRow
from edgeclf.errors import ConfigError, DataError
from edgeclf.evaluate.embeddings import export_projector, plot_embeddings, project_2d
from edgeclf.evaluate.explain import grad_cam, gradcam_grid, model_view, overlay, sample_correct_and_wrong
from edgeclf.evaluate.labeling import AUDIT_CS, audit_labels, oof_suspects, suggest_labels
from edgeclf.preprocess import PreprocessSpec, normalize

SPEC = PreprocessSpec(resize_size=72, crop_size=64, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
CLASSES = ["red", "green", "blue"]


class ColorNet(nn.Module):
    """Features = the normalised image; logit k = ``scale`` x mean of channel k minus the mean of the others."""

    def __init__(self, scale: float = 4.0) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.fc.weight.copy_(scale * (1.5 * torch.eye(3) - 0.5))  # c_k - (c_i + c_j) / 2
            self.fc.bias.zero_()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = f.mean(dim=(2, 3))
        return pooled if pre_logits else self.fc(pooled)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _solid(rgb: tuple[int, int, int], h: int = 64, w: int = 64) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def _png_ok(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return im.size


# ----------------------------------------------------------------------------- Grad-CAM


def _red_square_top_left() -> torch.Tensor:
    img = _solid((0, 0, 255))  # blue
    img[:32, :32] = (255, 0, 0)  # red top-left quadrant
    return torch.from_numpy(normalize(img, SPEC))[None]


@pytest.mark.parametrize("use_layer", [False, True])
def test_grad_cam_highlights_the_region_that_drives_the_class(use_layer: bool) -> None:
    model = _frozen(ColorNet())
    x = _red_square_top_left().contiguous(memory_format=torch.channels_last)
    layer = None
    if use_layer:  # explain the output of an explicit module through a forward hook
        model.features = nn.Identity()
        model.forward_features = lambda t: model.features(t)  # type: ignore[method-assign]
        layer = model.features
    cam_red = grad_cam(model, x, target_class=0, layer=layer)
    cam_blue = grad_cam(model, x, target_class=2, layer=layer)
    assert cam_red.shape == (64, 64) and cam_red.dtype == np.float32
    assert cam_red.min() >= 0.0 and cam_red.max() == pytest.approx(1.0)
    # all of the red evidence lies in the top-left quadrant, all of the blue outside it
    assert cam_red[:32, :32].sum() / cam_red.sum() > 0.95
    assert cam_blue[:32, :32].sum() / cam_blue.sum() < 0.05
    assert all(p.grad is None for p in model.parameters())


def test_grad_cam_default_target_is_the_prediction() -> None:
    model = _frozen(ColorNet())
    x = _red_square_top_left()  # 3/4 blue: predicted blue
    assert np.array_equal(grad_cam(model, x), grad_cam(model, x, target_class=2))
    with pytest.raises(ConfigError):
        grad_cam(model, x, target_class=3)
    with pytest.raises(ConfigError):
        grad_cam(model, x[0])


def test_grad_cam_on_a_timm_cnn_with_frozen_parameters() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", num_classes=3, pretrained=False)
    model = _frozen(model).to(memory_format=torch.channels_last)
    img = _solid((40, 160, 90))
    img[10:40, 20:50] = (230, 30, 200)
    x = torch.from_numpy(normalize(img, SPEC))[None].contiguous(memory_format=torch.channels_last)
    cam = grad_cam(model, x)
    assert cam.shape == (64, 64)
    assert 0.0 <= cam.min() and cam.max() <= 1.0
    assert cam.std() > 1e-3, "the heat map is constant"
    cam_hook = grad_cam(model, x, layer=model.blocks[-1])
    assert cam_hook.shape == (64, 64) and 0.0 <= cam_hook.min() and cam_hook.max() <= 1.0
    assert not model.training


def test_overlay_blends_a_heat_map() -> None:
    crop = _solid((128, 128, 128), 16, 16)
    cam = np.zeros((4, 4), np.float32)
    cam[0, 0] = 1.0  # resized to the crop
    out = overlay(crop, cam)
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert not np.array_equal(out[0, 0], out[15, 15])  # hot corner vs cold corner differ
    with pytest.raises(ConfigError):
        overlay(crop.astype(np.float32), cam)


def test_gradcam_grid_writes_a_png(tmp_path: Path) -> None:
    model = _frozen(ColorNet())
    images = [_solid((220, 20, 20), 80, 100), _solid((20, 20, 220), 90, 70), _solid((20, 220, 20), 64, 64)]
    images[0][:20] = (20, 20, 220)
    crop = model_view(images[0], SPEC)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    out = gradcam_grid(
        model,
        SPEC,
        CLASSES,
        images,
        labels=[0, 2, 1],
        preds=[0, 2, 0],
        probs=probs,
        path=tmp_path / "gradcam.png",
        title="Grad-CAM (val)",
    )
    w, h = _png_ok(out)
    assert w > 300 and h > 150


def test_sample_correct_and_wrong_mixes_both() -> None:
    labels = [0] * 20 + [1] * 20
    preds = [0] * 17 + [1] * 3 + [1] * 20  # 3 wrong
    pick = sample_correct_and_wrong(labels, preds, max_items=8, seed=1)
    assert len(pick) == 8 and len(set(pick)) == 8
    assert set(pick[:3]) == {17, 18, 19}  # every wrong one, first
    assert pick == sample_correct_and_wrong(labels, preds, max_items=8, seed=1)


# ----------------------------------------------------------------------------- embeddings


def _two_clusters(n: int = 20, d: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 1.0, (n, d))
    b = rng.normal(0.0, 1.0, (n, d)) + 8.0
    return np.concatenate([a, b]).astype(np.float32), np.repeat([0, 1], n)


def test_project_2d_is_deterministic_and_separates_clusters() -> None:
    feats, y = _two_clusters()
    xy, method = project_2d(feats, method="tsne", seed=3)
    xy2, _ = project_2d(feats, method="tsne", seed=3)
    assert method == "tsne" and xy.shape == (40, 2)
    np.testing.assert_array_equal(xy, xy2)
    # every point's nearest neighbour in the map belongs to its own cluster
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).all()
    # and the two clusters are linearly separable along the centroid axis
    axis = xy[y == 1].mean(0) - xy[y == 0].mean(0)
    proj = xy @ axis
    assert proj[y == 0].max() < proj[y == 1].min()
    _, auto = project_2d(feats)
    assert auto in ("umap", "tsne")


def test_project_2d_small_and_bad_input() -> None:
    xy, method = project_2d(np.eye(3, 8, dtype=np.float32))
    assert method == "pca" and xy.shape == (3, 2)
    assert project_2d(np.zeros((0, 4)))[0].shape == (0, 2)
    with pytest.raises(DataError):
        project_2d(np.full((6, 3), np.nan))
    with pytest.raises(ConfigError):
        project_2d(np.zeros((6, 3)), method="lda")  # type: ignore[arg-type]


def test_plot_embeddings_writes_a_png(tmp_path: Path) -> None:
    feats, y = _two_clusters()
    xy, method = project_2d(feats, method="tsne")
    wrong = np.zeros(len(y), bool)
    wrong[3] = True
    out = plot_embeddings(xy, y, ["cat", "dog"], tmp_path / "emb.png", "val embeddings", method, wrong=wrong)
    _png_ok(out)
    with pytest.raises(DataError):
        plot_embeddings(xy, y + 5, ["cat", "dog"], tmp_path / "bad.png", "t", method)


def test_export_projector_writes_config_metadata_and_sprite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    feats, y = _two_clusters(n=5, d=8)
    paths = [f"cls/img{i}.png" for i in range(10)]
    paths[2] = "cls/odd\tname.png"
    images = [_solid((i * 20, 10, 200), 30 + i, 40) for i in range(10)]
    log_dir = tmp_path / "tb" / "projector"
    for _ in range(2):  # a second export of the same tag replaces the first, quietly
        emb_dir = export_projector(feats, y, ["cat", "dog"], paths, log_dir, images=images)
    assert capsys.readouterr().out == ""
    config = (log_dir / "projector_config.pbtxt").read_text()
    assert "metadata.tsv" in config and "sprite.png" in config and config.count("embeddings {") == 1
    lines = (emb_dir / "metadata.tsv").read_text().splitlines()
    assert lines[0] == "label\tfile" and len(lines) == 11
    assert lines[1] == "cat\tcls/img0.png" and lines[3] == "cat\tcls/odd name.png" and lines[-1].startswith("dog\t")
    assert len((emb_dir / "tensors.tsv").read_text().splitlines()) == 10
    w, h = _png_ok(emb_dir / "sprite.png")
    assert w == h == math.ceil(math.sqrt(10)) * 32


# ----------------------------------------------------------------------------- label suggestions


def _stub_run(**extra: object) -> SimpleNamespace:
    return SimpleNamespace(model=_frozen(ColorNet()), spec=SPEC, classes=list(CLASSES), **extra)


def test_suggest_labels_ranks_the_ambiguous_image_first_and_skips_corrupt_files(tmp_path: Path) -> None:
    src = tmp_path / "unlabeled"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(_solid((180, 60, 60), 50, 70)).save(src / "red.png")  # less sure than blue
    Image.fromarray(_solid((5, 5, 250))).save(src / "sub" / "blue.jpg", quality=95)
    Image.fromarray(_solid((200, 10, 200))).save(src / "purple.png")  # red = blue: a coin flip
    Image.fromarray(_solid((200, 30, 120))).save(src / "pinkish.png")  # leans red
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (src / "notes.txt").write_text("not an image")
    out = src / "suggestions"  # inside the scanned folder: must not be scanned itself
    res = suggest_labels(_stub_run(), src, out, top_k=2)

    assert [s.path for s in res.suggestions] == ["purple.png", "pinkish.png", "red.png", "sub/blue.jpg"]
    first = res.suggestions[0]
    assert first.rank == 1 and first.margin == pytest.approx(0.0, abs=1e-6)
    assert {lab for lab, _ in first.top_k} == {"red", "blue"}
    assert res.suggestions[2].suggested_label == "red" and res.suggestions[2].confidence > 0.9
    assert res.suggestions[3].suggested_label == "blue"
    assert [p.path for p in res.skipped] == ["broken.png"] and res.skipped[0].reason
    assert [p.path for p in res.ignored] == ["notes.txt"]

    with open(res.csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["rank", "path", "suggested_label", "confidence", "margin", "entropy", "top_k"]
    assert rows[0]["path"] == "purple.png" and rows[2]["top_k"].startswith("red:")
    with open(res.skipped_csv_path, newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == ["broken.png"]
    _png_ok(res.grid_path)
    assert res.grid_path == out / "most_uncertain.png"

    # a second run over the same folder does not pick up its own outputs
    again = suggest_labels(_stub_run(), src, out, temperature=4.0, top_k=2)
    assert [s.path for s in again.suggestions] == [s.path for s in res.suggestions]
    assert again.suggestions[2].confidence < res.suggestions[2].confidence  # a higher temperature softens


def test_list_unlabeled_walks_links_and_leaves_out_the_output(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "pool", tmp_path / "elsewhere"
    for rel in ("pool/a.png", "pool/sub/b.jpg", "pool/out/c.png", "pool/.hidden/d.png", "elsewhere/e.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"listed by suffix, never decoded")
    (root / "notes.txt").write_text("x")
    os.symlink(elsewhere, root / "link")  # followed, unlike a training scan's link out of the data
    os.symlink(root, root / "sub" / "loop")
    os.symlink("missing.png", root / "broken.png")
    files, ignored, unreadable = labeling.list_unlabeled(root, exclude=root / "out")
    assert files == ["a.png", "link/e.png", "sub/b.jpg"]
    assert [(p.path, p.reason) for p in ignored] == [
        ("notes.txt", "not an image suffix (.txt)"),
        ("sub/loop", "symlink loop: folder already visited"),
    ]
    assert [(p.path, p.reason) for p in unreadable] == [("broken.png", "broken symlink")]
    # the output folder is the pool itself: only its own grid is left out
    (root / "most_uncertain.png").write_bytes(b"x")
    (root / "sub" / "most_uncertain.png").write_bytes(b"x")
    files, _, _ = labeling.list_unlabeled(root, exclude=root)
    assert files == ["a.png", "link/e.png", "out/c.png", "sub/b.jpg", "sub/most_uncertain.png"]


def test_suggest_labels_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        suggest_labels(_stub_run(), tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="no image files"):
        suggest_labels(_stub_run(), tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ConfigError):
        suggest_labels(_stub_run(), tmp_path / "empty", tmp_path / "out", temperature=0.0)


# ----------------------------------------------------------------------------- label audit


def _gaussian_classes(per_class: int = 20, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 6.0, (3, d))
    y = np.repeat(np.arange(3), per_class)
    return (centers[y] + rng.normal(0.0, 1.0, (len(y), d))).astype(np.float32), y


@pytest.mark.parametrize("per_class, d", [(20, 16), (40, 100)])  # 100-d: reduced to 64 by PCA first
def test_oof_suspects_flags_a_flipped_label(per_class: int, d: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labeling, "AUDIT_PCA_DIMS", 64)
    x, y = _gaussian_classes(per_class, d)
    y_noisy = y.copy()
    y_noisy[5] = 2  # a class-0 point labelled class 2
    res = oof_suspects(x, y_noisy, None, CLASSES, folds=5, seed=0, threshold=0.7)
    assert res.folds == 5 and res.probs.shape == (3 * per_class, 3)
    assert res.C in AUDIT_CS and 0.0 < res.log_loss < math.log(3)
    np.testing.assert_allclose(res.probs.sum(1), 1.0)
    assert res.suspects.tolist() == [5]
    assert res.probs[5].argmax() == 0 and res.probs[5, 0] >= 0.7
    clean = oof_suspects(x, y, None, CLASSES, folds=5, seed=0, threshold=0.7)
    assert clean.suspects.size == 0


def test_oof_suspects_groups_and_fold_reduction() -> None:
    x, y = _gaussian_classes(per_class=6)
    groups = [f"g{i // 2}" for i in range(len(y))]  # pairs of near-duplicates
    res = oof_suspects(x, y, groups, CLASSES, folds=3, seed=0)
    assert res.grouped and res.folds == 3
    keep = np.r_[0:6, 6:12, 12:15]  # the last class keeps 3 images: 5 folds become 3
    assert oof_suspects(x[keep], y[keep], None, CLASSES, folds=5).folds == 3
    keep1 = np.r_[0:6, 6:12, 12:13]
    with pytest.raises(DataError, match="'blue' has a single training image"):
        oof_suspects(x[keep1], y[keep1], None, CLASSES)
    with pytest.raises(ConfigError):
        oof_suspects(x, y, None, CLASSES, folds=1)


def test_audit_labels_end_to_end_with_a_stub_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    base = {"red": (210, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 210)}
    rows = []
    for label, rgb in base.items():
        for i in range(8):
            colour = np.clip(np.array(rgb) + rng.integers(-25, 26, 3), 0, 255)
            folder_label = "green" if (label, i) == ("red", 3) else label  # one red image filed as green
            rel = f"{folder_label}/{label}_{i}.png"
            (root / folder_label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(_solid(tuple(int(c) for c in colour), 40, 48)).save(root / rel)
            rows.append(ManifestRow(path=rel, label=folder_label, sha256="0" * 64, group=f"g{len(rows)}", split="train"))
    rows.append(ManifestRow(path="green/missing.png", label="green", sha256="0" * 64, group="gx", split="val"))
    run = _stub_run(manifest=Manifest(rows=rows, fingerprint="test"), data_root=root)
    res = audit_labels(run, tmp_path / "audit", folds=5, seed=0, threshold=0.7)

    assert res.n_images == 24 and res.folds == 5 and res.grouped and not res.skipped  # the val row is not read
    assert [s.path for s in res.suspects] == ["green/red_3.png"]
    s = res.suspects[0]
    assert (s.given_label, s.suggested_label) == ("green", "red") and s.p_suggested >= 0.7 > s.p_given
    with open(res.csv_path, newline="") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ["path", "given_label", "suggested_label", "p_suggested", "p_given"]
    assert got[0]["path"] == "green/red_3.png"
    _png_ok(res.grid_path)


def test_audit_labels_without_training_images(tmp_path: Path) -> None:
    rows = [ManifestRow(path="a/x.png", label="red", sha256="0" * 64, group="g", split="val")]
    run = _stub_run(manifest=Manifest(rows=rows, fingerprint="t"), data_root=tmp_path)
    with pytest.raises(DataError, match="no training images"):
        audit_labels(run, tmp_path / "out")
