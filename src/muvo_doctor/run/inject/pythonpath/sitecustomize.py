"""muvo-doctor's child bootstrap: imported by every Python process started under `muvo-doctor run`.

Cost at start: one FIFO open and one ``hello`` line; no import beyond os, sys (both loaded
already) and errno (built in). A meta-path finder waits for ``import torch``; when torch has
finished importing, ``muvo_doctor.run.inject.child.install`` installs the recorder. Programs that
never import torch pay nothing more. A ``sitecustomize`` the user already had is found further
down ``sys.path`` and run after ours. Any failure here prints one line and leaves the program
alone (fail open).

Only training processes stream telemetry (docs/run.md, "Which processes are watched"): the first
process to import torch, a torchrun/Accelerate rank (a RANK, or LOCAL_RANK, its parent did not
have) and a ``torch.multiprocessing.spawn`` worker (its spawn index is its rank). Every other descendant (data
workers, helper scripts, compilers) is a *helper*: it only says, by pid and command, that it runs
an optimizer of its own. A process that outlives the wrapper (no FIFO, or no reader) stays quiet.
"""

import errno
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
_FIFO = os.environ.get("MUVO_DOCTOR_FIFO")
# "pid:RANK" of the training process above this one (RANK as its environment had it, maybe empty);
# set by a training process when it imports torch, inherited by everything it starts.
_SCOPE = "MUVO_DOCTOR_SCOPE"


def _env_rank():
    # RANK (torchrun, Accelerate, DeepSpeed); LOCAL_RANK alone from launchers that set only that.
    return os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or ""


def _rank():
    try:
        return int(_env_rank() or "0")
    except ValueError:
        return 0


def _role():
    """ "rank" (a training process), "spawn" (a multiprocessing spawn worker: a rank only if
    torch.multiprocessing.spawn runs its function in it) or "helper"."""
    scope = os.environ.get(_SCOPE)
    if scope is None:
        return "rank"
    env_rank = _env_rank()
    if env_rank and scope.partition(":")[2] != env_rank:
        return "rank"  # torchrun / Accelerate started it with a rank of its own
    if "--multiprocessing-fork" in sys.argv:
        return "spawn"
    return "helper"


_ROLE = _role() if _FIFO else "rank"


def _hello():
    # The parent learns that a Python process started (so it stops treating printed numbers
    # as the only evidence). O_NONBLOCK: never hang the program if the parent is gone.
    fd = os.open(_FIFO, os.O_WRONLY | os.O_NONBLOCK)
    os.set_inheritable(fd, False)
    if _ROLE == "rank":
        line = (
            '{"event":"hello","stage":"python","rank":' + str(_rank()) + ',"pid":' + str(os.getpid()) + "}\n"
        )
    else:
        line = (
            '{"event":"hello","stage":"python","rank":null,"pid":' + str(os.getpid()) + ',"role":"helper"}\n'
        )
    os.write(fd, line.encode())
    return fd


class _TorchWatcher:
    """A sys.meta_path finder that only reacts to the top-level ``torch`` import."""

    def __init__(self, fd):
        self.fd = fd

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        spec = None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        original = loader.exec_module
        fd = self.fd

        def exec_module(module):
            original(module)
            try:
                del loader.exec_module  # back to the class method: torch is imported once
            except AttributeError:
                pass
            _on_torch(fd)

        # Instance attribute on torch's own loader: the module keeps its real loader type.
        loader.exec_module = exec_module
        return spec


def _on_torch(fd):
    child = _import_child()
    if child is None:
        return
    try:
        if _ROLE == "rank":
            os.environ[_SCOPE] = str(os.getpid()) + ":" + _env_rank()
            child.install(fd)
        elif _ROLE == "spawn":
            child.install_on_spawn(fd)
        else:
            child.install_helper(fd)
    except Exception as exc:
        _say(f"instrumentation failed ({exc!r}); training continues unmonitored")


def _import_child():
    try:
        from muvo_doctor.run.inject import child

        return child
    except Exception as exc:
        error = exc
    # Another interpreter (another venv) may lack muvo_doctor: try the wrapper's copy.
    home = os.environ.get("MUVO_DOCTOR_HOME")
    if home and home not in sys.path:
        sys.path.append(home)
        try:
            from muvo_doctor.run.inject import child

            return child
        except Exception as exc:
            error = exc
    _say(f"not instrumenting this process: cannot import muvo_doctor ({error!r}); training continues")
    return None


def _say(msg):
    try:
        sys.stderr.write(f"muvo-doctor: {msg}\n")
    except Exception:
        pass


def _chain_user_sitecustomize():
    # Ours shadows the user's sitecustomize (PYTHONPATH comes first): find and run the next one.
    import importlib.machinery
    import importlib.util

    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def _boot():
    if _FIFO:
        try:
            fd = _hello()
        except OSError as exc:
            # ENXIO: the FIFO has no reader, ENOENT: it is gone; the wrapper ended before this
            # process (a daemon, a process it left behind): nothing to say to anyone.
            if exc.errno not in (errno.ENXIO, errno.ENOENT):
                _say(f"telemetry channel unavailable ({exc.strerror}); training continues unmonitored")
        else:
            if "torch" in sys.modules:
                _on_torch(fd)
            else:
                sys.meta_path.insert(0, _TorchWatcher(fd))
    try:
        _chain_user_sitecustomize()
    except Exception as exc:
        # The user's own sitecustomize failed: report it the way site.py would, and go on.
        _say(f"your sitecustomize failed: {exc!r}")


_boot()
