"""``python -m v2a_sampler.training``: the ``v2a-train`` command."""

from .cli import main

raise SystemExit(main())
