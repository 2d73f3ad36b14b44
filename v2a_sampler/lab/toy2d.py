"""A fractal-like 2D Gaussian mixture with several classes, in the spirit of EDM2's toy example (Karras et al., 2024,
"Guiding a Diffusion Model with a Bad Version of Itself"), used by AudioMoG's Fig. 2.

Each class is a binary tree of *branches* grown from the origin. A branch is a straight stroke drawn with
:data:`COMPONENTS_PER_BRANCH` narrow, anisotropic Gaussians (elongated along the stroke); at its end it forks into two
shorter children that turn left and right by a shrinking angle. Fine detail therefore appears hierarchically and the
support is locally almost one-dimensional. The branches of the last level are the *leaves*.

Because the data is an exact Gaussian mixture, the noisy density, score and ideal denoiser are available in closed
form at every noise level (:mod:`v2a_sampler.core.analytic`): :meth:`Toy2D.denoiser` is an exact denoiser that serves as
ground truth for the solvers and for the guidance lab metrics.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.analytic import LOG_2PI, ConditionalGaussianMixture, GaussianMixture
from ..core.denoisers import Cond, FnDenoiser, Prediction, Schedule

# Geometry of the fractal. Lengths are in data units; the resulting data has a standard deviation of about 0.4.
#: Levels of the branching tree (level 0 is the trunk; level TREE_DEPTH - 1 holds the leaves).
TREE_DEPTH = 7
#: Gaussians strung along every branch.
COMPONENTS_PER_BRANCH = 8
#: Mean trunk length.
TRUNK_LENGTH = 0.35
#: Each level is this much shorter than its parent (the self-similarity factor).
LENGTH_DECAY = 0.8
#: Turning angle (radians) of the first fork; it shrinks by ANGLE_DECAY per level.
FORK_ANGLE = 1.0
ANGLE_DECAY = 0.7
#: Relative random jitter (standard deviation) applied to every branch length and turning angle.
JITTER = 0.2
#: The components of a branch sit at these fractions of its length (ends trimmed so children do not pile up).
ALONG_SPAN = (0.07, 0.93)
#: Standard deviation of a component along its branch, relative to the branch length.
ALONG_STD = 0.07
#: Across-branch standard deviation relative to the along-branch one (< 1: narrow, anisotropic components).
ACROSS_RATIO = 0.5
#: Mixture weight of a branch: proportional to its length, times this factor per level (deeper = rarer).
LEVEL_WEIGHT = 0.5
#: Seed of the random jitter: one fixed data set.
DATA_SEED = 7

#: Points per block in density evaluations (bounds the [points, components] intermediates to ~30 MB).
_CHUNK = 2048

#: Folder of the shipped lab models (``good``, ``bad_early``, ``bad_small``).
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "toy2d"
PRETRAINED_KINDS = ("good", "bad_early", "bad_small")


@dataclass(frozen=True)
class Branch:
    """One stroke of the fractal: class, level, start point, unit direction and length."""

    label: int
    level: int
    start: tuple[float, float]
    direction: tuple[float, float]
    length: float


def _grow(label: int, angle0: float, rng: np.random.Generator, depth: int) -> list[Branch]:
    """The branches of one class, depth-first (parents before children)."""
    out: list[Branch] = []

    def recurse(level: int, start: np.ndarray, angle: float) -> None:
        if level >= depth:
            return
        length = TRUNK_LENGTH * LENGTH_DECAY**level * (1.0 + JITTER * rng.standard_normal())
        direction = np.array([math.cos(angle), math.sin(angle)])
        out.append(Branch(label, level, (float(start[0]), float(start[1])), tuple(direction.tolist()), float(length)))
        end = start + length * direction
        for side in (1.0, -1.0):
            turn = FORK_ANGLE * ANGLE_DECAY**level * (1.0 + JITTER * rng.standard_normal())
            recurse(level + 1, end, angle + side * turn)

    recurse(0, np.zeros(2), angle0)
    return out


class FastGaussianMixture(GaussianMixture):
    """A :class:`GaussianMixture` whose densities and scores are evaluated as matrix products.

    Noising keeps each covariance's eigenvectors, ``alpha^2 Q L Q^T + sigma^2 I = Q (alpha^2 L + sigma^2) Q^T``, so
    the noisy precisions ``P_k`` and log-determinants are cheap for any noise level. The Mahalanobis distances of all
    points to all components are then one matrix product, ``(x - m)^T P (x - m) = phi(x) @ W`` with the quadratic
    features ``phi(x) = [x_i x_j, x_i, 1]``; the score ``-sum_k r_k P_k (x - m_k)`` is two more. Same results as the
    base class to float64 round-off (tested), and orders of magnitude faster for the thousands of components here.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covs: torch.Tensor) -> None:
        super().__init__(weights, means, covs)
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.covs)  # [K, D], [K, D, D] (columns = eigenvectors)
        self._iu = torch.triu_indices(self.dim, self.dim)  # the x_i x_j pairs with i <= j

    def _noisy_params(self, alpha: float, sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Precisions ``P_k`` [K, D, D], noisy means [K, D] and per-component log-normalisers (with weights) [K]."""
        lam = alpha * alpha * self.eigvals + sigma * sigma
        prec = (self.eigvecs / lam.unsqueeze(1)) @ self.eigvecs.transpose(1, 2)
        const = self.log_weights - 0.5 * (torch.log(lam).sum(-1) + self.dim * LOG_2PI)
        return prec, alpha * self.means, const

    def _quadratic(self, prec: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """``W`` [F, K] with ``phi(x) @ W = (x - m_k)^T P_k (x - m_k)``."""
        i, j = self._iu
        pair = prec[:, i, j] * torch.where(i == j, 1.0, 2.0).to(prec.dtype)  # [K, pairs]
        pm = (prec @ mean.unsqueeze(-1)).squeeze(-1)  # [K, D]
        mpm = (mean * pm).sum(-1, keepdim=True)  # [K, 1]
        return torch.cat([pair, -2.0 * pm, mpm], dim=1).T

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        i, j = self._iu
        return torch.cat([x[:, i] * x[:, j], x, torch.ones_like(x[:, :1])], dim=1)

    def _logp_terms(self, x: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        prec, mean, const = self._noisy_params(alpha, sigma)
        maha = (self._features(x.to(torch.float64)) @ self._quadratic(prec, mean)).clamp(min=0.0)
        return const - 0.5 * maha  # [N, K]

    def log_prob(self, x: torch.Tensor, alpha: float = 1.0, sigma: float = 0.0) -> torch.Tensor:
        out = []
        for chunk in x.split(_CHUNK):
            logp = self._logp_terms(chunk, alpha, sigma)
            top = logp.amax(1, keepdim=True)  # in-place logsumexp: about 3x faster than torch.logsumexp here
            out.append(logp.sub_(top).exp_().sum(1).log_().add_(top.squeeze(1)))
        return torch.cat(out)

    def score(self, x: torch.Tensor, alpha: float = 1.0, sigma: float = 0.0) -> torch.Tensor:
        prec, mean, _ = self._noisy_params(alpha, sigma)
        flat_p = prec.reshape(self.num_components, -1)  # [K, D*D]
        pm = (prec @ mean.unsqueeze(-1)).squeeze(-1)  # [K, D]
        out = []
        for chunk in x.to(torch.float64).split(_CHUNK):
            resp = torch.softmax(self._logp_terms(chunk, alpha, sigma), dim=1)  # [N, K]
            mixed_p = (resp @ flat_p).reshape(-1, self.dim, self.dim)
            out.append(resp @ pm - (mixed_p @ chunk.unsqueeze(-1)).squeeze(-1))
        return torch.cat(out)

    def nearest_component(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The most responsible component of each point (noise-free) and the point's Mahalanobis distance to it."""
        prec, mean, const = self._noisy_params(1.0, 0.0)
        w = self._quadratic(prec, mean)
        comps, dists = [], []
        for chunk in x.to(torch.float64).split(_CHUNK):
            maha = (self._features(chunk) @ w).clamp(min=0.0)
            best = (const - 0.5 * maha).argmax(1)
            comps.append(best)
            dists.append(maha.gather(1, best[:, None]).squeeze(1).sqrt())
        return torch.cat(comps), torch.cat(dists)


def _branch_mixture(branches: list[Branch]) -> tuple[GaussianMixture, torch.Tensor]:
    """The Gaussian mixture of a list of branches, and the branch index of each component."""
    weights, means, covs, owner = [], [], [], []
    for b_idx, b in enumerate(branches):
        d = np.array(b.direction)
        along = ALONG_STD * b.length
        across = ACROSS_RATIO * along
        perp = np.array([-d[1], d[0]])
        cov = along**2 * np.outer(d, d) + across**2 * np.outer(perp, perp)
        for frac in np.linspace(ALONG_SPAN[0], ALONG_SPAN[1], COMPONENTS_PER_BRANCH):
            weights.append(b.length * LEVEL_WEIGHT**b.level / COMPONENTS_PER_BRANCH)
            means.append(np.array(b.start) + frac * b.length * d)
            covs.append(cov)
            owner.append(b_idx)
    gm = FastGaussianMixture(torch.tensor(weights), torch.tensor(np.stack(means)), torch.tensor(np.stack(covs)))
    return gm, torch.tensor(owner, dtype=torch.long)


class Toy2D:
    """The fractal data set: a :class:`ConditionalGaussianMixture` plus the tree bookkeeping behind the metrics.

    Attributes:
        mixture: one exact mixture per class (label ``c``), their equal-weight union as the null condition.
        branches: per class, the list of :class:`Branch` (index = branch id).
        component_branch: per class, ``LongTensor[K]`` mapping each mixture component to its branch id.
    """

    def __init__(self, num_classes: int = 2, depth: int = TREE_DEPTH, seed: int = DATA_SEED) -> None:
        if num_classes < 1 or depth < 1:
            raise ValueError(f"Toy2D needs num_classes >= 1 and depth >= 1, got {num_classes}, {depth}")
        rng = np.random.default_rng(seed)
        self.num_classes = num_classes
        self.depth = depth
        self.branches: list[list[Branch]] = []
        self.component_branch: list[torch.Tensor] = []
        mixtures = []
        for c in range(num_classes):
            angle0 = math.pi / 4 + 2 * math.pi * c / num_classes  # classes grow in evenly spread directions
            branches = _grow(c, angle0, rng, depth)
            gm, owner = _branch_mixture(branches)
            self.branches.append(branches)
            self.component_branch.append(owner)
            mixtures.append(gm)
        self.mixture = ConditionalGaussianMixture(mixtures)
        # The null condition (union of the classes) with the same fast evaluation as the classes.
        self.mixture.unconditional = FastGaussianMixture.concat(mixtures, self.mixture.class_probs)

    # -- densities ----------------------------------------------------------------------------------------------
    def class_mixture(self, label: int | None) -> GaussianMixture:
        """The mixture of class ``label`` (``None``: the unconditional union)."""
        return self.mixture.mixture(label)

    def log_prob(self, x: torch.Tensor, label: int | None, alpha: float = 1.0, sigma: float = 0.0) -> torch.Tensor:
        """Exact log density of class ``label`` (None: all classes) at ``x``, optionally of the noisy data."""
        return self.class_mixture(label).log_prob(x, alpha, sigma)

    def score(self, x: torch.Tensor, label: int | None, alpha: float = 1.0, sigma: float = 0.0) -> torch.Tensor:
        """Exact ``grad_x log p`` of class ``label`` at ``x`` (of ``alpha * x0 + sigma * eps`` if given)."""
        return self.class_mixture(label).score(x, alpha, sigma)

    def denoiser(
        self, prediction: Prediction | str = Prediction.VELOCITY, schedule: Schedule | None = None
    ) -> FnDenoiser:
        """The exact denoiser (condition ``"label"``, LongTensor ``[B]``; null = the unconditional union)."""
        return self.mixture.denoiser(prediction, schedule, name="toy2d_exact")

    # -- sampling -----------------------------------------------------------------------------------------------
    def sample(
        self, n: int, label: int | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` exact samples (float64 ``[n, 2]``) and their labels; ``label=None`` draws labels uniformly."""
        if label is None:
            labels = torch.randint(self.num_classes, (n,), generator=generator)
        else:
            labels = torch.full((n,), int(label), dtype=torch.long)
        x = torch.empty(n, 2, dtype=torch.float64)
        for c in range(self.num_classes):
            sel = labels == c
            k = int(sel.sum())
            if k:
                x[sel] = self.mixture.classes[c].sample(k, generator=generator)
        return x, labels

    def data_source(self, dtype: torch.dtype = torch.float32) -> ToyData:
        """A training data source ``(batch_size, generator) -> (x0, {"label": ...})``."""
        return ToyData(self, dtype)

    # -- tree bookkeeping ---------------------------------------------------------------------------------------
    def leaf_branches(self, label: int) -> torch.Tensor:
        """Branch ids of the leaves (last level) of class ``label``."""
        levels = torch.tensor([b.level for b in self.branches[label]])
        return torch.nonzero(levels == self.depth - 1).flatten()

    def assign(self, x: torch.Tensor, label: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For each point: the most responsible component of class ``label`` and the point's Mahalanobis distance
        to it (in standard deviations)."""
        return self.class_mixture(label).nearest_component(x)

    @property
    def num_components(self) -> int:
        return sum(m.num_components for m in self.mixture.classes)


class ToyData:
    """Training batches from a :class:`Toy2D`: uniform labels, exact samples."""

    condition_names = ("label",)

    def __init__(self, toy: Toy2D, dtype: torch.dtype = torch.float32) -> None:
        self.toy = toy
        self.dtype = dtype

    def __call__(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, Cond]:
        x, labels = self.toy.sample(batch_size, generator=generator)
        return x.to(self.dtype), {"label": labels}


@functools.lru_cache(maxsize=8)
def make_toy2d(num_classes: int = 2, depth: int = TREE_DEPTH, seed: int = DATA_SEED) -> Toy2D:
    """The (cached) fractal data set."""
    return Toy2D(num_classes=num_classes, depth=depth, seed=seed)


def pretrained(kind: str = "good", folder: str | Path | None = None, device: str = "cpu"):
    """A shipped lab model (``"good"``, ``"bad_early"`` or ``"bad_small"``), via the common loader."""
    from ..models import from_pretrained

    if kind not in PRETRAINED_KINDS:
        raise ValueError(f"unknown toy2d model {kind!r}; expected one of {PRETRAINED_KINDS}")
    return from_pretrained(Path(folder) if folder is not None else ASSETS, subfolder=kind, device=device)
