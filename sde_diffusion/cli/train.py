"""``sde-diffusion train``: train a score network on a synthetic data set."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import UsageError, check_choice, progress, setup_torch

__all__ = ["HELP", "add_arguments", "run"]

HELP = "train a score network on a synthetic data set; writes OUT/ckpt.pt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        default="ring",
        help="data set: ring | moons | swiss_roll | checkerboard | shapes | digits (default ring)",
    )
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--out", default="run", help="output folder; the checkpoint is OUT/ckpt.pt (default ./run)")
    p.add_argument("--schedule", default="vp-linear", help="vp-linear | vp-cosine | vp-discrete | ve | edm")
    p.add_argument("--prediction", default="eps", choices=["eps", "x0", "v", "score"])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (0: only at the end)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT/ckpt.pt exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (mixed precision on cuda)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)")


def run(args) -> int:
    """Train a score network (an MLP for 2-D data, a small UNet for images) and write OUT/ckpt.pt."""
    import torch

    from ..training.data import DATASETS
    from ..training.nets import MLPScoreNet, UNet
    from ..studies.problems import SCHEDULES, get_schedule
    from ..training.train import train

    setup_torch(args)
    check_choice("data set", args.data, sorted(DATASETS))
    check_choice("schedule", args.schedule, list(SCHEDULES))
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
    if not args.lr > 0:
        raise UsageError("--lr must be positive")
    torch.manual_seed(args.seed)
    images = args.data in ("shapes", "digits")
    net = UNet(in_channels=1) if images else MLPScoreNet(dim=2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = train(
        net.to(torch.float32),
        get_schedule(args.schedule),
        args.data,
        prediction=args.prediction,
        checkpoint=out / "ckpt.pt",
        resume=not args.no_resume,
        device=args.device,
        progress=progress(args),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
    )
    tail = res.losses[-min(100, len(res.losses)) :]
    print(
        f"trained {args.data} for {res.step} steps in {time.perf_counter() - t0:.1f} s; "
        f"mean loss of the last {len(tail)} steps {sum(tail) / max(len(tail), 1):.4f}"
    )
    print(f"wrote {res.checkpoint}")
    return 0
