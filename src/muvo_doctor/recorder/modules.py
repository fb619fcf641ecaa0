"""Module discovery: naming parameters by their modules, finding loss modules, and the hooks that do it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.modules.module as _module_hooks
from torch.utils.hooks import RemovableHandle

if TYPE_CHECKING:
    from muvo_doctor.recorder.optimizer import _OptState

# Global mode: module calls seen with no optimizer step before the global forward hooks are
# removed (re-installed when an optimizer first steps): inference-only programs stay fast.
IDLE_FORWARDS = 20_000
# Global mode keeps its forward hooks past the discovery steps while some optimizer parameter has no
# module name (the model was not called yet), up to this many optimizer steps.
NAME_STEPS = 50
MAX_ROOTS = 16  # top-level modules remembered for naming parameters

_LOSS_KINDS = {
    "BCEWithLogitsLoss": "bce_with_logits",
    "CrossEntropyLoss": "cross_entropy",
    "BCELoss": "bce",
    "NLLLoss": "nll",
    "MSELoss": "mse",
}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


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


class Discovery:
    """The Recorder's part that names parameters and finds loss modules (global forward hooks, then hooks
    on the modules found)."""

    def _init_discovery(self, model: torch.nn.Module | None) -> None:
        self._names: dict[int, str] = {}  # id(param) -> dotted parameter name
        # Global mode.
        self._roots: list[torch.nn.Module] = []
        self._depth = 0  # module forwards in progress (global discovery): depth 0 calls are roots
        self._loss_modules_by_step: list[set[int]] = []
        self._loss_module_objs: dict[int, torch.nn.Module] = {}
        self._discovery_handles: list[RemovableHandle] = []
        # Loss modules found by the discovery. Explicit mode hooks them only around sampled steps (their
        # inputs are sampled statistics): a module with a forward hook takes torch's slower call path.
        self._loss_modules: list[torch.nn.Module] = []
        self._loss_handles: list[RemovableHandle] = []
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
        if self.is_global and self._plain_node is None:  # every step: the main loss call is train/loss
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

    def _name_from_roots(self) -> None:
        for root in self._roots:
            for n, p in root.named_parameters():
                self._names.setdefault(id(p), _strip(n))

    def _discovery_counter(self) -> int:
        if self.is_global:
            return self._primary.count if self._primary is not None else 0
        return self._records - self._discovery_start

    def _start_loss_discovery(self) -> None:
        self._discovery_due = False
        self._discovery_start = self._records
        self._install_discovery(roots=False)
