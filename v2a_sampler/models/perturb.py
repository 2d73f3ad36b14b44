"""Bad models made by perturbing the good one: no second checkpoint needed.

Autoguidance (EDM2; AudioMoG eq. 6) and the mixtures built on it need a *worse* version of the model. When only one
checkpoint exists, a perturbed forward pass of the same network can play that role, as in the perturbation guiders
of diffusers:

* ``skip=[i, ...]``: the listed blocks act as the identity (their output is their input): skip-layer guidance
  (SLG, as in Stable Diffusion 3.5).
* ``identity=[i, ...]``: the listed blocks' attention maps are the identity, so every token attends only to itself
  and the attention output is ``v`` (perturbed-attention guidance, PAG: Ahn et al. 2024).
* ``attn_dropout=p``: attention weights are dropped with probability ``p`` (a fixed seeded pattern, rescaled by
  ``1 / (1 - p)``) in the blocks of ``layers`` (default: all).
* ``blur=s``: queries are blurred with a Gaussian of standard deviation ``s`` tokens along the token axis before
  attention (smoothed energy guidance, SEG: Hong 2024; a large ``s`` tends to uniform attention).
* ``dropout=p``: block outputs are dropped element-wise with probability ``p`` (a fixed seeded pattern, rescaled),
  in the blocks of ``layers`` (default: all): a fixed random sub-network, like sampling-time dropout.

Random patterns are drawn from ``seed`` at every forward and are the same for every row, so a perturbed model is
deterministic and a batch equals its rows evaluated one by one.

A network exposes where it may be perturbed with ``perturbation_sites() -> {"blocks": [...], "attention": [...]}``
(``V2AFlow``, the MMAudio network and ``ToyMLP`` do); the perturbations are forward hooks on those modules, active
only inside :func:`perturb`. :func:`perturbed` wraps a network as a bad model that shares its weights and declares
``perturbation_of`` (the good network) and ``rows(mask)``, so the guidance engine evaluates the good and the
perturbed branches in one batched forward (each perturbed branch still counts as its own NFE).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.denoisers import Cond


class PerturbationError(ValueError):
    """A perturbation that cannot apply (bad spec, or blocks/attention the network does not have)."""


#: Prefix of a perturbation spec string (``perturb:skip=2``, the CLI's ``--bad-model perturb:...``).
SPEC_PREFIX = "perturb:"


@dataclass(frozen=True)
class Perturbation:
    """What to change in the good network's forward pass (see the module docstring)."""

    skip: tuple[int, ...] = ()
    identity: tuple[int, ...] = ()
    attn_dropout: float = 0.0
    blur: float = 0.0
    dropout: float = 0.0
    layers: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("skip", "identity"):
            object.__setattr__(self, name, tuple(sorted({int(i) for i in getattr(self, name)})))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(sorted({int(i) for i in self.layers})))
        for name in ("attn_dropout", "dropout"):
            p = getattr(self, name)
            if not (isinstance(p, (int, float)) and 0.0 <= p < 1.0):
                raise PerturbationError(f"perturbation {name} must be in [0, 1), got {p!r}")
        if not (isinstance(self.blur, (int, float)) and math.isfinite(self.blur) and self.blur >= 0.0):
            raise PerturbationError(f"perturbation blur must be a standard deviation >= 0 (tokens), got {self.blur!r}")
        if not (self.skip or self.identity or self.attn_dropout or self.blur or self.dropout):
            raise PerturbationError("a perturbation needs at least one of skip, identity, attn_dropout, blur, dropout")

    @classmethod
    def parse(cls, spec: str) -> Perturbation:
        """From ``"perturb:skip=2"``, ``"perturb:identity=0+1"``, ``"perturb:attn_dropout=0.1,seed=3"``,
        ``"perturb:blur=2,layers=1+2"`` (the prefix is optional)."""
        text = spec.strip().removeprefix(SPEC_PREFIX)
        kw: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in _FIELDS:
                raise PerturbationError(
                    f"bad perturbation {spec!r}: expected NAME=VALUE with NAME in {', '.join(_FIELDS)}"
                )
            try:
                if key in ("skip", "identity", "layers"):
                    kw[key] = tuple(int(v) for v in re.split(r"[+ ]", value.strip()) if v)
                elif key == "seed":
                    kw[key] = int(value)
                else:
                    kw[key] = float(value)
            except ValueError:
                raise PerturbationError(f"bad perturbation {spec!r}: {key} needs numbers, got {value!r}") from None
        return cls(**kw)

    def spec(self) -> str:
        """The spec string :meth:`parse` reads back."""
        parts = []
        for name in _FIELDS:
            v = getattr(self, name)
            if name == "seed" and not (self.attn_dropout or self.dropout):
                continue
            if v in ((), 0.0, None) or (name == "seed" and v == 0):
                continue
            parts.append(f"{name}={'+'.join(map(str, v)) if isinstance(v, tuple) else f'{v:g}'}")
        return SPEC_PREFIX + ",".join(parts)


_FIELDS = ("skip", "identity", "attn_dropout", "blur", "dropout", "layers", "seed")


def is_spec(text: str | None) -> bool:
    """Whether a bad-model argument names a perturbation (``perturb:...``)."""
    return isinstance(text, str) and text.strip().startswith(SPEC_PREFIX)


def sites(network: nn.Module) -> dict[str, list[nn.Module]]:
    """``network.perturbation_sites()``, or a clear error for networks that have none."""
    get = getattr(network, "perturbation_sites", None)
    if get is None:
        raise PerturbationError(f"{type(network).__name__} declares no perturbation sites (perturbation_sites())")
    return get()


def check(network: nn.Module, perturbation: Perturbation) -> None:
    """Raise ``ValueError`` if ``perturbation`` names blocks or attention the network does not have."""
    where = sites(network)
    n_blocks, n_attn = len(where["blocks"]), len(where["attention"])
    if (perturbation.identity or perturbation.attn_dropout or perturbation.blur) and not n_attn:
        raise PerturbationError(f"{type(network).__name__} has no attention to perturb")
    for name, limit in (("skip", n_blocks), ("identity", n_attn), ("layers", max(n_blocks, n_attn))):
        bad = [i for i in getattr(perturbation, name) or () if not 0 <= i < limit]
        if bad:
            raise PerturbationError(f"perturbation {name}={bad} is out of range: {type(network).__name__} has {limit} "
                             f"{'attention sites' if name == 'identity' else 'blocks'} (0-{limit - 1})")  # fmt: skip


def _select(mask: torch.Tensor | None, perturbed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return perturbed
    return torch.where(mask.view(-1, *([1] * (original.ndim - 1))), perturbed, original)


def _pattern(shape: Sequence[int], p: float, seed: int, device: torch.device, salt: int) -> torch.Tensor:
    """A fixed keep-mask (scaled by ``1 / (1 - p)``) of ``shape``, the same at every call for ``seed``/``salt``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + salt)
    keep = torch.rand(tuple(shape), generator=gen) >= p
    return keep.to(device=device, dtype=torch.float32) / (1.0 - p)


def _blur_queries(q: torch.Tensor, std: float) -> torch.Tensor:
    """``q`` ``[B, H, T, d]`` blurred along T by a normalised Gaussian of ``std`` tokens (reflect padding)."""
    radius = min(max(1, int(math.ceil(3.0 * std))), q.shape[2] - 1)
    if radius < 1:
        return q
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=q.device)
    kernel = torch.exp(-0.5 * (offsets / std) ** 2)
    kernel = (kernel / kernel.sum()).to(q.dtype)
    b, h, t, d = q.shape
    flat = q.permute(0, 1, 3, 2).reshape(b * h * d, 1, t)
    flat = F.conv1d(F.pad(flat, (radius, radius), mode="reflect"), kernel.view(1, 1, -1))
    return flat.view(b, h, d, t).permute(0, 1, 3, 2)


def _manual_attention(q, k, v, drop: torch.Tensor | None) -> torch.Tensor:
    weights = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
    if drop is not None:
        weights = weights * drop.to(weights.dtype)
    return weights @ v


@contextlib.contextmanager
def perturb(network: nn.Module, perturbation: Perturbation, rows: torch.Tensor | None = None) -> Iterator[None]:
    """Inside the block, ``network``'s forward passes are perturbed (only the batch rows where ``rows`` is True,
    when given: the rest of the batch is the plain network)."""
    check(network, perturbation)
    where = sites(network)
    p = perturbation
    in_layers = (lambda i: True) if p.layers is None else (lambda i: i in p.layers)  # noqa: E731
    handles = []

    def block_hook(index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            if index in p.skip:  # identity block: outputs are the first inputs (h; or the joint streams)
                if isinstance(output, tuple):
                    return tuple(_select(rows, a, o) for a, o in zip(args[: len(output)], output, strict=True))
                return _select(rows, args[0], output)
            if p.dropout and in_layers(index):
                outs = output if isinstance(output, tuple) else (output,)
                dropped = []
                for k, o in enumerate(outs):
                    mask = _pattern(o.shape[1:], p.dropout, p.seed, o.device, salt=2 * (100 * index + k))
                    dropped.append(_select(rows, o * mask.to(o.dtype), o))
                return tuple(dropped) if isinstance(output, tuple) else dropped[0]
            return output

        return hook

    def attention_hook(index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            q, k, v = args
            if index in p.identity:
                return _select(rows, v, output)
            if not in_layers(index) or not (p.attn_dropout or p.blur):
                return output
            drop = None
            if p.attn_dropout:
                drop = _pattern((q.shape[1], q.shape[2], k.shape[2]), p.attn_dropout, p.seed, q.device,
                                salt=2 * index + 1)  # fmt: skip
            if rows is None:
                return _manual_attention(_blur_queries(q, p.blur) if p.blur else q, k, v, drop)
            sel = rows.nonzero().squeeze(1)  # only the perturbed rows pay for the manual attention
            qs = q.index_select(0, sel)
            out = output.clone()
            out[sel] = _manual_attention(_blur_queries(qs, p.blur) if p.blur else qs, k[sel], v[sel], drop)
            return out

        return hook

    try:
        for i, block in enumerate(where["blocks"]):
            if i in p.skip or (p.dropout and in_layers(i)):
                handles.append(block.register_forward_hook(block_hook(i)))
        for i, core in enumerate(where["attention"]):
            if i in p.identity or ((p.attn_dropout or p.blur) and in_layers(i)):
                handles.append(core.register_forward_hook(attention_hook(i)))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class PerturbedDenoiser:
    """A bad model that is ``base`` with a :class:`Perturbation` (the same weights; see :func:`perturbed`).

    It speaks the denoiser protocol by delegating to ``base`` and declares ``perturbation_of = base`` and
    :meth:`rows`, which the guidance engine uses to evaluate good and perturbed branches in one forward.
    """

    base: nn.Module
    perturbation: Perturbation
    name: str = field(default="")

    def __post_init__(self) -> None:
        check(self.base, self.perturbation)
        self.name = self.name or self.perturbation.spec()

    @property
    def perturbation_of(self) -> nn.Module:
        return self.base

    def __getattr__(self, item: str) -> Any:  # prediction, schedule, condition_names, drop, batch_conditions, ...
        if item in ("base", "perturbation", "name"):
            raise AttributeError(item)
        return getattr(self.base, item)

    def rows(self, mask: torch.Tensor | None) -> contextlib.AbstractContextManager:
        """A context in which ``base``'s forward is perturbed for the batch rows where ``mask`` is True."""
        return perturb(self.base, self.perturbation, mask)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Cond | Any | None) -> torch.Tensor:
        with perturb(self.base, self.perturbation):
            return self.base(x, t, cond)

    def to(self, *args: Any, **kwargs: Any) -> PerturbedDenoiser:
        """Moving a perturbed model moves nothing: it owns no weights (``base`` moves with the good model)."""
        return self

    def eval(self) -> PerturbedDenoiser:
        return self

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

    def __repr__(self) -> str:
        return f"PerturbedDenoiser({type(self.base).__name__}, {self.perturbation.spec()})"


def perturbed(
    network: nn.Module,
    perturbation: Perturbation | str | Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> PerturbedDenoiser:
    """``network`` as a bad model with a perturbed forward pass: ``perturbed(good, skip=[2])``,
    ``perturbed(good, "perturb:identity=1")`` or ``perturbed(good, Perturbation(blur=2.0))``."""
    if isinstance(perturbation, Perturbation):
        p = perturbation
    elif isinstance(perturbation, str):
        p = Perturbation.parse(perturbation)
    else:
        p = Perturbation(**{**dict(perturbation or {}), **kwargs})
    return PerturbedDenoiser(network, p)
