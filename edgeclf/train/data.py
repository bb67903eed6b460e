"""Training data: manifest rows -> cached, resized uint8 images -> tensors.

The expensive part of loading (decoding a JPEG and resizing it to the spec's
``resize_size``) is done once per image and cached as a uint8 ``.npy`` keyed by
the file's SHA-256 and the resize parameters, so later epochs only read, crop,
augment and normalise. The cached image is exactly step 2 of the preprocessing
spec, so evaluation from the cache *is* the deployment preprocessing.

Randomness is a pure function of ``(seed, epoch, index)``: the sampler yields
``(epoch, index)`` pairs and every sample seeds its own augmentation, so a run
resumed at epoch ``k`` sees exactly the batches an uninterrupted run would,
whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from edgeclf.data._image import ImageDecodeError, load_rgb
from edgeclf.data.manifest import ManifestRow
from edgeclf.errors import DataError
from edgeclf.preprocess import PreprocessSpec, center_crop, resize_uint8
from edgeclf.train.config import AugmentConfig


def mix_seed(*parts: int) -> int:
    """A well-spread 63-bit seed from integers (stable across processes and runs)."""
    h = hashlib.blake2b(b",".join(str(p).encode() for p in parts), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class DecodeCache:
    """Disk cache of step-2 (decoded + resized) uint8 images; ``None`` dir = no disk cache."""

    def __init__(self, cache_dir: str | Path | None, spec: PreprocessSpec) -> None:
        self.dir = Path(os.path.expanduser(str(cache_dir))) if cache_dir else None
        self.tag = f"r{spec.resize_size}-{spec.interpolation}-v{spec.version}"
        self.spec = spec
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        assert self.dir is not None
        return self.dir / sha256[:2] / f"{sha256}-{self.tag}.npy"

    def get(self, path: Path, sha256: str) -> np.ndarray:
        if self.dir is not None:
            p = self._path(sha256)
            try:
                return np.load(p, allow_pickle=False)
            except FileNotFoundError:
                pass
            except (ValueError, OSError, EOFError):  # a damaged entry: rebuild it
                p.unlink(missing_ok=True)
        try:
            img = resize_uint8(np.asarray(load_rgb(path)), self.spec)
        except ImageDecodeError as e:
            raise DataError(f"cannot load {path}: {e}") from None
        if self.dir is not None:
            p = self._path(sha256)
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, img, allow_pickle=False)
                os.replace(tmp, p)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return img


class ManifestDataset(Dataset):
    """Items are ``(epoch, index)`` (training, augmented) or ``index`` (evaluation, exact spec).

    Returns ``(uint8 tensor 3xHxW, label index)``; normalisation happens on the
    batch, in the training process (cheaper than per sample in workers).
    """

    def __init__(
        self,
        rows: list[ManifestRow],
        root: Path,
        classes: list[str],
        spec: PreprocessSpec,
        cache: DecodeCache,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.rows = rows
        self.root = Path(root)
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.targets = [self.class_to_idx[r.label] for r in rows]
        self.spec = spec
        self.cache = cache
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = seed
        self._tf = self._build_augment() if self.augment else None

    def _build_augment(self):  # noqa: ANN202 - torchvision transform
        from torchvision.transforms import v2

        a = self.augment
        assert a is not None
        # no crop at all is the deployed view (the centre crop), not the whole image squeezed to size
        crop = (
            v2.CenterCrop(self.spec.crop_size)
            if a.crop_scale[0] >= 1.0
            else v2.RandomResizedCrop(self.spec.crop_size, scale=a.crop_scale, antialias=False)
        )
        tfs: list = [crop]
        if a.hflip:
            tfs.append(v2.RandomHorizontalFlip(a.hflip))
        if a.vflip:
            tfs.append(v2.RandomVerticalFlip(a.vflip))
        if a.rotation_deg:
            tfs.append(v2.RandomRotation(a.rotation_deg))
        if a.color_jitter:
            j = a.color_jitter
            tfs.append(v2.ColorJitter(brightness=j, contrast=j, saturation=j))
        return v2.Compose(tfs)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, idx = item if isinstance(item, tuple) else (-1, item)
        row = self.rows[idx]
        img = self.cache.get(self.root / row.path, row.sha256)
        if self._tf is None or epoch < 0:
            x = torch.from_numpy(np.ascontiguousarray(center_crop(img, self.spec.crop_size))).permute(2, 0, 1)
        else:
            with torch.random.fork_rng(devices=[]):  # leave the caller's RNG (dropout) alone
                torch.manual_seed(mix_seed(self.seed, epoch, idx))
                x = self._tf(torch.from_numpy(img).permute(2, 0, 1))
        return x.contiguous(), self.targets[idx]


class EpochSampler(Sampler):
    """Yields ``(epoch, index)``: a per-epoch permutation (or class-balanced draw), sharded by rank.

    The order depends only on ``(seed, epoch)``; with ``world_size`` > 1 each
    rank takes every ``world_size``-th item of the same order (padded so all
    ranks see the same number of batches).
    """

    def __init__(self, targets: list[int], seed: int, balanced: bool = False, rank: int = 0, world_size: int = 1) -> None:
        self.targets = np.asarray(targets)
        self.seed, self.balanced, self.rank, self.world_size = seed, balanced, rank, world_size
        self.epoch = 0
        self.num_samples = int(np.ceil(len(targets) / world_size))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng(mix_seed(self.seed, epoch, 7919))
        n = len(self.targets)
        if self.balanced:
            counts = np.bincount(self.targets)
            p = 1.0 / counts[self.targets]
            return rng.choice(n, size=n, replace=True, p=p / p.sum())
        return rng.permutation(n)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order(self.epoch)
        total = self.num_samples * self.world_size
        if total > len(order):
            order = np.concatenate([order, order[: total - len(order)]])
        for i in order[self.rank : total : self.world_size].tolist():
            yield (self.epoch, int(i))

    def __len__(self) -> int:
        return self.num_samples
