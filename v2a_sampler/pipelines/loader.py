"""The one place that turns a :class:`~v2a_sampler.pipelines.config.RunConfig`'s model settings into a pipeline."""

from __future__ import annotations

import torch

from ..errors import error_line
from ..models.perturb import PerturbationError
from ..models.perturb import is_spec as is_perturbation
from .base import V2APipeline
from .config import MMAUDIO_PREFIX, NO_BAD_MODEL, ConfigError, RunConfig
from .embedded import MMAUDIO_REPO, Pipeline


class PipelineLoadError(RuntimeError):
    """A model or bad model that cannot be loaded (one line naming the path at fault)."""


def default_guidance(config: RunConfig) -> str:
    """The default guidance of the pipeline ``config`` would load, read from the model's config, not its weights:
    MMAudio's class default, or for an embedded model :func:`~v2a_sampler.pipelines.embedded.default_guidance_for`
    (``cfg(1.45)`` for an AMG-trained model, ``hg`` with a bad model, ``cfg`` without)."""
    from ..models import EMBEDDED_MODELS, embedded_model_path, load_config
    from .embedded import default_guidance_for
    from .mmaudio import MMAudioPipeline

    if config.is_mmaudio:
        return MMAudioPipeline.default_guidance
    model = config.model
    folder = embedded_model_path(model or "embedded") if model is None or model in EMBEDDED_MODELS else model
    try:
        amg = load_config(folder).get("amg_weight")
    except (ValueError, RuntimeError, OSError):  # explaining needs no model: an unreadable one is not AMG-trained
        amg = None
    bad = (config.bad_model or "").lower()
    has_bad = bad != NO_BAD_MODEL and (bool(bad) or _has_own_bad(folder))
    return default_guidance_for(amg, has_bad)


def _has_own_bad(folder) -> bool:
    """Whether a pipeline folder brings its own bad model (a ``bad/`` subfolder or a ``pipeline.json`` naming one)."""
    from pathlib import Path

    from ..models import PIPELINE_CONFIG_NAME
    from .embedded import BAD_SUBFOLDER

    root = Path(str(folder))
    if not root.is_dir():
        return True  # a hub id: resolved at load time; assume the usual layout
    return (root / BAD_SUBFOLDER).is_dir() or (root / PIPELINE_CONFIG_NAME).is_file()


def load_pipeline(config: RunConfig, rank_device: int | None = None) -> V2APipeline:
    """The pipeline for ``config.model`` / ``config.bad_model`` on ``config.device`` in ``config.dtype``.

    ``rank_device`` puts an index-less ``cuda`` device on ``cuda:rank_device`` (one GPU per torchrun rank).
    ``mmaudio:VARIANT`` loads the official MMAudio files; anything else goes to
    :meth:`~v2a_sampler.pipelines.embedded.Pipeline.from_pretrained`.
    """
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is None and rank_device is not None:
        device = torch.device("cuda", rank_device)
    dtype = config.torch_dtype
    try:
        if config.is_mmaudio:
            bad = config.bad_model
            bad_variant = bad.removeprefix(MMAUDIO_PREFIX) if bad and bad.startswith(MMAUDIO_PREFIX) else None
            extra = {"bad": bad} if is_perturbation(bad) else {}
            pipe = Pipeline.from_pretrained(MMAUDIO_REPO, variant=config.model.removeprefix(MMAUDIO_PREFIX),
                                            bad_variant=bad_variant, device=device, dtype=dtype, **extra)  # fmt: skip
        else:
            no_bad = (config.bad_model or "").lower() == NO_BAD_MODEL
            pipe = Pipeline.from_pretrained(config.model, bad=False if no_bad else config.bad_model, device=device,
                                            dtype=dtype)  # fmt: skip
            pipe.model.to(dtype)
            if pipe.bad is not None:
                pipe.bad.to(dtype)
            pipe.dtype = dtype
    except PerturbationError as e:  # a usage error found once the network is known
        raise ConfigError(f"--bad-model {config.bad_model}: {e}") from None
    except Exception as e:  # corrupt weights surface as library-specific errors
        message = error_line(e)
        if not message.startswith(("cannot load", "bad model")):
            message = f"cannot load model {config.model or '(embedded)'}: {message}"
        raise PipelineLoadError(message) from e
    if config.compile:
        pipe.compile()
    return pipe
