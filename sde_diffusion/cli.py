"""The ``sde-diffusion`` command line.

Each sub-command lives in a function ``cmd_<name>(args) -> int`` registered in :data:`COMMANDS` with its argument
builder. Errors that are the user's (unknown names, bad options) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

__all__ = ["main", "COMMANDS", "UsageError"]


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


def _add_schedules(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")


def cmd_schedules(args) -> int:
    """Print a table of the built-in schedules with alpha, sigma and lambda at t_min and t_max."""
    import torch

    from .schedules import EDM, SubVPLinear, VEGeometric, VPCosine, VPDiscrete, VPLinear

    dtype = getattr(torch, args.dtype)
    rows = [
        ("vp-linear", VPLinear()),
        ("vp-cosine", VPCosine()),
        ("vp-discrete", VPDiscrete.from_config({"num_train_timesteps": 1000, "beta_schedule": "linear"})),
        ("subvp-linear", SubVPLinear()),
        ("ve", VEGeometric()),
        ("edm", EDM()),
    ]
    head = f"{'name':<13} {'t':>8} {'alpha':>12} {'sigma':>12} {'lambda':>10}  class"
    print(head)
    print("-" * len(head))
    for name, sch in rows:
        for t in (sch.t_min, sch.t_max):
            tt = torch.tensor(t, dtype=dtype)
            a, s, lam = (float(v) for v in (sch.alpha(tt), sch.sigma(tt), sch.lambda_(tt)))
            print(f"{name:<13} {t:>8.4g} {a:>12.6g} {s:>12.6g} {lam:>10.4f}  {sch!r}")
            name = ""
    return 0


COMMANDS: dict[str, tuple[Callable, Callable, str]] = {
    "schedules": (_add_schedules, cmd_schedules, "table of the built-in noise schedules"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sde-diffusion",
        description="Diffusion models as SDEs and probability-flow ODEs: solvers, order studies, oracles.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add_args, _, help_) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _, run, _ = COMMANDS[args.command]
    try:
        return int(run(args) or 0)
    except UsageError as e:
        print(f"sde-diffusion {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
