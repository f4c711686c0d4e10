"""The ``sde-diffusion`` command line: one module per command.

Each command module (``schedules``, ``solvers``, ``study``, ``sample``, ``train``, ``optimise_grid``,
``calibrate``) exposes ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``;
[`COMMANDS`][sde_diffusion.cli.COMMANDS] maps the
command names to them.
Errors that are the user's (unknown names, bad options, unusable output paths or checkpoints) print one line and
exit with status 2 -- never a traceback: [`UsageError`][sde_diffusion.cli.common.UsageError] for what the commands
check, and argparse's own errors are printed on one line too. Every command checks its arguments and its output
paths before it starts working, and never overwrites a result: ``study``, ``sample`` and ``optimise-grid`` refuse an
``--out`` that already holds their outputs. Ctrl-C prints one line and exits with status 130 (``train`` first
finishes its step and writes its checkpoint; SIGTERM: 143).

Commands:

* ``schedules`` -- table of the built-in noise schedules;
* ``solvers`` -- every registered solver with its declared order, NFE per step, stochasticity and reference;
* ``study`` -- convergence / order studies on the built-in problems; writes ``study.json`` and ``study.png``;
* ``sample`` -- sample a built-in problem with one solver; writes ``samples.pt`` and ``samples.png``;
* ``train`` -- train a score network on a synthetic data set; writes ``OUT/ckpt.pt``;
* ``optimise-grid`` (alias ``optimize-grid``) -- optimise the time grid of a solver at an NFE budget;
* ``calibrate`` -- choose the solver and grid of a trained checkpoint at an NFE budget (``CKPT.calibration.json``,
  which ``sample --checkpoint`` then uses).
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from . import calibrate, optimise_grid, sample, schedules, solvers, study, train
from .common import OneLineErrorParser, UsageError

__all__ = ["main", "COMMANDS", "UsageError", "build_parser"]

#: command name -> its module (``HELP``, ``add_arguments``, ``run``)
COMMANDS: dict[str, ModuleType] = {
    "schedules": schedules,
    "solvers": solvers,
    "study": study,
    "sample": sample,
    "train": train,
    "optimise-grid": optimise_grid,
    "calibrate": calibrate,
}
ALIASES = {"optimise-grid": ["optimize-grid"]}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every command and flag); also used to generate the CLI reference."""
    parser = OneLineErrorParser(
        prog="sde-diffusion",
        description="Diffusion models as SDEs and probability-flow ODEs: solvers, order studies, oracles.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_arguments(
            sub.add_parser(name, help=module.HELP, description=module.HELP, aliases=ALIASES.get(name, []))
        )
    return parser


def canonical_command(command: str) -> str:
    """The command name an alias stands for."""
    for name, aliases in ALIASES.items():
        if command in aliases:
            return name
    return command


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    command = canonical_command(args.command)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for messages such as "resume with"
    try:
        return int(COMMANDS[command].run(args) or 0)
    except UsageError as e:
        print(f"sde-diffusion {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sde-diffusion {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
