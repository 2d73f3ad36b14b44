"""Turning a guidance expression into one guided clean-data estimate per solver stage.

:class:`GuidedDenoiser` evaluates the branches a guidance needs at the current noise level (each distinct
``(model, dropped conditions)`` pair once; all branches of one model in one batched forward when its conditions
stack), combines them in the good model's prediction space, converts the result to ``x0`` and counts every network
evaluation: a forward over k stacked branches counts k NFE.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..kernels import combine
from .denoisers import Cond, Denoiser, Prediction, check_compatible, eps_from_x0, from_x0_eps, to_x0
from .guidance import ROLES, ZERO_TOL, Branch, Guidance, GuidedStep, describe


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
            (``torch.func.functional_call`` + ``vmap``); the models must share an architecture (else ``ValueError``).
            Stages where the two need different numbers of branches, or whose conditions do not stack, fall back to
            separate forwards. Off by default: on CPU it measured slower than two forwards on the embedded model
            (benchmarks/speed.py).
        negative: values that replace the model's null for the named conditions wherever a branch drops them
            (a negative text prompt: ``{"text": features}``); conditions not named keep the model's null.
        bad_negative: the same for the bad model (default: ``negative`` when the models share ``cond``).
        streams: on CUDA, run the good and the bad model's forwards on two streams (they may overlap).
        cuda_graph: capture each distinct set of branch forwards once as a CUDA graph and replay it at every later
            stage with the same shapes (static input buffers; conditions are fixed per engine). ``True`` uses
            :class:`CudaGraphs`; a :class:`GraphBackend` instance may stand in (tests).
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
        streams: bool = False,
        cuda_graph: bool | GraphBackend = False,
    ) -> None:
        if guidance.needs_grid:
            raise ValueError(
                f"guidance {describe(guidance)} is defined over the sampling grid's steps (window fractions, "
                "zero_star's first k steps): sample through Sampler/sample(), or bind it first with "
                "guidance.on_grid(noise levels of the grid)"
            )
        if guidance.needs_bad_model:
            if bad is None:
                raise ValueError(f"guidance {describe(guidance)} needs a bad model; pass bad=...")
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
        self.streams = streams
        self._streams: list[Any] | None = None
        self.graphs: GraphBackend | None = CudaGraphs() if cuda_graph is True else (cuda_graph or None)
        self._graphed: dict[tuple, _GraphedBranches] = {}
        self._conds: dict[tuple, tuple[bool, Any]] = {}
        self._stack_conds: dict[tuple, list[Cond] | None] = {}
        self.state: dict[str, Any] = {}  # per-run memory of non-linear guidance (GuidedStep.state)
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

    def key(self, b: Branch) -> tuple[str, frozenset[str]]:
        """``(role, concrete dropped condition names)``: branches with equal keys are one evaluation."""
        net, _ = self._role(b.role)
        return b.role, b.dropped(net.condition_names, getattr(net, "condition_groups", None))

    def plan(self, level: float) -> dict[tuple[str, frozenset[str]], float]:
        """``{(role, dropped names): coefficient}`` at ``level``; branches that coincide for these models merge.

        For a linear guidance, keys whose merged coefficient cancels are not evaluated; a non-linear one gets every
        branch of :meth:`Guidance.branches` at ``level`` (what its NFE counts; coefficients are its own business and
        reported as 0)."""
        out: dict[tuple[str, frozenset[str]], float] = {}
        if not self.guidance.is_linear:
            for b in self.guidance.branches(level):
                out.setdefault(self.key(b), 0.0)
            return out
        for b, c in self.guidance.branch_coefficients(level).items():
            k = self.key(b)
            out[k] = out.get(k, 0.0) + c
        return {k: c for k, c in out.items() if abs(c) > ZERO_TOL}

    def branch_predictions(self, x: torch.Tensor, t: float) -> tuple[list[torch.Tensor], list[float]]:
        """The evaluated branch predictions (in the good model's prediction type) and their coefficients at ``t``.

        With ``cuda_graph`` the returned predictions live in the graph's static outputs: they are valid until the
        next call (the solvers combine them at once).
        """
        _, preds, coeffs = self._stage(x, t)
        return preds, coeffs

    def _stage(
        self, x: torch.Tensor, t: float
    ) -> tuple[list[tuple[str, frozenset[str]]], list[torch.Tensor], list[float]]:
        """Keys, predictions and coefficients of the branches evaluated at ``t`` (see :meth:`branch_predictions`)."""
        terms = self.model.schedule.terms(t)
        plan = self.plan(terms.noise_level)
        x_in = x if self.model_dtype is None else x.to(self.model_dtype)
        t_in = torch.tensor(float(t), device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
        groups = {role: [(dropped, c) for (r, dropped), c in plan.items() if r == role] for role in ROLES}
        drops = {role: [d for d, _ in groups[role]] for role in ROLES}
        if self.graphs is None:
            outs, forwards = self._evaluate(x_in, t_in, drops)
        else:
            key = (tuple((r, tuple(sorted(d))) for r in ROLES for d in drops[r]), tuple(x_in.shape), x_in.dtype)
            graphed = self._graphed.get(key)
            if graphed is None:
                graphed = self._graphed[key] = _GraphedBranches(
                    lambda xs, ts: self._evaluate(xs, ts, drops), x_in, t_in, self.graphs
                )
            outs, forwards = graphed(x_in, t_in)
        self.forwards += forwards
        keys, preds, coeffs = [], [], []
        for role in ROLES:
            if not groups[role]:
                continue
            net, _ = self._role(role)
            for (dropped, c), pred in zip(groups[role], outs[role], strict=True):
                if pred.shape != x.shape:
                    raise ValueError(
                        f"{role} model returned shape {tuple(pred.shape)} for input {tuple(x.shape)} "
                        f"(branch {Branch.make(role, sorted(dropped)).key})"
                    )
                if net.prediction is not self.model.prediction:
                    pred = _reexpress(pred, x, net.prediction, self.model.prediction, terms)
                keys.append((role, dropped))
                preds.append(pred)
                coeffs.append(c)
            self.nfe_by_role[role] += len(groups[role])
        self.nfe += len(preds)
        self.calls += 1
        return keys, preds, coeffs

    def _evaluate(
        self, x: torch.Tensor, t: torch.Tensor, drops: dict[str, list[frozenset[str]]]
    ) -> tuple[dict[str, list[torch.Tensor]], int]:
        """Every role's branch outputs for its drop sets (``t`` a 0-d tensor), and the number of forwards run."""
        outs: dict[str, list[torch.Tensor]] = {role: [] for role in ROLES}
        active = [role for role in ROLES if drops[role]]
        if len(active) == 2 and self.batch_branches and getattr(self.bad, "perturbation_of", None) is self.model:
            merged = self._forward_perturbed(x, t, drops)
            if merged is not None:
                return merged, 1
        if self.stack is not None and len(active) == 2 and len(drops["good"]) == len(drops["bad"]):
            stacked = self._forward_stacked(x, t, [drops[r] for r in ROLES])
            if stacked is not None:
                return dict(zip(ROLES, stacked, strict=True)), 1
        forwards = 0
        side = self._side_streams(x) if len(active) == 2 else None
        if side is not None:  # the two models' forwards on two CUDA streams, joined before the combine
            current = torch.cuda.current_stream(x.device)
            for role, stream in zip(active, side, strict=True):
                stream.wait_stream(current)
                with torch.cuda.stream(stream):
                    net, cond = self._role(role)
                    outs[role], n = self._forward(net, x, t, cond, drops[role])
                forwards += n
            for role, stream in zip(active, side, strict=True):
                current.wait_stream(stream)
                for o in outs[role]:
                    o.record_stream(current)
            return outs, forwards
        for role in active:
            net, cond = self._role(role)
            outs[role], n = self._forward(net, x, t, cond, drops[role])
            forwards += n
        return outs, forwards

    def _side_streams(self, x: torch.Tensor) -> list[Any] | None:
        if not (self.streams and x.is_cuda):
            return None
        if self._streams is None:
            self._streams = [torch.cuda.Stream(x.device) for _ in ROLES]
        return self._streams

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Guided x0 estimate at state ``x`` and model time ``t`` (a Python float).

        Linear guidance is combined by :func:`v2a_sampler.kernels.combine` (the fast path); a non-linear one gets
        its branch predictions by branch, in at least float32, through :meth:`Guidance.combine`."""
        terms = self.model.schedule.terms(t)
        keys, preds, coeffs = self._stage(x, t)
        if self.guidance.is_linear:
            guided = combine(preds, coeffs, out_dtype=x.dtype)
        else:
            work = torch.promote_types(x.dtype, torch.float32)
            by_key = {k: p.to(work) for k, p in zip(keys, preds, strict=True)}
            level = terms.noise_level
            by_branch = {b: by_key[self.key(b)] for b in self.guidance.branches(level)}
            step = GuidedStep(x, float(t), level, terms, self.model.prediction, self.state)
            guided = self.guidance.combine(by_branch, step).to(x.dtype)
        return to_x0(self.model.prediction, x, guided, terms)

    def _forward_perturbed(
        self, x: torch.Tensor, t: torch.Tensor, drops: dict[str, list[frozenset[str]]]
    ) -> dict[str, list[torch.Tensor]] | None:
        """The good branches and the branches of a bad model that is a perturbation of the good one (it declares
        ``perturbation_of`` and ``rows(mask)``) in one forward of the shared network, perturbed only on the bad
        rows; None when the conditions do not stack."""
        assert self.bad is not None
        batch, kg, kb = x.shape[0], len(drops["good"]), len(drops["bad"])
        key = ("perturbed", tuple(tuple(tuple(sorted(d)) for d in drops[r]) for r in ROLES), tuple(x.shape),
               x.dtype, str(x.device))  # fmt: skip
        if key not in self._conds:  # built (and prepared) once per engine, as the per-model conditions are
            conds = [self._branch_cond(self.model, self.cond, d) for d in drops["good"]]
            conds += [self._branch_cond(self.bad, self.bad_cond, d) for d in drops["bad"]]
            stacked = self.model.batch_conditions(conds, batch) if hasattr(self.model, "batch_conditions") else None
            if stacked is None or stacked is NotImplemented:
                self._conds[key] = (False, None)
            else:
                xs = x.repeat(kg + kb, *([1] * (x.ndim - 1)))
                prepare = getattr(self.model, "prepare_conditions", None)
                rows = torch.arange(batch * (kg + kb), device=x.device) >= batch * kg
                self._conds[key] = (True, (prepare(stacked, xs) if prepare is not None else stacked, rows))
        ok, payload = self._conds[key]
        if not ok:
            return None
        cond, rows = payload
        xs = x.repeat(kg + kb, *([1] * (x.ndim - 1)))
        with self.bad.rows(rows):
            out = list(self.model(xs, t.repeat(batch * (kg + kb)), cond).split(batch, dim=0))
        return {"good": out[:kg], "bad": out[kg:]}

    def _forward_stacked(
        self, x: torch.Tensor, t: torch.Tensor, drops: list[list[frozenset[str]]]
    ) -> list[list[torch.Tensor]] | None:
        """Both models' branches in one vmapped call over stacked weights, or None if the conditions do not stack."""
        assert self.stack is not None and self.bad is not None
        batch, k = x.shape[0], len(drops[0])
        key = (tuple(tuple(tuple(sorted(d)) for d in ds) for ds in drops), tuple(x.shape), str(x.device))
        if key not in self._stack_conds:  # built once per engine, as the per-model conditions are
            self._stack_conds[key] = self._stacked_conds(batch, drops)
        conds = self._stack_conds[key]
        if conds is None:
            return None
        xs = x.repeat(k, *([1] * (x.ndim - 1)))
        out = self.stack(xs, t.repeat(batch * k), conds)
        return [list(out[i].split(batch, dim=0)) for i in range(2)]

    def _stacked_conds(self, batch: int, drops: list[list[frozenset[str]]]) -> list[Cond] | None:
        """Both models' stacked branch conditions for the vmapped pass, or None if they do not stack alike."""
        conds = []
        for role, ds in zip(ROLES, drops, strict=True):
            net, cond = self._role(role)
            c = net.batch_conditions([self._branch_cond(net, cond, d) for d in ds], batch)
            if c is NotImplemented or (conds and set(c) != set(conds[0])):
                return None
            conds.append(c)
        return conds

    def _forward(
        self, net: Denoiser, x: torch.Tensor, t: torch.Tensor, cond: Cond | None, drops: list[frozenset[str]]
    ) -> tuple[list[torch.Tensor], int]:
        """Predictions of ``net`` for each drop set (one batched forward when the conditions stack, else one
        each), and the number of forwards run."""
        batch = x.shape[0]
        key = (id(net), tuple(tuple(sorted(d)) for d in drops), tuple(x.shape), x.dtype, str(x.device))
        if key not in self._conds:  # branch conditions are fixed for the engine: built (and prepared) once
            self._conds[key] = self._branch_conds(net, cond, drops, x)
        stacked, conds = self._conds[key]
        if stacked:
            k = len(drops)
            xs = x.repeat(k, *([1] * (x.ndim - 1)))
            return list(net(xs, t.repeat(batch * k), conds).split(batch, dim=0)), 1
        t_vec = t.repeat(batch)
        return [net(x, t_vec, c) for c in conds], len(drops)

    def _branch_conds(
        self, net: Denoiser, cond: Cond | None, drops: list[frozenset[str]], x: torch.Tensor
    ) -> tuple[bool, Any]:
        """``(True, stacked condition)`` for one batched forward, else ``(False, [condition per branch])``; each
        passed through the model's ``prepare_conditions(cond, x)`` when it has one (work independent of x, t)."""
        conds = [self._branch_cond(net, cond, d) for d in drops]
        prepare = getattr(net, "prepare_conditions", None)
        if self.batch_branches and len(drops) > 1 and hasattr(net, "batch_conditions"):
            stacked = net.batch_conditions(conds, x.shape[0])
            if stacked is not NotImplemented:
                xs = x.repeat(len(drops), *([1] * (x.ndim - 1)))
                return True, (prepare(stacked, xs) if prepare is not None else stacked)
        return False, [prepare(c, x) if prepare is not None else c for c in conds]


class _GraphedBranches:
    """One plan's branch forwards captured once as a graph and replayed on static input buffers."""

    def __init__(self, run, x: torch.Tensor, t: torch.Tensor, graphs: GraphBackend) -> None:
        self.x, self.t = x.clone(), t.clone()
        graphs.warmup(lambda: run(self.x, self.t))  # caches (rotary tables, workspaces) fill before capture
        self.replay, (self.outs, self.forwards) = graphs.capture(lambda: run(self.x, self.t))

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> tuple[dict[str, list[torch.Tensor]], int]:
        self.x.copy_(x)
        self.t.copy_(t)
        self.replay()  # also right after capture: capturing records the kernels without running them
        return self.outs, self.forwards


class GraphBackend:
    """How branch forwards are captured and replayed (``cuda_graph=True`` uses :class:`CudaGraphs`)."""

    def warmup(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` as many times as capture needs beforehand."""
        raise NotImplementedError

    def capture(self, fn: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        """Capture ``fn``; returns ``(replay, outputs)`` where ``replay()`` recomputes ``outputs`` in place."""
        raise NotImplementedError


class CudaGraphs(GraphBackend):
    """CUDA graphs sharing one memory pool; warm-up on a side stream as CUDA graph capture requires."""

    WARMUP_RUNS = 2  # eager runs on a side stream before capture (lazy inits, cuBLAS workspaces)

    def __init__(self) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("cuda_graph=True needs CUDA")
        self.pool = torch.cuda.graph_pool_handle()

    def warmup(self, fn: Callable[[], Any]) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(self.WARMUP_RUNS):
                fn()
        torch.cuda.current_stream().wait_stream(stream)

    def capture(self, fn: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn()
        return graph.replay, out


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
