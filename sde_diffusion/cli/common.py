"""Argument handling shared by the ``sde-diffusion`` commands: one-line usage errors, common options, solver
specifications and output folders."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

__all__ = [
    "UsageError",
    "OneLineErrorParser",
    "int_list",
    "flatten",
    "add_common",
    "setup_torch",
    "check_choice",
    "check_problem",
    "solver_specs",
    "progress",
    "new_out_dir",
]


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with one-line errors (``prog: error: message``) and exit status 2."""

    def error(self, message: str):  # pragma: no cover - exercised through subprocesses
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------------------------------------------------------------
# shared argument handling
# ---------------------------------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def flatten(lists) -> list[int] | None:
    return None if lists is None else sorted({v for chunk in lists for v in chunk})


def add_common(p: argparse.ArgumentParser, *, problem: str = "ring") -> None:
    p.add_argument("--problem", default=problem, help=f"built-in problem (default {problem}); see --help of study")
    p.add_argument("--schedule", default="vp-linear", help="vp-linear | vp-cosine | vp-discrete | ve | edm")
    p.add_argument("--grid", default="logsnr", help="time grid: logsnr | time_uniform | time_quadratic | karras")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64", help="dtype of the solvers")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they only show on a terminal)")


def setup_torch(args) -> None:
    import torch

    torch.set_num_threads(max(int(args.threads), 1))
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {args.device!r} is not available (torch.cuda.is_available() is False)")
    try:
        torch.device(args.device)
    except RuntimeError as e:
        raise UsageError(f"bad device {args.device!r}: {e}") from None


def check_choice(kind: str, value: str, valid) -> str:
    if value not in valid:
        raise UsageError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}")
    return value


def check_problem(args, *, attr: str = "problem") -> None:
    from ..grids import GRIDS
    from ..studies.problems import PROBLEMS, SCHEDULES

    check_choice("problem", getattr(args, attr), list(PROBLEMS))
    check_choice("schedule", args.schedule, list(SCHEDULES))
    check_choice("grid", args.grid, list(GRIDS))


def solver_specs(texts: list[str]) -> list:
    """Parse and build every solver configuration up front, so that a bad name or option is a usage error."""
    from ..studies.specs import parse_solver_spec

    specs = []
    for text in texts:
        try:
            spec = parse_solver_spec(text)
            spec.build()
        except (ValueError, TypeError) as e:
            raise UsageError(str(e).replace("\n", " ")) from None
        specs.append(spec)
    return specs


def progress(args) -> bool | None:
    return False if args.no_progress else None


def new_out_dir(out: str | None, prefix: str) -> Path:
    if out:
        path = Path(out)
    else:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(f"{prefix}-{stamp}")
        k = 1
        while path.exists():
            path = Path(f"{prefix}-{stamp}-{k}")
            k += 1
    path.mkdir(parents=True, exist_ok=True)
    return path
