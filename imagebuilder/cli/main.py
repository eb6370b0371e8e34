"""The command line: parse, set up logging and signals, run one command, map errors to exit codes.

Exit status: 0 done; 2 a user's mistake or the machine's state (one line and a hint); 3 checks failed
(boot-test, verify: the report says which); 130/143/129 interrupted (everything acquired was undone); 1 a
bug (with its traceback), or doctor finding the build tier incomplete.
"""

from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from imagebuilder import __version__
from imagebuilder.cli import boottest, build, cache, doctor, flash, init, kubeconfig, recipes, status, verify
from imagebuilder.cli.command import Command
from imagebuilder.core.context import Context, default_cache_dir, default_state_dir
from imagebuilder.core.errors import ImageBuilderError, Interrupted, NeedsRoot
from imagebuilder.core.isolation import isolated, run_isolated
from imagebuilder.core.log import log, setup_logging
from imagebuilder.core.run import is_root

# In the order `--help` lists them.
COMMANDS: list[Command] = [*init.COMMANDS, *recipes.COMMANDS, *status.COMMANDS, *flash.COMMANDS, *build.COMMANDS,
                           *kubeconfig.COMMANDS, *verify.COMMANDS, *boottest.COMMANDS, *cache.COMMANDS,
                           *doctor.COMMANDS]


# The options every command takes, before or after its name; None: the default folder.
GLOBAL_DEFAULTS = {"debug": False, "verbose": False, "cache_dir": None, "state_dir": None}


def global_options() -> argparse.ArgumentParser:
    """The options of every command, as a parent parser. Their defaults are SUPPRESS: a copy on a command's
    parser then sets only what was given after the command, never undoing what was given before it."""
    options = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    options.add_argument("--debug", action="store_true", help="log every command run and show tracebacks")
    options.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    options.add_argument("--cache-dir", type=Path,
                         help=f"downloads, bases and stages (default: {default_cache_dir()})")
    options.add_argument("--state-dir", type=Path,
                         help=f"per-cluster secrets such as the k3s token (default: {default_state_dir()}/CLUSTER)")
    return options


def build_parser(commands: Sequence[Command]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagebuilder", parents=[global_options()],
        description="Turn one YAML recipe describing a Raspberry Pi cluster into flashable SD-card images.",
    )
    # The defaults go on this copy's actions only: a parent shares its action objects with its children,
    # so the commands get another copy, whose defaults stay SUPPRESS.
    parser.set_defaults(**GLOBAL_DEFAULTS)
    parser.add_argument("--version", action="version", version=f"imagebuilder {__version__}")
    options = global_options()
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in commands:
        p = sub.add_parser(command.name, help=command.help, description=command.help, parents=[options])
        command.add_arguments(p)
        p.set_defaults(_command=command)
    return parser


def check_command_name(argv: Sequence[str], commands: Sequence[Command]) -> None:
    """A mistyped command: one line with the nearest names, instead of argparse's list of every command."""
    probe = argparse.ArgumentParser(add_help=False, parents=[global_options()], exit_on_error=False)
    probe.add_argument("command", nargs="?")
    try:
        word = probe.parse_known_args(argv)[0].command
    except argparse.ArgumentError:
        return  # a global option without its value: the real parser says so
    names = [c.name for c in commands]
    if word is None or word in names:
        return
    close = difflib.get_close_matches(word, names, n=3)
    listed = "imagebuilder --help lists the commands"
    raise ImageBuilderError(f"unknown command {word!r}",
                            f"did you mean {' or '.join(close)}? ({listed})" if close else listed)


class _Signals:
    """Turn SIGINT, SIGTERM and SIGHUP into Interrupted, once: a second signal must not break the unwinding."""

    def __init__(self) -> None:
        self.received: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            log.warning("still cleaning up after %s; please wait", signal.Signals(signum).name)
            return
        self.received = signum
        raise Interrupted(signum)

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)
        # A closed ssh session or terminal: the same orderly unwinding, not a half-done build.
        signal.signal(signal.SIGHUP, self)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        check_command_name(argv, COMMANDS)
    except ImageBuilderError as e:
        return report(e, debug=False)
    args = build_parser(COMMANDS).parse_args(argv)
    setup_logging(verbose=args.verbose, debug=args.debug)
    ctx = Context(debug=args.debug)
    if args.cache_dir is not None:
        ctx.cache_dir = args.cache_dir.resolve()
    else:
        ctx.give_back(ctx.cache_dir)  # under sudo: in the home of the person who ran it, and theirs
    if args.state_dir is not None:
        ctx.state_root = args.state_dir.resolve()
    else:
        ctx.give_back(ctx.state_root)
    command: Command = args._command
    if command.needs_root(args) and not is_root():
        return report(NeedsRoot(f"imagebuilder {command.name} needs root (loop devices, mounts, chroot)",
                                f"run it as root: sudo imagebuilder {command.name} ..."), args.debug)
    if is_root() and command.isolate(args) and not isolated():
        try:
            return run_isolated(lambda: run_command(ctx, command, args))
        except ImageBuilderError as e:
            return report(e, args.debug)
    return run_command(ctx, command, args)


def report(error: ImageBuilderError, debug: bool) -> int:
    if debug:
        log.exception("error")
    for line in error.lines():
        print(line, file=sys.stderr)
    return error.exit_status


def run_command(ctx: Context, command: Command, args: argparse.Namespace) -> int:
    """Run one command on its ExitStack; map what ends it to an exit status."""
    signals = _Signals()
    signals.install()
    try:
        with ctx.stack:
            return command.run(ctx, args)
    except ImageBuilderError as e:
        return report(e, args.debug)
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"imagebuilder: interrupted by {signal.Signals(signum).name}; everything acquired was undone",
              file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:
        # The reader went away (`imagebuilder images | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
