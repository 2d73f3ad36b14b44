"""Turning a guidance expression into one guided clean-data estimate per solver stage.

:class:`GuidedDenoiser` evaluates the branches a guidance needs at the current noise level (each distinct
``(model, dropped conditions)`` pair once; all branches of one model in one batched forward when its conditions
stack), combines them in the good model's prediction space, converts the result to ``x0`` and counts every network
evaluation: a forward over k stacked branches counts k NFE.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping

import torch

from .denoisers import Cond, Denoiser, Prediction, check_compatible, eps_from_x0, from_x0_eps, to_x0
from .guidance import ROLES, ZERO_TOL, Branch, Guidance
from .kernels import combine


class GuidedDenoiser:
    """``x0 = D(x, t)`` for a guided combination of branches of a good and (optionally) a bad model.

    Args:
        model: the good model.
        guidance: a compiled guidance expression.
        cond: the conditions (shared by both models unless ``bad_cond`` is given).
        bad: the bad model, required when the guidance has ``bad:*`` branches.
        bad_cond: conditions for the bad model, if it encodes them differently.
        model_dtype: dtype the networks are fed with; predictions are combined in at least float32.
        batch_branches: evaluate all branches of one model in a single forward (conditions concatenated along the
            batch) when the model can stack its conditions (``batch_conditions``); NFE counts are unchanged.
        stack_models: evaluate the good and the bad model in one vectorised pass over stacked weights
            (``torch.func.functional_call`` + ``vmap``) when they share an architecture and need the same number of
            branches. Off by default: on CPU it measured slower than two forwards (benchmarks/speed.py).
        negative: values that replace the model's null for the named conditions wherever a branch drops them
            (a negative text prompt: ``{"text": features}``); conditions not named keep the model's null.
        bad_negative: the same for the bad model (default: ``negative`` when the models share ``cond``).
    """

    def __init__(
        self,
        model: Denoiser,
        guidance: Guidance,
        cond: Cond | None = None,
        bad: Denoiser | None = None,
        bad_cond: Cond | None = None,
        model_dtype: torch.dtype | None = None,
        batch_branches: bool = True,
        stack_models: bool = False,
        negative: Cond | None = None,
        bad_negative: Cond | None = None,
    ) -> None:
        if guidance.needs_bad_model:
            if bad is None:
                raise ValueError(f"guidance {guidance.spec()} needs a bad model; pass bad=...")
            check_compatible(model, bad)
        self.model = model
        self.bad = bad
        self.guidance = guidance
        self.cond = cond
        self.bad_cond = cond if bad_cond is None else bad_cond
        self.negative = _check_negative(model, negative)
        self.bad_negative = negative if (bad_negative is None and bad_cond is None) else bad_negative
        if bad is not None:
            self.bad_negative = _check_negative(bad, self.bad_negative)
        self.model_dtype = model_dtype
        self.batch_branches = batch_branches
        self.stack = _ModelStack(model, bad) if (stack_models and guidance.needs_bad_model) else None
        self.nfe = 0
        self.nfe_by_role: Counter[str] = Counter()
        self.calls = 0
        self.forwards = 0

    def _role(self, role: str) -> tuple[Denoiser, Cond | None]:
        if role == "good":
            return self.model, self.cond
        assert self.bad is not None
        return self.bad, self.bad_cond

    def _branch_cond(self, net: Denoiser, cond: Cond | None, dropped: frozenset[str]) -> Cond | None:
        """``cond`` with ``dropped`` replaced by the model's nulls, or by the negative conditions where given."""
        if not dropped:
            return cond
        out = net.drop(cond, dropped)
        negative = self.negative if net is self.model else self.bad_negative
        if negative:
            replace = {k: v for k, v in negative.items() if k in dropped}
            if replace:
                out = {**(out or {}), **replace}
        return out

    def plan(self, level: float) -> dict[tuple[str, frozenset[str]], float]:
        """``{(role, dropped names): coefficient}`` at ``level``; branches that coincide for these models merge."""
        out: dict[tuple[str, frozenset[str]], float] = {}
        for b, c in self.guidance.branch_coefficients(level).items():
            net, _ = self._role(b.role)
            key = (b.role, b.dropped(net.condition_names))
            out[key] = out.get(key, 0.0) + c
        return {k: c for k, c in out.items() if abs(c) > ZERO_TOL}

    def branch_predictions(self, x: torch.Tensor, t: float) -> tuple[list[torch.Tensor], list[float]]:
        """The evaluated branch predictions (in the good model's prediction type) and their coefficients at ``t``."""
        terms = self.model.schedule.terms(t)
        plan = self.plan(terms.noise_level)
        x_in = x if self.model_dtype is None else x.to(self.model_dtype)
        t_dtype = torch.promote_types(x.dtype, torch.float32)
        preds, coeffs = [], []
        groups = {role: [(dropped, c) for (r, dropped), c in plan.items() if r == role] for role in ROLES}
        stacked = None
        if self.stack is not None and groups["good"] and len(groups["good"]) == len(groups["bad"]):
            stacked = self._forward_stacked(x_in, float(t), t_dtype, [[d for d, _ in groups[r]] for r in ROLES])
        for k, role in enumerate(ROLES):
            group = groups[role]
            if not group:
                continue
            net, cond = self._role(role)
            if stacked is not None:
                outs = stacked[k]
            else:
                outs = self._forward(net, x_in, float(t), t_dtype, cond, [d for d, _ in group])
            for (dropped, c), pred in zip(group, outs, strict=True):
                if pred.shape != x.shape:
                    raise ValueError(
                        f"{role} model returned shape {tuple(pred.shape)} for input {tuple(x.shape)} "
                        f"(branch {Branch.make(role, sorted(dropped)).key})"
                    )
                if net.prediction is not self.model.prediction:
                    pred = _reexpress(pred, x, net.prediction, self.model.prediction, terms)
                preds.append(pred)
                coeffs.append(c)
            self.nfe_by_role[role] += len(group)
        self.nfe += len(preds)
        self.calls += 1
        return preds, coeffs

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Guided x0 estimate at state ``x`` and model time ``t`` (a Python float)."""
        preds, coeffs = self.branch_predictions(x, t)
        guided = combine(preds, coeffs, out_dtype=x.dtype)
        return to_x0(self.model.prediction, x, guided, self.model.schedule.terms(t))

    def _forward_stacked(
        self, x: torch.Tensor, t: float, t_dtype: torch.dtype, drops: list[list[frozenset[str]]]
    ) -> list[list[torch.Tensor]] | None:
        """Both models' branches in one vmapped call over stacked weights, or None if the conditions do not stack."""
        assert self.stack is not None and self.bad is not None
        batch, k = x.shape[0], len(drops[0])
        conds = []
        for role, ds in zip(ROLES, drops, strict=True):
            net, cond = self._role(role)
            c = net.batch_conditions([self._branch_cond(net, cond, d) for d in ds], batch)
            if c is NotImplemented or (conds and set(c) != set(conds[0])):
                return None
            conds.append(c)
        xs = x.repeat(k, *([1] * (x.ndim - 1)))
        ts = torch.full((batch * k,), t, device=x.device, dtype=t_dtype)
        out = self.stack(xs, ts, conds)
        self.forwards += 1
        return [list(out[i].split(batch, dim=0)) for i in range(2)]

    def _forward(
        self,
        net: Denoiser,
        x: torch.Tensor,
        t: float,
        t_dtype: torch.dtype,
        cond: Cond | None,
        drops: list[frozenset[str]],
    ) -> list[torch.Tensor]:
        """Predictions of ``net`` for each drop set: one batched forward when the conditions stack, else one each."""
        conds = [self._branch_cond(net, cond, d) for d in drops]
        batch = x.shape[0]
        if self.batch_branches and len(drops) > 1 and hasattr(net, "batch_conditions"):
            stacked = net.batch_conditions(conds, batch)
            if stacked is not NotImplemented:
                k = len(drops)
                xs = x.repeat(k, *([1] * (x.ndim - 1)))
                ts = torch.full((batch * k,), t, device=x.device, dtype=t_dtype)
                self.forwards += 1
                return list(net(xs, ts, stacked).split(batch, dim=0))
        t_vec = torch.full((batch,), t, device=x.device, dtype=t_dtype)
        self.forwards += len(drops)
        return [net(x, t_vec, c) for c in conds]


def _check_negative(net: Denoiser, negative: Cond | None) -> Cond | None:
    if negative is None:
        return None
    if not isinstance(negative, Mapping):
        raise TypeError(f"negative conditions must be a mapping of condition name -> value, got {type(negative)}")
    unknown = set(negative) - set(net.condition_names)
    if unknown:
        raise ValueError(f"negative condition(s) {sorted(unknown)} unknown; model has {tuple(net.condition_names)}")
    return dict(negative)


def _reexpress(pred: torch.Tensor, x: torch.Tensor, src: Prediction, dst: Prediction, terms) -> torch.Tensor:
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    x0 = to_x0(src, x32, pred.to(x32.dtype), terms)
    if dst is Prediction.X0:
        return x0
    return from_x0_eps(dst, x0, eps_from_x0(x32, x0, terms), terms)


class _ModelStack:
    """The good and the bad model as one vectorised function over stacked weights (same architecture)."""

    def __init__(self, good: Denoiser, bad: Denoiser | None) -> None:
        if not (isinstance(good, torch.nn.Module) and isinstance(bad, torch.nn.Module)):
            raise ValueError("stack_models needs both models to be torch modules")
        if type(good) is not type(bad) or getattr(good, "arch_kwargs", None) != getattr(bad, "arch_kwargs", None):
            raise ValueError("stack_models needs the good and bad models to share one architecture")
        self.params, self.buffers = torch.func.stack_module_state([good, bad])
        self.base = copy.deepcopy(good).to("meta")

    def __call__(self, x: torch.Tensor, t: torch.Tensor, conds: list[Cond]) -> torch.Tensor:
        keys = sorted(conds[0])
        values = [torch.stack([c[k] for c in conds]) for k in keys]

        def one(params, buffers, *vals):
            return torch.func.functional_call(self.base, (params, buffers), (x, t, dict(zip(keys, vals, strict=True))))

        return torch.vmap(one)(self.params, self.buffers, *values)
