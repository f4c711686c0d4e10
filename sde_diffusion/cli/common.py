"""Argument handling shared by the ``sde-diffusion`` commands: one-line usage errors, common options, checked
number types, solver specifications, output paths (checked before any work) and the memory available."""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
from pathlib import Path

__all__ = [
    "UsageError",
    "OneLineErrorParser",
    "int_list",
    "positive_int",
    "non_negative_int",
    "positive_float",
    "non_negative_float",
    "flatten",
    "add_common",
    "setup_torch",
    "check_choice",
    "check_problem",
    "check_grid_solver",
    "solver_specs",
    "progress",
    "new_out_dir",
    "add_overwrite",
    "check_out_dir",
    "check_out_file",
    "available_memory",
    "format_bytes",
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


def _number(text: str, convert, ok, what: str):
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _number(text, int, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _number(text, int, lambda v: v >= 0, "a non-negative integer")


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, "a non-negative finite number")


def flatten(lists) -> list[int] | None:
    return None if lists is None else sorted({v for chunk in lists for v in chunk})


def add_common(p: argparse.ArgumentParser, *, problem: str = "ring") -> None:
    p.add_argument("--problem", default=problem, help=f"built-in problem (default {problem}); see --help of study")
    p.add_argument("--schedule", default="vp-linear", help="vp-linear | vp-cosine | vp-discrete | ve | edm")
    p.add_argument("--grid", default="logsnr", help="time grid: logsnr | time_uniform | time_quadratic | karras")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64", help="dtype of the solvers")
    p.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they only show on a terminal)")


def setup_torch(args) -> None:
    import torch

    torch.set_num_threads(int(args.threads))
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


def check_grid_solver(label: str, solver, schedule, command: str, *, adaptive_ok: bool = False) -> None:
    """Refuse, with the reason, a solver that cannot run on the time grid ``command`` chooses: an inversion (it
    runs forward, data -> noise), an adaptive solver (its controller chooses the steps; allowed with
    ``adaptive_ok``) or one that fixes its own grid (e.g. ``dpm_solver_fast:nfe=...``)."""
    if solver.direction != "backward":
        raise UsageError(
            f"solver {label!r} integrates forward in time (data -> noise: an inversion); {command} needs a solver "
            "that runs from noise to data"
        )
    if solver.adaptive and not adaptive_ok:
        raise UsageError(
            f"solver {label!r} is adaptive: its controller chooses the steps (set its rtol/atol options), so it has "
            f"no NFE budget or grid for {command} to set"
        )
    if solver.own_grid(schedule, None, None) is not None and not adaptive_ok:
        raise UsageError(f"solver {label!r} fixes its own steps and grid (see its options); {command} cannot set them")


def progress(args) -> bool | None:
    return False if args.no_progress else None


def _check_parents(path: Path, option: str) -> None:
    """Refuse a path under an existing file (``a/b`` where ``a`` is a file)."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {str(path)!r}: {str(parent)!r} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"{option} {str(path)!r}: cannot write in {str(parent)!r}")
            return


def add_overwrite(p: argparse.ArgumentParser) -> None:
    """The ``--overwrite`` flag: replace the outputs already in ``--out`` (refused otherwise)."""
    p.add_argument("--overwrite", action="store_true", help="replace the outputs already in --out (refused otherwise)")


def check_out_dir(
    out: str | None, *, option: str = "--out", outputs: tuple[str, ...] = (), overwrite: bool = False
) -> None:
    """Check an output folder before any work: not an existing file, not under a file, and (when ``outputs`` are
    given and not ``overwrite``) holding none of them already -- results are never overwritten silently."""
    if not out:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {out!r} is an existing file; give a folder")
    _check_parents(path, option)
    taken = [name for name in outputs if (path / name).exists()]
    if taken and not overwrite:
        raise UsageError(
            f"{option} {out!r} already holds {', '.join(taken)}; choose another folder, or pass --overwrite to "
            "replace them (results are never overwritten silently)"
        )


def check_out_file(out: str | None, *, option: str = "--out", overwrite: bool = False) -> None:
    """Check an output file before any work: not an existing folder, not an existing file (unless ``overwrite``),
    not under a file."""
    if not out:
        return
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"{option} {out!r} is an existing folder; give a file name")
    if path.exists() and not overwrite:
        raise UsageError(
            f"{option} {out!r} already exists; choose another name, or pass --overwrite to replace it (never "
            "overwritten silently)"
        )
    _check_parents(path, option)


def new_out_dir(out: str | None, prefix: str) -> Path:
    """Create the output folder ``out``, or a new ``PREFIX-YYYYmmdd-HHMMSS[-k]`` when ``out`` is empty."""
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


def available_memory(device: str) -> int | None:
    """Bytes that can still be allocated on ``device``: free GPU memory on CUDA, ``MemAvailable`` of
    ``/proc/meminfo`` on the host (``None`` where unknown)."""
    import torch

    if str(device).startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"  # pragma: no cover
