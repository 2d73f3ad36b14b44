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

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.guidance import AMG_DEFAULT_CFG
from ..errors import error_line
from ..media import io
from ..media.audio import MelAxes
from ..media.specs import DEFAULT_GL_ITERS, AudioSpec, VideoSpec
from ..models import EMBEDDED_MODELS, PIPELINE_CONFIG_NAME, embedded_model_path, resolve_folder
from ..models import from_pretrained as load_model
from ..models import save_pretrained as save_model
from ..models.perturb import PerturbedDenoiser, perturbed
from ..models.perturb import is_spec as is_perturbation
from ..models.v2a_flow import V2AFlow
from .base import RunPlan, V2APipeline, check_finite, seeded_noise

if TYPE_CHECKING:
    from .mmaudio import MMAudioPipeline

#: Name of the bad model's sub-folder inside a pipeline folder.
BAD_SUBFOLDER = "bad"
#: Frames are decoded at this multiple of the model's frame size (then area-resized by the model), matching how the
#: training clips were rendered (96 px) and resized (32 px).
READ_SCALE = 3
#: The Hugging Face repo of the official MMAudio checkpoints (loaded by :class:`MMAudioPipeline`).
MMAUDIO_REPO = "hkchengrex/MMAudio"


def default_guidance_for(amg_weight: float | None, has_bad: bool) -> str:
    """The default guidance of an embedded pipeline: MGAudio's small extra CFG (``cfg(1.45)``) for a model trained
    with AMG, AudioMoG's hierarchical mixture ``hg`` when there is a bad model, else ``cfg``."""
    if amg_weight is not None:
        return f"cfg({AMG_DEFAULT_CFG:g})"
    return "hg" if has_bad else "cfg"


class Pipeline(V2APipeline):
    """The embedded V2A model (+ optional bad model) with its audio/video front and back ends.

    Defaults: AudioMoG's hierarchical MoG (``hg``) with the shipped bad model (MGAudio's ``cfg(1.45)`` for an
    AMG-trained model, ``cfg`` without a bad model: :func:`default_guidance_for`), 25 Euler steps, 48 Griffin-Lim
    iterations (pipeline option ``griffin_lim_iters``).
    """

    conditions = ("video",)
    pipeline_options = {"griffin_lim_iters": DEFAULT_GL_ITERS}

    def __init__(
        self,
        model: V2AFlow,
        bad: V2AFlow | PerturbedDenoiser | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(model, V2AFlow):
            raise TypeError(f"Pipeline needs a V2AFlow model, got {type(model).__name__}")
        if model.audio_spec is None or not model.audio_spec.mel_mean or model.video_spec is None:
            raise ValueError("model has no audio/video spec with normalisation statistics; not a pipeline model")
        if isinstance(bad, PerturbedDenoiser):
            if bad.perturbation_of is not model:
                raise ValueError("a perturbed bad model must perturb this pipeline's model (perturbed(model, ...))")
        elif bad is not None:
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
        self._compiled = None  # torch.compile wrappers used for sampling (see compile())

    @property
    def sample_rate(self) -> int:
        return self.audio_spec.sample_rate

    @property
    def default_guidance(self) -> str:  # type: ignore[override]
        """The guidance of a run that names none: :func:`default_guidance_for` this pipeline's models."""
        return default_guidance_for(self.model.amg_weight, self.bad is not None)

    @property
    def mel_axes(self) -> MelAxes:
        return self.audio_spec.mel_axes

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
        """Load a pipeline folder or Hugging Face repo id (``None``: the embedded model; ``"embedded"`` and
        ``"embedded-amg"`` name the shipped models, :data:`EMBEDDED_MODELS`).

        ``bad``: ``None`` loads the ``bad/`` sub-folder when present (or the perturbation a local folder's
        ``pipeline.json`` names, ``{"bad": "perturb:..."}``), a path or repo id loads that model,
        ``"perturb:..."`` makes a perturbed version of the model (:func:`v2a_sampler.models.perturb.perturbed`, e.g.
        ``"perturb:skip=2"``), ``False`` loads none.

        ``"hkchengrex/MMAudio"`` (or any ``variant``) loads the official MMAudio checkpoints instead:
        ``Pipeline.from_pretrained("hkchengrex/MMAudio", variant="large_44k_v2", bad_variant="small_44k")``
        returns a :class:`~v2a_sampler.pipelines.mmaudio.MMAudioPipeline` (downloads, caches and verifies the
        official files; ``cache_dir`` / ``local_files_only`` as for the hub).
        """
        if str(name_or_path) == MMAUDIO_REPO or variant is not None or bad_variant is not None:
            from .mmaudio import MMAudioPipeline

            if bad is not None and not is_perturbation(bad):
                raise ValueError("for MMAudio pass the bad model as bad_variant=... (or bad='perturb:...')")
            return MMAudioPipeline.from_pretrained(
                variant or "large_44k_v2", bad_variant, perturbation=bad, device=device, dtype=dtype, **hub_kwargs
            )
        if name_or_path is None or str(name_or_path) in EMBEDDED_MODELS:
            root: str | os.PathLike = embedded_model_path(str(name_or_path or "embedded"))
        else:
            root = name_or_path
        model = load_model(root, device=device, dtype=dtype, **hub_kwargs)
        if not isinstance(model, V2AFlow):
            raise ValueError(f"model at {root} is a {type(model).__name__}, not a V2A model")
        bad_model, bad_where = None, None
        if bad is None or bad is True:
            try:  # the pipeline's own bad/ sub-folder; absent is fine unless bad=True asked for it
                folder = resolve_folder(root, BAD_SUBFOLDER, **hub_kwargs)
            except (ValueError, RuntimeError):
                if bad is True:
                    raise
                folder = None
            if folder is not None:
                bad_where = folder
                bad_model = _load_bad(folder, device=device, dtype=dtype)
            elif (spec := _declared_bad(resolve_folder(root, weights=False, **hub_kwargs))) is not None:
                # a perturbation of the model, named in its pipeline.json (local or downloaded with the model)
                bad_model = perturbed(model, spec)
        elif is_perturbation(bad):
            bad_model = perturbed(model, str(bad))
        elif bad is not False:
            bad_where = bad
            bad_model = _load_bad(bad, device=device, dtype=dtype, **hub_kwargs)
        dt = model.tok_in.weight.dtype
        try:
            return cls(model, bad_model, device=device, dtype=dt, name=str(name_or_path or "embedded"))
        except ValueError as e:
            if bad_model is not None and str(e).startswith("bad model"):
                raise RuntimeError(f"bad model {bad_where} does not fit model {root}: {e}") from None
            raise

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the model (and the bad model in ``bad/``) so :meth:`from_pretrained` restores this pipeline."""
        out = save_model(self.model, folder)
        if isinstance(self.bad, PerturbedDenoiser):  # a perturbation has no weights: its spec is the bad model
            (out / PIPELINE_CONFIG_NAME).write_text(json.dumps({"bad": self.bad.perturbation.spec()}) + "\n")
        elif self.bad is not None:
            save_model(self.bad, Path(folder) / BAD_SUBFOLDER)
        return out

    # -- inputs --------------------------------------------------------------------------------------------------
    def load_video(
        self, path: str | os.PathLike, duration: float | None = None, strict: bool = False
    ) -> tuple[torch.Tensor, float]:
        """Frames ``[T, H, W, 3]`` at the model's frame rate and the duration they cover (a partial video: a
        :class:`~v2a_sampler.media.io.PartialVideoWarning`, with ``strict`` an error)."""
        info = io.probe_video(path)
        dur = info.duration if duration is None else float(duration)
        if not dur > 0:
            raise io.V2AInputError(f"video has zero duration: {path}")
        if duration is not None and duration > info.duration + 1e-3:
            raise io.V2AInputError(f"duration {duration:g}s exceeds the video's {info.duration:.3f}s: {path}")
        size = self.video_spec.frame_size * READ_SCALE
        frames = io.read_frames(path, self.video_spec.fps, size=(size, size), duration=dur, strict=strict)
        if frames.shape[0] == 0:
            raise io.V2AInputError(f"no frames could be read from {path}")
        return frames, dur

    def _frames_input(self, frames: Any, duration: float | None) -> tuple[torch.Tensor, float]:
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"a frames tensor must be [T, H, W, 3] at {self.video_spec.fps:g} fps")
        return frames, frames.shape[0] / self.video_spec.fps if duration is None else float(duration)

    def _group_key(self, item: Any) -> Any:
        return (self.audio_spec.num_frames(item.duration), item.frames.shape[0])

    def _sample(self, items: list, plan: RunPlan, callback: Any, progress: Any = None) -> tuple[list, list, Any]:
        frames = torch.stack([item.frames for item in items]).to(self.device)
        n_frames = self.audio_spec.num_frames(items[0].duration)
        cond = self.model.encode_conditions({"video": frames})
        needs_bad = self.bad is not None and plan.guidance.needs_bad_model
        if needs_bad and isinstance(self.bad, PerturbedDenoiser):
            bad_cond = cond  # the same network encodes the same conditions
        else:
            bad_cond = self.bad.encode_conditions({"video": frames}) if needs_bad else None
        seeds = [item.seed for item in items]
        noise, gens = seeded_noise((self.audio_spec.n_mels, n_frames), seeds, self.device, self.dtype)
        z, info = plan.sampler(noise, cond, bad_cond=bad_cond, generator=gens, callback=callback, progress=progress)
        check_finite(z)
        waves, mels = [], []
        for k, item in enumerate(items):
            num_samples = int(round(item.duration * self.audio_spec.sample_rate))
            z_k = z[k].float().cpu()
            iters = plan.pipeline_options["griffin_lim_iters"]
            waves.append(self.audio_spec.decode(z_k, num_samples=num_samples, n_iter=iters, seed=item.seed))
            mels.append(self.audio_spec.denormalize(z_k))
        return waves, mels, info

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (
            f"Pipeline({self.name}, {n / 1e6:.2f}M params, bad={'yes' if self.bad is not None else 'no'}, "
            f"{self.audio_spec.sample_rate} Hz, {self.video_spec.fps:g} fps, device={self.device})"
        )


def _declared_bad(root: str | os.PathLike) -> str | None:
    """The perturbation spec a pipeline folder's ``pipeline.json`` names as its bad model, if any."""
    path = Path(root) / PIPELINE_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        spec = json.loads(path.read_text()).get("bad")
    except (json.JSONDecodeError, AttributeError):
        raise ValueError(f'{path} is not a JSON object like {{"bad": "perturb:..."}}') from None
    if not is_perturbation(spec):
        raise ValueError(f"{path}: 'bad' must be a perturbation spec (perturb:...), got {spec!r}")
    return spec


def _load_bad(where: str | os.PathLike, **kwargs: Any) -> V2AFlow:
    """A bad model, with errors that name its own path."""
    try:
        bad = load_model(where, **kwargs)
    except Exception as e:  # corrupt weights surface as library-specific errors
        message = error_line(e)
        message = f"bad model: {message}" if str(where) in message else f"cannot load bad model {where}: {message}"
        raise (ValueError if isinstance(e, ValueError) else RuntimeError)(message) from e
    if not isinstance(bad, V2AFlow):
        raise ValueError(f"bad model at {where} is a {type(bad).__name__}, not a V2A model")
    return bad
