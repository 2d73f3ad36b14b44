"""Video (and/or text) in, soundtrack out, with an official MMAudio variant and any guidance of the SDK.

:class:`MMAudioPipeline` chains the pieces of :mod:`v2a_sampler.mmaudio`: frames read as the official demo reads
them, CLIP + Synchformer + text features, the flow network sampled by :func:`v2a_sampler.solvers.sample` (default:
the official demo's 25 Euler steps with CFG 4.5; negative prompts replace the null text), the latent
un-normalisation, the VAE decoder and the vocoder. A second MMAudio of the same latent space (every 44.1 kHz variant
shares one) serves as the bad model of autoguidance-type methods: ``Pipeline.from_pretrained("hkchengrex/MMAudio",
variant="large_44k_v2", bad_variant="small_44k")`` then ``pipe(video, guidance="hg")``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..media.audio import MelAxes
from ..mmaudio import hub
from ..mmaudio.clip import DFN5B_HUB_ID
from ..mmaudio.encoders import MMAudioFeatures
from ..mmaudio.frames import DEFAULT_DURATION, MMAudioFrames, read_video
from ..mmaudio.network import VARIANTS, MMAudio
from ..mmaudio.vocoder import MMAudioDecoder
from ..models.perturb import PerturbedDenoiser, perturbed
from .base import RunPlan, V2APipeline, check_finite, seeded_noise

#: The official demo's sampling defaults (Euler 25 steps, CFG 4.5).
DEFAULT_GUIDANCE = "cfg(4.5)"


class MMAudioPipeline(V2APipeline):
    """An MMAudio network (+ optional bad network) with its feature extractors and audio decoder."""

    conditions = ("video", "text")
    default_guidance = DEFAULT_GUIDANCE

    def __init__(
        self,
        network: MMAudio,
        decoder: MMAudioDecoder,
        features: MMAudioFeatures | None = None,
        bad: MMAudio | PerturbedDenoiser | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        name: str | None = None,
    ) -> None:
        if network.latent_dim != decoder.latent_dim:
            raise ValueError(f"network latents ({network.latent_dim}) do not fit the decoder ({decoder.latent_dim})")
        if isinstance(bad, PerturbedDenoiser):
            if bad.perturbation_of is not network:
                raise ValueError("a perturbed bad model must perturb this pipeline's network (perturbed(network, ...))")
        elif bad is not None:
            mine, theirs = network.arch_kwargs, bad.arch_kwargs
            for key in ("latent_dim", "sampling_rate", "spectrogram_frame_rate"):
                if mine[key] != theirs[key]:
                    raise ValueError(
                        f"bad model {theirs.get('variant') or 'network'} does not share the latent space of "
                        f"{mine.get('variant') or 'the network'} ({key}: {theirs[key]} vs {mine[key]})"
                    )
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.model = network.to(self.device, self.dtype).eval()
        self.bad = bad.to(self.device, self.dtype).eval() if bad is not None else None
        self.decoder = decoder.to(self.device).eval()  # decoded in float32
        self.features = features.to(self.device, self.dtype).eval() if features is not None else None
        self.name = name
        self._compiled = None  # torch.compile wrappers used for sampling (see compile())

    @property
    def sample_rate(self) -> int:
        return self.decoder.sampling_rate

    @property
    def mel_axes(self) -> MelAxes:
        return self.decoder.mel_axes

    # -- loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        variant: str = "large_44k_v2",
        bad_variant: str | None = None,
        perturbation: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        clip_name: str = DFN5B_HUB_ID,
    ) -> MMAudioPipeline:
        """Download (or find in the hub cache), verify and load the official files of ``variant`` (and of
        ``bad_variant`` as the bad model, or a ``perturbation`` spec such as ``"perturb:skip=7"`` of the network
        itself). CLIP features need the ``[mmaudio]`` extra (open_clip)."""
        if perturbation is not None and bad_variant is not None:
            raise ValueError("give a bad_variant or a perturbation of the network, not both")
        for v in (variant, bad_variant):
            if v is not None and v not in VARIANTS:
                raise ValueError(f"unknown MMAudio variant {v!r}; known: {', '.join(VARIANTS)}")
        dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        need = hub.files_for(variant)

        def get(name: str):
            return hub.download(name, cache_dir=cache_dir, local_files_only=local_files_only)

        network = hub.load_network(get(need["network"]), variant)
        bad = hub.load_network(get(hub.files_for(bad_variant)["network"]), bad_variant) if bad_variant else None
        decoder = MMAudioDecoder.from_official(get(need["vae"]), get(need["vocoder"]))
        features = MMAudioFeatures.from_pretrained(get(need["synchformer"]), clip_name=clip_name, device=device)
        if perturbation is not None:
            bad = perturbed(network, perturbation)
        bad_name = bad_variant or perturbation
        name = f"mmaudio:{variant}" + (f" (bad: {bad_name})" if bad_name else "")
        return cls(network, decoder, features, bad, device=device, dtype=dt, name=name)

    # -- inputs --------------------------------------------------------------------------------------------------
    def load_video(
        self, path: str | os.PathLike, duration: float | None = None, strict: bool = False
    ) -> tuple[MMAudioFrames, float]:
        """The frames of the first ``duration`` seconds (default 8) and the duration they cover (official rule: cut
        to the video's length; a partial video: a :class:`~v2a_sampler.media.io.PartialVideoWarning`, with
        ``strict`` an error)."""
        frames = read_video(path, DEFAULT_DURATION if duration is None else duration, strict=strict)
        return frames, frames.duration

    def _is_single(self, video: Any) -> bool:
        return video is None or isinstance(video, str | os.PathLike | MMAudioFrames)

    def _frames_input(self, frames: Any, duration: float | None) -> tuple[MMAudioFrames | None, float]:
        if frames is None:  # text-only generation
            return None, DEFAULT_DURATION if duration is None else float(duration)
        if not isinstance(frames, MMAudioFrames):
            raise TypeError(f"expected a video path, MMAudioFrames or None, got {type(frames).__name__}")
        return frames, frames.duration

    # -- generation ----------------------------------------------------------------------------------------------
    def _sample(self, items: list, plan: RunPlan, callback: Any, progress: Any = None) -> tuple[list, list, Any]:
        duration = items[0].duration
        frames = [item.frames for item in items]
        prompts = [item.prompt for item in items]
        negatives = [item.negative_prompt for item in items]
        cond, negative = self._conditions(frames, prompts, negatives)
        n_latent = self.model.sequence_lengths(duration)["latent"]
        seeds = [item.seed for item in items]
        noise, gens = seeded_noise((n_latent, self.model.latent_dim), seeds, self.device, self.dtype)
        z, info = plan.sampler(
            noise, cond, negative=negative, generator=gens, callback=callback, progress=progress
        )  # bad model: the same conditions
        check_finite(z)
        mel = self.decoder.mel(self.model.unnormalize(z.float()))
        wave = self.decoder.vocode(mel)[..., : round(duration * self.sample_rate)]
        return [wave[k].cpu() for k in range(len(items))], [mel[k].cpu() for k in range(len(items))], info

    def _conditions(self, frames: list[MMAudioFrames | None], prompts: list[str | None], negatives):
        """Network conditions (absent ones left out: learned nulls) and the negative text of the batch."""
        has_video = frames[0] is not None
        has_text = any(p is not None for p in prompts)
        has_negative = any(p is not None for p in negatives)
        if self.features is None:
            if has_video or has_text or has_negative:
                raise ValueError("this pipeline has no feature extractors: only unconditional generation")
            return {}, None
        if has_video:
            cond, negative = self.features.encode_videos(
                frames, [p or "" for p in prompts] if has_text else None,
                [p or "" for p in negatives] if has_negative else None,
            )  # fmt: skip
        else:
            cond, negative = self.features.encode(
                prompts=[p or "" for p in prompts] if has_text else None,
                negative_prompts=[p or "" for p in negatives] if has_negative else None,
            )
        return cond, negative

    def __repr__(self) -> str:
        bad = f", bad={getattr(self.bad, 'name', None) or self.bad.arch_kwargs.get('variant')}" if self.bad else ""
        return f"MMAudioPipeline({self.name or self.model.arch_kwargs.get('variant')}{bad}, {self.sample_rate} Hz)"
