"""The EDM2-faithful family of the 2D lab: EDM2's own toy data, networks, training and sampler settings.

Karras et al. (2024), "Guiding a Diffusion Model with a Bad Version of Itself", demonstrate autoguidance on a 2D toy
(NVlabs/edm2, ``toy_example.py``). This module rebuilds that set-up from its description, in our own code, so the
lab can measure it with the same metrics as our own family (:mod:`v2a_sampler.lab.toy2d`):

* **Data** (:class:`EDM2Toy`): two classes, each a 7-level binary tree of branches grown from one origin in
  opposite directions (45 and 225 degrees); every branch is 8 Gaussians at 7 %..93 % of its length, elongated
  along it, with mixture weight ``length * 0.5^level``; EDM2's constants and random draws (``RandomState(2)``), so
  the distribution is EDM2's. It is a :class:`~v2a_sampler.lab.toy2d.Toy2D`, so the lab's metrics and exact
  denoiser work unchanged.
* **Networks** (:class:`~v2a_sampler.models.edm2_toy.EDM2ToyNet`): a scalar log-density whose gradient is the
  score; one network per class (the class-A networks of EDM2's figure) and an unconditional one trained on both
  classes, combined into a class-conditional denoiser by :func:`class_dispatch`.
* **Training** (:mod:`v2a_sampler.training.edm2_recipe`, with the constants defined here): exact-score regression
  (``sigma^2 |score - true score|^2`` on noisy samples with log-normal sigma, ``P_mean = -2.3``, ``P_std = 1.5``),
  Adam (betas 0.9 / 0.99) at 1e-2 decayed as ``1 / sqrt(iteration / 512)``, batch 4096, power-function EMA with std
  0.010, no gradient clipping. Recipes: ``good`` 4 x 64 for 4096 iterations, ``bad`` 4 x 32 for 512 (EDM2's
  autoguidance pair), ``uncond`` (both classes) 4 x 32 for 512, EDM2's unconditional model for CFG.
* **Sampling** (:data:`SIGMA_MAX`, :func:`initial_noise`): Heun, 32 steps on EDM's grid from sigma 5 to 0.002 (last
  step Euler), starting from noisy data at sigma 5 as ``do_sample`` does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.analytic import ConditionalGaussianMixture
from ..core.denoisers import Cond, Denoiser, FnDenoiser, from_fn
from ..models import NULL_LABEL, from_pretrained
from ..models.edm2_toy import SIGMA_MAX, SIGMA_MIN, EDM2ToyNet
from .toy2d import Branch, FastGaussianMixture, Toy2D

# --- EDM2's data constants (toy_example.py, ``gt``) ------------------------------------------------------------
#: Seed of the legacy NumPy generator whose draws jitter the tree.
DATA_SEED = 2
#: Offset and per-axis scale applied to every component position.
ORIGIN = (0.0030, 0.0325)
SCALE = (1.3136, 1.3844)
#: Tree levels; the last holds the leaves.
DEPTH = 7
#: Trunk length, per-level length factor and relative jitter of lengths and turning angles.
TRUNK_LENGTH = 0.292
LENGTH_DECAY = 0.8
JITTER = 0.2
#: Branch thickness numerator (across / along std = THICKNESS * LENGTH_DECAY^level / length).
THICKNESS = 0.2
#: Along-branch std relative to the branch length (times the axis scale).
SIZE_FACTOR = 0.06
#: Turning angle (radians) per level: ``ANGLE_DECAY^level``, jittered.
ANGLE_DECAY = 0.7
#: Components per branch and where they sit along it.
COMPONENTS_PER_BRANCH = 8
ALONG_SPAN = (0.07, 0.93)
#: Mixture weight factor per level.
LEVEL_WEIGHT = 0.5
#: Growth direction of class A (label 0) and class B (label 1).
CLASS_ANGLES = (0.25 * math.pi, 1.25 * math.pi)
#: The class of EDM2's figures (its models are trained on class A only).
CLASS_A = 0

# --- EDM2's training and sampling constants (``do_train``, ``do_sample``) ------------------------------------------
BATCH = 4096
LR = 1e-2
LR_DECAY_START = 512
BETAS = (0.9, 0.99)
P_MEAN = -2.3
P_STD = 1.5
SIGMA_DATA = 0.5
EMA_STD = 0.010
STEPS = 32
SOLVER = "heun"

#: Folder of the shipped networks of this family.
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "toy2d_edm2"
#: The shipped networks (trained by :mod:`v2a_sampler.training.edm2_recipe`): EDM2's good and bad class-A models and
#: its small unconditional model (for CFG).
PRETRAINED_KINDS = ("good", "bad", "uncond")

#: Points per block in the per-sample-sigma score (bounds the [points, components, 2] intermediates).
_SCORE_CHUNK = 4096


class EDM2Toy(Toy2D):
    """EDM2's fractal data (classes A = 0 and B = 1) with the :class:`Toy2D` interface (densities, exact
    denoiser, samples, leaf bookkeeping for the metrics). The unconditional mixture weights the classes by their
    total component weight, as EDM2's ``gt('AB')`` does."""

    def __init__(self, seed: int = DATA_SEED) -> None:
        # Toy2D.__init__ is not called: the same attributes, from EDM2's construction
        rng = np.random.RandomState(seed)
        self.num_classes = len(CLASS_ANGLES)
        self.depth = DEPTH
        self.branches: list[list[Branch]] = []
        self.component_branch: list[torch.Tensor] = []
        mixtures, totals = [], []
        for label, angle in enumerate(CLASS_ANGLES):
            branches, weights, means, covs, owner = _grow_edm2(label, angle, rng)
            w = torch.tensor(weights, dtype=torch.float64)
            mixtures.append(FastGaussianMixture(w, torch.tensor(np.stack(means)), torch.tensor(np.stack(covs))))
            totals.append(float(w.sum()))
            self.branches.append(branches)
            self.component_branch.append(torch.tensor(owner, dtype=torch.long))
        self.mixture = ConditionalGaussianMixture(mixtures, totals)
        self.mixture.unconditional = FastGaussianMixture.concat(mixtures, self.mixture.class_probs)


def _grow_edm2(label: int, angle0: float, rng: np.random.RandomState):
    """Branches and components of one class, drawing the jitter in EDM2's order (a branch's length, then for each
    child its turning angle followed by the child's own subtree)."""
    scale = np.array(SCALE)
    branches: list[Branch] = []
    weights, means, covs, owner = [], [], [], []

    def recurse(level: int, pos: np.ndarray, angle: float) -> None:
        if level >= DEPTH:
            return
        d = np.array([math.cos(angle), math.sin(angle)])
        length = TRUNK_LENGTH * LENGTH_DECAY**level * (rng.randn() * JITTER + 1.0)
        thick = THICKNESS * LENGTH_DECAY**level / length
        size = scale * length * SIZE_FACTOR
        cov = (np.outer(d, d) + (np.eye(2) - np.outer(d, d)) * thick**2) * np.outer(size, size)
        start = pos * scale
        branches.append(Branch(label, level, (float(start[0]), float(start[1])), (float(d[0]), float(d[1])), length))
        for frac in np.linspace(ALONG_SPAN[0], ALONG_SPAN[1], COMPONENTS_PER_BRANCH):
            weights.append(length * LEVEL_WEIGHT**level)
            means.append((pos + d * length * frac) * scale)
            covs.append(cov)
            owner.append(len(branches) - 1)
        for sign in (1.0, -1.0):
            turn = ANGLE_DECAY**level * (rng.randn() * JITTER + 1.0)
            recurse(level + 1, pos + d * length, angle + sign * turn)

    recurse(0, np.array(ORIGIN), angle0)
    return branches, weights, means, covs, owner


@functools.lru_cache(maxsize=2)
def make_edm2_toy(seed: int = DATA_SEED) -> EDM2Toy:
    """The (cached) EDM2 fractal data set."""
    return EDM2Toy(seed)


# ---------------------------------------------------------------------------------------------------------------
# Exact scores at a different noise level per sample (training targets)
# ---------------------------------------------------------------------------------------------------------------


def noisy_score(mixture: FastGaussianMixture, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact ``grad_x log p(x; sigma_n)`` of ``mixture + N(0, sigma_n^2 I)`` for each row ``x_n`` of ``x [N, 2]``.

    Noising keeps each component's eigenvectors ``q_e``, so with ``p_e = q_e . (mu - x)`` and ``lam_e = L_e +
    sigma^2`` the component log-densities are ``log w - (sum_e p_e^2 / lam_e + log prod_e lam_e) / 2`` and the score
    is ``sum_k r_k sum_e q_e p_e / lam_e`` (``r``: responsibilities): two matrix products and elementwise work on
    ``[N, K]`` (in the dtype of ``x``).
    """
    if mixture.dim != 2:
        raise ValueError(f"noisy_score is written for 2D mixtures, got dimension {mixture.dim}")
    dtype = x.dtype
    q0, q1 = mixture.eigvecs[:, :, 0].to(dtype), mixture.eigvecs[:, :, 1].to(dtype)  # [K, 2] eigenvectors
    mu, ev = mixture.means.to(dtype), mixture.eigvals.to(dtype)
    a0, a1 = (mu * q0).sum(-1), (mu * q1).sum(-1)
    logw = mixture.log_weights.to(dtype)
    out = []
    for xc, sc in zip(x.split(_SCORE_CHUNK), sigma.to(dtype).split(_SCORE_CHUNK), strict=True):
        s2 = sc.square().unsqueeze(1)
        lam0, lam1 = s2 + ev[:, 0], s2 + ev[:, 1]  # [N, K]
        s0 = torch.addmm(a0.unsqueeze(0), xc, q0.T, alpha=-1.0).div_(lam0)  # p_0 / lam_0
        s1 = torch.addmm(a1.unsqueeze(0), xc, q1.T, alpha=-1.0).div_(lam1)
        maha = (s0 * s0).mul_(lam0).add_((s1 * s1).mul_(lam1))  # sum_e p_e^2 / lam_e
        resp = torch.softmax(maha.add_(lam0.mul_(lam1).log_()).mul_(-0.5).add_(logw), dim=1)
        out.append((resp * s0) @ q0 + (resp * s1) @ q1)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------------------
# Class-conditional denoisers from per-class networks
# ---------------------------------------------------------------------------------------------------------------


def class_dispatch(nets: Mapping[int, Denoiser], null: Denoiser | None, name: str = "edm2_dispatch") -> FnDenoiser:
    """A class-conditional denoiser (condition ``"label"``) from one network per class and an unconditional one.

    Rows with label ``c`` go to ``nets[c]``; the null condition (dropped label, or :data:`NULL_LABEL` rows) goes to
    ``null``. Every network must share one prediction type and schedule.
    """
    members = [*nets.values()] + ([null] if null is not None else [])
    first = members[0]
    if any(m.schedule != first.schedule or m.prediction != first.prediction for m in members):
        raise ValueError("class_dispatch needs networks with one prediction type and schedule")

    def pick(label: int) -> Denoiser:
        if label == NULL_LABEL:
            if null is None:
                raise ValueError(f"{name} has no unconditional network")
            return null
        if label not in nets:
            raise ValueError(f"{name} has no network for class {label}; it models classes {sorted(nets)}")
        return nets[label]

    def fn(x: torch.Tensor, t: torch.Tensor, cond: Cond | None) -> torch.Tensor:
        labels = None if cond is None else cond.get("label")
        if labels is None:
            return pick(NULL_LABEL)(x, t, None)
        labels = torch.as_tensor(labels).reshape(-1).expand(x.shape[0])
        t = torch.as_tensor(t)
        out = torch.empty_like(x)
        for lab in labels.unique().tolist():
            sel = labels == lab
            t_sel = t if t.numel() == 1 else t.reshape(-1)[sel]
            out[sel] = pick(int(lab))(x[sel], t_sel, None).to(x.dtype)
        return out

    return from_fn(fn, prediction=first.prediction, schedule=first.schedule, condition_names=("label",), name=name)


def pretrained_net(kind: str, folder: str | Path | None = None) -> EDM2ToyNet:
    """One shipped network (``"good"``, ``"bad"`` or ``"uncond"``)."""
    if kind not in PRETRAINED_KINDS:
        raise ValueError(f"unknown edm2 toy network {kind!r}; expected one of {PRETRAINED_KINDS}")
    return from_pretrained(Path(folder) if folder is not None else ASSETS, subfolder=kind)  # type: ignore[return-value]


def family_models(folder: str | Path | None = None, bads: Mapping[str, Denoiser] | None = None) -> dict[str, Any]:
    """The class-conditional denoisers of the family: ``good`` and ``bad`` (class A; null = EDM2's small
    unconditional model) and ``exact``; ``bads`` adds further class-A bad networks under their keys."""
    uncond = pretrained_net("uncond", folder)
    models: dict[str, Any] = {
        "good": class_dispatch({CLASS_A: pretrained_net("good", folder)}, uncond, "edm2_good"),
        "bad": class_dispatch({CLASS_A: pretrained_net("bad", folder)}, uncond, "edm2_bad"),
        "exact": make_edm2_toy().denoiser("x0", uncond.schedule),
    }
    for key, net in (bads or {}).items():
        models[key] = class_dispatch({CLASS_A: net}, uncond, f"edm2_{key}")
    return models


# ---------------------------------------------------------------------------------------------------------------
# Sampling settings
# ---------------------------------------------------------------------------------------------------------------


def initial_noise(n: int, label: int, generator: torch.Generator, toy: Toy2D | None = None) -> torch.Tensor:
    """Start noise as EDM2's ``do_sample`` draws it: noisy data at sigma 5, returned divided by 5 (so that
    ``sample()``, which starts from ``sigma_max * noise``, starts from exactly these points)."""
    toy = toy or make_edm2_toy()
    x0, _ = toy.sample(n, label, generator)
    eps = torch.randn(n, x0.shape[1], generator=generator, dtype=torch.float64)
    return ((x0 + SIGMA_MAX * eps) / SIGMA_MAX).to(torch.float32)


def sampling_grid(schedule: Any) -> torch.Tensor:
    """EDM2's grid: 32 sigmas from 5 to 0.002 (rho = 7), then 0."""
    from ..core.solvers import get_timesteps

    return get_timesteps(schedule, STEPS, grid="karras", sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN)


__all__ = [
    "ASSETS",
    "EDM2Toy",
    "class_dispatch",
    "family_models",
    "initial_noise",
    "make_edm2_toy",
    "noisy_score",
    "pretrained_net",
    "sampling_grid",
]
