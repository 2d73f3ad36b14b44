"""v2a-sampler: video-to-audio sampling with a composable guidance algebra.

Public surface:

* :mod:`v2a_sampler.denoisers`: the denoiser protocol (prediction types, schedules, ``from_fn``).
* :mod:`v2a_sampler.guidance`: CFG, autoguidance, parallel/hierarchical mixture-of-guidance, mixtures,
  multi-condition CFG, intervals; ``parse("hg(2.7,2.5,1.2)")``; the preset registry.
* :mod:`v2a_sampler.solvers`: the solver registry (Euler, Heun, their EDM forms with churn, Euler ancestral,
  DPM++ 2M / 2M SDE / 3M SDE / SDE / 2S ancestral, UniPC), noise sources (``BrownianTreeNoise``), ``Sampler`` and
  ``sample()``.
* :class:`Pipeline`: video in, soundtrack out (``Pipeline.from_pretrained()`` loads the embedded model);
  :class:`MMAudioPipeline`, :class:`RunConfig` and the rest of :mod:`v2a_sampler.pipelines`.
"""

from typing import Any

from .core import denoisers, guidance, solvers
from .core.denoisers import EDMSchedule, FlowSchedule, Prediction, VPSchedule, from_fn
from .core.solvers import SampleInfo, Sampler, sample

__version__ = "0.1.0"

__all__ = [
    "EDMSchedule",
    "FlowSchedule",
    "MMAudioPipeline",
    "Pipeline",
    "Prediction",
    "RunConfig",
    "SampleInfo",
    "Sampler",
    "VPSchedule",
    "denoisers",
    "from_fn",
    "guidance",
    "sample",
    "solvers",
    "__version__",
]

#: Names served from :mod:`v2a_sampler.pipelines` on first use (it pulls in video I/O and the model zoo).
_LAZY = ("Pipeline", "MMAudioPipeline", "RunConfig")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'v2a_sampler' has no attribute {name!r}")
