"""Encoder weights for every model factory: ``"none"``, a local file, ``"imagenet"`` or ``"auto"``.

A recipe's ``model.encoder_weights`` is one string with four accepted forms, resolved here so that
every model treats them alike:

* ``"none"``: keep the random initialisation.
* a path to a local file (``.pth``/``.pt``/``.bin``/``.ckpt`` via ``torch.load(weights_only=True)``,
  or ``.safetensors``): a state dict of the encoder in any of the usual layouts. The encoder's keys
  are found under whatever prefix the file puts them (``features.`` in a torchvision VGG file,
  ``encoder.`` in a whole smp model, ``module.`` from DataParallel, none in an smp-hub file), so the
  user need not convert anything. Matching is strict: every encoder tensor must be present with the
  right shape, and nothing else under that prefix may be left over except a classifier head
  (``fc.*``, ``classifier.*``...), which an ImageNet checkpoint always carries.
* ``"auto"``: ImageNet weights where they can be had, else none. A run decides it once, before
  training, and says which (``harness.engine.choices``); the factories never see ``"auto"`` then.
* ``"imagenet"``: the published ImageNet weights, from the local cache when they are there (the
  Hugging Face cache for smp encoders, ``torch.hub.get_dir()/checkpoints`` for torchvision ones).
  Otherwise the host is probed for a few seconds *before* any download: huggingface_hub and
  torch.hub retry for about half a minute when offline, and a cluster node without internet should
  fail at once with a line that says how to use a local file instead.

Every failure is one ``BenchError`` line naming the file or value and what would be accepted.
"""

from __future__ import annotations

import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

import torch
from torch import nn

from harness.errors import BenchError

RECIPE_KEY = "model.encoder_weights"
FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors")
# Top-level names of classification heads that ImageNet checkpoints carry and encoders drop.
HEAD_NAMES = frozenset({"fc", "classifier", "last_linear", "head", "logits"})
# BatchNorm's step counter: absent from checkpoints older than PyTorch 0.4.1, and unused by training
# with the default momentum, so its absence is no reason to reject a file.
OPTIONAL_SUFFIX = "num_batches_tracked"
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face Hub repository at a pinned revision: how smp 0.6 ships weights."""

    repo_id: str
    revision: str
    filename: str = "model.safetensors"


@dataclass(frozen=True)
class UrlFile:
    """A checkpoint at a URL that torch.hub caches by file name: how torchvision ships weights."""

    url: str


ImagenetSource = HubFile | UrlFile


def load_encoder_weights(
    encoder: nn.Module, spec: str, *, imagenet: ImagenetSource | None, what: str
) -> None:
    """Fill ``encoder`` in place as ``spec`` says (``"none"``, a file path or ``"imagenet"``).

    ``imagenet`` is where this encoder's ImageNet weights live (``None`` where there are none);
    ``what`` names the encoder for messages (``"resnet34"``, ``"vgg11"``).
    """
    word = spec.strip()
    if word.lower() == "none":
        return
    if word.lower() == "auto":  # a run decides it once and says so (harness.engine.choices); here, quietly
        if imagenet is not None:
            try:
                _load_matching(encoder, read_state_dict(fetch_imagenet(imagenet, what)), source="imagenet", what=what)
            except BenchError:
                pass
        return
    if word.lower() == "imagenet":
        if imagenet is None:
            raise BenchError(
                f'{RECIPE_KEY} = "imagenet": segbench knows no ImageNet weights for the {what} '
                f'encoder; use "none" or a path to a local state dict file'
            )
        path = fetch_imagenet(imagenet, what)
    else:
        path = _local_file(word, what)
    state = read_state_dict(path)
    _load_matching(encoder, state, source=str(path), what=what)


def smp_imagenet(encoder_name: str) -> HubFile | None:
    """Where smp keeps the ImageNet weights of one of its own encoders (None: it has none).

    Read from smp's encoder table rather than ``smp.encoders.get_preprocessing_params``, which
    downloads a config file.
    """
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders.get(encoder_name, {}).get("pretrained_settings", {}).get("imagenet")
    if settings is None:
        return None
    return HubFile(repo_id=settings["repo_id"], revision=settings["revision"])


def fetch_imagenet(source: ImagenetSource, what: str) -> Path:
    """The local path of ``source``; downloads only if it is not cached and the host answers."""
    if isinstance(source, HubFile):
        return _fetch_hub(source, what)
    return _fetch_url(source, what)


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """Tensors by key from a ``.safetensors`` or ``torch.save`` file; unwraps a training checkpoint.

    Training scripts (TernausNet's among them) save ``{"model": state_dict, "epoch": ...}``, so a
    ``state_dict`` or ``model`` entry holding the tensors is used when the top level is not tensors.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt file or a pickle that is not a plain state dict
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise BenchError(
            f"{path}: cannot read it as a state dict ({type(error).__name__}: {first_line})"
        ) from None
    if isinstance(obj, Mapping) and not _all_tensors(obj):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping) and _all_tensors(obj[key]):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not _all_tensors(obj):
        raise BenchError(f"{path}: not a state dict (a mapping from names to tensors)")
    return obj


def _all_tensors(obj: Mapping) -> bool:
    return all(isinstance(value, torch.Tensor) for value in obj.values())


def _local_file(spec: str, what: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    looks_like_path = "/" in spec or "\\" in spec or spec.lower().endswith(FILE_SUFFIXES)
    if looks_like_path:
        raise BenchError(f'{RECIPE_KEY} = "{spec}": no such file (the {what} encoder weights)')
    raise BenchError(
        f'{RECIPE_KEY} = "{spec}" is not understood: use "none", "imagenet", "auto" or a path to a local '
        f'state dict file ({", ".join(FILE_SUFFIXES)})'
    )


def _load_matching(
    encoder: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, what: str
) -> None:
    """Load ``state`` into ``encoder`` strictly, wherever in the file the encoder's keys sit."""
    expected = encoder.state_dict()
    prefix = _encoder_prefix(state, set(expected))
    if prefix is None:
        raise BenchError(
            f"{source}: holds no weights of the {what} encoder (expected keys like "
            f"{_few(expected)}; found {_few(state)})"
        )
    found = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    missing = [k for k in expected if k not in found and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in found if k not in expected and k.split(".")[0] not in HEAD_NAMES]
    if missing or unexpected:
        raise BenchError(
            f"{source}: does not match the {what} encoder"
            + (f"; missing {_few(missing)}" if missing else "")
            + (f"; unexpected {_few(unexpected)}" if unexpected else "")
            + (f' (keys read under the prefix "{prefix}")' if prefix else "")
        )
    wrong_shape = [
        f"{k} {tuple(found[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    if wrong_shape:
        raise BenchError(f"{source}: shapes differ from the {what} encoder: {_few(wrong_shape)}")
    encoder.load_state_dict({k: v for k, v in found.items() if k in expected}, strict=False)


def _encoder_prefix(state: Mapping[str, torch.Tensor], expected: set[str]) -> str | None:
    """The key prefix under which most of the encoder's keys appear in ``state`` (None: nowhere).

    Every dotted suffix of every file key is tried against the encoder's keys, which finds
    ``features.``, ``encoder.``, ``module.encoder.`` or no prefix without a list of known layouts.
    """
    votes: Counter[str] = Counter()
    for key in state:
        parts = key.split(".")
        for start in range(len(parts)):
            if ".".join(parts[start:]) in expected:
                votes[".".join(parts[:start]) + ("." if start else "")] += 1
    if not votes:
        return None
    return max(votes, key=lambda prefix: (votes[prefix], -len(prefix)))


def _few(keys, limit: int = 4) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _fetch_hub(source: HubFile, what: str) -> Path:
    from huggingface_hub import constants, hf_hub_download

    args = dict(repo_id=source.repo_id, filename=source.filename, revision=source.revision)
    try:
        return Path(hf_hub_download(**args, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError and friends): try the network
        pass
    where = f"{source.repo_id} in the Hugging Face cache {constants.HF_HUB_CACHE}"
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if constants.HF_HUB_OFFLINE:
        raise _offline_error(what, "HF_HUB_OFFLINE is set", where)
    _require_host(host, what, where)
    try:
        return Path(hf_hub_download(**args))
    except Exception as error:
        raise _download_error(what, f"{host}/{source.repo_id}", error) from None


def _fetch_url(source: UrlFile, what: str) -> Path:
    url = urlparse(source.url)
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url.path).name
    if path.is_file():
        return path
    _require_host(url.hostname or "", what, str(path))
    # torchvision names files <name>-<sha256 prefix>.pth; checking it catches a truncated download.
    digest = re.search(r"-([a-f0-9]+)\.", path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(source.url, str(path), digest.group(1) if digest else None)
    except Exception as error:
        raise _download_error(what, source.url, error) from None
    return path


def _require_host(host: str, what: str, where: str) -> None:
    if not _reachable(host):
        raise _offline_error(what, f"{host}:443 does not answer", where)


def _reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds, DNS included.

    The probe runs in a daemon thread because ``create_connection``'s timeout does not cover name
    resolution, which can hang far longer on a machine without a resolver.
    """
    answered: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


def _offline_error(what: str, reason: str, where: str) -> BenchError:
    return BenchError(
        f"cannot download the ImageNet weights of the {what} encoder ({reason}; not cached as "
        f'{where}); set {RECIPE_KEY} = "/path/to/{what}.pth" (a torchvision or smp state dict of '
        f'the encoder), or "none" to train from random init'
    )


def _download_error(what: str, source: str, error: Exception) -> BenchError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return BenchError(
        f"downloading the ImageNet weights of the {what} encoder from {source} failed "
        f'({type(error).__name__}: {first_line}); set {RECIPE_KEY} = "/path/to/{what}.pth" instead'
    )
