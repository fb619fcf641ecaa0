"""`muvo-doctor demo [--fault NAME] [--story]`: train muvo_model under the doctor and watch it live.

The training runs as a child, ``python -m muvo_model.train --no-doctor [--fault NAME]``, through
the same machinery as `muvo-doctor run` (zero-code instrumentation, pass-through output, the live
dashboard): the demo shows exactly what a user gets on their own script.

Exit codes: 0 when the doctor did what the demo promises (a fault is caught by one of the checks
the fault names, a healthy run stays free of warnings and ends healthy, with evidence of learning),
1 when it did not, 2 on bad usage; a training that fails to run exits with its own code.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

HELP = "train muvo_model on the embedded synthetic data under the doctor, healthy or with a named fault"

EPILOG = """\
examples:
  muvo-doctor demo                          a healthy run, live
  muvo-doctor demo --fault random-labels    the "fixed" incident run: 90% accuracy that is only the prior
  muvo-doctor demo --story                  the whole incident: the 0.0000 run, the 90% run, a healthy run
  muvo-doctor demo --list-faults            every fault the demo can inject
  muvo-doctor demo --fault zero-lr --plain --report report.json
"""


@dataclass(frozen=True)
class Act:
    """One run of the story: the fault it injects and what is told before it."""

    fault: str
    title: str
    story: str


STORY: tuple[Act, ...] = (
    Act(
        fault="self-supervised-mean",
        title="Act 1/3: the 0.0000 run",
        story=(
            "The original model was trained with a self-supervised loss: the mean of its own anomaly "
            "scores plus a tenth of their spread, no labels at all. The cheapest way to lower that loss "
            "is to call every frame normal, and the training log, printing four decimals, showed "
            "loss 0.0000: it looked like a perfect fit. Watch what the doctor reads under the printed "
            "number: outputs that stop depending on the input and a loss that no longer moves."
        ),
    ),
    Act(
        fault="random-labels",
        title="Act 2/3: the 'fixed' 90% run",
        story=(
            "The fix added labels: random pseudo-labels, 10% positive, drawn independently of the input. "
            "The loss settled at 0.3331 and the accuracy at 89.93%, which looked like learning. A model "
            "that answers 'normal' every time with confidence 0.10 gets exactly that: the prior's entropy "
            "H(0.10) = 0.325 and the majority rate, 90%. The doctor draws that prior baseline on the loss "
            "chart and says when the run sits on it."
        ),
    ),
    Act(
        fault="none",
        title="Act 3/3: a healthy run",
        story=(
            "Same model, same data, same doctor, with labels from what was actually rendered in each scene "
            "and a loss that uses them: the loss falls well below the prior's entropy, the gradients reach "
            "every module, the scores spread across frames. No warning, no critical finding."
        ),
    ),
)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {n}")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--fault", metavar="NAME", help="inject a named bug (see --list-faults); default: none"
    )
    parser.add_argument(
        "--story", action="store_true", help="replay the original incident: three runs, each explained"
    )
    parser.add_argument("--plain", action="store_true", help="no live screen: one line per new finding")
    parser.add_argument(
        "--report",
        metavar="PATH",
        type=Path,
        help="write the final JSON report here (with --story: one file per act, PATH-1-<fault>.json ...)",
    )
    parser.add_argument(
        "--snapshot",
        metavar="PATH",
        type=Path,
        help="save the final dashboard as PATH.svg or PATH.html (with --story: one per act)",
    )
    parser.add_argument("--steps", metavar="N", type=_positive_int, help="optimizer steps per run")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="forwarded to muvo-train, e.g. --set data.train_frames=512 (repeatable)",
    )
    parser.add_argument("--list-faults", action="store_true", help="list the faults the demo can inject")


def _usage(msg: str) -> int:
    print(f"muvo-doctor demo: {msg}", file=sys.stderr)
    return 2


def _per_act(path: Path | None, act_index: int, fault: str, story: bool) -> Path | None:
    if path is None or not story:
        return path
    return path.with_name(f"{path.stem}-{act_index}-{fault}{path.suffix}")


# The demo evaluates on the held-out split every 20 steps (muvo-train's default: 40). prior_baseline waits
# for 3 held-out AUROC evaluations at chance before it calls a run dead (a slow learner sits at the prior
# for a while too): at 40 that is step 120, the end of a default demo run; at 20 it is step 60, and with
# the loss 60 points at the prior the random-labels run shows DEAD at the grid step 75.
DEMO_EVAL_EVERY = 20


def train_command(fault: str, steps: int | None, overrides: list[str]) -> list[str]:
    """The muvo-train command line one demo run wraps (the in-process doctor off: the wrapper is it).

    ``overrides`` come last, so ``--set train.eval_every=N`` replaces the demo's cadence.
    """
    cmd = [sys.executable, "-m", "muvo_model.train", "--no-doctor"]
    if fault != "none":
        cmd += ["--fault", fault]
    if steps is not None:
        cmd += ["--set", f"train.steps={steps}"]
    cmd += ["--set", f"train.eval_every={DEMO_EVAL_EVERY}"]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def _say(text: str, plain: bool) -> None:
    """A narrative or summary paragraph between runs (stdout; wrapped on a terminal only)."""
    from rich.console import Console

    con = Console(highlight=False)
    if plain or not con.is_terminal or con.no_color:
        # Whole lines: `demo --plain | grep "verdict dead"` must find the sentence (the terminal wraps).
        print(text, flush=True)
    else:
        con.print(text, markup=False, width=min(con.width, 100))


def _judge(fault: str, expected: tuple[str, ...], doctor: object) -> tuple[bool, str]:
    """Whether the run went as the demo promises, and one sentence saying so.

    A healthy run must end with no warning or critical finding holding and with evidence of learning
    (not inconclusive); a fault must be caught by one of the checks it names (a finding that was
    raised and later resolved still counts as caught, and the sentence says so).
    """
    findings = list(getattr(doctor, "findings", []))
    raised = [f for f in findings if f.severity in ("warning", "critical")]
    holding = [f for f in raised if getattr(f, "resolved_step", None) is None]
    verdict = getattr(doctor, "verdict", None)
    if fault == "none":
        if holding:
            names = ", ".join(f"{f.check} ({f.severity})" for f in holding)
            return False, f"demo: the healthy run was flagged: {names}: a false alarm, please report it."
        if verdict == "inconclusive":
            return (
                False,
                "demo: the healthy run ended inconclusive: nothing showed learning; please report it.",
            )
        evidence = getattr(doctor, "evidence", None)
        said = f" ({evidence})" if evidence else ""
        return True, f"demo: healthy run: verdict healthy{said}, {len(findings)} other finding(s)."
    hits = sorted(
        (f for f in raised if f.check in expected),
        key=lambda f: getattr(f, "resolved_step", None) is not None,
    )
    if hits:

        def said(f: object) -> str:
            step = "" if f.step is None else f", step {f.step}"  # type: ignore[attr-defined]
            resolved = getattr(f, "resolved_step", None)
            gone = "" if resolved is None else f", resolved at step {resolved}"
            return f"{f.check} ({f.severity}{step}{gone})"  # type: ignore[attr-defined]

        names = ", ".join(said(f) for f in hits)
        return True, f"demo: fault {fault} caught by {names}; verdict {verdict or '?'}."
    got = ", ".join(f.check for f in raised) or "nothing"
    return False, (
        f"demo: fault {fault} was NOT caught: expected one of {', '.join(expected)}, the doctor raised {got}."
    )


def _run_once(
    command: list[str], title: str, plain: bool, report: Path | None, snapshot: Path | None
) -> tuple[int, object]:
    """Run one training under `run`'s machinery; returns (exit code, the doctor that watched it)."""
    from muvo_doctor.run.runner import Runner, RunOptions

    runner = Runner(RunOptions(command=command, report=report, snapshot=snapshot, plain=plain))
    # The dashboard title and the report's source: the demo's name, not a long python command line.
    runner.source = title
    code = runner.run()
    return code, runner.doctor


def main(args: argparse.Namespace) -> int:
    if args.list_faults:
        from muvo_model.train import main as train_main

        return int(train_main(["--list-faults"]))
    if args.story and args.fault:
        return _usage("--story runs its own faults; drop --fault (or drop --story)")

    from muvo_model.faults import FAULTS

    fault = args.fault or "none"
    if fault != "none" and fault not in FAULTS:
        return _usage(
            f"--fault {fault}: unknown fault; known faults: {', '.join(FAULTS)} (see --list-faults)"
        )
    if args.snapshot is not None:
        from muvo_doctor.face.frame import SnapshotError, check_snapshot_path

        try:
            check_snapshot_path(args.snapshot)
        except SnapshotError as exc:
            return _usage(str(exc))
    if args.report is not None and not args.report.resolve().parent.is_dir():
        return _usage(f"--report {args.report}: folder {args.report.parent} does not exist; create it first")
    for item in args.overrides:
        if "=" not in item:
            return _usage(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. --set data.train_frames=512")

    acts = STORY if args.story else (Act(fault=fault, title="", story=""),)
    ok_all = True
    for i, act in enumerate(acts, start=1):
        if act.story:
            _say(f"\n{act.title}\n\n{act.story}\n", args.plain)
        title = "muvo-doctor demo" + (f" --fault {act.fault}" if act.fault != "none" else "")
        command = train_command(act.fault, args.steps, args.overrides)
        code, doctor = _run_once(
            command,
            title,
            args.plain,
            _per_act(args.report, i, act.fault, args.story),
            _per_act(args.snapshot, i, act.fault, args.story),
        )
        if code != 0:
            print(f"muvo-doctor demo: the training exited with code {code}", file=sys.stderr)
            return code
        expected = FAULTS[act.fault].checks if act.fault != "none" else ()
        ok, sentence = _judge(act.fault, expected, doctor)
        ok_all &= ok
        _say(sentence, args.plain)
    return 0 if ok_all else 1
