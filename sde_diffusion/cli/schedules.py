"""``sde-diffusion schedules``: a table of the built-in noise schedules."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "table of the built-in noise schedules"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64")


def run(args) -> int:
    """Print a table of the built-in schedules with alpha, sigma and lambda at t_min and t_max."""
    import torch

    from ..schedules import EDM, SubVPLinear, VEGeometric, VPCosine, VPDiscrete, VPLinear

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
