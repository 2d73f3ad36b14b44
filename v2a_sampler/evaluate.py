"""``v2a-eval``: the documented import path of :mod:`v2a_sampler.frontends.evaluate` (the same module)."""

import sys

from .frontends import evaluate

sys.modules[__name__] = evaluate
