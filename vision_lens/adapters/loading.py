"""Reading weights: checkpoint files, downloads, the checkpoints trained here (checked against their records), strict
loading, and the content hashes that identify weights in caches and lens configs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from .errors import WeightsError
from .weights import Weights


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_sha256(state_dict: Mapping[str, Tensor]) -> str:
    """A content hash of a state dict, for weights that have no file."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict in a checkpoint file, without DataParallel's ``module.`` prefix.

    Accepts a bare state dict or a dict with a ``state_dict`` entry (the
    akamaster CIFAR layout, and scripts/train_cifar.py's).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file; pass the path of a .th/.pt/.pth checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise WeightsError(f"--weights {path}: not a readable torch checkpoint ({exc.__class__.__name__}: {exc})") from exc
    return _state_dict_in(obj, str(path))


def _state_dict_in(obj: object, source: str) -> dict[str, Tensor]:
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"--weights {source}: expected a state dict or a dict with a 'state_dict' entry")
    return {k.removeprefix("module."): v for k, v in state.items()}


def download_checkpoint(weights: str) -> tuple[dict[str, Tensor], str]:
    """The state dict at a URL (through torch.hub's cache) and its file's sha256.

    A download and a local copy of the same file get the same id, so they
    share feature caches.
    """
    try:
        obj = torch.hub.load_state_dict_from_url(weights, map_location="cpu", check_hash=True, weights_only=True)
    except OSError as exc:  # URLError, HTTPError, socket errors
        raise WeightsError(
            f"could not download {weights} ({exc.__class__.__name__}: {exc}). Offline, download that file on a "
            "machine with internet access and pass --weights PATH."
        ) from exc
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights).path).name
    return _state_dict_in(obj, weights), file_sha256(cached)


def trained_here(entry: Weights, name: str) -> tuple[Path, str]:
    """The checkpoint trained here that ``entry`` names, and its sha256, checked against the record beside it.

    A file that is not there yet says how to train it; one whose sha256 differs from its record's (damaged, or
    replaced without its record) is refused before it is read.
    """
    path = entry.path()
    if not path.is_file():
        raise WeightsError(
            f"--model {name} --weights pretrained: its checkpoint trained here ({entry.source}) is not available yet "
            f"(no {path}); train it with `{entry.train}` in a checkout of vision-lens, or pass --weights PATH or "
            "--weights random"
        )
    record = entry.record()
    expected = (record or {}).get("sha256")
    if expected is None:
        raise WeightsError(f"--model {name} --weights pretrained: {path} has no training record with its sha256 "
                           f"({path.with_suffix('.json')}); pass --weights {path} to load it unchecked")
    actual = file_sha256(path)
    if actual != expected:
        raise WeightsError(
            f"--model {name} --weights pretrained: {path} has sha256 {actual}, but its training record "
            f"{path.with_suffix('.json')} says {expected}: the file is damaged or was replaced without its record. "
            f"Restore both (git checkout, or reinstall vision-lens), or retrain with `{entry.train}`"
        )
    return path, actual


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the file and the keys."""
    try:
        model.load_state_dict(state_dict, strict=True)
        return
    except RuntimeError:
        pass
    # BatchNorm fills in num_batches_tracked for old checkpoints, so it is never "missing".
    own = model.state_dict()
    missing = sorted(k for k in set(own) - set(state_dict) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state_dict))
        if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    lines = [f"checkpoint {source} does not match the architecture {type(model).__name__}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {', '.join(missing[:20])}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected[:20])}")
    if shapes:
        lines.append(f"  shape mismatches ({len(shapes)}): {'; '.join(shapes[:10])}")
    lines.append("Pass --weights a checkpoint saved from this --model, or choose the --model it was saved from.")
    raise WeightsError("\n".join(lines))
