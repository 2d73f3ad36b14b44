"""Suite-wide settings: one torch thread (the models under test are tiny, and two OpenMP threads stall badly when
other processes share the two cores of a CI machine)."""

import torch

torch.set_num_threads(1)
