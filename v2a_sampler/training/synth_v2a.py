"""Training data for the embedded V2A model, from the procedural synthetic world.

Clips are rendered with :func:`v2a_sampler.synth.make_clip`; each becomes a log-mel ``[n_mels, frames]`` (per
:class:`~v2a_sampler.media.specs.AudioSpec`) and frames ``[T, s, s, 3]`` sampled at :class:`VideoSpec` fps and
area-resized to ``s`` squares (the size the model's frame encoder works at). Built sets are cached on disk, keyed by
every parameter, so repeated runs and resumes do not re-render.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..media.specs import AudioSpec, VideoSpec, resize_frames
from ..models import from_pretrained
from ..synth import make_clip
from .data import TensorData, register_dataset

#: Render size of the synthetic clips before area-resizing (matches the synth default and the demo clip).
RENDER_SIZE = 96
#: First clip seed of the held-out evaluation set (training uses seeds from ``seed`` upward; keep them disjoint).
EVAL_SEED_OFFSET = 1_000_000


def cache_dir() -> Path:
    """``$V2A_CACHE`` or ``~/.cache/v2a-sampler``."""
    return Path(os.environ.get("V2A_CACHE", Path.home() / ".cache" / "v2a-sampler"))


@dataclass
class SynthSet:
    """Log-mels ``[N, n_mels, F]`` (float32, not normalised) and frames ``[N, T, s, s, 3]`` (uint8)."""

    mels: torch.Tensor
    frames: torch.Tensor
    seeds: list[int]


def _key(**params: Any) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def build_synth_set(
    num_clips: int,
    duration: float = 4.0,
    seed: int = 0,
    audio: AudioSpec | None = None,
    video: VideoSpec | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> SynthSet:
    """Render ``num_clips`` clips (seeds ``seed .. seed + num_clips - 1``) into model-ready tensors."""
    audio = audio or AudioSpec()
    video = video or VideoSpec()
    params = {
        "num_clips": num_clips,
        "duration": duration,
        "seed": seed,
        "audio": {k: v for k, v in audio.to_dict().items() if k not in ("mel_mean", "mel_std")},
        "video": video.to_dict(),
        "render_size": RENDER_SIZE,
        "version": 1,
    }
    path = cache_dir() / f"synth_v2a-{_key(**params)}.safetensors"
    seeds = list(range(seed, seed + num_clips))
    if use_cache and path.exists():
        t = load_file(str(path))
        return SynthSet(t["mels"], t["frames"], seeds)
    mels, frames = [], []
    it = range(num_clips)
    if progress:
        from rich.progress import track

        it = track(it, description=f"rendering {num_clips} synthetic clips")
    for i in it:
        clip = make_clip(seeds[i], duration=duration, fps=video.fps, size=RENDER_SIZE, sample_rate=audio.sample_rate)
        mels.append(audio.log_mel(torch.from_numpy(clip.audio)))
        frames.append(resize_frames(torch.from_numpy(clip.frames), video.frame_size))
    out = SynthSet(torch.stack(mels), torch.stack(frames), seeds)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"mels": out.mels.contiguous(), "frames": out.frames.contiguous()}, str(tmp))
        os.replace(tmp, path)
    return out


class ClipCrops:
    """Random aligned crops: ``crop`` video frames (or per-frame features ``[N, T, D]``) and the matching
    ``crop * ratio`` mel frames of random clips.

    Mel frame ``ratio * k`` and video frame ``k`` sit at the same time (``ratio = mel rate / video fps``).
    """

    def __init__(self, mels: torch.Tensor, frames: torch.Tensor, crop: int, ratio: int) -> None:
        if frames.shape[1] < crop:
            raise ValueError(f"clips have {frames.shape[1]} video frames, fewer than the crop of {crop}")
        if mels.shape[-1] < ratio * frames.shape[1]:
            raise ValueError("mel frames do not cover the video frames at the given ratio")
        self.mels, self.frames, self.crop, self.ratio = mels, frames, crop, ratio

    def __call__(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        idx = torch.randint(self.frames.shape[0], (batch_size,), generator=generator)
        start = torch.randint(self.frames.shape[1] - self.crop + 1, (batch_size,), generator=generator)
        pairs = list(zip(idx.tolist(), start.tolist(), strict=True))
        mel = torch.stack([self.mels[i, :, self.ratio * s : self.ratio * (s + self.crop)] for i, s in pairs])
        vid = torch.stack([self.frames[i, s : s + self.crop] for i, s in pairs])
        return mel, {"video": vid}


def mel_video_ratio(audio: AudioSpec, video: VideoSpec) -> int:
    """Mel frames per video frame (must be a whole number)."""
    ratio = audio.frame_rate / video.fps
    if abs(ratio - round(ratio)) > 1e-9:
        raise ValueError(f"mel rate {audio.frame_rate:g} is not a multiple of the video rate {video.fps:g}")
    return int(round(ratio))


@torch.no_grad()
def encode_clips(model: Any, frames: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Video features ``[N, T, D]`` of whole clips ``[N, T, s, s, 3]`` by ``model``'s frame encoder
    (``encode_conditions``), computed once: training on them keeps that encoder frozen (as MMAudio trains on frozen
    CLIP / Synchformer features) and spares its cost at every iteration."""
    feats = [model.encode_conditions({"video": frames[i : i + batch_size]})["video"].float()
             for i in range(0, frames.shape[0], batch_size)]  # fmt: skip
    return torch.cat(feats)


def synth_v2a_source(
    num_clips: int = 2000,
    duration: float = 4.0,
    seed: int = 0,
    audio: dict[str, Any] | None = None,
    video: dict[str, Any] | None = None,
    crop_seconds: float | None = None,
    features_from: str | None = None,
) -> TensorData | ClipCrops:
    """The registered ``"synth_v2a"`` data source: normalised log-mels with ``{"video": frames}``.

    ``audio`` must carry the normalisation statistics the model uses (the recipe fits them on the same set);
    ``crop_seconds`` draws random aligned crops of that length instead of whole clips; ``features_from`` (a model
    folder) gives ``{"video": features}`` of that model's frozen frame encoder instead of frames (:func:`encode_clips`).
    """
    spec = AudioSpec.from_dict(audio) if audio else AudioSpec()
    vspec = VideoSpec.from_dict(video) if video else VideoSpec()
    data = build_synth_set(num_clips, duration, seed, spec, vspec)
    if not spec.mel_mean:
        spec.fit_stats(data.mels)
    video_cond = data.frames
    if features_from is not None:
        video_cond = encode_clips(from_pretrained(features_from), data.frames)
    if crop_seconds:
        crop = int(round(crop_seconds * vspec.fps))
        return ClipCrops(spec.normalize(data.mels), video_cond, crop, mel_video_ratio(spec, vspec))
    return TensorData(spec.normalize(data.mels), {"video": video_cond})


register_dataset("synth_v2a", synth_v2a_source)
