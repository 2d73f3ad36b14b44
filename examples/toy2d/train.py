"""Train the 2D lab's models from scratch: ``good``, ``bad_early`` (an earlier checkpoint of the good run) and
``bad_small`` (a smaller network trained for fewer iterations); see :mod:`v2a_sampler.training.lab_recipes`.

    python examples/toy2d/train.py                       # overwrite the shipped weights in v2a_sampler/assets/toy2d
    python examples/toy2d/train.py --out out/toy2d_models
    python examples/toy2d/train.py --family edm2         # EDM2's toy networks (v2a_sampler/assets/toy2d_edm2)

Same as ``v2a-train toy2d [--family edm2] --out DIR``. A few minutes on one CPU thread (edm2: about 7 minutes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from v2a_sampler.lab import edm2_toy
from v2a_sampler.lab.toy2d import ASSETS
from v2a_sampler.training import edm2_recipe
from v2a_sampler.training.lab_recipes import train_lab_models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="where to write the models (default: the shipped assets)")
    ap.add_argument("--family", choices=("ours", "edm2"), default="ours", help="which lab family (default: ours)")
    ap.add_argument("--runs", type=Path, default=None, help="run directories (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (tiny MLPs run fastest on one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.family == "edm2":
        paths = edm2_recipe.train_family(args.out or edm2_toy.ASSETS)
    else:
        paths = train_lab_models(args.out or ASSETS, runs=args.runs)
    for kind, path in paths.items():
        print(f"{kind:>9}: {path}")
    print(f"trained in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
