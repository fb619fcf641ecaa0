"""`muvo-doctor run [OPTIONS] -- COMMAND [ARG...]`: wrap a training command and watch it live."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "wrap a training command: pass it through unchanged, watch it live, alert when it dies"

EPILOG = """\
examples:
  muvo-doctor run -- python train.py --lr 3e-4
  muvo-doctor run --report report.json --fail-on dead -- torchrun --nproc_per_node 2 train.py
  muvo-doctor run --notify https://hooks.slack.com/services/... --stop-on dead -- python train.py
Python programs are instrumented without code changes once they import torch; any other
command is judged by the numbers it prints (loss=0.6931, acc 89.9%, ...). The verdict is
healthy only with evidence of learning; without it (no steps, a crash before training) it is
inconclusive.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--report", metavar="PATH", type=Path, help="write the final JSON report here")
    parser.add_argument(
        "--record",
        metavar="PATH",
        type=Path,
        help="keep the telemetry stream (JSON lines) here; `muvo-doctor audit PATH` reads it later",
    )
    parser.add_argument("--plain", action="store_true", help="no live screen: one line per new finding")
    parser.add_argument(
        "--snapshot", metavar="PATH", type=Path, help="save the final dashboard as PATH.svg or PATH.html"
    )
    parser.add_argument(
        "--notify",
        metavar="URL",
        help="POST an alert to URL when the run is confirmed dead (and if it recovers), in the body of "
        "--notify-format; redirects are never followed (a 3xx is a failed delivery)",
    )
    parser.add_argument(
        "--notify-format",
        choices=["json", "slack", "discord", "teams", "ntfy"],
        help="the body --notify sends (default: from the URL's host: slack for hooks.slack.com, discord for "
        "discord.com, teams for *.webhook.office.com, ntfy for ntfy.sh; json otherwise: text, content, "
        "verdict, finding, source)",
    )
    parser.add_argument(
        "--notify-cmd",
        metavar="CMD",
        help="run CMD (a shell command) when the run is confirmed dead (and if it recovers); "
        "env MUVO_DOCTOR_MESSAGE, MUVO_DOCTOR_CHECK, MUVO_DOCTOR_VERDICT",
    )
    parser.add_argument(
        "--stop-on",
        choices=["dead"],
        help="stop a dead run early, once dead for max(600 steps, half the step it turned dead at) "
        "(confirm_dead_steps, confirm_dead_fraction in --config): SIGINT (the program may save a "
        "checkpoint), then SIGTERM",
    )
    parser.add_argument(
        "--fail-on",
        choices=["warning", "dead"],
        help="exit 1 when the verdict reaches this level (otherwise: the command's exit code)",
    )
    parser.add_argument(
        "--no-redact",
        action="store_true",
        help="keep secrets (values of --api-key, TOKEN=..., user:pass@ in URLs, ...) in the command "
        "line shown in reports, records and alerts (default: redacted)",
    )
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="write --report/--record through a symbolic link (default: refuse, so its target is safe)",
    )
    parser.add_argument("--config", metavar="TOML", help="thresholds and cadence (see the README)")
    parser.add_argument("rest", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")


def _usage(msg: str) -> int:
    print(f"muvo-doctor run: {msg}", file=sys.stderr)
    return 2


def main(args: argparse.Namespace) -> int:
    command = list(args.rest)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        return _usage("no command given; usage: muvo-doctor run [OPTIONS] -- COMMAND [ARG...]")
    if args.snapshot is not None and args.snapshot.suffix.lower() not in (".svg", ".html", ".htm"):
        return _usage(f"--snapshot {args.snapshot}: use a .svg or .html file name")
    if args.notify is not None and not args.notify.startswith(("http://", "https://")):
        return _usage(f"--notify {args.notify}: not an http(s) URL; pass e.g. https://hooks.slack.com/...")
    for flag, path in (("--report", args.report), ("--record", args.record), ("--snapshot", args.snapshot)):
        if path is not None and not path.resolve().parent.is_dir():
            return _usage(
                f"{flag} {path}: folder {path.parent} does not exist; create it or pick another path"
            )
    for flag, path in (("--report", args.report), ("--record", args.record)):
        # Refused before the training starts (the writer refuses again, should one appear meanwhile).
        if path is not None and path.is_symlink() and not args.follow_symlinks:
            return _usage(
                f"{flag} {path}: a symbolic link; its target is left untouched. Pass --follow-symlinks "
                "to write through it, or pick another path"
            )

    config = None
    if args.config is not None:  # pydantic is imported after the child started, unless needed here
        from muvo_doctor.core.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            return _usage(str(exc))

    from muvo_doctor.run.runner import RunOptions, run

    opts = RunOptions(
        command=command,
        config=config,
        config_path=args.config,
        report=args.report,
        record=args.record,
        snapshot=args.snapshot,
        plain=args.plain,
        notify_url=args.notify,
        notify_cmd=args.notify_cmd,
        notify_format=args.notify_format,
        redact=not args.no_redact,
        follow_symlinks=args.follow_symlinks,
        stop_on=args.stop_on,
        fail_on=args.fail_on,
    )
    return run(opts)
