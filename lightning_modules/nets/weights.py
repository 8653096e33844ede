"""Pretrained encoder weights: ``encoder_weights: imagenet | null | <path>``, never downloaded.

The papers start their encoders from ImageNet weights; this suite runs where there may be no
network, so it never downloads. `resolve_encoder_weights` turns the option into a local file (or
``None`` = random init) *when the model is built*, i.e. before any training starts:

- ``null`` (or ``none``/``random``): random initialisation.
- ``imagenet``: the torchvision file for the encoder if it is already in the torch hub cache
  (``$TORCH_HOME/hub/checkpoints``); otherwise an `InputError` that names the file to fetch on a
  machine with network and how to pass it.
- a path: a ``.pth``/``.pt`` state dict (plain, or under ``state_dict``/``model``).

`load_encoder_weights` copies a state dict into an encoder and refuses a file that does not fit
(so a wrong file fails loudly instead of training from a half-loaded net).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from datamodules.errors import InputError

IMAGENET = "imagenet"
RANDOM = {"", "null", "none", "random"}
OPTION = "--model.init_args.encoder_weights"


def hub_checkpoint_dir() -> Path:
    """Where torch keeps downloaded weights (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def torchvision_imagenet_urls(arch: str) -> list[str]:
    """Download URLs of torchvision's ImageNet weights for `arch` (V1 first: the papers' era)."""
    import torchvision.models as tvm

    try:
        weights = tvm.get_model_weights(arch)
    except (ValueError, KeyError):
        return []
    return [w.url for w in weights]


def resolve_encoder_weights(
    spec: str | Path | None,
    encoder: str,
    urls: Sequence[str] = (),
    option: str = OPTION,
) -> Path | None:
    """The local weights file for `spec`, or None for random init (see the module doc).

    Args:
        spec: ``None``/"null", "imagenet" or a path.
        encoder: encoder name, for messages (e.g. "resnet50").
        urls: where the ImageNet file comes from; its basename is looked up in the hub cache.
        option: the setting's name as the user types it, for messages.
    """
    if spec is None or str(spec).strip().lower() in RANDOM:
        return None
    text = str(spec).strip()
    if text.lower() == IMAGENET:
        cache = hub_checkpoint_dir()
        for url in urls:
            found = cache / url.rsplit("/", 1)[-1]
            if found.is_file():
                return found
        if urls:
            name = urls[0].rsplit("/", 1)[-1]
            how = (
                f"download {urls[0]} on a machine with network and pass its path "
                f"({option} /path/to/{name}) or copy it into {cache}"
            )
        else:
            how = f"pass a local state-dict file ({option} /path/to/weights.pth)"
        raise InputError(
            None,
            f"ImageNet weights for {encoder} are not on this machine and wsiseg never downloads "
            f"weights; {how}; or use {option} null for random initialisation",
        )
    path = Path(text).expanduser()
    if not path.is_file():
        raise InputError(
            path,
            f"no such weights file for {encoder} ({option} takes imagenet, null or a path)",
        )
    return path


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file: plain, or under a ``state_dict``/``model`` key."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle/zip errors from a wrong or truncated file
        raise InputError(path, f"cannot read weights: {err}") from err
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise InputError(path, "not a state dict of tensors")
    return obj


HEADS = ("fc.", "classifier.", "head.", "last_linear.")
"""Classifier keys of ImageNet files that an encoder does not have (ignored when loading)."""


def load_encoder_weights(
    module: nn.Module,
    path: str | Path,
    prefixes: Sequence[str] = ("", "module.", "encoder.", "backbone.", "model."),
) -> int:
    """Copy the tensors of `path` into `module`; returns how many were loaded.

    Keys may carry one of `prefixes` (the prefix that matches most tensors is used). The file
    must fit exactly, apart from a classifier (`HEADS`): every tensor of `module` must be there
    with its shape, and no other tensor under the prefix may be left over (a ResNet-34 file
    holds every ResNet-18 tensor, so a subset check alone would accept it).
    """
    state = load_state(path)
    own = module.state_dict()

    def under(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    def fitting(prefix: str) -> dict[str, torch.Tensor]:
        return {k: v for k, v in under(prefix).items() if k in own and own[k].shape == v.shape}

    prefix = max(prefixes, key=lambda p: len(fitting(p)))
    best = fitting(prefix)
    # old torchvision files predate BatchNorm's num_batches_tracked counter
    missing = [k for k in own if k not in best and not k.endswith("num_batches_tracked")]
    extra = [k for k in under(prefix) if k not in best and not k.startswith(HEADS)]
    if missing or extra:
        problem = (
            f"{len(missing)} of {len(own)} tensors missing or of another shape "
            f"(e.g. {', '.join(missing[:3])})"
            if missing
            else f"{len(extra)} tensors it does not have (e.g. {', '.join(extra[:3])})"
        )
        raise InputError(
            path, f"does not fit the {type(module).__name__} encoder: {problem}; wrong network?"
        )
    module.load_state_dict(best, strict=False)
    return len(best)
