"""v2a-sampler: video-to-audio sampling with a composable guidance algebra.

Public surface:

* :mod:`v2a_sampler.denoisers`: the denoiser protocol (prediction types, schedules, ``from_fn``).
* :mod:`v2a_sampler.guidance`: CFG, autoguidance, parallel/hierarchical mixture-of-guidance, mixtures,
  multi-condition CFG, intervals; ``parse("hg(2.7,2.5,1.2)")``.
* :mod:`v2a_sampler.solvers`: Euler, Heun, DPM++ 2M, DPM++ 2M SDE and ``sample()``.
* :class:`Pipeline`: video in, soundtrack out (``Pipeline.from_pretrained()`` loads the embedded model).
"""

from typing import Any

from .core import denoisers, guidance, solvers
from .core.denoisers import EDMSchedule, FlowSchedule, Prediction, VPSchedule, from_fn
from .core.solvers import SampleInfo, sample

__version__ = "0.1.0"

__all__ = [
    "EDMSchedule",
    "Pipeline",
    "FlowSchedule",
    "Prediction",
    "SampleInfo",
    "VPSchedule",
    "denoisers",
    "from_fn",
    "guidance",
    "sample",
    "solvers",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Pipeline pulls in video I/O and the model zoo; import it on first use only.
    if name == "Pipeline":
        from .pipelines.embedded import Pipeline

        return Pipeline
    raise AttributeError(f"module 'v2a_sampler' has no attribute {name!r}")
