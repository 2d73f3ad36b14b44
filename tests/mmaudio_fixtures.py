"""Reference data written by ``tools/mmaudio_ref_*.py`` from the official MMAudio code (see that folder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "mmaudio"


def load_fixture(name: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of ``tests/fixtures/mmaudio/<name>.safetensors``."""
    from safetensors import safe_open

    path = FIXTURE_DIR / f"{name}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    return tensors, meta


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix`` with the prefix removed (e.g. a state dict stored as ``"weights/..."``)."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
