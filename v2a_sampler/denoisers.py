"""The denoiser protocol: the documented import path of :mod:`v2a_sampler.core.denoisers` (the same module)."""

import sys

from .core import denoisers

sys.modules[__name__] = denoisers
