"""What the child bootstrap installs once the program has imported torch.

- the global recorder (``Recorder.install_global``: global optimizer step hooks and forward
  hooks on loss modules, the official hooks), streaming its observations to the parent;
- wrappers around the functional losses and ``Tensor.backward``, because torch has no hook for
  plain function calls nor for "backward started from this tensor";
- a step heartbeat (an official global optimizer step post-hook), so the parent can place the
  numbers the program prints at the current step between two flushes.

Everything fails open: an error disables the part that failed, prints one line on stderr and
leaves the training alone.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import os
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import torch

from muvo_doctor.core.observation import Observation
from muvo_doctor.run.stream import BatchWriter, Hello, StepBeat, encode, encode_observation

# Functional losses the recorder needs to see (input range, labels, value) -> the recorder's kind.
FUNCTIONAL_LOSSES = {
    "binary_cross_entropy_with_logits": "bce_with_logits",
    "cross_entropy": "cross_entropy",
    "binary_cross_entropy": "bce",
    "nll_loss": "nll",
    "mse_loss": "mse",
}
BEAT_SECONDS = 0.05  # at most this often a step heartbeat crosses to the parent (20 writes/s)
EXIT_DRAIN_SECONDS = 2.0  # at exit, how long the backlog may wait for the parent to read it

_said: set[str] = set()


def say_once(key: str, message: str) -> None:
    """One line on stderr per kind of failure, never more."""
    if key in _said:
        return
    _said.add(key)
    try:
        sys.stderr.write(f"muvo-doctor: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass


def rank() -> int:
    try:
        return int(os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0")
    except ValueError:
        return 0


class _Channel:
    """The child's end of the telemetry stream: batched, non-blocking (a backlog, never a stall), fail-open."""

    def __init__(self, fd: int) -> None:
        self.writer = BatchWriter(fd, max_lines=512, max_seconds=1.0)
        self.pid = os.getpid()

    def send_lines(self, lines: list[str]) -> None:
        if os.getpid() != self.pid:  # a forked worker: its parent already owns this stream
            return
        self.writer.add_many(lines)
        self.writer.flush()
        self._check()

    def sink(self, observations: list[Observation]) -> None:
        self.send_lines([encode_observation(o.name, o.step, o.value, o.digits, o.rank) for o in observations])

    def _check(self) -> None:
        if self.writer.failure is not None:
            say_once(
                "channel",
                f"telemetry channel closed ({self.writer.failure}); training continues unmonitored",
            )


def install(fd: int, r: int | None = None) -> Any:
    """Install the recorder in this process and stream to ``fd`` as rank ``r`` (default: $RANK or
    0); returns the recorder."""
    channel = _Channel(fd)
    r = rank() if r is None else r
    channel.send_lines([encode(Hello(stage="torch", rank=r, pid=os.getpid()))])

    from muvo_doctor.recorder import Recorder

    kwargs: dict[str, Any] = {"sink": channel.sink, "rank": r}
    config_path = os.environ.get("MUVO_DOCTOR_CONFIG")
    install_global = Recorder.install_global
    if config_path and "config" in inspect.signature(install_global).parameters:
        from muvo_doctor.core.config import load_config

        kwargs["config"] = load_config(config_path)
    rec = install_global(**kwargs)

    patch_functional_losses(rec)
    patch_backward(rec)
    _install_heartbeat(rec, channel, r)

    def _at_exit() -> None:
        if os.getpid() != channel.pid:  # a forked worker inherited the backlog; the parent sends it
            return
        try:
            close = getattr(rec, "close", None) or getattr(rec, "flush", None)
            if close is not None:
                close()
            channel.writer.close(timeout=EXIT_DRAIN_SECONDS)
            if channel.writer.dropped:
                say_once(
                    "dropped",
                    f"{channel.writer.dropped} telemetry lines were dropped: the watcher fell behind",
                )
        except Exception as exc:
            say_once("exit", f"could not send the last observations ({exc!r})")

    atexit.register(_at_exit)
    return rec


def install_on_spawn(fd: int) -> None:
    """In a multiprocessing spawn worker: become rank ``i`` when ``torch.multiprocessing.spawn``
    runs its function here (``_wrap(fn, i, ...)``); any other spawn worker (a DataLoader's) stays
    a helper and sends nothing.

    Why patch: the spawn index is only an argument of the worker's function; no hook names it.
    Only the worker's module attribute is replaced: the parent pickles the original by name, and
    the worker's unpickling finds ours.
    """
    import torch.multiprocessing.spawn  # noqa: F401 (loaded by torch already)

    module = sys.modules["torch.multiprocessing.spawn"]
    original = getattr(module, "_wrap", None)
    if original is None or getattr(original, "__muvo_doctor__", False):
        return

    def _wrap(fn: Any, i: int, *args: Any, **kwargs: Any) -> Any:
        try:
            install(fd, r=i)
        except Exception as exc:
            say_once("spawn", f"instrumentation failed ({exc!r}); training continues unmonitored")
        return original(fn, i, *args, **kwargs)

    functools.update_wrapper(_wrap, original)
    _wrap.__muvo_doctor__ = True  # type: ignore[attr-defined]
    module._wrap = _wrap


def install_helper(fd: int) -> None:
    """In a helper process (not a rank of the run): no recorder, only a note to the parent, by pid
    and command, when it steps an optimizer of its own, so the run can say it without merging its
    numbers into rank 0's."""
    channel = _Channel(fd)
    command = " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]) if sys.argv else sys.executable
    channel.send_lines(
        [encode(Hello(stage="torch", rank=None, pid=os.getpid(), role="helper", command=command))]
    )
    count = [0]

    def beat(optimizer: Any, args: Any, kwargs: Any) -> None:
        count[0] += 1
        if count[0] in (1, 100) or count[0] % 1000 == 0:  # a few notes, not a stream
            channel.send_lines([encode(StepBeat(step=count[0], rank=None, pid=channel.pid))])

    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(beat)


def patch_functional_losses(rec: Any) -> None:
    """Wrap ``torch.nn.functional.<loss>`` so every call reaches ``rec.observe_loss_call``.

    Why patch: loss modules have forward hooks, plain functions have none. Calls made from a
    loss module's own ``forward`` (``nn.CrossEntropyLoss`` calls ``F.cross_entropy``) are
    skipped, because the module's forward hook already saw them. Under torch.compile the
    wrapper is a plain pass-through.
    """
    F = torch.nn.functional
    loss_mod = torch.nn.modules.loss
    # Code objects of every loss module's forward: a direct caller among them means "module path".
    module_forwards = {
        cls.forward.__code__
        for cls in vars(loss_mod).values()
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module) and "forward" in vars(cls)
    }
    is_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", lambda: False)
    state = {"on": True}

    for fname, kind in FUNCTIONAL_LOSSES.items():
        original = getattr(F, fname, None)
        if original is None or getattr(original, "__muvo_doctor__", False):
            continue
        setattr(F, fname, _loss_wrapper(original, kind, rec, state, module_forwards, is_compiling))


def _loss_wrapper(
    _muvo_orig: Any,
    _muvo_kind: str,
    _muvo_rec: Any,
    _muvo_state: dict[str, bool],
    _muvo_forwards: set[Any],
    _muvo_compiling: Callable[[], bool],
) -> Any:
    _muvo_frame = sys._getframe
    _muvo_say = say_once

    def wrapper(*args: Any, **kw: Any) -> Any:
        out = _muvo_orig(*args, **kw)
        if _muvo_state["on"] and not _muvo_compiling() and _muvo_frame(1).f_code not in _muvo_forwards:
            try:
                inp = args[0] if args else kw.get("input")
                target = args[1] if len(args) > 1 else kw.get("target")
                _muvo_rec.observe_loss_call(_muvo_kind, inp, target, out)
            except Exception as exc:
                _muvo_state["on"] = False
                _muvo_say("functional", f"functional-loss observation disabled ({exc!r})")
        return out

    # TorchScript compiles a scripted caller's F.<loss> from its source (found through __wrapped__)
    # and resolves that source's names in the function's globals and closure: give the wrapper
    # torch.nn.functional's globals (it uses none of its own; everything above is a closure cell)
    # so `torch.jit.script` compiles the original exactly as without us.
    wrapped = types.FunctionType(
        wrapper.__code__, _muvo_orig.__globals__, wrapper.__name__, wrapper.__defaults__, wrapper.__closure__
    )
    functools.update_wrapper(wrapped, _muvo_orig)
    wrapped.__muvo_doctor__ = True  # type: ignore[attr-defined]
    return wrapped


def patch_backward(rec: Any) -> None:
    """Wrap ``torch.Tensor.backward`` so the recorder sees the tensor actually optimized.

    Why patch: autograd has no hook that says which tensor ``backward()`` started from, and that
    tensor is the training loss whether it came from a loss module, a functional loss or a formula.
    """
    observe = getattr(rec, "observe_backward", None)
    original = torch.Tensor.backward
    if observe is None or getattr(original, "__muvo_doctor__", False):
        return
    is_compiling: Callable[[], bool] = getattr(torch.compiler, "is_compiling", lambda: False)
    state = {"on": True}

    def backward(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if state["on"] and not is_compiling():
            try:
                observe(self)
            except Exception as exc:
                state["on"] = False
                say_once("backward", f"backward observation disabled ({exc!r})")
        return original(self, *args, **kwargs)

    functools.update_wrapper(backward, original)
    backward.__muvo_doctor__ = True  # type: ignore[attr-defined]
    torch.Tensor.backward = backward  # type: ignore[method-assign]


def _install_heartbeat(rec: Any, channel: _Channel, r: int) -> None:
    # An official global hook; costs one clock read per optimizer step.
    count = [0]
    last = [0.0]

    def beat(optimizer: Any, args: Any, kwargs: Any) -> None:
        count[0] += 1
        now = time.monotonic()
        if now - last[0] < BEAT_SECONDS:
            return
        last[0] = now
        step = getattr(rec, "step", None)
        step = step if isinstance(step, int) else count[0] - 1
        try:
            channel.send_lines([encode(StepBeat(step=step, rank=r))])
        except Exception as exc:
            say_once("beat", f"step heartbeat disabled ({exc!r})")

    # torch.optim does not keep `optimizer` as an attribute in recent releases: import the function.
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(beat)
