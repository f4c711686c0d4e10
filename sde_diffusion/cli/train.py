"""``sde-diffusion train``: train a score network on a synthetic data set."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from .common import (
    UsageError,
    check_choice,
    check_out_dir,
    non_negative_int,
    positive_float,
    positive_int,
    progress,
    setup_torch,
)

__all__ = ["HELP", "add_arguments", "run"]

HELP = "train a score network on a synthetic data set; writes OUT/ckpt.pt"

EPILOG = (
    "Resuming: when OUT/ckpt.pt exists the run continues from it (unless --no-resume). It must have been written "
    "with the same --data, --schedule, --prediction, --batch-size, --lr and --seed (and network): a difference is "
    "refused with its name, and the checkpoint is left untouched. --steps (more or fewer in total), "
    "--checkpoint-every, --device, --threads and --no-progress may change. A checkpoint that is empty, unreadable or "
    "corrupted (its checksum does not match) is refused; temporary files OUT/ckpt.pt.*.tmp of a killed run are "
    "removed. Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes the checkpoint and exits with status 130 "
    "(143 for SIGTERM); the same command then resumes."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="ring",
        help="data set: ring | moons | swiss_roll | checkerboard | shapes | digits (default ring)",
    )
    p.add_argument("--steps", type=positive_int, default=2000, help="total optimizer steps (default 2000)")
    p.add_argument("--out", default="run", help="output folder; the checkpoint is OUT/ckpt.pt (default ./run)")
    p.add_argument("--schedule", default="vp-linear", help="vp-linear | vp-cosine | vp-discrete | ve | edm")
    p.add_argument("--prediction", default="eps", choices=["eps", "x0", "v", "score"])
    p.add_argument("--batch-size", type=positive_int, default=512)
    p.add_argument("--lr", type=positive_float, default=2e-3)
    p.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=500,
        help="steps between checkpoints (0: only at the end)",
    )
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/ckpt.pt exists (overwrites it)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (mixed precision on cuda)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)")
    p.epilog = EPILOG


def run(args) -> int:
    """Train a score network (an MLP for 2-D data, a small UNet for images) and write OUT/ckpt.pt. Under
    ``torchrun`` the network trains with DistributedDataParallel, each rank on its rows of every --batch-size batch
    (the global batch), and rank 0 writes the checkpoint (see
    [`sde_diffusion.distributed`][sde_diffusion.distributed])."""
    from ..distributed import Job

    with Job(args.device) as job:
        args.device = job.device
        return _run(args, job)


def _run(args, job) -> int:
    import torch

    from ..studies.problems import SCHEDULES, get_schedule
    from ..training.data import DATASETS
    from ..training.nets import MLPScoreNet, UNet
    from ..training.train import CheckpointError, CheckpointMismatch, TrainConfig, TrainingInterrupted, train

    setup_torch(args)
    check_choice("data set", args.data, sorted(DATASETS))
    check_choice("schedule", args.schedule, list(SCHEDULES))
    settings = dict(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    try:
        config = TrainConfig(**settings)
    except ValueError as e:  # the argparse types already refuse these; kept as the one source of the rules
        raise UsageError(str(e)) from None
    out = Path(args.out)
    check_out_dir(args.out)
    torch.manual_seed(args.seed)
    images = args.data in ("shapes", "digits")
    net = UNet(in_channels=1) if images else MLPScoreNet(dim=2)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        res = train(
            net.to(torch.float32),
            get_schedule(args.schedule),
            args.data,
            prediction=args.prediction,
            config=config,
            checkpoint=out / "ckpt.pt",
            resume=not args.no_resume,
            device=args.device,
            progress=progress(args),
        )
    except (CheckpointMismatch, CheckpointError) as e:
        raise UsageError(f"{e}; --no-resume starts afresh (overwriting it)") from None
    except TrainingInterrupted as e:
        again = [a for a in getattr(args, "argv", sys.argv[1:]) if a != "--no-resume"]
        print(
            f"sde-diffusion train: {e}; resume with: sde-diffusion {shlex.join(again)}",
            file=sys.stderr,
        )
        return 128 + e.signum
    if not job.is_main:
        return 0
    tail = res.losses[-min(100, len(res.losses)) :]
    print(
        f"trained {args.data} for {res.step} steps in {time.perf_counter() - t0:.1f} s; "
        f"mean loss of the last {len(tail)} steps {sum(tail) / max(len(tail), 1):.4f}"
    )
    print(f"wrote {res.checkpoint}")
    return 0
