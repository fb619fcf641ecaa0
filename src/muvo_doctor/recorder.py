"""In-process recorder: a PyTorch training loop in, observations out, one host sync per flush.

Public API, stable:
    rec = Recorder(model, optimizer, doctor=doctor)      # or: with watch(model, optimizer) as rec:
    rec.record(step, loss=loss, outputs=logits, labels=y)  # every step; no host sync here
    rec.flush()                                            # bring stats to the host, feed the doctor
    rec.close()
    rec = Recorder.install_global(sink=..., rank=...)      # no model: global hooks (the `run` wrapper)
    rec.observe_loss_call("cross_entropy", input, target, output)

How it stays cheap:
- Official hooks only: ``optimizer.register_step_pre_hook`` / ``register_step_post_hook`` (or their
  global versions), forward hooks on loss modules (found by a global forward hook in the first steps).
- Between samples the hooks only count: the optimizer pre-hook (and, in explicit mode, the loss-module
  hooks) are registered from the step before a sampled step until it is recorded; the post-hook adds
  one to a counter (global mode: and keeps a reference to the step's loss).
- The loss costs no kernel per step: a reference to it (detached) is kept, and every 256 of them are
  stacked into one device tensor.
- Everything else (gradient norms, update ratios, parameter states, outputs, labels) runs on sampled
  steps only, every ``sample_every`` optimizer steps or as the adaptive schedule decides, with
  ``torch._foreach_norm`` over all tensors at once. Per-module sums of per-parameter norms are host
  arithmetic at the flush; the pre-step snapshot for update ratios lives in buffers allocated once.
- Every statistic is a device tensor appended to one flat device buffer (a ``copy_`` into a
  ``narrow`` view); the host keeps the layout. A flush does one ``tolist()`` of the used part.
- Nothing in a hook reads a device value on the host (no ``.item()``, ``bool(tensor)``,
  ``nonzero()``); data-dependent decisions (probabilities or logits, classes present) are made
  with ``torch.where`` on the device or on the host after the flush.
- Any exception inside the recorder is reported once on stderr and disables it (fail open).
"""

from __future__ import annotations

import atexit
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.modules.module as _module_hooks
import torch.optim.optimizer as _optim_hooks
from torch.utils.hooks import RemovableHandle

from muvo_doctor.core.config import DoctorConfig
from muvo_doctor.core.doctor import Doctor
from muvo_doctor.core.observation import Observation

Sink = Callable[[list[Observation]], None]

# Heavy statistics every N optimizer steps unless the config sets sample_every explicitly:
# measured overhead (bench/overhead.py) stays under 1% of a step at this rate.
DEFAULT_SAMPLE_EVERY = 10
# Sampled work at most 0.3% of the step time (adaptive schedule). Was 0.5% when a sample cost ~1.6x more
# (module sums on the device, a fresh snapshot each time): about the same sampling gap, less overhead.
DEFAULT_OVERHEAD_BUDGET = 0.003
MAX_SAMPLE_GAP = 200  # ... but a sample at least every 200 steps
# Update ratios compare each parameter with a pre-step copy of (at most) its first elements:
# this many elements in total, spread over the tensors (a 792k model is copied whole).
DEFAULT_SNAPSHOT_ELEMS = 1 << 24
MAX_CLASSES = 100  # label/fraction/<k> for k < 100; larger class ids are not histogrammed
SATURATED_LOGIT = 6.0  # |logit| above this counts as saturated
SATURATED_PROB = 1e-3  # a probability this close to 0 or 1 counts as saturated
# Global mode: module calls seen with no optimizer step before the global forward hooks are
# removed (re-installed when an optimizer first steps): inference-only programs stay fast.
IDLE_FORWARDS = 20_000
# Global mode keeps its forward hooks past the discovery steps while some optimizer parameter has no
# module name (the model was not called yet), up to this many optimizer steps.
NAME_STEPS = 50
MAX_ROOTS = 16  # top-level modules remembered for naming parameters
_BUFFER_START = 4096  # floats in the device buffer; doubles as needed up to _BUFFER_MAX
_LOSS_CHUNK = 256  # per-step loss references stacked into one device tensor at a time
_BUFFER_MAX = 1 << 22

_LOSS_KINDS = {
    "BCEWithLogitsLoss": "bce_with_logits",
    "CrossEntropyLoss": "cross_entropy",
    "BCELoss": "bce",
    "NLLLoss": "nll",
    "MSELoss": "mse",
}
_LOGIT_KINDS = ("bce_with_logits", "cross_entropy")
_CLASS_KINDS = ("cross_entropy", "nll")
# Autograd nodes that only scale one loss (GradScaler, accumulation's loss / k, a mean of a
# reduction="none" loss): backward() through them still optimises that loss call.
_SCALE_NODES = ("MulBackward0", "DivBackward0", "MeanBackward0")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


_OBS_FIELDS = frozenset(("name", "step", "value", "digits", "rank"))


def _fast_obs(name: str, step: int, value: float, rank: int | None) -> Observation:
    """``Observation.model_construct`` without its per-call field walk (about 6 µs less per observation).

    The values are known to be valid (names built here, ints and floats); checked against
    ``model_construct`` once at import, else ``model_construct`` is used.
    """
    o = object.__new__(Observation)
    object.__setattr__(
        o, "__dict__", {"name": name, "step": step, "value": value, "digits": None, "rank": rank}
    )
    object.__setattr__(o, "__pydantic_fields_set__", _OBS_FIELDS)
    object.__setattr__(o, "__pydantic_extra__", None)
    object.__setattr__(o, "__pydantic_private__", None)
    return o


def _slow_obs(name: str, step: int, value: float, rank: int | None) -> Observation:
    return Observation.model_construct(name=name, step=step, value=value, digits=None, rank=rank)


try:
    _probe = _fast_obs("train/loss", 1, 0.5, None)
    _ok = _probe == _slow_obs("train/loss", 1, 0.5, None) and _probe.model_dump() == {
        "name": "train/loss", "step": 1, "value": 0.5, "digits": None, "rank": None
    }  # fmt: skip
except Exception:
    _ok = False
_make_obs = _fast_obs if _ok else _slow_obs


def _stack_losses(refs: list[torch.Tensor]) -> torch.Tensor:
    """One float32 vector of one-element losses (one kernel when they share a shape and dtype)."""
    try:
        return torch.stack(refs).reshape(-1).float()
    except RuntimeError:  # shapes () and (1,) mixed, or losses on two devices
        dev = refs[-1].device
        return torch.cat([r.reshape(1).float().to(dev) for r in refs])


def _strip(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for pre in _WRAPPER_PREFIXES:
            if name.startswith(pre):
                name, changed = name[len(pre) :], True
    return name


def _module_of(param_name: str) -> str:
    # A parameter owned by the root module is its own "module" (e.g. ``pos_emb``).
    return param_name.rsplit(".", 1)[0] if "." in param_name else param_name


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


class _Row:
    """Host-side layout of one appended block of the device buffer (or of host values)."""

    __slots__ = ("step", "names", "pos", "n", "kind", "host", "layout")

    def __init__(
        self,
        step: int | None,
        names: tuple[str, ...],
        pos: int,
        n: int,
        kind: str,
        host: list[float] | None = None,
        layout: Any = None,
    ) -> None:
        self.step = step
        self.names = names
        self.pos = pos
        self.n = n
        # "plain", "binary" (positive fraction first), "classes" (counts), "loss", and per-parameter
        # norms the flush sums per module on the host: "grad" (_grad_values), "update" (_update_values).
        self.kind = kind
        self.host = host
        self.layout = layout  # what the host needs to turn a "grad" or "update" row into its names' values


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


class Recorder:
    """Turns a training loop into observations for a :class:`~muvo_doctor.core.doctor.Doctor` and/or a sink.

    Args:
        model: the model being trained; ``None`` only for the global recorder.
        optimizer: its optimizer; gradient norms, update ratios and parameter states need it.
        doctor: the doctor fed at each flush; a new one is made when neither a doctor nor a sink
            is given (explicit mode always has one, as ``rec.doctor``).
        config: sampling and flushing (``sample_every``, ``flush_every``, ``flush_seconds``).
        sink: called at each flush with the new observations (the ``run`` wrapper streams them).
        rank: process rank under torchrun, stamped on every observation.
        sample_every: overrides ``config.sample_every``; when neither sets it explicitly,
            heavy statistics run every ``DEFAULT_SAMPLE_EVERY`` optimizer steps.
        snapshot_elems: at most this many parameter elements are copied before a sampled step
            to measure update ratios (larger tensors contribute their first elements).
        overhead_budget: with the default schedule, the fraction of step time the sampled
            statistics may take on the host (measured, not assumed).
    """

    def __init__(
        self,
        model: torch.nn.Module | None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        doctor: Doctor | None = None,
        config: DoctorConfig | None = None,
        sink: Sink | None = None,
        rank: int | None = None,
        sample_every: int | None = None,
        snapshot_elems: int = DEFAULT_SNAPSHOT_ELEMS,
        overhead_budget: float = DEFAULT_OVERHEAD_BUDGET,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.config = config or (doctor.config if doctor is not None else DoctorConfig())
        if doctor is None and (model is not None or sink is None):
            doctor = Doctor(self.config)
        self.doctor = doctor
        self.sink = sink
        self.rank = rank
        # An explicit sample_every (keyword or config) is a fixed schedule; otherwise the interval
        # starts at DEFAULT_SAMPLE_EVERY and grows so the sampled work stays within overhead_budget.
        self.adaptive = sample_every is None and "sample_every" not in self.config.model_fields_set
        if sample_every is None:
            sample_every = DEFAULT_SAMPLE_EVERY if self.adaptive else self.config.sample_every
        if not 0 < overhead_budget < 1:
            raise ValueError(f"overhead_budget must be in (0, 1), got {overhead_budget}")
        self.overhead_budget = float(overhead_budget)
        if sample_every < 1:
            raise ValueError(f"sample_every must be >= 1, got {sample_every}")
        if snapshot_elems < 1:
            raise ValueError(f"snapshot_elems must be >= 1, got {snapshot_elems}")
        self.sample_every = int(sample_every)
        self.flush_every = max(1, int(self.config.flush_every))
        self.snapshot_elems = int(snapshot_elems)
        self.is_global = False

        self._handles: list[RemovableHandle] = []
        self._disabled = False
        self._closed = False
        self._sink_failed = False
        # Device buffer and its host-side layout.
        self._buf: torch.Tensor | None = None
        self._pos = 0
        self._rows: list[_Row] = []
        self._unlabeled: list[_Row] = []
        self._sampled_since_flush = 0
        self._last_flush = time.perf_counter()
        self._flush_seconds = float(self.config.flush_seconds)
        # Host state carried across flushes.
        self._classes_seen: set[int] = set()
        self._binary_seen: set[int] = set()
        self._flushed: list[Observation] = []
        # Step bookkeeping.
        self._records = 0
        self._next_sample = 0  # counter value (optimizer steps, or records without optimizer) to sample next
        self._sampled_count: int | None = None  # counter of the sampled step in progress
        self._cost = 0.0  # host seconds the recorder spent on the sampled step in progress (and flushes)
        self._n_samples = 0
        self._step_time: float | None = None  # EMA of wall seconds per unsampled step
        self._last_tick: float | None = None
        self._loss_refs: list[torch.Tensor] = []
        self._loss_chunks: list[torch.Tensor] = []
        self._loss_steps: list[int] = []
        self._loss_host: list[tuple[int, float]] = []
        self._next_step = 0
        self._opts: dict[int, _OptState] = {}
        self._primary: _OptState | None = None
        self._names: dict[int, str] = {}  # id(param) -> dotted parameter name
        self._stale_probe: tuple[torch.Tensor, torch.Tensor] | None = None
        self._probe_handle: RemovableHandle | None = None
        # Global mode.
        self._roots: list[torch.nn.Module] = []
        self._depth = 0  # module forwards in progress (global discovery): depth 0 calls are roots
        # Loss calls of the step in progress: the main one is the call with the fewest target elements
        # (the first on ties), e.g. the frame loss of ``frame_bce + 0.5 * point_bce``.
        self._main_loss: torch.Tensor | None = None  # its value (global mode)
        self._main_size = math.inf  # its target's element count
        self._main_set = False
        self._call_outs: list[torch.Tensor] = []  # every loss call's output (their autograd nodes, lazily)
        self._step_backward: torch.Tensor | None = None  # last backward() tensor of the step
        self._step_formula = False  # a backward() tensor combined several loss calls (or none)
        self._last_loss_out: torch.Tensor | None = None
        self._pending: dict[str, tuple[tuple[str, ...], torch.Tensor, str]] = {}
        self._loss_modules_by_step: list[set[int]] = []
        self._loss_module_objs: dict[int, torch.nn.Module] = {}
        self._discovery_handles: list[RemovableHandle] = []
        # Loss modules found by the discovery. Explicit mode hooks them only around sampled steps (their
        # inputs are sampled statistics): a module with a forward hook takes torch's slower call path.
        self._loss_modules: list[torch.nn.Module] = []
        self._loss_handles: list[RemovableHandle] = []
        self._pre_handle: RemovableHandle | None = None  # explicit mode: the optimizer pre-hook while armed
        self._armed = True  # step hooks on (the first step is sampled)
        self._register_pre: Callable[[Callable[..., Any]], RemovableHandle] | None = None
        self._pre_hook: Callable[..., Any] | None = None
        self._discovery_steps = 0
        self._discovery_due = False  # explicit mode: loss-module discovery starts at the first step
        self._discovery_start = 0
        self._discovery_suspended = False
        self._idle_forwards = 0
        self._roots_named = 0  # roots named when the parameter table was last built
        self._roots_scanned = 0  # roots named by the discovery's all-named test

        if model is not None:
            for n, p in model.named_parameters():
                self._names.setdefault(id(p), _strip(n))
            # Loss modules (``nn.BCEWithLogitsLoss``...) live outside the model: from the first record
            # (or optimizer step) on, a global forward hook finds them for 3 steps, then hooks on the
            # modules found replace it. Not at construction: a Recorder never used leaves no global hook.
            self._discovery_steps = 3
            self._discovery_due = True
        if optimizer is not None:
            self._attach(optimizer)
            self._arm_pre_hook(optimizer.register_step_pre_hook)
            self._handles.append(optimizer.register_step_post_hook(self._guard(self._on_post_step)))

    # ------------------------------------------------------------------ public API

    @classmethod
    def install_global(
        cls,
        *,
        config: DoctorConfig | None = None,
        sink: Sink | None = None,
        rank: int | None = None,
        doctor: Doctor | None = None,
        sample_every: int | None = None,
        discovery_steps: int = 3,
    ) -> Recorder:
        """Record every optimizer and loss module in this process, with no model at hand.

        Uses the global optimizer step hooks to find optimizers and their parameters, and global
        module forward hooks for ``discovery_steps`` optimizer steps to name parameters (through
        the modules that ran) and to find loss modules. After that the global forward hooks are
        replaced by hooks on the modules found (global hooks slow every module call), unless
        the program makes a new loss module every step.

        Returns:
            The recorder; ``close()`` removes every hook and flushes.
        """
        rec = cls(None, None, config=config, sink=sink, rank=rank, doctor=doctor, sample_every=sample_every)
        rec.is_global = True
        rec._discovery_steps = max(1, int(discovery_steps))
        rec._arm_pre_hook(_optim_hooks.register_optimizer_step_pre_hook)
        rec._handles.append(_optim_hooks.register_optimizer_step_post_hook(rec._guard(rec._on_post_step)))
        rec._install_discovery()
        atexit.register(rec.close)
        return rec

    def _arm_pre_hook(self, register: Callable[[Callable[..., Any]], RemovableHandle]) -> None:
        self._register_pre = register
        self._pre_hook = self._guard(self._on_pre_step)
        self._pre_handle = register(self._pre_hook)
        self._handles.append(self._pre_handle)

    def _install_discovery(self, roots: bool = True) -> None:
        self._idle_forwards = 0
        self._discovery_handles = [
            _module_hooks.register_module_forward_hook(self._guard(self._on_any_forward))
        ]
        if roots:  # global mode: the first module called after a step is a model to name parameters from
            self._discovery_handles.append(
                _module_hooks.register_module_forward_pre_hook(self._guard(self._on_any_forward_pre))
            )
        self._handles.extend(self._discovery_handles)

    def _remove_discovery(self) -> None:
        for h in self._discovery_handles:
            h.remove()
            if h in self._handles:
                self._handles.remove(h)
        self._discovery_handles = []

    @property
    def step(self) -> int:
        """The step the next observations will carry (optimizer steps in global mode)."""
        if self._primary is not None and self.is_global:
            return self._primary.count
        return self._next_step

    @property
    def enabled(self) -> bool:
        """False once closed or disabled by an internal error."""
        return not (self._disabled or self._closed)

    def record(
        self,
        step: int,
        *,
        loss: torch.Tensor | float,
        outputs: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """Record one training step; call it after ``optimizer.step()``. No host sync.

        Args:
            step: the optimizer step (labels every observation of this step).
            loss: the training loss (a tensor on any device, or a float).
            outputs: model outputs of the batch, e.g. logits (N,) binary or (N, K) multiclass.
            labels: the batch's labels: float/bool (binary) or class indices (multiclass).
        """
        if self._disabled or self._closed:
            return
        try:
            self._record(step, loss, outputs, labels)
        except Exception as exc:
            self._fail(exc)

    def observe_loss_call(
        self, kind: str, input: torch.Tensor, target: torch.Tensor | None, output: torch.Tensor
    ) -> None:
        """See one call of a loss function (global mode; the bootstrap's wrapped functional losses).

        Args:
            kind: ``bce_with_logits``, ``cross_entropy``, ``bce``, ``nll``, ``mse`` or another name.
            input: the loss input (logits, probabilities or log-probabilities).
            target: the loss target, if any.
            output: the loss value the call returned.
        """
        if not self.enabled:
            return
        try:
            self._observe_loss(kind, input, target, output)
        except Exception as exc:
            self._fail(exc)

    def observe_backward(self, loss: torch.Tensor) -> None:
        """See the tensor ``backward()`` was called on (global mode; the bootstrap's patched backward).

        It is ``train/loss`` for steps without a loss-function call (a loss written as a formula).
        A loss call wins when there is one: under AMP the backward tensor is the loss times the
        gradient scale.
        """
        if self._disabled or self._closed or not isinstance(loss, torch.Tensor):
            return
        try:
            n = loss.numel()
            if n == 0:
                return
            # Detached when the step closes: the reference ends with the step.
            self._step_backward = loss if n == 1 else loss.detach().float().mean()
            if (
                not self._step_formula
                and loss is not self._last_loss_out  # backward() on the loss call's output itself
                and not self._from_loss_call(loss.grad_fn)
            ):
                self._step_formula = True
        except Exception as exc:
            self._fail(exc)

    def flush(self) -> list[Observation]:
        """Bring every pending statistic to the host (one sync), feed the doctor and the sink.

        Returns:
            The observations of this flush.
        """
        if self._disabled:
            return []
        try:
            return self._flush()
        except Exception as exc:
            self._fail(exc)
            return []

    def close(self) -> None:
        """Flush and remove every hook. Safe to call twice."""
        if self._closed:
            return
        if not self._disabled:
            try:
                if self.is_global:
                    self._close_global_step()
            except Exception as exc:
                self._fail(exc)
            self.flush()
            if self.doctor is not None:
                try:
                    self.doctor.evaluate()  # the final evaluation: the steps after the last grid step
                except Exception as exc:
                    self._fail(exc)
        self._closed = True
        self._remove_hooks()
        if self.is_global:
            atexit.unregister(self.close)

    # ------------------------------------------------------------------ failure handling

    def _guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def hook(*args: Any, **kwargs: Any) -> None:
            if self._disabled or self._closed:
                return None
            try:
                fn(*args, **kwargs)
            except Exception as exc:
                self._fail(exc)
            return None  # hooks never change the training's arguments or outputs

        return hook

    def _fail(self, exc: BaseException) -> None:
        if self._disabled:
            return
        self._disabled = True
        self._remove_hooks()
        try:
            print(
                f"muvo-doctor: recorder failed and is disabled ({exc!r}); training continues unmonitored",
                file=sys.stderr,
            )
        except Exception:
            pass

    def _remove_hooks(self) -> None:
        self._disarm_probe()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._discovery_handles = []
        self._loss_handles = []
        self._pre_handle = None

    # ------------------------------------------------------------------ device buffer

    def _append(
        self,
        step: int | None,
        names: tuple[str, ...],
        values: torch.Tensor,
        kind: str = "plain",
        layout: Any = None,
    ) -> None:
        """Append a 1-D block of statistics to the device buffer; no sync."""
        n = values.numel()
        if self._buf is None:
            self._buf = torch.empty(_BUFFER_START, dtype=torch.float32, device=values.device)
        if values.device != self._buf.device:
            if values.device.type == "cpu":  # host data: keep it on the host, no device copy
                self._add_row(_Row(step, names, -1, n, kind, values.tolist(), layout))
                return
            values = values.to(self._buf.device, non_blocking=True)
        if self._pos + n > self._buf.numel():
            if self._buf.numel() * 2 <= _BUFFER_MAX:
                bigger = torch.empty(self._buf.numel() * 2, dtype=torch.float32, device=self._buf.device)
                bigger[: self._pos].copy_(self._buf[: self._pos])
                self._buf = bigger
            else:
                self._flush()
        self._buf.narrow(0, self._pos, n).copy_(values.reshape(-1))
        self._add_row(_Row(step, names, self._pos, n, kind, None, layout))
        self._pos += n

    def _append_host(
        self, step: int | None, names: tuple[str, ...], values: list[float], kind: str = "plain"
    ) -> None:
        self._add_row(_Row(step, names, -1, len(values), kind, values))

    def _add_row(self, row: _Row) -> None:
        if row.step is None:
            if self.is_global:
                row.step = self.step
            else:
                self._unlabeled.append(row)
        self._rows.append(row)

    def _append_loss(self, step: int, loss: torch.Tensor | float) -> None:
        """The every-step path: keep a detached reference, launch nothing.

        Every ``_LOSS_CHUNK`` losses are stacked into one device tensor (one kernel), so the
        references held stay few; the flush concatenates the chunks with the other statistics.
        """
        if not isinstance(loss, torch.Tensor):
            self._loss_host.append((step, float(loss)))
            return
        lt = loss.detach() if loss.requires_grad else loss  # no graph held, no new tensor when detached
        if lt.numel() != 1:
            lt = lt.float().mean()
        refs = self._loss_refs
        if len(refs) >= _LOSS_CHUNK:
            self._loss_chunks.append(_stack_losses(refs))
            refs.clear()
        refs.append(lt)
        self._loss_steps.append(step)

    def _sample_due(self, counter: int) -> bool:
        return counter >= self._next_sample

    def _end_step(self, counter: int | None) -> None:
        """Close a step: schedule the next sample (``counter`` is set when this step was sampled)."""
        now = time.perf_counter()
        if counter is None:
            last = self._last_tick
            if last is not None:
                dt = now - last
                prev = self._step_time
                self._step_time = dt if prev is None else 0.9 * prev + 0.1 * dt
        else:
            self._sampled_since_flush += 1
            self._n_samples += 1
            gap = self.sample_every
            if self.adaptive and self._step_time and self._n_samples > 1:  # the first sample pays the setup
                need = self._cost / (self.overhead_budget * self._step_time)
                gap = min(max(gap, math.ceil(need)), max(MAX_SAMPLE_GAP, gap))
            self._next_sample = counter + gap
            self._cost = 0.0
            self._sampled_count = None
        self._last_tick = now
        if self._sampled_since_flush >= self.flush_every or now - self._last_flush >= self._flush_seconds:
            t0 = time.perf_counter()
            self._flush()
            self._cost += time.perf_counter() - t0  # flushes count against the budget too
            self._last_tick = time.perf_counter()

    # ------------------------------------------------------------------ explicit mode

    def _record(
        self, step: int, loss: torch.Tensor | float, outputs: torch.Tensor | None, labels: torch.Tensor | None
    ) -> None:
        if self._unlabeled:
            for row in self._unlabeled:  # hook rows of this step (gradients, updates, stale check)
                row.step = step
            self._unlabeled.clear()
        if self._main_set or self._last_loss_out is not None:
            self._close_loss_calls(step)  # loss-module inputs seen by the forward hooks (sampled steps)
        if self._discovery_due:
            self._start_loss_discovery()
        self._append_loss(step, loss)
        if self._primary is not None:
            counter = self._sampled_count  # set by the optimizer pre-hook when it sampled this step
        else:
            counter = self._records if self._records >= self._next_sample else None
        self._records += 1
        if counter is not None:
            t0 = time.perf_counter()
            for names, values, kind in self._batch_stats(outputs, labels, kind=None).values():
                self._append(step, names, values, kind)
            self._cost += time.perf_counter() - t0
        self._next_step = step + 1
        if self._discovery_handles and self._discovery_counter() >= self._discovery_steps:
            self._end_discovery()
        self._end_step(counter)
        nxt = self._primary.count if self._primary is not None else self._records
        if (nxt + 1 >= self._next_sample) != self._armed:
            self._sync_step_hooks()

    def _batch_stats(
        self, outputs: torch.Tensor | None, labels: torch.Tensor | None, kind: str | None
    ) -> dict[str, tuple[tuple[str, ...], torch.Tensor, str]]:
        """Output, label and accuracy statistics of one batch, as device tensors."""
        out: dict[str, tuple[tuple[str, ...], torch.Tensor, str]] = {}
        o = None
        is_prob = None
        if isinstance(outputs, torch.Tensor) and outputs.numel() > 0:
            o = outputs.detach()
            o = o.float() if o.dtype != torch.float32 else o
            names, vals, is_prob = _output_stats(o)
            out["outputs"] = (names, vals, "plain")
        if isinstance(labels, torch.Tensor) and labels.numel() > 0:
            lab = _label_stats(o, labels.detach(), is_prob, kind)
            if lab is not None:
                out["labels"] = lab
        return out

    # ------------------------------------------------------------------ optimizer hooks

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
        t0 = time.perf_counter()
        with torch.no_grad():  # hooks run in the caller's grad mode; parameters require grad
            self._pre_step_sample(st)
        self._cost += time.perf_counter() - t0

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
        st = self._opts.get(id(opt)) or self._attach(opt)
        if not st.sampled and not self.is_global:
            st.count += 1  # explicit mode between samples: only the count
            return
        if self.is_global and st is self._primary:
            # The step's loss and loss-call statistics; after the step, so a closure's calls are this step's.
            self._close_loss_calls(st.count)
        if st.sampled and st.before is not None:
            t0 = time.perf_counter()
            step = self.step if self.is_global else None
            with torch.no_grad():
                if st.closure:
                    self._grad_stats(st, step)
                    self._param_states(st, step)
                self._update_stats(st, step)
                self._arm_probe(st)
            st.before = None
            self._cost += time.perf_counter() - t0
        st.count += 1
        if self.is_global and st is self._primary:
            self._depth = 0  # a forward that raised never ran its post-hook
            if self._discovery_handles and st.count >= self._discovery_steps:
                # Global hooks stay (up to NAME_STEPS steps) until every parameter has a module name.
                if st.count >= NAME_STEPS or self._all_named(st):
                    self._end_discovery()
            self._end_step(st.count - 1 if st.sampled else None)
            if (st.count + 1 >= self._next_sample) != self._armed:
                self._sync_step_hooks()
        st.sampled = False  # explicit mode: the pre-hook that sets it runs only around samples

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

    # ------------------------------------------------------------------ forward hooks

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

    def _on_any_forward_pre(self, module: torch.nn.Module, args: Any) -> None:
        # Global discovery: a module called while no other module runs, with grad enabled, is a root
        # (the model, or a wrapper around it); its parameters are named from it. Not only the first
        # call after a step: an augmentation or feature module may run before the model.
        if self._primary is None:
            self._idle_forwards += 1
            if self._idle_forwards > IDLE_FORWARDS:  # no training (yet): stop slowing every module call
                self._remove_discovery()
                self._discovery_suspended = True
                return
        depth = self._depth
        self._depth = depth + 1
        if depth or not torch.is_grad_enabled() or isinstance(module, torch.nn.modules.loss._Loss):
            return
        if len(self._roots) < MAX_ROOTS and not any(module is r for r in self._roots):
            self._roots.append(module)

    def _on_any_forward(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._depth:
            self._depth -= 1
        if isinstance(module, torch.nn.modules.loss._Loss):
            self._on_loss_module(module, args, output)

    def _all_named(self, st: _OptState) -> bool:
        """Whether every parameter of the optimizer has a module name (host work; discovery steps only)."""
        if self._roots_scanned != len(self._roots):
            self._name_from_roots()
            self._roots_scanned = len(self._roots)
        return all(id(p) in self._names for g in st.opt.param_groups for p in g["params"])

    def _on_loss_module(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if len(args) < 1 or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        if self._discovery_handles and (counter := self._discovery_counter()) <= self._discovery_steps:
            while len(self._loss_modules_by_step) <= counter:
                self._loss_modules_by_step.append(set())
            self._loss_modules_by_step[-1].add(id(module))
            self._loss_module_objs[id(module)] = module
        kind = _LOSS_KINDS.get(type(module).__name__)
        if kind is None:
            kind = type(module).__name__.lower().removesuffix("loss")
        target = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else None
        self._observe_loss(kind, args[0], target, output)

    def _end_discovery(self) -> None:
        """Swap the global forward hooks for hooks on the modules found (cheaper per module call)."""
        if not self._discovery_handles:
            return
        steps = self._loss_modules_by_step[1:] or self._loss_modules_by_step
        stable = all(s == steps[0] for s in steps)
        if not stable:
            return  # a new loss module every step: only the global hook sees them all
        self._remove_discovery()
        self._arm_loss_hooks(False)
        self._loss_modules = [self._loss_module_objs[mid] for mid in steps[0]] if steps else []
        if self.is_global:  # every step: the main loss call is train/loss
            self._arm_loss_hooks(True)
        else:
            self._sync_step_hooks()

    def _arm_loss_hooks(self, on: bool) -> None:
        if on == bool(self._loss_handles) or not self._loss_modules:
            return
        if on:
            hook = self._guard(self._on_loss_module)
            self._loss_handles = [m.register_forward_hook(hook) for m in self._loss_modules]
            self._handles.extend(self._loss_handles)
            return
        for h in self._loss_handles:
            h.remove()
            self._handles.remove(h)
        self._loss_handles = []

    def _sync_step_hooks(self) -> None:
        """The optimizer pre-hook (and, in explicit mode, the loss-module hooks) are on from the step before
        a sampled step until it is recorded. Between samples the post-hook counts steps (and, in global
        mode, with the loss-module hooks, keeps train/loss)."""
        nxt = self._primary.count if self._primary is not None else self._records
        on = self._armed = nxt + 1 >= self._next_sample
        if not self.is_global:  # global mode: every step (the main loss call is train/loss)
            self._arm_loss_hooks(on)
        if self._register_pre is None or on == (self._pre_handle is not None):
            return
        if on:
            self._pre_handle = self._register_pre(self._pre_hook)
            self._handles.append(self._pre_handle)
        else:
            self._pre_handle.remove()  # type: ignore[union-attr]
            self._handles.remove(self._pre_handle)  # type: ignore[arg-type]
            self._pre_handle = None

    def _name_from_roots(self) -> None:
        for root in self._roots:
            for n, p in root.named_parameters():
                self._names.setdefault(id(p), _strip(n))

    # ------------------------------------------------------------------ loss calls (both modes)

    def _discovery_counter(self) -> int:
        if self.is_global:
            return self._primary.count if self._primary is not None else 0
        return self._records - self._discovery_start

    def _start_loss_discovery(self) -> None:
        self._discovery_due = False
        self._discovery_start = self._records
        self._install_discovery(roots=False)

    def _from_loss_call(self, fn: Any) -> bool:
        """Whether a backward() tensor is one loss call's output, maybe scaled (AMP, accumulation, mean).

        Host-only: follows at most a few autograd nodes, reads no tensor.
        """
        calls = [o.grad_fn for o in self._call_outs]
        for _ in range(4):
            if fn is None:
                return False
            for c in calls:
                if fn is c:
                    return True
            if fn.name() not in _SCALE_NODES:
                return False
            inputs = [f for f, _ in fn.next_functions if f is not None]
            if len(inputs) != 1:
                return False  # a product of two tensors that both need gradients is not a scaling
            fn = inputs[0]
        return False

    def _observe_loss(
        self, kind: str, input: torch.Tensor, target: torch.Tensor | None, output: torch.Tensor
    ) -> None:
        if (
            not torch.is_grad_enabled()
            or not isinstance(output, torch.Tensor)
            or (n_out := output.numel()) == 0
        ):
            return  # evaluation losses (no_grad) are not the training loss
        if output is self._last_loss_out:
            return  # the same call seen twice (a loss module and the function it calls)
        # The counter the optimizer pre-hook (or record()) will sample this step by.
        counter = self._primary.count if self._primary is not None else self._records
        due = counter >= self._next_sample
        if not due and not self.is_global:
            return  # explicit mode: record() has the loss; only a sampled step's loss input is kept
        self._last_loss_out = output
        if self.is_global and len(self._call_outs) < 64:
            self._call_outs.append(output)
        # The main loss of a step is the call with the fewest target elements (the first on ties):
        # a per-sample loss rather than a per-point or per-pixel auxiliary one.
        ref = target if isinstance(target, torch.Tensor) else input
        size = ref.numel() if isinstance(ref, torch.Tensor) else math.inf
        if self._main_set and size >= self._main_size:
            return
        self._main_set, self._main_size = True, size
        if self.is_global:  # detached when the step closes (the reference ends with the step)
            self._main_loss = output if n_out == 1 else output.detach().float().mean()
        if self._pending:
            self._pending.clear()  # statistics of a call that is no longer the main one
        if not due:
            return
        if not isinstance(input, torch.Tensor) or input.numel() == 0:
            return
        t0 = time.perf_counter()
        x = input.detach()
        x = x.float() if x.dtype != torch.float32 else x
        if kind in _LOGIT_KINDS:
            mn, mx = torch.aminmax(x)
            self._pending["loss_input"] = (
                ("loss_input/logits/min", "loss_input/logits/max"),
                torch.stack([mn, mx]),
                "plain",
            )
        elif kind == "nll":
            self._pending["loss_input"] = (("loss_input/logprobs/max",), x.max().reshape(1), "plain")
        if self.is_global:  # explicit mode has the outputs and labels from record()
            self._pending.update(self._batch_stats(x, target, kind=kind))
        self._cost += time.perf_counter() - t0

    def _close_loss_calls(self, step: int) -> None:
        """Write the main loss call's statistics (and, in global mode, the step's loss); reset."""
        if self.is_global:
            # train/loss: the main loss call, unless backward() ran on a combination of calls (what the
            # program optimises, and prints): then that tensor. A scaled call (GradScaler) is still the call.
            formula = self._step_formula or self._main_loss is None
            loss = self._step_backward if formula else self._main_loss
            if loss is not None:
                self._append_loss(step, loss)
        if self._pending:
            for names, values, kind in self._pending.values():
                self._append(step, names, values, kind)
            self._pending.clear()
        self._main_loss = None
        self._main_set, self._main_size = False, math.inf
        self._call_outs = []
        self._step_backward = None
        self._step_formula = False
        self._last_loss_out = None

    def _close_global_step(self) -> None:
        """Write the loss and the batch statistics of the step about to be taken."""
        self._close_loss_calls(self.step)

    # ------------------------------------------------------------------ flush

    def _flush(self) -> list[Observation]:
        self._last_flush = time.perf_counter()
        self._sampled_since_flush = 0
        rows, loss_steps, loss_host = self._rows, self._loss_steps, self._loss_host
        if not rows and not loss_steps and not loss_host:
            return []
        self._rows, self._loss_steps, self._loss_host = [], [], []
        fallback = self._next_step if not self.is_global else self.step
        for row in self._unlabeled:
            row.step = fallback
        self._unlabeled.clear()
        values: list[float] = []
        losses: list[float] = []
        n_loss = len(loss_steps)
        parts: list[torch.Tensor] = []
        if self._buf is not None and self._pos:
            parts.append(self._buf[: self._pos])
        parts += self._loss_chunks
        if self._loss_refs:
            parts.append(_stack_losses(self._loss_refs))
        self._loss_chunks, self._loss_refs = [], []
        if parts:
            dev = parts[0].device
            parts = [x if x.device == dev else x.to(dev) for x in parts]
            flat = (torch.cat(parts) if len(parts) > 1 else parts[0]).tolist()  # the one host sync
            values, losses = flat[: self._pos], flat[len(flat) - n_loss :]
        self._pos = 0
        obs: list[Observation] = []
        nonfinite_loss = 0
        last_loss_step: int | None = None
        for step, v in sorted([*zip(loss_steps, losses, strict=True), *loss_host]):
            if not math.isfinite(v):
                nonfinite_loss += 1
            last_loss_step = step
            obs.append(_make_obs("train/loss", step, v, self.rank))

        rank = self.rank

        def emit(name: str, step: int, value: float) -> None:
            obs.append(_make_obs(name, step, value, rank))

        for row in rows:
            vals = row.host if row.host is not None else values[row.pos : row.pos + row.n]
            if row.kind == "grad":
                vals = _grad_values(vals, row.layout)
            elif row.kind == "update":
                vals = _update_values(vals, row.layout)
            step = int(row.step if row.step is not None else fallback)
            if row.kind == "classes":
                counts = vals[: row.n - len(row.names)]
                extra = vals[row.n - len(row.names) :]
                total = sum(counts)
                for k, c in enumerate(counts):
                    if c > 0:
                        self._classes_seen.add(k)
                if total > 0:
                    for k in sorted(self._classes_seen):
                        emit(f"label/fraction/{k}", step, counts[k] / total if k < len(counts) else 0.0)
                emit("label/classes", step, float(len(self._classes_seen)))
                for name, v in zip(row.names, extra, strict=True):
                    emit(name, step, v)
            else:
                for name, v in zip(row.names, vals, strict=True):
                    if name.startswith("param/frozen/") and not v > 0:
                        continue  # per-module frozen fractions only when > 0
                    emit(name, step, v)
                if row.kind == "binary":
                    frac = vals[0]
                    if frac > 0:
                        self._binary_seen.add(1)
                    if frac < 1:
                        self._binary_seen.add(0)
                    emit("label/classes", step, float(len(self._binary_seen)))
        if last_loss_step is not None:
            emit("nonfinite/loss", last_loss_step, float(nonfinite_loss))
        obs.sort(key=lambda o: o.step)
        if self.doctor is not None:
            # The doctor evaluates at its grid of steps as these cross it (not once per flush: a flush
            # follows the wall clock too); close() adds the final evaluation.
            self.doctor.observe_many(obs)
        if self.sink is not None and not self._sink_failed:
            try:
                self.sink(obs)
            except Exception as exc:  # a broken sink must not stop the training, nor the doctor
                self._sink_failed = True
                print(f"muvo-doctor: observation sink failed and is disabled ({exc!r})", file=sys.stderr)
        return obs


# ---------------------------------------------------------------------- statistics (device tensors)


def _output_stats(o: torch.Tensor) -> tuple[tuple[str, ...], torch.Tensor, torch.Tensor]:
    """mean, std across the batch, saturated fraction, min, max, non-finite count of outputs ``o``."""
    mn, mx = torch.aminmax(o)
    is_prob = (mn >= 0) & (mx <= 1)
    sat_logit = (o.abs() > SATURATED_LOGIT).float().mean()
    sat_prob = ((o < SATURATED_PROB) | (o > 1 - SATURATED_PROB)).float().mean()
    sat = torch.where(is_prob, sat_prob, sat_logit)
    bad = (~torch.isfinite(o)).sum().float()
    n = o.shape[0] if o.dim() > 0 else 1
    if n > 1:
        # Spread across samples, per output unit, averaged over units: 0 means input-independent.
        std = o.reshape(n, -1).std(dim=0, correction=0).mean()
        names = (
            "output/mean",
            "output/std",
            "output/saturated",
            "output/min",
            "output/max",
            "nonfinite/output",
        )
        vals = torch.stack([o.mean(), std, sat, mn, mx, bad])
    else:
        names = ("output/mean", "output/saturated", "output/min", "output/max", "nonfinite/output")
        vals = torch.stack([o.mean(), sat, mn, mx, bad])
    return names, vals, is_prob


def _label_stats(
    o: torch.Tensor | None, y: torch.Tensor, is_prob: torch.Tensor | None, kind: str | None
) -> tuple[tuple[str, ...], torch.Tensor, str] | None:
    """Label histogram (binary: positive fraction; multiclass: counts) and accuracy when outputs fit."""
    multi_out = o is not None and o.dim() >= 2 and o.shape[1] > 1
    if kind in _CLASS_KINDS and not multi_out:
        return None  # unbatched class scores: nothing to histogram reliably
    if multi_out and not y.is_floating_point() and y.dim() == o.dim() - 1 and y.shape[0] == o.shape[0]:  # type: ignore[union-attr]
        return _class_stats(o, y, o.shape[1])  # type: ignore[union-attr]
    if multi_out and y.is_floating_point() and y.shape == o.shape and kind in _CLASS_KINDS:  # type: ignore[union-attr]
        return _soft_class_stats(o, y)  # type: ignore[arg-type]
    if kind is not None and kind not in ("bce_with_logits", "bce"):
        return None  # regression losses etc.: no label histogram
    if y.is_floating_point() or y.dtype == torch.bool or (o is not None and o.numel() == y.numel()):
        pos = y > 0.5 if y.is_floating_point() else y > 0
        frac = pos.float().mean()
        if o is not None and o.numel() == y.numel():
            if kind == "bce_with_logits":
                pred = o > 0
            elif kind == "bce":
                pred = o > 0.5
            else:  # explicit mode: threshold 0.5 for probabilities, 0 for logits, decided on the device
                thr = torch.where(is_prob, 0.5, 0.0) if is_prob is not None else 0.0
                pred = o > thr
            acc = (pred.reshape(-1) == pos.reshape(-1)).float().mean()
            return ("label/positive_fraction", "train/acc"), torch.stack([frac, acc]), "binary"
        return ("label/positive_fraction",), frac.reshape(1), "binary"
    return _class_stats(None, y, MAX_CLASSES)


def _class_stats(
    o: torch.Tensor | None, y: torch.Tensor, k: int
) -> tuple[tuple[str, ...], torch.Tensor, str]:
    kb = min(k, MAX_CLASSES)
    yl = y.reshape(-1).long()
    valid = (yl >= 0) & (yl < kb)  # ignore_index (-100) and ids >= 100 are left out
    counts = torch.zeros(kb, device=y.device).index_add_(0, yl.clamp(0, kb - 1), valid.float())
    if o is None:
        return (), counts, "classes"
    pred = o.argmax(dim=1).reshape(-1)
    acc = ((pred == yl) & valid).sum().float() / valid.sum().clamp_min(1).float()
    return ("train/acc",), torch.cat([counts, acc.reshape(1)]), "classes"


def _soft_class_stats(o: torch.Tensor, y: torch.Tensor) -> tuple[tuple[str, ...], torch.Tensor, str]:
    kb = min(o.shape[1], MAX_CLASSES)
    yy = y.movedim(1, -1).reshape(-1, o.shape[1]).float()
    counts = yy[:, :kb].sum(dim=0)
    acc = (o.argmax(dim=1).reshape(-1) == yy.argmax(dim=1)).float().mean()
    return ("train/acc",), torch.cat([counts, acc.reshape(1)]), "classes"


@contextmanager
def watch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    **kwargs: Any,
) -> Iterator[Recorder]:
    """Record a training loop under the doctor; flushes and removes the hooks on exit.

    Example:
        with muvo_doctor.watch(model, optimizer) as rec:
            for step, (x, y) in enumerate(loader):
                ...
                rec.record(step, loss=loss, outputs=logits, labels=y)
        print(rec.doctor.report().to_json())
    """
    rec = Recorder(model, optimizer, **kwargs)
    try:
        yield rec
    finally:
        rec.close()


__all__: Sequence[str] = ("Recorder", "Sink", "watch")
