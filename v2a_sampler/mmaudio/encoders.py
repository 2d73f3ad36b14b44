"""MMAudio's condition features in one module: CLIP frames + Synchformer frames + prompts -> condition dicts.

:class:`MMAudioFeatures` bundles :class:`~v2a_sampler.mmaudio.clip.ClipFeatures` and
:class:`~v2a_sampler.mmaudio.synchformer.Synchformer` and returns what :class:`~v2a_sampler.mmaudio.network.MMAudio`
takes: ``{"clip": [B, Nc, 1024], "sync": [B, Ns, 768], "text": [B, 77, 1024]}``, leaving out the conditions with no
input (the network then uses its learned nulls, as the official ``generate`` does), and the negative conditions
``{"text": ...}`` of negative prompts (the sampler uses them in place of the null text where a branch drops the
text). Frames come from :func:`~v2a_sampler.mmaudio.frames.read_video`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core.denoisers import Cond
from .clip import DFN5B_HUB_ID, ClipFeatures
from .frames import MMAudioFrames, stack
from .synchformer import Synchformer


def _place(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    p = next(module.parameters())
    return x.to(device=p.device, dtype=p.dtype)


class MMAudioFeatures(nn.Module):
    """CLIP image/text and Synchformer features for MMAudio (either extractor may be absent)."""

    def __init__(self, clip: ClipFeatures | None = None, synchformer: Synchformer | None = None) -> None:
        super().__init__()
        self.clip = clip
        self.synchformer = synchformer.eval() if synchformer is not None else None

    @classmethod
    def from_pretrained(
        cls,
        synchformer_path: str | os.PathLike | None = None,
        clip_name: str = DFN5B_HUB_ID,
        device: str | torch.device = "cpu",
        **clip_kwargs: Any,
    ) -> MMAudioFeatures:
        """The official extractors: Synchformer from ``synchformer_path`` (default: the hub download, see
        :mod:`v2a_sampler.mmaudio.hub`) and CLIP ``clip_name`` through open_clip (``clip_kwargs`` go to
        :meth:`ClipFeatures.from_pretrained`)."""
        sync = Synchformer.from_official(synchformer_path).to(device)
        clip = ClipFeatures.from_pretrained(clip_name, device=device, **clip_kwargs)
        return cls(clip, sync)

    def train(self, mode: bool = True) -> MMAudioFeatures:
        """Always in eval mode (frozen feature extractors)."""
        return super().train(False)

    def _require(self, name: str) -> nn.Module:
        module = getattr(self, name)
        if module is None:
            raise ValueError(f"this MMAudioFeatures has no {name} extractor")
        return module

    @torch.no_grad()
    def encode(
        self,
        clip_frames: torch.Tensor | None = None,
        sync_frames: torch.Tensor | None = None,
        prompts: Sequence[str] | None = None,
        negative_prompts: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> tuple[Cond, Cond | None]:
        """``(cond, negative)`` for the network and the sampler.

        ``clip_frames`` ``[B, Tc, 3, 384, 384]`` in ``[0, 1]``, ``sync_frames`` ``[B, Ts, 3, 224, 224]`` in
        ``[-1, 1]``, ``prompts`` and ``negative_prompts`` ``B`` strings; any may be None (``cond`` then leaves that
        condition out; ``negative`` is None without negative prompts). ``batch_size`` caps the frames (CLIP) or
        windows (Synchformer) per forward pass.
        """
        sizes = {
            name: len(v) for name, v in (("clip_frames", clip_frames), ("sync_frames", sync_frames),
                                         ("prompts", prompts), ("negative_prompts", negative_prompts)) if v is not None
        }  # fmt: skip
        if len(set(sizes.values())) > 1:
            raise ValueError(f"batch sizes differ: {sizes}")
        cond: dict[str, torch.Tensor] = {}
        if clip_frames is not None:
            clip = self._require("clip")
            cond["clip"] = clip.encode_frames(_place(clip, clip_frames), batch_size)
        if sync_frames is not None:
            sync = self._require("synchformer")
            cond["sync"] = sync.encode(_place(sync, sync_frames), batch_size)
        if prompts is not None:
            cond["text"] = self._require("clip").encode_text(prompts)
        negative = None
        if negative_prompts is not None:
            negative = {"text": self._require("clip").encode_text(negative_prompts)}
        return cond, negative

    def encode_videos(
        self,
        videos: Sequence[MMAudioFrames],
        prompts: Sequence[str] | None = None,
        negative_prompts: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> tuple[Cond, Cond | None]:
        """:meth:`encode` of videos read by :func:`~v2a_sampler.mmaudio.frames.read_video` (equal lengths)."""
        clip_frames, sync_frames = stack(videos)
        return self.encode(clip_frames, sync_frames, prompts, negative_prompts, batch_size)
