"""Training throughput: `edgeclf train`'s epoch vs a minimal plain-timm loop, and the decode cache.

Run: pytest benchmarks/test_bench_train.py --benchmark-only -s
Both loops use the same images, batch size, resolution, augmentation, optimizer,
autocast and memory format, so the ratio measures what edgeclf's pipeline adds
(or saves); figures go to extra_info and are printed.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
import pytest
import torch

from benchmarks.conftest import shared, versions
from edgeclf.data._index import index_dataset
from edgeclf.data.split import SplitConfig, make_split
from edgeclf.preprocess import normalize_batch
from edgeclf.train.config import load_config
from edgeclf.train.data import DecodeCache, EpochSampler, ManifestDataset

N_IMAGES = 256
BATCH = 32


@pytest.fixture(scope="module")
def subset():
    root = shared("trashnet-150")
    rows = [r for r in make_split(index_dataset(root), SplitConfig()).rows if r.split == "train"]
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(rows), N_IMAGES, replace=False).tolist())
    return root, [rows[i] for i in pick]


def _model():
    from edgeclf.models import create_model

    torch.manual_seed(0)
    model, _ = create_model("tf_efficientnet_lite0", 6)
    return model.to(memory_format=torch.channels_last)


def _amp():
    from edgeclf.train.loop import amp_mode

    return amp_mode("auto", torch.device("cpu"))


def _step(model, opt, x, y, amp):
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def edgeclf_epoch(root, rows, cache_dir, epoch):
    cfg = load_config()
    from edgeclf.preprocess import PreprocessSpec

    model = _model()
    spec = PreprocessSpec.from_timm_config(model.pretrained_cfg)
    classes = sorted({r.label for r in rows})
    ds = ManifestDataset(rows, root, classes, spec, DecodeCache(cache_dir, spec), cfg.augment, 0)
    sampler = EpochSampler(ds.targets, 0)
    sampler.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(
        ds, BATCH, sampler=sampler, num_workers=2, prefetch_factor=4, generator=torch.Generator().manual_seed(0)
    )
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    model.train()
    amp = _amp()
    t = time.perf_counter()
    for x, y in loader:
        _step(model, opt, normalize_batch(x, spec), y, amp)
    return time.perf_counter() - t


def plain_timm_epoch(root, rows):
    """What a user would write with timm + torchvision: decode every epoch, no cache."""
    from PIL import Image
    from torchvision.transforms import v2

    model = _model()
    cfg = model.pretrained_cfg
    tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.RandomResizedCrop(224, scale=(0.35, 1.0), antialias=False),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(10),
            v2.ColorJitter(0.2, 0.2, 0.2),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(cfg["mean"], cfg["std"]),
        ]
    )
    classes = sorted({r.label for r in rows})

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            with Image.open(root / rows[i].path) as im:
                return tf(im.convert("RGB")), classes.index(rows[i].label)

    loader = torch.utils.data.DataLoader(DS(), BATCH, shuffle=True, num_workers=2, prefetch_factor=4)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    model.train()
    amp = _amp()
    t = time.perf_counter()
    for x, y in loader:
        _step(model, opt, x, y, amp)
    return time.perf_counter() - t


@pytest.mark.heavy
def test_train_throughput_vs_plain_timm(benchmark, subset) -> None:
    root, rows = subset
    with tempfile.TemporaryDirectory() as cache:
        edgeclf_epoch(root, rows, cache, 0)  # warm the decode cache, as epoch 1 of a run does
        ours, plain = [], []

        def one_round():
            ours.append(edgeclf_epoch(root, rows, cache, len(ours) + 1))
            plain.append(plain_timm_epoch(root, rows))

        benchmark.pedantic(one_round, rounds=3, warmup_rounds=0)
    ratio = (N_IMAGES / statistics.median(ours)) / (N_IMAGES / statistics.median(plain))
    benchmark.extra_info.update(versions())
    benchmark.extra_info.update(
        images=N_IMAGES,
        batch=BATCH,
        amp=_amp(),
        edgeclf_img_s=round(N_IMAGES / statistics.median(ours), 2),
        plain_timm_img_s=round(N_IMAGES / statistics.median(plain), 2),
        throughput_ratio=round(ratio, 3),
    )
    print(
        f"\nedgeclf {N_IMAGES / statistics.median(ours):.1f} img/s, "
        f"plain timm {N_IMAGES / statistics.median(plain):.1f} img/s, ratio {ratio:.3f}"
    )


@pytest.fixture(scope="module")
def elpv_subset(tmp_path_factory):
    pytest.importorskip("elpv_dataset")
    from edgeclf.data.datasets import materialize_elpv

    root = materialize_elpv(tmp_path_factory.mktemp("elpv") / "elpv")
    rows = [r for r in make_split(index_dataset(root), SplitConfig()).rows if r.split == "train"]
    pick = sorted(np.random.default_rng(0).choice(len(rows), N_IMAGES, replace=False).tolist())
    return root, [rows[i] for i in pick]


@pytest.mark.parametrize("data", ["trashnet-150 (150 px JPEG)", "elpv (300 px PNG)"])
def test_decode_cache_epoch_time(benchmark, request, data) -> None:
    """Data pipeline alone (no model): first epoch decodes and resizes, later ones read the cache."""
    root, rows = request.getfixturevalue("subset" if data.startswith("trashnet") else "elpv_subset")
    from edgeclf.preprocess import PreprocessSpec

    spec = PreprocessSpec.from_timm_config(
        {"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3}
    )
    classes = sorted({r.label for r in rows})
    firsts, seconds = [], []

    def one_round():
        with tempfile.TemporaryDirectory() as cache:
            ds = ManifestDataset(rows, root, classes, spec, DecodeCache(cache, spec), load_config().augment, 0)
            for store in (firsts, seconds):
                sampler = EpochSampler(ds.targets, 0)
                loader = torch.utils.data.DataLoader(ds, BATCH, sampler=sampler, num_workers=2)
                t = time.perf_counter()
                for _ in loader:
                    pass
                store.append(time.perf_counter() - t)

    benchmark.pedantic(one_round, rounds=3, warmup_rounds=0)
    ratio = statistics.median(seconds) / statistics.median(firsts)
    benchmark.extra_info.update(
        data=data,
        first_epoch_s=round(statistics.median(firsts), 3),
        second_epoch_s=round(statistics.median(seconds), 3),
        second_over_first=round(ratio, 3),
    )
    print(f"\n{data}: first epoch {statistics.median(firsts):.2f}s, second {statistics.median(seconds):.2f}s, ratio {ratio:.2f}")
