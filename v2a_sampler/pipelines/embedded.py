"""``Pipeline``: video in, soundtrack out.

A pipeline holds a V2A flow model (and optionally its *bad* model for autoguidance-type guidance), reads video
frames by timestamp at the model's frame rate, encodes them once, samples normalised log-mels with the guided
solvers and decodes them to a waveform of exactly the video's duration.

    from v2a_sampler import Pipeline
    pipe = Pipeline.from_pretrained()                 # the embedded model, offline
    audio = pipe("clip.mp4", guidance="hg", seed=0)
    audio.save("clip.wav"); audio.mux("clip.mp4", "clip_with_sound.mp4")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core import guidance as G
from ..core import solvers
from ..media import io
from ..media.specs import DEFAULT_GL_ITERS, AudioSpec, VideoSpec
from ..models import from_pretrained as load_model
from ..models import resolve_folder
from ..models import save_pretrained as save_model
from ..models.v2a_flow import V2AFlow

if TYPE_CHECKING:
    from .mmaudio import MMAudioPipeline

#: Name of the bad model's sub-folder inside a pipeline folder.
BAD_SUBFOLDER = "bad"
#: Frames are decoded at this multiple of the model's frame size (then area-resized by the model), matching how the
#: training clips were rendered (96 px) and resized (32 px).
READ_SCALE = 3
#: Default solver and steps of the embedded model (Euler as in MMAudio's demo).
#: The Hugging Face repo of the official MMAudio checkpoints (loaded by :class:`MMAudioPipeline`).
MMAUDIO_REPO = "hkchengrex/MMAudio"
DEFAULT_SOLVER = "euler"
DEFAULT_STEPS = 25

VideoInput = str | os.PathLike | torch.Tensor


def item_seeds(seed: int | Sequence[int], n: int, what: str = "items") -> list[int]:
    """One seed per item: ``seed + i`` for an int, else the given sequence (which must have ``n`` entries)."""
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds given for {n} {what}")
    return seeds


def seeded_noise(
    shape: Sequence[int], seeds: Sequence[int], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Start noise ``[len(seeds), *shape]`` with row ``k`` drawn from ``seeds[k]`` alone (so a batch equals its
    items one by one), and one generator per row on ``device`` for the SDE noise."""
    noise = torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return noise.to(device, dtype), [torch.Generator(device=device).manual_seed(s) for s in seeds]


def check_finite(z: torch.Tensor) -> None:
    """Raise :class:`FloatingPointError` if sampling produced NaN/inf values."""
    if not torch.isfinite(z).all():
        raise FloatingPointError("sampling produced NaN/inf values (check the guidance weights and dtype)")


def nfe_per_clip(model: Any, bad: Any, guidance: str | G.Guidance | None, solver: str, steps: int) -> int:
    """Network evaluations per clip for a guidance/solver/steps choice on ``model`` (and ``bad``)."""
    g = G.resolve(guidance, model, bad)
    ts = solvers.get_timesteps(model.schedule, steps)
    return g.nfe_per_step * solvers.stages_per_sample(solver, ts.tolist(), model.schedule)


def compile_networks(model: Any, bad: Any, backend: str = "inductor", mode: str | None = None) -> tuple[Any, Any]:
    """``torch.compile`` wrappers of a good and an optional bad network (whole graphs, static shapes)."""
    opts = {"backend": backend, "mode": mode, "fullgraph": True, "dynamic": False}
    return torch.compile(model, **opts), (torch.compile(bad, **opts) if bad is not None else None)


def embedded_model_path() -> Path:
    """Folder of the model shipped inside the package."""
    return Path(str(resources.files("v2a_sampler") / "assets" / "v2a_default"))


@dataclass
class GeneratedAudio:
    """A generated soundtrack: mono ``waveform`` ``[N]`` (float32 in [-1, 1]) at ``sample_rate``.

    ``mel`` is the generated log-mel ``[n_mels, frames]`` it was decoded from; ``info`` records the sampling run.
    """

    waveform: torch.Tensor
    sample_rate: int
    mel: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def duration(self) -> float:
        return self.waveform.shape[-1] / self.sample_rate

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write a WAV file atomically; refuses to overwrite unless ``overwrite``."""
        io.write_wav(path, self.waveform, self.sample_rate, overwrite=overwrite)
        return Path(path)

    def mux(self, video: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``out``: the video stream of ``video`` with this soundtrack (AAC), atomically."""
        io.mux(video, self.waveform, self.sample_rate, out, overwrite=overwrite)
        return Path(out)


class Pipeline:
    """A V2A model (+ optional bad model) with its audio/video front and back ends."""

    def __init__(
        self,
        model: V2AFlow,
        bad: V2AFlow | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(model, V2AFlow):
            raise TypeError(f"Pipeline needs a V2AFlow model, got {type(model).__name__}")
        if model.audio_spec is None or not model.audio_spec.mel_mean or model.video_spec is None:
            raise ValueError("model has no audio/video spec with normalisation statistics; not a pipeline model")
        if bad is not None:
            if not isinstance(bad, V2AFlow):
                raise TypeError(f"bad model must be a V2AFlow, got {type(bad).__name__}")
            mine, theirs = model.arch_kwargs, bad.arch_kwargs
            for key in ("n_mels", "patch", "audio", "video"):
                if mine.get(key) != theirs.get(key):
                    raise ValueError(f"bad model does not match the good model: {key} differs")
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32
        self.model = model.to(self.device, self.dtype).eval()
        self.bad = bad.to(self.device, self.dtype).eval() if bad is not None else None
        self.audio_spec: AudioSpec = model.audio_spec
        self.video_spec: VideoSpec = model.video_spec
        self.name = name
        self._compiled: tuple[Any, Any] | None = None  # torch.compile wrappers used for sampling (see compile())

    def compile(self, backend: str = "inductor", mode: str | None = None) -> Pipeline:
        """Sample through ``torch.compile``-d networks (static shapes; each new clip length compiles once).

        The networks trace without graph breaks (``fullgraph=True``). Returns ``self``.
        """
        self._compiled = compile_networks(self.model, self.bad, backend, mode)
        return self

    # -- loading and saving --------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        bad: str | os.PathLike | bool | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        variant: str | None = None,
        bad_variant: str | None = None,
        **hub_kwargs: Any,
    ) -> Pipeline | MMAudioPipeline:
        """Load a pipeline folder or Hugging Face repo id (``None``: the embedded model).

        ``bad``: ``None`` loads the ``bad/`` sub-folder when present, a path or repo id loads that model,
        ``False`` loads none.

        ``"hkchengrex/MMAudio"`` (or any ``variant``) loads the official MMAudio checkpoints instead:
        ``Pipeline.from_pretrained("hkchengrex/MMAudio", variant="large_44k_v2", bad_variant="small_44k")``
        returns a :class:`~v2a_sampler.pipelines.mmaudio.MMAudioPipeline` (downloads, caches and verifies the
        official files; ``cache_dir`` / ``local_files_only`` as for the hub).
        """
        if str(name_or_path) == MMAUDIO_REPO or variant is not None or bad_variant is not None:
            from .mmaudio import MMAudioPipeline

            if bad is not None:
                raise ValueError("for MMAudio pass the bad model as bad_variant=..., not bad=...")
            return MMAudioPipeline.from_pretrained(
                variant or "large_44k_v2", bad_variant, device=device, dtype=dtype, **hub_kwargs
            )
        root = embedded_model_path() if name_or_path is None else name_or_path
        model = load_model(root, device=device, dtype=dtype, **hub_kwargs)
        bad_model = None
        if bad is None or bad is True:
            try:  # the pipeline's own bad/ sub-folder; absent is fine unless bad=True asked for it
                folder = resolve_folder(root, BAD_SUBFOLDER, **hub_kwargs)
            except (ValueError, RuntimeError):
                if bad is True:
                    raise
                folder = None
            if folder is not None:
                bad_model = load_model(folder, device=device, dtype=dtype)
        elif bad is not False:
            bad_model = load_model(bad, device=device, dtype=dtype, **hub_kwargs)
        for m, what in ((model, "model"), (bad_model, "bad model")):
            if m is not None and not isinstance(m, V2AFlow):
                raise ValueError(f"{what} at {root} is a {type(m).__name__}, not a V2A model")
        dt = model.tok_in.weight.dtype
        return cls(model, bad_model, device=device, dtype=dt, name=str(name_or_path or "embedded"))

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the model (and the bad model in ``bad/``) so :meth:`from_pretrained` restores this pipeline."""
        out = save_model(self.model, folder)
        if self.bad is not None:
            save_model(self.bad, Path(folder) / BAD_SUBFOLDER)
        return out

    # -- inputs --------------------------------------------------------------------------------------------------
    def load_video(self, path: str | os.PathLike, duration: float | None = None) -> tuple[torch.Tensor, float]:
        """Frames ``[T, H, W, 3]`` at the model's frame rate and the duration they cover."""
        info = io.probe_video(path)
        dur = info.duration if duration is None else float(duration)
        if not dur > 0:
            raise io.V2AInputError(f"video has zero duration: {path}")
        if duration is not None and duration > info.duration + 1e-3:
            raise io.V2AInputError(f"duration {duration:g}s exceeds the video's {info.duration:.3f}s: {path}")
        size = self.video_spec.frame_size * READ_SCALE
        frames = io.read_frames(path, self.video_spec.fps, size=(size, size), duration=dur)
        if frames.shape[0] == 0:
            raise io.V2AInputError(f"no frames could be read from {path}")
        return frames, dur

    def _prepare(self, video: VideoInput, duration: float | None) -> tuple[torch.Tensor, float, str | None]:
        if isinstance(video, torch.Tensor):
            if video.ndim != 4 or video.shape[-1] != 3:
                raise ValueError(f"a frames tensor must be [T, H, W, 3] at {self.video_spec.fps:g} fps")
            dur = video.shape[0] / self.video_spec.fps if duration is None else float(duration)
            return video, dur, None
        frames, dur = self.load_video(video, duration)
        return frames, dur, str(video)

    # -- generation ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        video: VideoInput | Sequence[VideoInput],
        guidance: str | G.Guidance | None = "hg",
        solver: str = DEFAULT_SOLVER,
        steps: int = DEFAULT_STEPS,
        seed: int | Sequence[int] = 0,
        duration: float | None = None,
        griffin_lim_iters: int = DEFAULT_GL_ITERS,
        callback: Callable[[dict[str, Any]], None] | None = None,
        **sample_kwargs: Any,
    ) -> GeneratedAudio | list[GeneratedAudio]:
        """Generate a soundtrack for a video path, a frames tensor ``[T, H, W, 3]``, or a list of either.

        A list is sampled in batches of equal length; item ``i`` uses seed ``seed + i`` (or ``seed[i]`` when ``seed``
        is a sequence, one per item), so a batch gives the same audio as generating its items one by one.
        ``guidance`` is any spec of :func:`v2a_sampler.guidance.parse`; ``"hg"``-type guidance needs the bad model
        (the embedded model ships one).
        """
        single = isinstance(video, (str, os.PathLike, torch.Tensor))
        items = [video] if single else list(video)
        if not items:
            raise ValueError("no video given")
        seeds = item_seeds(seed, len(items), "videos")
        g = G.resolve(guidance, self.model, self.bad)
        prepared = [self._prepare(v, duration) for v in items]
        results: list[GeneratedAudio | None] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (frames, dur, _) in enumerate(prepared):
            groups.setdefault(self.audio_spec.num_frames(dur) * 100_000 + frames.shape[0], []).append(i)
        for idx in groups.values():
            outs = self._generate_batch([prepared[i] for i in idx], [seeds[i] for i in idx], g, solver, steps,
                                        griffin_lim_iters, callback, sample_kwargs)  # fmt: skip
            for i, out in zip(idx, outs, strict=True):
                results[i] = out
        return results[0] if single else results  # type: ignore[return-value]

    def _generate_batch(self, prepared, seeds, g, solver, steps, gl_iters, callback, sample_kwargs):
        frames = torch.stack([p[0] for p in prepared]).to(self.device)
        dur = prepared[0][1]
        n_frames = self.audio_spec.num_frames(dur)
        cond = self.model.encode_conditions({"video": frames})
        bad_cond = (
            self.bad.encode_conditions({"video": frames}) if (self.bad is not None and g.needs_bad_model) else None
        )
        noise, gens = seeded_noise((self.audio_spec.n_mels, n_frames), seeds, self.device, self.dtype)
        model, bad = self._compiled or (self.model, self.bad)
        z, info = solvers.sample(
            model,
            noise,
            cond,
            guidance=g,
            bad=bad if g.needs_bad_model else None,
            bad_cond=bad_cond,
            solver=solver,
            steps=steps,
            generator=gens,
            callback=callback,
            **sample_kwargs,
        )
        check_finite(z)
        out = []
        for k, (_, item_dur, src) in enumerate(prepared):
            num_samples = int(round(item_dur * self.audio_spec.sample_rate))
            wave = self.audio_spec.decode(z[k].float().cpu(), num_samples=num_samples, n_iter=gl_iters, seed=seeds[k])
            meta = {**info.to_dict(), "seed": seeds[k], "duration": item_dur, "model": self.name}
            meta.pop("timesteps", None)
            mel = self.audio_spec.denormalize(z[k].float().cpu())
            out.append(GeneratedAudio(wave, self.audio_spec.sample_rate, mel, meta, src))
        return out

    def nfe(self, guidance: str | G.Guidance | None = "hg", solver: str = DEFAULT_SOLVER, steps: int = DEFAULT_STEPS):
        """Network evaluations per clip for a guidance/solver/steps choice."""
        return nfe_per_clip(self.model, self.bad, guidance, solver, steps)

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (
            f"Pipeline({self.name}, {n / 1e6:.2f}M params, bad={'yes' if self.bad is not None else 'no'}, "
            f"{self.audio_spec.sample_rate} Hz, {self.video_spec.fps:g} fps, device={self.device})"
        )
