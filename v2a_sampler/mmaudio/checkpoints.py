"""Reading official MMAudio weight files: one error type and one-line messages for every component."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """An official weight file is missing, unreadable, fails its checksum or does not fit the module (one line)."""


def read_checkpoint(path: str | os.PathLike, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with a one-line :class:`CheckpointError` on failure."""
    if not Path(path).is_file():
        raise CheckpointError(f"{what}: no such file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{what}: {path} is not a loadable PyTorch checkpoint: {type(e).__name__}: {reason}"
        ) from None


def read_state_dict(path: str | os.PathLike, what: str, expected: str) -> dict[str, torch.Tensor]:
    """A checkpoint that must be a flat state dict of tensors (``expected`` names the file in the error)."""
    state = read_checkpoint(path, what)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what}: {path} is not a flat state dict of tensors (expected {expected})")
    return dict(state)


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike, what: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with a one-line :class:`CheckpointError` on a mismatch."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        raise CheckpointError(f"{what}: {path} does not fit: {' '.join(lines[1:3])[:400]}") from None
