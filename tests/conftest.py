"""Suite-wide settings: one torch thread (the models under test are tiny, and two OpenMP threads stall badly when
other processes share the two cores of a CI machine), and ``benchmarks/`` importable (its shared helpers, ``bench``,
are tested here)."""

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
