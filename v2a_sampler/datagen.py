"""Manifest runs: the documented import path of :mod:`v2a_sampler.frontends.datagen` (the same module)."""

import sys

from .frontends import datagen

sys.modules[__name__] = datagen
