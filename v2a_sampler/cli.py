"""``v2a-sample``: the documented import path of :mod:`v2a_sampler.frontends.cli` (the very same module object).

``python -m v2a_sampler.cli`` (and ``torchrun ... -m v2a_sampler.cli``) runs the command.
"""

import sys

from .frontends import cli

if __name__ == "__main__":
    cli.run()
else:
    sys.modules[__name__] = cli
