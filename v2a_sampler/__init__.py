"""v2a-sampler: video-to-audio sampling with a composable guidance algebra.

Public surface:

* :mod:`v2a_sampler.denoisers`: the denoiser protocol (prediction types, schedules, ``from_fn``).
* :mod:`v2a_sampler.guidance`: CFG, autoguidance, parallel/hierarchical mixture-of-guidance, mixtures,
  multi-condition CFG, intervals; ``parse("hg(2.7,2.5,1.2)")``.
* :mod:`v2a_sampler.solvers`: Euler, Heun, DPM++ 2M, DPM++ 2M SDE and ``sample()``.
"""

from . import denoisers, guidance, solvers
from .denoisers import EDMSchedule, FlowSchedule, Prediction, VPSchedule, from_fn
from .solvers import SampleInfo, sample

__version__ = "0.1.0"

__all__ = [
    "EDMSchedule",
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
