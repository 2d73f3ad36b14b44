"""Suite-wide settings: one torch and one BLAS thread (the models under test are tiny, and two threads stall badly
when other processes share the two cores of a CI machine), and ``benchmarks/`` importable (its shared helpers,
``bench``, are tested here)."""

import os
import sys
from pathlib import Path

# one BLAS thread too: numpy's OpenBLAS stalls as badly as torch's OpenMP when the cores are shared
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
