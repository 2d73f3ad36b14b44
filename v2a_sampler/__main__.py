"""``python -m v2a_sampler`` runs ``v2a-sample``."""

from .frontends.cli import run

if __name__ == "__main__":
    run()
