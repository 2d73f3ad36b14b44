"""One run configuration: built once by the CLI or a Python caller, validated once, passed down whole.

:class:`RunConfig` holds which models to load (``model``, ``bad_model``, ``device``, ``dtype``, ``compile``) and how to
sample (``guidance``, ``solver``, ``steps``, ``seed``, ``duration``, ``options``). Construction validates everything
that does not need the models (names, numbers, the guidance spec's syntax); a pipeline's
:meth:`~v2a_sampler.pipelines.base.V2APipeline.plan` resolves the rest once (model-aware guidance, bad-model
checks) and :func:`~v2a_sampler.pipelines.loader.load_pipeline` loads the models. ``None`` means "the pipeline's
default": the defaults live on the pipelines (``default_guidance``, ``default_solver``, ``default_steps``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core import guidance as G
from ..core.solvers import get_solver
from ..models.perturb import Perturbation
from ..models.perturb import is_spec as is_perturbation

#: Values of ``dtype``.
DTYPES = ("float32", "float16", "bfloat16")
#: ``model`` / ``bad_model`` prefix selecting an official MMAudio variant (``mmaudio:large_44k_v2``).
MMAUDIO_PREFIX = "mmaudio:"
#: ``bad_model`` value that loads no bad model.
NO_BAD_MODEL = "none"
#: Seeds are 63-bit: ``torch.Generator.manual_seed`` takes any of them, and item ``i`` uses ``seed + i``.
MAX_SEED = 2**63 - 1
#: More steps than this are almost certainly a mistake (quality saturates long before); front ends warn.
STEPS_WARN = 1000


class ConfigError(ValueError):
    """A run setting that can never work (one line)."""


@dataclass(frozen=True)
class RunConfig:
    """The settings of one generation run (see the module docstring).

    Attributes:
        model: ``None`` (the embedded model), a shipped model's name (``embedded``, ``embedded-amg``: the AMG-trained
            variant), a pipeline folder, a Hugging Face repo id, or ``mmaudio:VARIANT``.
        bad_model: ``None`` (the model's own bad model, if it has one), ``"none"``, a folder or repo id,
            ``mmaudio:VARIANT`` with an MMAudio ``model``, or ``perturb:...`` for a perturbed version of the model
            itself (:mod:`v2a_sampler.models.perturb`, e.g. ``perturb:skip=2``).
        device, dtype: where and in which precision the networks run (``float32``, ``float16``, ``bfloat16``).
        compile: sample through ``torch.compile``-d networks.
        guidance, solver, steps: ``None`` for the pipeline's defaults.
        seed: item ``i`` of a batch uses ``seed + i``.
        duration: seconds from the start of each video (``None``: the pipeline's default).
        options: solver options (``eta``), sampling execution options (``fused``, ``batch_branches``, ...) and
            pipeline options (``griffin_lim_iters``), by name; unknown names fail when the run is planned.
        strict: a partial video (only its first part decodes: truncated or damaged) is an error instead of a
            :class:`~v2a_sampler.media.io.PartialVideoWarning`.
    """

    model: str | None = None
    bad_model: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    compile: bool = False
    guidance: str | G.Guidance | None = None
    solver: str | None = None
    steps: int | None = None
    seed: int = 0
    duration: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    strict: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", dict(self.options))
        self.validate()

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a setting that can never work."""
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; expected {', '.join(DTYPES[:-1])} or {DTYPES[-1]}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"unknown device {self.device!r}") from None
        _check_available(device)
        mm, mm_bad = self.is_mmaudio, _is_mmaudio(self.bad_model)
        if mm_bad and not mm:
            raise ConfigError("bad model mmaudio:VARIANT needs an MMAudio --model (mmaudio:VARIANT)")
        if is_perturbation(self.bad_model):
            try:
                Perturbation.parse(self.bad_model)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        elif mm and self.bad_model is not None and not mm_bad and self.bad_model.lower() != NO_BAD_MODEL:
            raise ConfigError("with an MMAudio model the bad model is mmaudio:VARIANT or perturb:...")
        for spec in (self.model, self.bad_model):
            if _is_mmaudio(spec):
                from ..mmaudio.network import VARIANTS

                variant = spec.removeprefix(MMAUDIO_PREFIX)
                if variant not in VARIANTS:
                    raise ConfigError(f"unknown MMAudio variant {variant!r}; known: {', '.join(VARIANTS)}")
        if self.guidance is not None and not isinstance(self.guidance, G.Guidance):
            try:
                G.parse(self.guidance)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        try:
            solver = get_solver(self.solver or "euler")
            solver.check_options({k: v for k, v in self.options.items() if k in {o.name for o in solver.options}})
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)
                                       or self.steps < 1):  # fmt: skip
            raise ConfigError(f"steps must be a positive integer, got {self.steps!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be an integer from 0 to 2**63 - 1, got {self.seed!r}")
        if self.duration is not None and not (
            isinstance(self.duration, (int, float)) and math.isfinite(self.duration) and self.duration > 0
        ):
            raise ConfigError(f"duration must be a positive number of seconds, got {self.duration!r}")

    @property
    def is_mmaudio(self) -> bool:
        return _is_mmaudio(self.model)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def record(self) -> dict[str, Any]:
        """The settings as JSON-friendly values (guidance as its spec)."""
        out = dataclasses.asdict(self)
        if isinstance(self.guidance, G.Guidance):
            out["guidance"] = self.guidance.spec()
        return out


def _check_available(device: torch.device) -> None:
    """Raise :class:`ConfigError` for a CUDA or MPS device this machine does not have."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device} is not available: this torch build or machine has no CUDA device")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {device} does not exist: {count} CUDA device{'s' if count != 1 else ''}")
    elif device.type == "mps" and not (torch.backends.mps.is_available()):
        raise ConfigError(f"device {device} is not available on this machine")


def _is_mmaudio(spec: str | None) -> bool:
    return spec is not None and spec.startswith(MMAUDIO_PREFIX)
