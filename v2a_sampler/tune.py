"""``v2a-tune``: the documented import path of :mod:`v2a_sampler.frontends.tune` (the same module)."""

import sys

from .frontends import tune

if __name__ == "__main__":
    tune.run()
else:
    sys.modules[__name__] = tune
