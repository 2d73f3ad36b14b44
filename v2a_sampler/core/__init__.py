"""The core: the denoiser protocol, the guidance algebra, the solvers and their noise sources, the guided-evaluation
engine and analytic Gaussian-mixture denoisers.

It imports nothing from the rest of the package except :mod:`v2a_sampler.kernels` (checked by
``tests/test_architecture.py``); everything else builds on it. Its public modules are also reachable under their
documented short paths: ``v2a_sampler.denoisers``, ``v2a_sampler.guidance`` and ``v2a_sampler.solvers``.
"""
