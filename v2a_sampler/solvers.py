"""The solvers and ``sample()``: the documented import path of :mod:`v2a_sampler.core.solvers` (the same module)."""

import sys

from .core import solvers

sys.modules[__name__] = solvers
