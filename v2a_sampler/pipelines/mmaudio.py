"""Video (and/or text) in, soundtrack out, with an official MMAudio variant and any guidance of the SDK.

:class:`MMAudioPipeline` chains the pieces of :mod:`v2a_sampler.mmaudio`: frames read as the official demo reads
them, CLIP + Synchformer + text features, the flow network sampled by :func:`v2a_sampler.solvers.sample` (default:
the official demo's 25 Euler steps with CFG 4.5; negative prompts replace the null text), the latent
un-normalisation, the VAE decoder and the vocoder. A second MMAudio of the same latent space (every 44.1 kHz variant
shares one) serves as the bad model of autoguidance-type methods: ``Pipeline.from_pretrained("hkchengrex/MMAudio",
variant="large_44k_v2", bad_variant="small_44k")`` then ``pipe(video, guidance="hg")``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..core import guidance as G
from ..core import solvers
from ..mmaudio import hub
from ..mmaudio.clip import DFN5B_HUB_ID
from ..mmaudio.encoders import MMAudioFeatures
from ..mmaudio.frames import DEFAULT_DURATION, MMAudioFrames, read_video
from ..mmaudio.network import VARIANTS, MMAudio
from ..mmaudio.vocoder import MMAudioDecoder
from .embedded import GeneratedAudio, check_finite, compile_networks, item_seeds, nfe_per_clip, seeded_noise

#: The official demo's sampling defaults.
DEFAULT_GUIDANCE = "cfg(4.5)"
DEFAULT_SOLVER = "euler"
DEFAULT_STEPS = 25

VideoInput = str | os.PathLike | MMAudioFrames | None
Prompt = str | Sequence[str] | None


class MMAudioPipeline:
    """An MMAudio network (+ optional bad network) with its feature extractors and audio decoder."""

    def __init__(
        self,
        network: MMAudio,
        decoder: MMAudioDecoder,
        features: MMAudioFeatures | None = None,
        bad: MMAudio | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        name: str | None = None,
    ) -> None:
        if network.latent_dim != decoder.latent_dim:
            raise ValueError(f"network latents ({network.latent_dim}) do not fit the decoder ({decoder.latent_dim})")
        if bad is not None:
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
        self.sample_rate = decoder.sampling_rate
        self.default_guidance = DEFAULT_GUIDANCE
        self._compiled: tuple[Any, Any] | None = None  # torch.compile wrappers used for sampling (see compile())

    def compile(self, backend: str = "inductor", mode: str | None = None) -> MMAudioPipeline:
        """Sample through ``torch.compile``-d networks (static shapes; each new clip length compiles once)."""
        self._compiled = compile_networks(self.model, self.bad, backend, mode)
        return self

    # -- loading -------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        variant: str = "large_44k_v2",
        bad_variant: str | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool | None = None,
        clip_name: str = DFN5B_HUB_ID,
    ) -> MMAudioPipeline:
        """Download (or find in the hub cache), verify and load the official files of ``variant`` (and of
        ``bad_variant`` as the bad model). CLIP features need the ``[mmaudio]`` extra (open_clip)."""
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
        name = f"mmaudio:{variant}" + (f" (bad: {bad_variant})" if bad_variant else "")
        return cls(network, decoder, features, bad, device=device, dtype=dt, name=name)

    # -- generation ----------------------------------------------------------------------------------------------
    def load_video(self, path: str | os.PathLike, duration: float | None = None) -> tuple[MMAudioFrames, float]:
        """The frames of the first ``duration`` seconds (default 8) and the duration they cover (official rule)."""
        frames = read_video(path, DEFAULT_DURATION if duration is None else duration)
        return frames, frames.duration

    def __call__(
        self,
        video: VideoInput | Sequence[VideoInput] = None,
        prompt: Prompt = None,
        negative_prompt: Prompt = None,
        guidance: str | G.Guidance | None = DEFAULT_GUIDANCE,
        solver: str = DEFAULT_SOLVER,
        steps: int = DEFAULT_STEPS,
        seed: int | Sequence[int] = 0,
        duration: float | None = DEFAULT_DURATION,
        callback: Callable[[dict[str, Any]], None] | None = None,
        **sample_kwargs: Any,
    ) -> GeneratedAudio | list[GeneratedAudio]:
        """Soundtracks for a video path (or frames from :meth:`load_video`, or ``None`` for text-only), or a list.

        ``prompt`` / ``negative_prompt``: one string for all items or one per item. ``duration`` (seconds, default
        8) is cut to the video's length as the official reader does. Item ``i`` uses seed ``seed + i`` (or
        ``seed[i]``), so a batch equals its items generated one by one. ``guidance`` is any spec of
        :func:`v2a_sampler.guidance.parse` (AG/HG-type guidance needs the bad model).
        """
        single = video is None or isinstance(video, str | os.PathLike | MMAudioFrames)
        items = [video] if single else list(video)
        if not items:
            raise ValueError("no video given (pass None for text-only generation)")
        n = len(items)
        prompts, negatives = _per_item(prompt, n, "prompt"), _per_item(negative_prompt, n, "negative_prompt")
        seeds = item_seeds(seed, n)
        duration = DEFAULT_DURATION if duration is None else duration
        if not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
        g = G.resolve(guidance, self.model, self.bad)
        frames = [v if isinstance(v, MMAudioFrames) or v is None else read_video(v, duration) for v in items]
        groups: dict[tuple[bool, float], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault((f is None, duration if f is None else f.duration), []).append(i)
        results: list[GeneratedAudio | None] = [None] * n
        for (_, dur), idx in groups.items():
            outs = self._generate(
                [frames[i] for i in idx], dur, [prompts[i] for i in idx], [negatives[i] for i in idx],
                [seeds[i] for i in idx], g, solver, steps, callback, sample_kwargs,
            )  # fmt: skip
            for i, out in zip(idx, outs, strict=True):
                out.source = str(items[i]) if isinstance(items[i], str | os.PathLike) else None
                results[i] = out
        return results[0] if single else results  # type: ignore[return-value]

    def _generate(self, frames, duration, prompts, negatives, seeds, g, solver, steps, callback, sample_kwargs):
        cond, negative = self._conditions(frames, prompts, negatives)
        n_latent = self.model.sequence_lengths(duration)["latent"]
        noise, gens = seeded_noise((n_latent, self.model.latent_dim), seeds, self.device, self.dtype)
        model, bad = self._compiled or (self.model, self.bad)
        with torch.no_grad():
            z, info = solvers.sample(
                model, noise, cond, guidance=g, bad=bad if g.needs_bad_model else None, solver=solver,
                steps=steps, generator=gens, callback=callback, negative=negative, **sample_kwargs,
            )  # fmt: skip
            check_finite(z)
            mel = self.decoder.mel(self.model.unnormalize(z.float()))
            wave = self.decoder.vocode(mel)[..., : round(duration * self.sample_rate)]
        meta = {"nfe": info.nfe, "steps": info.steps, "solver": info.solver, "guidance": info.guidance,
                "model": self.name}  # fmt: skip
        return [
            GeneratedAudio(wave[k].cpu(), self.sample_rate, mel=mel[k].cpu(),
                           info={**meta, "seed": seeds[k], "prompt": prompts[k], "negative_prompt": negatives[k]})
            for k in range(len(seeds))
        ]  # fmt: skip

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

    def nfe(
        self,
        guidance: str | G.Guidance | None = DEFAULT_GUIDANCE,
        solver: str = DEFAULT_SOLVER,
        steps: int = DEFAULT_STEPS,
    ) -> int:
        """Network evaluations per clip for a guidance/solver/steps choice."""
        return nfe_per_clip(self.model, self.bad, guidance, solver, steps)

    def __repr__(self) -> str:
        bad = f", bad={self.bad.arch_kwargs.get('variant')}" if self.bad is not None else ""
        return f"MMAudioPipeline({self.name or self.model.arch_kwargs.get('variant')}{bad}, {self.sample_rate} Hz)"


def _per_item(value: Prompt, n: int, what: str) -> list[str | None]:
    if value is None or isinstance(value, str):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{len(values)} values of {what} for {n} items")
    return values
