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
