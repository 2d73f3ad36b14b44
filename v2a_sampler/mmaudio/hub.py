"""Official MMAudio weight files: download table, cached verified downloads, loading and conversion.

The table mirrors the official download list (hkchengrex/MMAudio ``mmaudio/utils/download_utils.py`` and
``docs/MODELS.md``): every file's Hugging Face location and MD5. The flow networks live on the hub repo
``hkchengrex/MMAudio`` under ``weights/``; the VAEs, the 16 kHz vocoder and Synchformer under ``ext_weights/`` (also
published as GitHub release assets, kept here as ``url`` for reference). The 44.1 kHz vocoder is NVIDIA's BigVGAN v2
(``nvidia/bigvgan_v2_44khz_128band_512x``), which the official code fetches without a checksum.

Downloads go through ``huggingface_hub`` (its cache, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``; on a machine where the hub
cannot be reached, :func:`~v2a_sampler.models.registry.hub_unreachable`, the cache is used at once); a file is verified
against its MD5 once and the verdict is remembered next to it (keyed by size and modification time), so large
checkpoints are hashed once, not at every load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..models.registry import hub_settings, hub_unreachable, save_pretrained
from .checkpoints import CheckpointError, load_into, read_state_dict
from .clip import DFN5B_HUB_ID
from .network import STALE_KEYS, VARIANTS, MMAudio

REPO_ID = "hkchengrex/MMAudio"
RELEASE = "https://github.com/hkchengrex/MMAudio/releases/download/v0.1"
BIGVGAN_44K_REPO = "nvidia/bigvgan_v2_44khz_128band_512x"
HASH_CHUNK = 1 << 24  # bytes read at a time while hashing (16 MiB)
HF_HUB_PREFIX = "hf-hub:"  # open_clip's prefix of model names that live on the hub


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """One official weight file: where it lives on the hub, its MD5 (None: not published) and its size."""

    repo_id: str
    filename: str
    md5: str | None
    size: str
    url: str | None = None


#: The official download table (file names and MD5 checksums as published upstream).
FILES: dict[str, WeightFile] = {
    "small_16k": WeightFile(REPO_ID, "weights/mmaudio_small_16k.pth", "af93cde404179f58e3919ac085b8033b", "601M"),
    "small_44k": WeightFile(REPO_ID, "weights/mmaudio_small_44k.pth", "babd74c884783d13701ea2820a5f5b6d", "601M"),
    "medium_44k": WeightFile(REPO_ID, "weights/mmaudio_medium_44k.pth", "5a56b6665e45a1e65ada534defa903d0", "2.4G"),
    "large_44k": WeightFile(REPO_ID, "weights/mmaudio_large_44k.pth", "fed96c325a6785b85ce75ae1aafd2673", "3.9G"),
    "large_44k_v2": WeightFile(
        REPO_ID, "weights/mmaudio_large_44k_v2.pth", "01ad4464f049b2d7efdaa4c1a59b8dfe", "3.9G"
    ),
    "vae_16k": WeightFile(REPO_ID, "ext_weights/v1-16.pth", "69f56803f59a549a1a507c93859fd4d7", "655M",
                          f"{RELEASE}/v1-16.pth"),
    "vae_44k": WeightFile(REPO_ID, "ext_weights/v1-44.pth", "fab020275fa44c6589820ce025191600", "1.2G",
                          f"{RELEASE}/v1-44.pth"),
    "bigvgan_16k": WeightFile(REPO_ID, "ext_weights/best_netG.pt", "eeaf372a38a9c31c362120aba2dde292", "429M",
                              f"{RELEASE}/best_netG.pt"),
    "synchformer": WeightFile(REPO_ID, "ext_weights/synchformer_state_dict.pth", "5b2f5594b0730f70e41e549b7c94390c",
                              "907M", f"{RELEASE}/synchformer_state_dict.pth"),
    "bigvgan_v2_44k": WeightFile(BIGVGAN_44K_REPO, "bigvgan_generator.pt", None, "450M"),
    "bigvgan_v2_44k_config": WeightFile(BIGVGAN_44K_REPO, "config.json", None, "2K"),
}  # fmt: skip


def files_for(variant: str) -> dict[str, str]:
    """``{"network", "vae", "vocoder", "synchformer"}`` -> entries of :data:`FILES` needed to run ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown MMAudio variant {variant!r}; known: {', '.join(VARIANTS)}")
    rate = "16k" if variant.endswith("16k") else "44k"
    vocoder = "bigvgan_16k" if rate == "16k" else "bigvgan_v2_44k"
    return {"network": variant, "vae": f"vae_{rate}", "vocoder": vocoder, "synchformer": "synchformer"}


#: open_clip's files in a hub repo (``hf-hub:`` model names): the config, and the weights in either format.
CLIP_CONFIG_FILE = "open_clip_config.json"
CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def missing_from_cache(
    variant: str, cache_dir: str | os.PathLike | None = None, clip_name: str = DFN5B_HUB_ID
) -> list[str]:
    """``repo/filename`` of every file that loading ``variant`` needs and the local hub cache lacks (empty: it loads
    offline). Checks the cache only (no network, no checksums): the flow network, VAE, vocoder, Synchformer and
    the CLIP model ``clip_name`` (an open_clip ``hf-hub:`` name)."""
    from huggingface_hub import try_to_load_from_cache

    cache, _ = hub_settings(cache_dir, None)

    def cached(repo_id: str, filename: str) -> bool:
        return isinstance(try_to_load_from_cache(repo_id, filename, cache_dir=cache), str)

    missing = [f"{FILES[k].repo_id}/{FILES[k].filename}" for k in files_for(variant).values()
               if not cached(FILES[k].repo_id, FILES[k].filename)]  # fmt: skip
    clip_repo = clip_name.removeprefix(HF_HUB_PREFIX)
    if not cached(clip_repo, CLIP_CONFIG_FILE):
        missing.append(f"{clip_repo}/{CLIP_CONFIG_FILE}")
    if not any(cached(clip_repo, name) for name in CLIP_WEIGHT_FILES):
        missing.append(f"{clip_repo}/{CLIP_WEIGHT_FILES[0]}")
    return missing


def md5sum(path: str | os.PathLike) -> str:
    """Hex MD5 of a file."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | os.PathLike, md5: str | None, label: str = "") -> Path:
    """Check ``path`` against ``md5`` (once per size/mtime; the verdict is cached in ``<file>.md5ok``)."""
    path = Path(path)
    if md5 is None:
        return path
    st = path.stat()
    stamp = json.dumps({"md5": md5, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    marker = path.with_name(path.name + ".md5ok")
    try:
        if marker.read_text() == stamp:
            return path
    except OSError:
        pass
    got = md5sum(path)
    if got != md5:
        raise CheckpointError(
            f"{label or path.name}: checksum mismatch for {path} (md5 {got}, expected {md5}); delete it and retry"
        )
    try:
        marker.write_text(stamp)
    except OSError:  # a read-only cache still works, it is just hashed again next time
        pass
    return path


def download(
    name: str,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    table: Mapping[str, WeightFile] | None = None,
) -> Path:
    """Local path of the official file ``name`` (a key of :data:`FILES`), downloaded into the hub cache if needed.

    ``local_files_only`` (default: ``HF_HUB_OFFLINE``) never touches the network; neither does a machine where the hub
    cannot be reached (then the cache is used at once, without the hub client's retries). Raises
    :class:`CheckpointError` with one clear line when the file cannot be had or fails its checksum.
    """
    from huggingface_hub import hf_hub_download

    table = FILES if table is None else table
    if name not in table:
        raise ValueError(f"unknown MMAudio weight file {name!r}; known: {', '.join(table)}")
    entry = table[name]
    cache, offline = hub_settings(cache_dir, local_files_only)
    unreachable = None if offline else hub_unreachable()
    try:
        got = hf_hub_download(entry.repo_id, entry.filename, cache_dir=cache,
                              local_files_only=offline or unreachable is not None)  # fmt: skip
    except Exception as e:  # network errors, missing files, incomplete caches: one clear line
        if unreachable is not None:
            raise CheckpointError(f"cannot get {entry.repo_id}/{entry.filename} ({entry.size} download): no network "
                                  f"({unreachable}) and not in the local Hugging Face cache") from None  # fmt: skip
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        mode = "offline: cache only" if offline else f"{entry.size} download"
        raise CheckpointError(
            f"cannot get {entry.repo_id}/{entry.filename} ({mode}): {type(e).__name__}: {reason}"
        ) from None
    return verify(got, entry.md5, f"{entry.repo_id}/{entry.filename}")


def load_network(path: str | os.PathLike, variant: str, **overrides: Any) -> MMAudio:
    """The official flow checkpoint at ``path`` as our :class:`MMAudio` (strict load; eval mode).

    Stale non-persistent buffers that older checkpoints carry (``latent_rot``, ...) are ignored.
    """
    what = f"MMAudio {variant}"
    state = read_state_dict(path, what, f"mmaudio_{variant}.pth")
    model = MMAudio.from_variant(variant, **overrides)
    load_into(model, {k: v for k, v in state.items() if k not in STALE_KEYS}, path, what)
    return model.eval()


def convert(path: str | os.PathLike, variant: str, folder: str | os.PathLike, **overrides: Any) -> Path:
    """Write an official flow checkpoint as a ``from_pretrained`` folder (``model.safetensors`` + ``config.json``)."""
    model = load_network(path, variant, **overrides)
    return save_pretrained(model, folder, config={"converted_from": {"file": Path(path).name, "variant": variant}})


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description="Convert an official MMAudio flow checkpoint to safetensors.")
    parser.add_argument("checkpoint", help="official .pth (e.g. mmaudio_large_44k_v2.pth)")
    parser.add_argument("variant", choices=list(VARIANTS))
    parser.add_argument("out", help="output folder")
    a = parser.parse_args()
    print(convert(a.checkpoint, a.variant, a.out))
