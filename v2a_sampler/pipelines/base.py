"""The contract every pipeline implements, and the pieces both pipelines share.

A pipeline turns videos (and, where the model has a text condition, prompts) into soundtracks. Front ends (the CLI,
manifest runs, benchmarks) use pipelines only through :class:`V2APipeline`:

* facts: :attr:`~V2APipeline.conditions`, :attr:`~V2APipeline.default_guidance` / ``default_solver`` /
  ``default_steps``, :attr:`~V2APipeline.sample_rate`, :attr:`~V2APipeline.mel_axes` (Hz and seconds of
  ``GeneratedAudio.mel``), :attr:`~V2APipeline.pipeline_options` (model-specific generation settings, e.g. the
  embedded model's Griffin-Lim iterations), :meth:`~V2APipeline.describe`;
* :meth:`~V2APipeline.plan`: a :class:`~v2a_sampler.pipelines.config.RunConfig` resolved once for this pipeline's
  models (model-aware guidance default and checks, solver and its options) into a :class:`RunPlan`;
* :meth:`~V2APipeline.load_video` and :meth:`~V2APipeline.generate`: inputs read, then sampled in batches of equal
  length with one seed per item, so a batch equals its items generated one by one;
* ``pipe(video, guidance=..., ...)``: plan and generate in one call.

Every :class:`GeneratedAudio` carries the same ``info`` keys (:data:`INFO_KEYS`).
"""

from __future__ import annotations

import abc
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core import guidance as G
from ..core.solvers import Progress, Sampler
from ..media import io
from ..media.audio import MelAxes
from .config import RunConfig

#: Keys of every ``GeneratedAudio.info``: what produced the audio (the sampler's record, the seed, the duration in
#: seconds, the model and the prompts; ``None`` where they do not apply).
INFO_KEYS = (
    "nfe",
    "steps",
    "solver",
    "guidance",
    "options",
    "nfe_by_role",
    "forwards",
    "effective_strength",
    "seed",
    "duration",
    "model",
    "prompt",
    "negative_prompt",
)

Callback = Callable[[dict[str, Any]], None]
Prompts = str | Sequence[str | None] | None


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
    items one by one), and one generator per row on ``device`` for the noise of stochastic solvers."""
    noise = torch.stack([torch.randn(*shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return noise.to(device, dtype), [torch.Generator(device=device).manual_seed(s) for s in seeds]


def check_finite(z: torch.Tensor) -> None:
    """Raise :class:`FloatingPointError` if sampling produced NaN/inf values."""
    if not torch.isfinite(z).all():
        raise FloatingPointError("sampling produced NaN/inf values (check the guidance weights and dtype)")


def compile_networks(model: Any, bad: Any, backend: str = "inductor", mode: str | None = None) -> tuple[Any, Any]:
    """``torch.compile`` wrappers of a good and an optional bad network (whole graphs, static shapes)."""
    opts = {"backend": backend, "mode": mode, "fullgraph": True, "dynamic": False}
    return torch.compile(model, **opts), (torch.compile(bad, **opts) if bad is not None else None)


@dataclass
class GeneratedAudio:
    """A generated soundtrack: mono ``waveform`` ``[N]`` (float32 in [-1, 1]) at ``sample_rate``.

    ``mel`` is the generated (log-)mel it was decoded from; ``info`` records the run (:data:`INFO_KEYS`);
    ``source`` is the input video's path, when it was one.
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
        """Write ``out``: the video stream of ``video`` with this soundtrack, atomically."""
        io.mux(video, self.waveform, self.sample_rate, out, overwrite=overwrite)
        return Path(out)


@dataclass(frozen=True)
class RunPlan:
    """A run resolved once for a pipeline: the :class:`~v2a_sampler.solvers.Sampler` (guidance with its
    model-aware default and checks, solver, options, grid), the pipeline's own options, and whether partial videos
    are errors (``strict``, see :meth:`V2APipeline.load_video`)."""

    sampler: Sampler
    pipeline_options: Mapping[str, Any] = field(default_factory=dict)
    strict: bool = False

    @property
    def guidance(self) -> G.Guidance:
        return self.sampler.guidance

    @property
    def solver(self) -> str:
        return self.sampler.solver.name

    @property
    def steps(self) -> int:
        return self.sampler.steps

    @property
    def stages(self) -> int:
        """Denoiser stages per clip (what a progress bar over solver stages counts)."""
        return self.sampler.stages

    @property
    def nfe(self) -> int:
        """Network evaluations per clip."""
        return self.sampler.nfe

    def describe(self) -> str:
        """``hg(2.7,2.5,1.2) euler x25`` (options appended where given)."""
        opts = "".join(f" {k}={v:g}" for k, v in self.sampler.options.items())
        return f"{self.guidance.spec()} {self.solver} x{self.steps}{opts}"


@dataclass
class _Item:
    """One input prepared for sampling."""

    frames: Any  # the pipeline's frames object, or None (text-only generation)
    duration: float
    source: str | None
    seed: int
    prompt: str | None
    negative_prompt: str | None


class V2APipeline(abc.ABC):
    """The pipeline contract (see the module docstring). Subclasses set the class facts and implement
    :meth:`load_video`, :meth:`_frames_input`, :meth:`_sample` and :meth:`describe`."""

    #: Conditions a caller can give: ``"video"`` and, for models with a text condition, ``"text"``.
    conditions: tuple[str, ...] = ("video",)
    #: The guidance, solver and step count used when a run does not name them.
    default_guidance: str = "cfg"
    default_solver: str = "euler"
    default_steps: int = 25
    #: Pipeline-specific generation options and their defaults (checked by :meth:`plan`).
    pipeline_options: Mapping[str, int] = {}

    model: Any
    bad: Any | None
    device: torch.device
    dtype: torch.dtype
    name: str | None
    _compiled: tuple[Any, Any] | None = None

    # -- facts ------------------------------------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def sample_rate(self) -> int:
        """Samples per second of the generated audio."""

    @property
    def mel_axes(self) -> MelAxes | None:
        """Where the rows and columns of :attr:`GeneratedAudio.mel` lie in Hz and seconds (``None``: unknown)."""
        return None

    @property
    def supports_text(self) -> bool:
        """Whether the model has a text condition (prompts and negative prompts)."""
        return "text" in self.conditions

    def describe(self) -> dict[str, Any]:
        """What a run's outputs depend on besides its settings: ``model``, ``bad_model``, ``dtype``, ``device``,
        ``sample_rate``, ``conditions``."""
        return {
            "model": self.name,
            "bad_model": self.bad is not None,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "sample_rate": self.sample_rate,
            "conditions": list(self.conditions),
        }

    def compile(self, backend: str = "inductor", mode: str | None = None) -> V2APipeline:
        """Sample through ``torch.compile``-d networks (static shapes; each new clip length compiles once; the
        networks trace without graph breaks). Returns ``self``; plans made afterwards use the compiled networks."""
        self._compiled = compile_networks(self.model, self.bad, backend, mode)
        return self

    # -- planning ---------------------------------------------------------------------------------------------------
    def plan(self, config: RunConfig | None = None, **settings: Any) -> RunPlan:
        """Resolve a run's settings once for this pipeline (``settings`` override ``config``'s fields).

        Raises ``ValueError`` (one line) for an unknown solver or option, a guidance that does not parse or needs a
        bad model the pipeline lacks, or a bad pipeline option.
        """
        cfg = (config or RunConfig()).replace(**settings) if settings else (config or RunConfig())
        sampler_options = dict(cfg.options)
        ours = {k: sampler_options.pop(k) for k in list(sampler_options) if k in self.pipeline_options}
        pipeline_options = {k: _check_int_option(k, v) for k, v in ours.items()}
        model, bad = self._compiled or (self.model, self.bad)
        guidance = self.default_guidance if cfg.guidance is None else cfg.guidance
        sampler = Sampler(
            model,
            guidance,
            bad,
            cfg.solver or self.default_solver,
            cfg.steps or self.default_steps,
            **sampler_options,
        )
        return RunPlan(sampler, {**self.pipeline_options, **pipeline_options}, strict=cfg.strict)

    def nfe(self, guidance: str | G.Guidance | None = None, solver: str | None = None, steps: int | None = None):
        """Network evaluations per clip for a guidance/solver/steps choice (defaults: the pipeline's)."""
        return self.plan(guidance=guidance, solver=solver, steps=steps).nfe

    # -- inputs -----------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def load_video(
        self, path: str | os.PathLike, duration: float | None = None, strict: bool = False
    ) -> tuple[Any, float]:
        """The frames this pipeline conditions on for the first ``duration`` seconds of a video file (``None``: the
        pipeline's default), and the duration in seconds they cover. Raises
        :class:`~v2a_sampler.media.io.V2AInputError` (one line) for unreadable or unusable files. A partial video
        (frames end well before the container's duration) gives a
        :class:`~v2a_sampler.media.io.PartialVideoWarning`, or with ``strict`` a ``V2AInputError``."""

    @abc.abstractmethod
    def _frames_input(self, frames: Any, duration: float | None) -> tuple[Any, float]:
        """Frames given in memory (the pipeline's frames type) and the duration they cover."""

    def _is_single(self, video: Any) -> bool:
        return isinstance(video, str | os.PathLike | torch.Tensor) or video is None

    def _prepare(self, video: Any, duration: float | None, strict: bool = False) -> tuple[Any, float, str | None]:
        if isinstance(video, str | os.PathLike):
            frames, seconds = self.load_video(video, duration, strict=strict)
            return frames, seconds, str(video)
        return (*self._frames_input(video, duration), None)

    # -- generation -------------------------------------------------------------------------------------------------
    def __call__(
        self,
        video: Any,
        *,
        guidance: str | G.Guidance | None = None,
        solver: str | None = None,
        steps: int | None = None,
        seed: int | Sequence[int] = 0,
        duration: float | None = None,
        prompt: Prompts = None,
        negative_prompt: Prompts = None,
        callback: Callback | None = None,
        strict: bool = False,
        progress: Progress | None = None,
        **options: Any,
    ) -> GeneratedAudio | list[GeneratedAudio]:
        """Soundtracks for a video path or frames (or a list of them): :meth:`plan` then :meth:`generate`.

        ``guidance`` is any spec of :func:`v2a_sampler.guidance.parse` (default: the pipeline's); ``options`` are
        solver options (``eta=...``), sampling execution options (``fused=...``) and this pipeline's own options.
        Item ``i`` uses seed ``seed + i`` (or ``seed[i]``), so a batch equals its items generated one by one.
        ``strict``: a partial video is an error, not a warning (see :meth:`load_video`).
        """
        plan = self.plan(RunConfig(guidance=guidance, solver=solver, steps=steps, options=options, strict=strict))
        return self.generate(video, plan, seed=seed, duration=duration, prompt=prompt,
                             negative_prompt=negative_prompt, callback=callback, progress=progress)  # fmt: skip

    @torch.no_grad()
    def generate(
        self,
        video: Any,
        plan: RunPlan,
        *,
        seed: int | Sequence[int] = 0,
        duration: float | None = None,
        prompt: Prompts = None,
        negative_prompt: Prompts = None,
        callback: Callback | None = None,
        progress: Progress | None = None,
    ) -> GeneratedAudio | list[GeneratedAudio]:
        """Generate with a resolved :class:`RunPlan`: inputs are read (or taken as frames), grouped by length and
        sampled in batches; ``prompt`` / ``negative_prompt`` are one string for all items or one per item.
        ``callback`` gets the solver's per-step dict, ``progress(stages done, stages)`` is called after every
        denoiser stage of each batch (see :func:`v2a_sampler.solvers.sample`)."""
        single = self._is_single(video)
        videos = [video] if single else list(video)
        if not videos:
            raise ValueError("no video given")
        if duration is not None and not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
        n = len(videos)
        prompts, negatives = _per_item(prompt, n, "prompt"), _per_item(negative_prompt, n, "negative_prompt")
        if not self.supports_text and any(p is not None for p in prompts + negatives):
            raise ValueError(f"model {self.name or ''} has no text condition: prompts need one (e.g. MMAudio)")
        seeds = item_seeds(seed, n, "videos")
        items = []
        for v, s, p, q in zip(videos, seeds, prompts, negatives, strict=True):
            frames, seconds, source = self._prepare(v, duration, plan.strict)
            items.append(_Item(frames, seconds, source, s, p, q))
        groups: dict[Any, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(self._group_key(item), []).append(i)
        results: list[GeneratedAudio | None] = [None] * n
        for idx in groups.values():
            group = [items[i] for i in idx]
            waves, mels, info = self._sample(group, plan, callback, progress)
            for i, item, wave, mel in zip(idx, group, waves, mels, strict=True):
                meta = {k: v for k, v in info.to_dict().items() if k != "timesteps"}
                meta.update(seed=item.seed, duration=item.duration, model=self.name, prompt=item.prompt,
                            negative_prompt=item.negative_prompt)  # fmt: skip
                results[i] = GeneratedAudio(wave, self.sample_rate, mel, meta, item.source)
        return results[0] if single else results  # type: ignore[return-value]

    def _group_key(self, item: _Item) -> Any:
        """Items with equal keys are sampled in one batch (equal lengths)."""
        return (item.frames is None, round(item.duration, 6))

    @abc.abstractmethod
    def _sample(
        self, items: list[_Item], plan: RunPlan, callback: Callback | None, progress: Progress | None = None
    ) -> tuple[list, list, Any]:
        """One batch of equal-length items: waveforms ``[N]`` (float32, CPU), mels, and the sampler's
        :class:`~v2a_sampler.solvers.SampleInfo`."""


def _per_item(value: Prompts, n: int, what: str) -> list[str | None]:
    if value is None or isinstance(value, str):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{len(values)} values of {what} for {n} items")
    return values


def _check_int_option(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
