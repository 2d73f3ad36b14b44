"""Shared plumbing of the ``tools/mmaudio_ref_*.py`` scripts (not part of the package).

Those scripts import the *official* MMAudio code (hkchengrex/MMAudio, not a dependency of this project) to write
the data our tests compare against:

* key manifests (every state-dict key and shape of an official module) under ``v2a_sampler/mmaudio/manifests/``;
* small numerical fixtures (random weights + inputs + the official outputs, reduced sizes) under
  ``tests/fixtures/mmaudio/``.

Set-up, once (the official code needs einops, timm, open_clip_torch, omegaconf on top of torch)::

    git clone https://github.com/hkchengrex/MMAudio /path/to/MMAudio
    pip install einops timm open_clip_torch omegaconf
    python tools/mmaudio_ref_network.py --official /path/to/MMAudio     # or MMAUDIO_SRC=/path/to/MMAudio
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
MANIFEST_DIR = ROOT / "v2a_sampler" / "mmaudio" / "manifests"
FIXTURE_DIR = ROOT / "tests" / "fixtures" / "mmaudio"
UPSTREAM = "https://github.com/hkchengrex/MMAudio"


def parse_args(description: str) -> argparse.Namespace:
    """``--official PATH`` (default ``$MMAUDIO_SRC``); puts the official package on ``sys.path``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--official", default=os.environ.get("MMAUDIO_SRC"), help="checkout of " + UPSTREAM)
    args = parser.parse_args()
    if not args.official or not (Path(args.official) / "mmaudio").is_dir():
        parser.error(f"--official (or MMAUDIO_SRC) must point at a checkout of {UPSTREAM}")
    sys.path.insert(0, str(Path(args.official).resolve()))
    return args


def shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    """``{key: shape}`` of ``module.state_dict()``, in registration order."""
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def write_manifest(name: str, about: str, entries: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``manifests/<name>.json``: ``{"about": ..., "variants": {variant: {"keys": {key: shape}, ...}}}``."""
    MANIFEST_DIR.mkdir(parents=True, exist_ok=True)
    path = MANIFEST_DIR / f"{name}.json"
    path.write_text(json.dumps({"about": about, "source": UPSTREAM, "variants": entries}, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def save_fixture(name: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write ``tests/fixtures/mmaudio/<name>.safetensors`` with ``meta`` (JSON) in its metadata under ``"meta"``.

    Tensors are stored in float32, except float16 ones (use :func:`half_exact` weights to halve a fixture's size
    without changing the computation).
    """
    from safetensors.torch import save_file

    FIXTURE_DIR.mkdir(parents=True, exist_ok=True)
    path = FIXTURE_DIR / f"{name}.safetensors"
    keep = (torch.float16,)
    flat = {
        k: v.detach().to(v.dtype if v.dtype in keep else torch.float32).contiguous().cpu() for k, v in tensors.items()
    }
    save_file(flat, str(path), metadata={"meta": json.dumps(dict(meta))})
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1e3:.0f} kB)")
    return path


def half_exact(module: torch.nn.Module, std: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fill every parameter with N(0, std^2) values that float16 represents exactly; their float16 state dict."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p).mul_(std).half().float())
    return {k: v.half() if v.is_floating_point() else v for k, v in module.state_dict().items()}
