"""What one forward pass of a backbone does: FLOPs, bytes moved, graph nodes, peak activations.

The latency and memory cost model (:mod:`edgeclf.select.costmodel`) works from these
counts, never from the model itself, so that choosing a backbone does not have to build
every candidate. :func:`count_model` traces one batch-1 forward pass of a timm model at
the torch operator level (a ``TorchDispatchMode``: every aten call with its tensors) and
sorts each call into what an inference runtime does with it after the usual ONNX graph
rewrites:

* **dense**: convolutions with ``groups < in_channels`` and matrix products
  (``addmm``/``mm``/``bmm``/``linear``). FLOPs count a multiply-add as 2, like
  :func:`edgeclf.models.measure_cost` (the two agree on every registered backbone).
* **depthwise**: convolutions with one input channel per group. Counted apart because
  their arithmetic intensity is low and runtimes reach a far smaller fraction of peak.
* **other**: every remaining operator that runs as a node of its own and moves data
  without (counted) arithmetic: residual adds, squeeze-excite multiplies, pooling,
  ``hardswish``/``sigmoid``, concatenation, and anything not listed below.
* **fused / free** (no node, no traffic): batch-norm in eval mode and ``relu``/``relu6``
  (``hardtanh``)/``clamp`` (folded into the preceding convolution at export),
  ``constant_pad_nd`` (TF "same" padding, folded into the convolution's pads), views,
  allocations and other metadata operators.

Bytes are counted in *elements* so the cost model can price them at any precision:
``act_elems_*`` is the activation elements each class of node reads and writes (inputs +
output), ``params`` the weights (every weight is read once per inference).
``peak_activation_elems`` is the largest sum of activation tensors alive at once,
replaying the trace with a tensor freed after its last use and fused operators writing in
place, which is what a runtime's memory planner approximates.

Counts of the registered backbones at the usual resolutions ship in ``model_costs.json``
beside this module (written by :func:`generate_model_costs`); :func:`model_counts` reads
them and counts any other resolution on demand (a few seconds: it builds the model with
random weights, which do not change any count).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeclf._io import write_json
from edgeclf.errors import ConfigError, EdgeclfError

__all__ = [
    "COST_RESOLUTIONS",
    "MODEL_COSTS_PATH",
    "ModelCounts",
    "count_backbone",
    "count_model",
    "generate_model_costs",
    "load_model_costs",
    "model_counts",
]

log = logging.getLogger("edgeclf.select")

MODEL_COSTS_PATH = Path(__file__).with_name("model_costs.json")
MODEL_COSTS_SCHEMA = "1.0"
# Resolutions counted for every backbone by generate_model_costs (each backbone's native
# resolution is added): the ladder select_backbone tries, plus a smaller rung and 256.
COST_RESOLUTIONS: tuple[int, ...] = (96, 128, 160, 192, 224, 256)

# aten operator names (overload packet) by what a runtime does with them.
_DENSE_MATMUL = frozenset({"addmm", "mm", "bmm", "matmul", "linear", "baddbmm"})
_CONV = frozenset({"convolution", "_convolution", "conv2d"})
# Folded into the producing convolution at export, or into the convolution's pads.
_FUSED = frozenset(
    {
        "native_batch_norm",
        "_native_batch_norm_legit_no_training",
        "_native_batch_norm_legit",
        "batch_norm",
        "relu",
        "relu_",
        "hardtanh",
        "hardtanh_",
        "clamp",
        "clamp_",
        "clamp_min",
        "clamp_min_",
        "constant_pad_nd",
        "dropout",
        "native_dropout",
    }
)
# No computation and no data movement of their own.
_FREE = frozenset(
    {
        "view",
        "_unsafe_view",
        "reshape",
        "flatten",
        "t",
        "transpose",
        "permute",
        "expand",
        "squeeze",
        "unsqueeze",
        "alias",
        "detach",
        "empty",
        "empty_like",
        "zeros",
        "zeros_like",
        "ones",
        "full",
        "clone",
        "contiguous",
        "_to_copy",
        "lift_fresh",
        "select",
        "slice",
        "split",
        "split_with_sizes",
        "unbind",
        "as_strided",
    }
)


@dataclass(frozen=True)
class ModelCounts:
    """Counts of one batch-1 forward pass of one backbone at one square input resolution.

    Attributes:
        backbone: Registry name (timm architecture).
        resolution: Input side in pixels.
        num_classes: Classifier outputs of the counted model (1000: ImageNet head).
        params: Every parameter, as a count (weights bytes = params x bytes per weight).
        flops_dense: FLOPs of dense convolutions and matrix products (multiply-add = 2).
        flops_depthwise: FLOPs of depthwise convolutions.
        act_elems_dense: Activation elements read + written by dense nodes.
        act_elems_depthwise: Activation elements read + written by depthwise nodes.
        act_elems_other: Activation elements read + written by the other nodes.
        nodes_dense / nodes_depthwise / nodes_other: Graph nodes of each class.
        peak_activation_elems: Largest activation total alive at once (see module doc).
    """

    backbone: str
    resolution: int
    num_classes: int
    params: int
    flops_dense: float
    flops_depthwise: float
    act_elems_dense: int
    act_elems_depthwise: int
    act_elems_other: int
    nodes_dense: int
    nodes_depthwise: int
    nodes_other: int
    peak_activation_elems: int

    @property
    def flops(self) -> float:
        """All counted FLOPs."""
        return self.flops_dense + self.flops_depthwise

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def act_elems(self) -> int:
        """Activation elements read + written by every node."""
        return self.act_elems_dense + self.act_elems_depthwise + self.act_elems_other

    @property
    def nodes(self) -> int:
        """Graph nodes that run (after folding and fusion)."""
        return self.nodes_dense + self.nodes_depthwise + self.nodes_other

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCounts:
        known = set(cls.__dataclass_fields__)
        missing = known - set(data)
        if missing:
            raise EdgeclfError(f"model cost record lacks {', '.join(sorted(missing))}")
        return cls(**{key: data[key] for key in known})


# ------------------------------------------------------------------------------ tracing


def _tensors(tree: Any) -> list[Any]:
    import torch
    from torch.utils._pytree import tree_flatten

    return [leaf for leaf in tree_flatten(tree)[0] if isinstance(leaf, torch.Tensor)]


def _storage_key(tensor: Any) -> int:
    try:
        return int(tensor.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError):  # no storage (meta, sparse): a buffer of its own
        return id(tensor)


class _Tracer:
    """Accumulates counts and a buffer liveness log from aten calls."""

    def __init__(self, param_keys: set[int]) -> None:
        self.param_keys = param_keys
        self.flops = {"dense": 0.0, "depthwise": 0.0}
        self.act = {"dense": 0, "depthwise": 0, "other": 0}
        self.nodes = {"dense": 0, "depthwise": 0, "other": 0}
        self.step = 0
        self.buffer_of: dict[int, int] = {}  # storage address -> buffer id
        self.sizes: list[int] = []  # buffer id -> elements
        self.first: list[int] = []
        self.last: list[int] = []

    # -- liveness
    def _use(self, key: int) -> int | None:
        buf = self.buffer_of.get(key)
        if buf is not None:
            self.last[buf] = self.step
        return buf

    def _define(self, key: int, elems: int) -> None:
        self.buffer_of[key] = len(self.sizes)
        self.sizes.append(elems)
        self.first.append(self.step)
        self.last.append(self.step)

    def record(self, name: str, args: Any, kwargs: Any, out: Any) -> None:
        self.step += 1
        inputs = [t for t in _tensors((args, kwargs)) if _storage_key(t) not in self.param_keys]
        outputs = _tensors(out)
        if name == "max_pool2d_with_indices":
            outputs = outputs[:1]  # the indices are torch's bookkeeping; runtimes do not make them
        in_bufs = {self._use(_storage_key(t)) for t in inputs} - {None}
        in_keys = {_storage_key(t) for t in inputs}
        in_place = name.endswith("_") or name in _FUSED or name in _FREE
        for t in outputs:
            key = _storage_key(t)
            if key in in_keys:
                # Written in place, or a view of an input: the input's buffer.
                if key in self.buffer_of:
                    self._use(key)
                elif in_bufs:
                    self.buffer_of[key] = next(iter(in_bufs))
                continue
            # A new tensor may sit at the address of one already freed: every branch below
            # replaces what the address meant, or a later use would keep the freed buffer alive
            # (and the peak would depend on where the allocator put things).
            if in_place and in_bufs:
                self.buffer_of[key] = next(iter(in_bufs))  # fused into the producer: its buffer
                continue
            if name in _FREE and not in_bufs and name not in ("zeros", "ones", "full"):
                self.buffer_of.pop(key, None)  # scratch allocations (e.g. batch-norm's empty save buffers)
                continue
            self._define(key, int(t.numel()))
        self._classify(name, args, inputs, outputs)

    def _classify(self, name: str, args: Any, inputs: list[Any], outputs: list[Any]) -> None:
        if name in _FUSED or name in _FREE:
            return
        out_elems = sum(int(t.numel()) for t in outputs)
        in_elems = sum(int(t.numel()) for t in inputs)
        if name in _CONV:
            x, weight = args[0], args[1]
            groups = int(args[8]) if len(args) > 8 else 1
            kernel = 1
            for side in weight.shape[2:]:
                kernel *= int(side)
            flops = 2.0 * out_elems * int(weight.shape[1]) * kernel
            depthwise = groups > 1 and groups == int(x.shape[1]) and int(weight.shape[1]) == 1
            kind = "depthwise" if depthwise else "dense"
            self.flops[kind] += flops
            self.act[kind] += in_elems + out_elems
            self.nodes[kind] += 1
            return
        if name in _DENSE_MATMUL:
            mats = [a for a in _tensors(args) if a.dim() >= 2]
            inner = int(mats[-2].shape[-1])  # addmm(bias, x, w^T), mm(x, w), bmm(a, b): x/a is [..., M, K]
            self.flops["dense"] += 2.0 * out_elems * inner
            self.act["dense"] += in_elems + out_elems
            self.nodes["dense"] += 1
            return
        self.act["other"] += in_elems + out_elems
        self.nodes["other"] += 1

    def peak_activation(self) -> int:
        events: dict[int, int] = {}
        for size, start, end in zip(self.sizes, self.first, self.last, strict=False):
            events[start] = events.get(start, 0) + size
            events[end + 1] = events.get(end + 1, 0) - size
        live = peak = 0
        for step in sorted(events):
            live += events[step]
            peak = max(peak, live)
        return peak


def count_model(model: Any, resolution: int, backbone: str = "") -> ModelCounts:
    """Count one batch-1 forward pass of ``model`` (eval mode, no grad) on a square image.

    The model's training flag is restored afterwards; its weights are not read for
    anything but their number and storage (random weights count the same).
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    if resolution < 8:
        raise ConfigError(f"resolution must be at least 8 px, got {resolution}")
    params = list(model.parameters()) + list(model.buffers())
    param_keys = {_storage_key(p) for p in params}
    tracer = _Tracer(param_keys)

    class _Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            tracer.record(func.overloadpacket.__name__, args, kwargs, out)
            return out

    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _Mode():
            x = torch.zeros(1, 3, resolution, resolution, device=device)
            out = model(x)
    finally:
        model.train(was_training)
    num_classes = int(out.shape[-1]) if hasattr(out, "shape") else 0
    return ModelCounts(
        backbone=backbone,
        resolution=int(resolution),
        num_classes=num_classes,
        params=int(sum(p.numel() for p in model.parameters())),
        flops_dense=float(tracer.flops["dense"]),
        flops_depthwise=float(tracer.flops["depthwise"]),
        act_elems_dense=int(tracer.act["dense"]),
        act_elems_depthwise=int(tracer.act["depthwise"]),
        act_elems_other=int(tracer.act["other"]),
        nodes_dense=int(tracer.nodes["dense"]),
        nodes_depthwise=int(tracer.nodes["depthwise"]),
        nodes_other=int(tracer.nodes["other"]),
        peak_activation_elems=int(tracer.peak_activation()),
    )


def _create(backbone: str) -> Any:
    import timm

    from edgeclf.models import get_backbone

    info = get_backbone(backbone)
    return timm.create_model(info.timm_arch, pretrained=False)


def count_backbone(backbone: str, resolutions: Iterable[int]) -> list[ModelCounts]:
    """Count a registered backbone (1000-class ImageNet head, random weights) at each resolution."""
    model = _create(backbone)
    return [count_model(model, int(r), backbone=backbone) for r in resolutions]


# ------------------------------------------------------------------------------- cache


def generate_model_costs(
    path: Path | str | None = MODEL_COSTS_PATH,
    backbones: Sequence[str] | None = None,
    resolutions: Sequence[int] = COST_RESOLUTIONS,
) -> dict[tuple[str, int], ModelCounts]:
    """Count every backbone at ``resolutions`` (plus its native one); write the JSON cache.

    Args:
        path: Where to write (default: ``model_costs.json`` shipped beside this module);
            ``None`` writes nothing.
        backbones: Registry names (default: every registered backbone).
        resolutions: Square input sides in pixels.

    Returns:
        The counts by ``(backbone, resolution)``.
    """
    import timm
    import torch

    from edgeclf.models import get_backbone, list_backbones

    names = list(backbones) if backbones is not None else [b.name for b in list_backbones()]
    table: dict[tuple[str, int], ModelCounts] = {}
    for name in names:
        info = get_backbone(name)
        sizes = sorted({*(int(r) for r in resolutions), info.input_size})
        log.info("counting %s at %s px", name, ", ".join(map(str, sizes)))
        for counts in count_backbone(name, sizes):
            table[(name, counts.resolution)] = counts
    if path is not None:
        doc = {
            "schema_version": MODEL_COSTS_SCHEMA,
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "generator": "edgeclf.select.counts.generate_model_costs",
            "versions": {"torch": torch.__version__.split("+")[0], "timm": timm.__version__},
            "notes": (
                "Batch-1 forward pass of each backbone with its 1000-class ImageNet head, "
                "counted at the aten level; FLOPs count a multiply-add as 2; *_elems are "
                "tensor elements (multiply by bytes per element). See edgeclf.select.counts."
            ),
            "models": [table[key].to_dict() for key in sorted(table)],
        }
        write_json(Path(path), doc)
        _load_cached.cache_clear()
    return table


@functools.cache
def _load_cached(path: str) -> dict[tuple[str, int], ModelCounts]:
    file = Path(path)
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise EdgeclfError(
            f"cannot read the model cost cache {file}: {exc}; regenerate it with edgeclf.select.generate_model_costs()"
        ) from None
    if str(doc.get("schema_version", "")).split(".")[0] != MODEL_COSTS_SCHEMA.split(".")[0]:
        raise EdgeclfError(
            f"{file} has schema_version {doc.get('schema_version')!r}, this edgeclf reads "
            f"{MODEL_COSTS_SCHEMA}; regenerate it with edgeclf.select.generate_model_costs()"
        )
    out: dict[tuple[str, int], ModelCounts] = {}
    for record in doc.get("models", []):
        counts = ModelCounts.from_dict(record)
        out[(counts.backbone, counts.resolution)] = counts
    return out


def load_model_costs(path: Path | str = MODEL_COSTS_PATH) -> dict[tuple[str, int], ModelCounts]:
    """The cached counts by ``(backbone, resolution)`` (empty if the file is absent)."""
    return dict(_load_cached(str(path)))


_ON_DEMAND: dict[tuple[str, int], ModelCounts] = {}


def model_counts(
    backbone: str,
    resolution: int,
    *,
    compute_missing: bool = True,
    path: Path | str = MODEL_COSTS_PATH,
) -> ModelCounts:
    """Counts of ``backbone`` at ``resolution``: from the cache, else counted now (and kept).

    Raises:
        ConfigError: unknown backbone, or a resolution not cached with ``compute_missing=False``.
    """
    from edgeclf.models import get_backbone

    get_backbone(backbone)  # unknown names: ConfigError listing the known ones
    key = (backbone, int(resolution))
    cached = _load_cached(str(path)).get(key) or _ON_DEMAND.get(key)
    if cached is not None:
        return cached
    if not compute_missing:
        raise ConfigError(
            f"no cached cost counts for {backbone} at {resolution} px; allow counting on demand "
            "(compute_missing=True) or regenerate the cache with generate_model_costs()"
        )
    log.info("counting %s at %d px (not in the cache)", backbone, resolution)
    counts = count_backbone(backbone, [int(resolution)])[0]
    _ON_DEMAND[key] = counts
    return counts
