"""``sde-diffusion calibrate``: choose the solver and time grid for a trained checkpoint at an NFE budget."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError, progress, setup_torch, solver_specs

__all__ = ["HELP", "add_arguments", "run", "calibration_for"]

HELP = "calibrate the solver and grid of a trained checkpoint at an NFE budget; writes CKPT.calibration.json"


#: --analytic-first-step's choices and what they ask calibrate for
AFS_CHOICES: dict[str, bool | str] = {"auto": "auto", "on": True, "off": False}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `sde-diffusion train`")
    p.add_argument("--nfe", type=int, default=10, help="NFE budget (default 10)")
    p.add_argument("--solvers", nargs="+", help="solver configurations to search (default: the automatic list)")
    p.add_argument("--pilot", type=int, default=128, help="pilot batch size (default 128)")
    p.add_argument("--heldout", type=int, default=256, help="held-out batch size (default 256)")
    p.add_argument(
        "--refine", type=int, default=3, help="configurations refined beyond the screening stage (default 3)"
    )
    p.add_argument("--budget", type=float, help="wall-clock budget in seconds (default: none)")
    p.add_argument(
        "--analytic-first-step",
        choices=tuple(AFS_CHOICES),
        default="auto",
        help="search AMED's analytical first step (arXiv:2312.00094) too (auto, the default), only with it (on) or "
        "never (off)",
    )
    p.add_argument("--rtol", type=float, default=1e-8, help="tolerance of the dopri5 reference (default 1e-8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)")
    p.add_argument("--out", help="output file (default: CKPT.calibration.json next to the checkpoint)")


def calibration_for(checkpoint, nfe: int | None):
    """The calibration written next to ``checkpoint`` (``{stem}.calibration.json``) when there is one for the budget
    ``nfe`` (any budget when ``nfe`` is ``None``), else ``None``."""
    from ..calibration import CALIBRATION_FILE, Calibration

    path = Path(checkpoint)
    path = path.with_name(CALIBRATION_FILE.format(stem=path.stem))
    if not path.is_file():
        return None
    cal = Calibration.load(path)
    return cal if nfe is None or cal.nfe == nfe else None


def run(args) -> int:
    import torch

    from ..calibration import CALIBRATION_FILE, calibrate
    from ..training.train import load_checkpoint, load_model

    setup_torch(args)
    path = Path(args.checkpoint)
    if not path.is_file():
        raise UsageError(f"--checkpoint: no such file {str(path)!r}")
    if args.nfe < 1:
        raise UsageError("--nfe must be a positive integer")
    solvers = "auto" if not args.solvers else [s.label for s in solver_specs(args.solvers)]
    try:
        shape = tuple(load_checkpoint(path).get("data_shape") or ())
        model = load_model(path, device=args.device, dtype=torch.float64)  # the reference integrates in float64
    except (ValueError, RuntimeError, KeyError) as e:
        raise UsageError(f"--checkpoint {str(path)!r}: {e}") from None
    if not shape:
        raise UsageError(f"--checkpoint {str(path)!r} records no data shape")
    try:
        cal = calibrate(
            model,
            args.nfe,
            x_shape=shape,
            solvers=solvers,
            pilot=args.pilot,
            heldout=args.heldout,
            seed=args.seed,
            budget_s=args.budget,
            refine=args.refine,
            rtol=args.rtol,
            analytic_first_step=AFS_CHOICES[args.analytic_first_step],
            device=args.device,
            dtype=torch.float64,
            progress=progress(args),
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = Path(args.out) if args.out else path.with_name(CALIBRATION_FILE.format(stem=path.stem))
    cal.save(out)
    b = cal.baseline
    print(
        f"NFE {cal.nfe}: {cal.solver} @ {cal.grid}{' +AFS' if cal.analytic_first_step else ''}: "
        f"held-out RMS error {cal.heldout_error:.3e} "
        f"(best fixed configuration {b['solver']} @ {b['grid']}: {b['heldout_error']:.3e}; "
        f"reference error {cal.reference_error:.1e}); {cal.elapsed_s:.1f} s"
    )
    print(f"wrote {out}")
    return 0
