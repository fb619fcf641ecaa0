"""Optimizer statistics on sampled steps: gradient norms, update ratios, parameter states, stale gradients."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from muvo_doctor.recorder.modules import NAME_STEPS, _module_of

# Update ratios compare each parameter with a pre-step copy of (at most) its first elements:
# this many elements in total, spread over the tensors (a 792k model is copied whole).
DEFAULT_SNAPSHOT_ELEMS = 1 << 24


def _head(p: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` elements of ``p`` in memory order: a view when ``p`` is dense in memory."""
    d = p.detach()
    if d.is_contiguous():
        flat = d.view(-1)
    elif d.dim() == 4 and d.is_contiguous(memory_format=torch.channels_last):
        flat = d.permute(0, 2, 3, 1).reshape(-1)  # a view: NHWC order is the memory order
    else:
        flat = d.reshape(-1)  # a copy; re-taken after the step, so still correct
    return flat if flat.numel() <= k else flat[:k]


# float32's largest value: a per-parameter norm whose square exceeds it summed to inf on the device
# before the sums moved to the host; kept, so a huge gradient still reads inf.
_F32_MAX = 3.4028234663852886e38


def _sq(v: float) -> float:
    s = v * v
    return math.inf if s > _F32_MAX else s


def _grad_values(norms: list[float], layout: tuple[tuple[int, ...], int]) -> list[float]:
    """Per-module gradient norms, the total and the count of non-finite tensors, from per-parameter norms."""
    mods, m = layout
    per = [0.0] * m
    total = 0.0
    bad = 0
    for i, v in zip(mods, norms, strict=True):
        if not math.isfinite(v):
            bad += 1
        s = _sq(v)
        per[i] += s
        total += s
    return [*(math.sqrt(x) for x in per), math.sqrt(total), float(bad)]


def _update_values(vals: list[float], layout: tuple[Any, ...]) -> list[float]:
    """Update ratios per module and in total, then frozen fractions, from per-parameter norms.

    ``vals`` holds ||update|| for each parameter, then ||weight|| before the step. Frozen: trainable
    elements whose (sampled part of the) tensor did not move this step.
    """
    mods, m, req, mod_req, n_missing, n_train = layout
    n = len(mods)
    up = [0.0] * (m + 1)
    wt = [0.0] * (m + 1)
    still = [0.0] * (m + 1)
    for i, d, w, r in zip(mods, vals[:n], vals[n:], req, strict=True):
        up[i] += _sq(d)
        wt[i] += _sq(w)
        if d == 0:
            still[i] += r
    up[m], wt[m], still[m] = sum(up[:m]), sum(wt[:m]), sum(still[:m])
    ratio = [math.sqrt(a) / max(math.sqrt(b), 1e-12) for a, b in zip(up, wt, strict=True)]
    return [*ratio, (still[m] + n_missing) / n_train, *(still[i] / mod_req[i] for i in range(m))]


class _OptState:
    """What the recorder knows about one optimizer: its parameters, their modules, its step count."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt = opt
        self.count = 0  # completed optimizer steps
        self.signature: tuple[int, ...] = ()
        self.params: list[torch.Tensor] = []
        self.group_of: list[int] = []
        self.module_of: list[int] = []
        self.modules: list[str] = []
        self.numel: list[int] = []
        self.req: dict[tuple[bool, ...], tuple[float, ...]] = {}  # trainable elements per parameter
        self.sampled = False
        self.snap_k: list[int] = []
        self.whole = True
        self.mod_req: dict[tuple[bool, ...], tuple[float, ...]] = {}  # ... per module (at least 1)
        self.before: list[torch.Tensor] | None = None  # the snapshot while a sampled step runs
        self.before_norms: list[torch.Tensor] = []  # ||head|| before the step, (P,) 0-d tensors
        # Snapshot buffers, allocated once per inventory (at most snapshot_elems elements): a fresh
        # copy per sample costs an allocation, and on the CPU page faults, every time.
        self.snap: list[torch.Tensor] | None = None
        self.grad_names: tuple[str, ...] = ()
        self.n_opts = 0  # optimizers known when the inventory was built
        self.update_names: tuple[str, ...] = ()
        self.outside: list[torch.Tensor] = []  # model parameters in no optimizer (any requires_grad)
        self.closure = False  # the step in progress was called with a closure (gradients come inside it)

    def current_signature(self) -> tuple[int, ...]:
        return tuple(len(g["params"]) for g in self.opt.param_groups)


class OptimizerStats:
    """The Recorder's part behind the optimizer step hooks: the parameter table of each optimizer and
    the statistics measured around a sampled step."""

    def _init_optimizer_stats(self) -> None:
        self._opts: dict[int, _OptState] = {}
        self._primary: _OptState | None = None
        self._stale_probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self._probe_handle: RemovableHandle | None = None

    def _attach(self, opt: torch.optim.Optimizer) -> _OptState:
        st = self._opts.get(id(opt))
        if st is None:
            st = self._opts[id(opt)] = _OptState(opt)
            if self._primary is None:
                self._primary = st
                if self._discovery_suspended:  # a program that ran forwards for long before training
                    self._discovery_suspended = False
                    self._install_discovery()
        return st

    def _inventory(self, st: _OptState) -> None:
        """(Re)build the parameter -> module table of an optimizer; only when its groups change."""
        sig = st.current_signature()
        if (
            sig == st.signature
            and st.params
            and self._roots_named == len(self._roots)
            and st.n_opts == len(self._opts)
        ):
            return
        st.n_opts = len(self._opts)
        if self.is_global:
            self._name_from_roots()
            self._roots_named = len(self._roots)
        st.signature = sig
        st.params, st.group_of, st.module_of, st.modules, st.numel = [], [], [], [], []
        mod_index: dict[str, int] = {}
        for gi, g in enumerate(st.opt.param_groups):
            for pj, p in enumerate(g["params"]):
                name = self._names.get(id(p))
                mod = _module_of(name) if name is not None else f"group{gi}.param{pj}"
                if mod not in mod_index:
                    mod_index[mod] = len(st.modules)
                    st.modules.append(mod)
                st.params.append(p)
                st.group_of.append(gi)
                st.module_of.append(mod_index[mod])
                st.numel.append(p.numel())
        st.grad_names = tuple(f"grad/norm/{m}" for m in st.modules) + ("grad/norm/total", "nonfinite/grad")
        st.update_names = (
            tuple(f"update/ratio/{x}" for x in st.modules)
            + ("update/ratio/total", "param/frozen")
            + tuple(f"param/frozen/{x}" for x in st.modules)
        )
        # Trainable-parameter candidates outside every optimizer: rebuilt with the inventory, not per sample.
        in_opt = {id(p) for o in self._opts.values() for g in o.opt.param_groups for p in g["params"]}
        sources = [self.model] if self.model is not None else self._roots
        seen: set[int] = set()
        st.outside = []
        for m in sources:
            for p in m.parameters():
                if id(p) not in in_opt and id(p) not in seen:
                    seen.add(id(p))
                    st.outside.append(p)
        st.req = {}
        st.mod_req = {}
        budget = self.snapshot_elems
        per = max(1024, budget // max(1, len(st.params)))
        st.snap_k = [min(n, per) for n in st.numel]
        st.whole = all(k == n for k, n in zip(st.snap_k, st.numel, strict=True))
        st.snap = None

    def _on_pre_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        st = self._opts.get(id(opt)) or self._attach(opt)
        if self._discovery_due:
            self._start_loss_discovery()
        # optimizer.step(closure) (Lightning, LBFGS): the closure runs the forward, the loss and backward
        # inside the step, after this hook; gradients, parameter states and the loss belong after it.
        # (args[0] is the optimizer itself: torch's hook wrapper passes the step's full argument list.)
        st.closure = callable(kwargs.get("closure", args[1] if len(args) > 1 else None))
        if st is self._primary:
            st.sampled = self._sample_due(st.count)
            if st.sampled:
                self._sampled_count = st.count
        else:  # other optimizers follow the primary's schedule
            st.sampled = self._sampled_count is not None
        if not st.sampled:
            return
        with torch.no_grad():  # hooks run in the caller's grad mode; parameters require grad
            self._pre_step_sample(st)

    def _pre_step_sample(self, st: _OptState) -> None:
        self._inventory(st)
        if not st.params:
            return
        step = self.step if self.is_global else None
        if not st.closure:  # with a closure: measured in the post-hook, once the closure made them
            self._grad_stats(st, step)
            self._param_states(st, step)
        # Pre-step copy for the update ratio and the norms it divides by: grouped kernels over all tensors.
        heads = self._heads(st)
        if st.snap is None:
            st.snap = [torch.empty_like(h) for h in heads]
        torch._foreach_copy_(st.snap, heads)
        st.before_norms = list(torch._foreach_norm(heads))
        st.before = st.snap

    def _on_post_step(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Explicit mode, from the step before a sampled step until it is recorded (else ``_counter``)."""
        self._after_step(self._opts.get(id(opt)) or self._attach(opt))

    def _after_step(self, st: _OptState) -> None:
        """One optimizer step taken: its statistics when it was sampled, and one count."""
        if st.sampled:
            self._post_step_sample(st)
            st.sampled = False  # the pre-hook that sets it runs only around samples
        st.count += 1

    def _counter(self, st: _OptState) -> Callable[..., None]:
        """Explicit mode's post-hook between samples: one count, no other work (it runs every step)."""

        def count(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            st.count += 1

        return count

    def _on_post_step_global(self, opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        st = self._opts.get(id(opt)) or self._attach(opt)
        if st is not self._primary:  # other optimizers: their statistics on the primary's sampled steps
            self._after_step(st)
            return
        # The step's loss and loss-call statistics; after the step, so a closure's calls are this step's.
        self._close_loss_calls(st.count)
        sampled = st.sampled
        self._after_step(st)
        self._depth = 0  # a forward that raised never ran its post-hook
        if self._discovery_handles and st.count >= self._discovery_steps:
            # Global hooks stay (up to NAME_STEPS steps) until every parameter has a module name.
            if st.count >= NAME_STEPS or self._all_named(st):
                self._end_discovery()
        self._end_step(st.count - 1 if sampled else None)
        if (st.count + 1 >= self._next_sample) != self._armed:
            self._sync_step_hooks()

    def _post_step_sample(self, st: _OptState) -> None:
        """A sampled step's statistics measured after ``optimizer.step()``."""
        if st.before is None:
            return
        step = self.step if self.is_global else None
        with torch.no_grad():
            if st.closure:
                self._grad_stats(st, step)
                self._param_states(st, step)
            self._update_stats(st, step)
            self._arm_probe(st)
        st.before = None

    def _heads(self, st: _OptState) -> list[torch.Tensor]:
        # Whole tensors when they fit the snapshot budget (no view ops: host time is the cost here).
        if st.whole:
            return st.params
        return [p if p.numel() <= k else _head(p, k) for p, k in zip(st.params, st.snap_k, strict=True)]

    def _grad_stats(self, st: _OptState, step: int | None) -> None:
        grads: list[torch.Tensor] = []
        mods: list[int] = []
        for p, mi in zip(st.params, st.module_of, strict=True):
            g = p.grad
            if g is not None and not g.is_sparse:
                grads.append(g)
                mods.append(mi)
        if not grads:
            return
        # Per-parameter norms in one grouped kernel; the per-module sums are host arithmetic at the
        # flush (a dozen small kernels fewer per sample). A non-finite norm counts a gradient tensor
        # holding a NaN/Inf: an exact element count would cost another pass over every gradient.
        norms = torch.stack(torch._foreach_norm(grads)).float()  # (P',)
        self._append(step, st.grad_names, norms, "grad", (tuple(mods), len(st.modules)))

    def _trainable(self, st: _OptState) -> tuple[list[torch.Tensor], int]:
        """Model parameters that require grad but are in no optimizer (explicit: the model; global: roots)."""
        missing = [p for p in st.outside if p.requires_grad]
        return missing, sum(p.numel() for p in missing)

    def _param_states(self, st: _OptState, step: int | None) -> None:
        # Host-only bookkeeping (flags and floats the host already has): no device work.
        missing, n_missing = self._trainable(st)
        n_train = n_missing
        n_nograd = n_zero_lr = 0
        tensor_lr: torch.Tensor | None = None
        for p, gi, n in zip(st.params, st.group_of, st.numel, strict=True):
            if not p.requires_grad:
                continue
            n_train += n
            if p.grad is None:
                n_nograd += n
            lr = st.opt.param_groups[gi].get("lr", None)
            if isinstance(lr, (int, float)) and lr == 0:
                n_zero_lr += n
        lr0 = st.opt.param_groups[0].get("lr", None) if st.opt.param_groups else None
        names: list[str] = []
        vals: list[float] = []
        if isinstance(lr0, (int, float)):
            names.append("optim/lr")
            vals.append(float(lr0))
        elif isinstance(lr0, torch.Tensor):
            tensor_lr = lr0
        if n_train:
            names += ["param/no_grad", "param/not_in_optimizer", "param/zero_lr"]
            vals += [n_nograd / n_train, n_missing / n_train, n_zero_lr / n_train]
        if names:
            self._append_host(step, tuple(names), vals)
        if tensor_lr is not None:
            self._append(step, ("optim/lr",), tensor_lr.detach().float().reshape(1))
        st._n_train = n_train  # type: ignore[attr-defined]
        st._missing = missing  # type: ignore[attr-defined]

    def _update_stats(self, st: _OptState, step: int | None) -> None:
        before = st.before
        assert before is not None
        torch._foreach_sub_(before, self._heads(st))  # before - after, in the snapshot buffer
        # (2P,): ||update|| then ||w|| per parameter; the per-module sums are host arithmetic at the flush.
        both = torch.stack([*torch._foreach_norm(before), *st.before_norms]).float()
        m = len(st.modules)
        flags = tuple(p.requires_grad for p in st.params)
        req = st.req.get(flags)
        if req is None:  # per requires_grad pattern, not per sample
            req = st.req[flags] = tuple(float(n) if f else 0.0 for f, n in zip(flags, st.numel, strict=True))
            per_mod = [0.0] * m
            for i, r in zip(st.module_of, req, strict=True):
                per_mod[i] += r
            st.mod_req[flags] = tuple(max(x, 1.0) for x in per_mod)
        missing: list[torch.Tensor] = getattr(st, "_missing", [])
        n_train = getattr(st, "_n_train", 0) or 1
        n_missing = sum(p.numel() for p in missing)
        layout = (st.module_of, m, req, st.mod_req[flags], n_missing, n_train)
        self._append(step, st.update_names, both, "update", layout)
        # Modules entirely outside this optimizer never move.
        outside = sorted({_module_of(self._names.get(id(p), "?")) for p in missing} - set(st.modules))
        if outside:
            self._append_host(step, tuple(f"param/frozen/{x}" for x in outside), [1.0] * len(outside))

    def _arm_probe(self, st: _OptState) -> None:
        """Remember the first gradient present right after a sampled step (the stale-gradient probe).

        A gradient hook on that parameter runs at the next backward, before the new gradient is
        accumulated: if the old gradient is still there, unchanged, nobody called ``zero_grad``.
        Checking at backward (not at forward) accepts ``forward; zero_grad; backward`` loops.
        """
        for p in st.params:
            if p.grad is not None and not p.grad.is_sparse and p.requires_grad:
                self._disarm_probe()
                # Hooked only while armed: no Python call in the backward of unsampled steps.
                self._probe_handle = p.register_hook(self._guard(self._on_probe_grad(p)))
                self._stale_probe = (p, torch.linalg.vector_norm(p.grad.detach()).float())
                return

    def _disarm_probe(self) -> None:
        if self._probe_handle is not None:
            self._probe_handle.remove()
            self._probe_handle = None
        self._stale_probe = None

    def _on_probe_grad(self, p: torch.Tensor) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            probe = self._stale_probe
            if probe is None or probe[0] is not p:
                return
            self._disarm_probe()
            step = self.step if self.is_global else None
            if p.grad is None:  # zero_grad(set_to_none=True): the host knows, no device work
                self._append_host(step, ("grad/stale",), [0.0])
                return
            now = torch.linalg.vector_norm(p.grad.detach()).float()
            # Still the same non-zero gradient as right after the step: nobody zeroed it.
            stale = ((now == probe[1]) & (probe[1] > 0)).float().reshape(1)
            self._append(step, ("grad/stale",), stale)

        return hook
