"""The one place that turns a :class:`~v2a_sampler.pipelines.config.RunConfig`'s model settings into a pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import error_line
from ..models.perturb import PerturbationError
from ..models.perturb import is_spec as is_perturbation
from .base import V2APipeline
from .config import MMAUDIO_PREFIX, NO_BAD_MODEL, ConfigError, RunConfig
from .embedded import BAD_SUBFOLDER, MMAUDIO_REPO, Pipeline, default_guidance_for


class PipelineLoadError(RuntimeError):
    """A model or bad model that cannot be loaded (one line naming the path at fault)."""


def default_guidance(config: RunConfig) -> str:
    """The default guidance of the pipeline ``config`` would load, read from the model's config files, never its
    weights: MMAudio's class default, or for an embedded model
    :func:`~v2a_sampler.pipelines.embedded.default_guidance_for` (``cfg(1.45)`` for an AMG-trained model, ``hg`` with
    a bad model, ``cfg`` without). A model that cannot be found raises as loading it would (``ValueError`` for a path
    that is neither a folder nor a repo id, ``RuntimeError`` for a hub model out of reach)."""
    from ..models import EMBEDDED_MODELS, embedded_model_path, load_config, resolve_folder
    from .mmaudio import MMAudioPipeline

    if config.is_mmaudio:
        return MMAudioPipeline.default_guidance
    name = str(config.model or "embedded")
    folder = embedded_model_path(name) if name in EMBEDDED_MODELS else resolve_folder(name, weights=False)
    amg = load_config(folder).get("amg_weight")
    bad = (config.bad_model or "").lower()
    has_bad = bad != NO_BAD_MODEL and (bool(bad) or _has_own_bad(name, folder))
    return default_guidance_for(amg, has_bad)


def _has_own_bad(name: str, folder: Path) -> bool:
    """Whether a pipeline brings its own bad model: a ``bad/`` subfolder (for a hub model: one whose config can be
    fetched) or a ``pipeline.json`` naming a perturbation."""
    from ..models import PIPELINE_CONFIG_NAME, resolve_folder

    if (folder / BAD_SUBFOLDER).is_dir() or (folder / PIPELINE_CONFIG_NAME).is_file():
        return True
    if Path(os.path.expanduser(name)).is_dir():
        return False
    try:  # a hub model: its bad/ config, if the repository has one
        resolve_folder(name, BAD_SUBFOLDER, weights=False)
    except (ValueError, RuntimeError):
        return False
    return True


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
