"""harness.recipe.weights: "none", local files in the usual layouts, "imagenet" cached or failing fast."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torchvision
from huggingface_hub import constants as hf_constants
from safetensors.torch import save_file

from harness.errors import BenchError
from harness.recipe import weights
from harness.recipe.weights import HubFile, UrlFile, load_encoder_weights


def resnet_encoder() -> torch.nn.Module:
    from segmentation_models_pytorch.encoders import get_encoder

    return get_encoder("resnet18", weights=None)


def same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    other = b.state_dict()
    return all(torch.equal(value, other[key]) for key, value in a.state_dict().items())


@pytest.fixture
def no_cache_no_network(tmp_path, monkeypatch):
    """Empty weight caches and a probe that always fails, whatever machine runs the test."""
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    monkeypatch.setattr(weights, "_reachable", lambda host, *args, **kwargs: False)
    return tmp_path


def test_none_keeps_the_random_init():
    encoder = resnet_encoder()
    before = {key: value.clone() for key, value in encoder.state_dict().items()}
    load_encoder_weights(encoder, "none", imagenet=None, what="resnet18")
    assert all(torch.equal(before[key], value) for key, value in encoder.state_dict().items())


@pytest.mark.parametrize(
    "layout", ["smp", "torchvision", "whole_model", "checkpoint", "safetensors"]
)
def test_local_file_round_trips(tmp_path, layout):
    source = resnet_encoder()
    state = source.state_dict()
    path = tmp_path / "encoder.pth"
    if layout == "torchvision":  # torchvision's file keeps the fc head, which the encoder drops
        state = {**state, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    elif layout == "whole_model":  # a whole smp model: the encoder sits under "encoder."
        state = {**{f"encoder.{k}": v for k, v in state.items()}, "decoder.w": torch.zeros(1)}
    elif layout == "checkpoint":  # a training checkpoint, as TernausNet's train.py saves one
        state = {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    if layout == "safetensors":
        path = tmp_path / "encoder.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    target = resnet_encoder()
    assert not same_tensors(source, target)
    load_encoder_weights(target, str(path), imagenet=None, what="resnet18")
    assert same_tensors(source, target)


def test_mismatching_keys_name_the_file_and_the_keys(tmp_path):
    state = resnet_encoder().state_dict()
    del state["layer4.1.bn2.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(BenchError) as error:
        load_encoder_weights(resnet_encoder(), str(path), imagenet=None, what="resnet18")
    message = str(error.value)
    assert str(path) in message and "\n" not in message
    assert "missing layer4.1.bn2.weight" in message
    assert "unexpected layer5.0.conv1.weight" in message


def test_wrong_shapes_and_foreign_files_are_refused(tmp_path):
    state = resnet_encoder().state_dict()
    state["conv1.weight"] = torch.zeros(32, 3, 7, 7)
    torch.save(state, tmp_path / "narrow.pth")
    with pytest.raises(BenchError, match=r"narrow\.pth: shapes differ .*conv1\.weight"):
        load_encoder_weights(resnet_encoder(), str(tmp_path / "narrow.pth"), imagenet=None,
                             what="r")  # fmt: skip
    vgg = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])
    torch.save({f"features.{k}": v for k, v in vgg.state_dict().items()}, tmp_path / "vgg.pth")
    with pytest.raises(BenchError, match=r"vgg\.pth: holds no weights of the resnet18 encoder"):
        load_encoder_weights(resnet_encoder(), str(tmp_path / "vgg.pth"), imagenet=None,
                             what="resnet18")  # fmt: skip


def test_missing_file_and_unknown_word(tmp_path):
    with pytest.raises(BenchError, match=r"no such file"):
        load_encoder_weights(resnet_encoder(), str(tmp_path / "gone.pth"), imagenet=None, what="r")
    with pytest.raises(BenchError, match=r'"imagnet" is not understood: use "none", "imagenet"'):
        load_encoder_weights(resnet_encoder(), "imagnet", imagenet=None, what="r")


@pytest.mark.parametrize(
    "source",
    [HubFile("smp-hub/resnet18.imagenet", "0" * 40), UrlFile("https://example.org/r-0123abcd.pth")],
)
def test_imagenet_offline_fails_fast_with_a_way_out(no_cache_no_network, source):
    started = time.perf_counter()
    with pytest.raises(BenchError) as error:
        load_encoder_weights(resnet_encoder(), "imagenet", imagenet=source, what="resnet18")
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert "cannot download the ImageNet weights of the resnet18 encoder" in message
    assert 'model.encoder_weights = "/path/to/resnet18.pth"' in message


def test_imagenet_comes_from_the_caches_without_the_network(no_cache_no_network, monkeypatch):
    def no_probe(*args, **kwargs):
        raise AssertionError("a cached file must not touch the network")

    monkeypatch.setattr(weights, "_reachable", no_probe)
    source = resnet_encoder()
    revision = "1" * 40
    snapshot = Path(hf_constants.HF_HUB_CACHE) / "models--smp-hub--r18" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    target = resnet_encoder()
    load_encoder_weights(target, "imagenet", imagenet=HubFile("smp-hub/r18", revision), what="r")
    assert same_tensors(source, target)

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(source.state_dict(), checkpoints / "r18-0123abcd.pth")
    target = resnet_encoder()
    url = UrlFile("https://example.org/models/r18-0123abcd.pth")
    load_encoder_weights(target, "imagenet", imagenet=url, what="r")
    assert same_tensors(source, target)


def test_hf_offline_mode_is_honoured(no_cache_no_network, monkeypatch):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BenchError, match="HF_HUB_OFFLINE is set"):
        load_encoder_weights(resnet_encoder(), "imagenet", imagenet=HubFile("a/b", "0" * 40),
                             what="r")  # fmt: skip


def test_probe_is_bounded_for_an_unresolvable_host():
    started = time.perf_counter()
    assert not weights._reachable("segbench.invalid", timeout=1.0)
    assert time.perf_counter() - started < 2
