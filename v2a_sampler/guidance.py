"""The guidance algebra: the documented import path of :mod:`v2a_sampler.core.guidance` (the same module)."""

import sys

from .core import guidance

sys.modules[__name__] = guidance
