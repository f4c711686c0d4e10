"""Per-step loop overhead of this tree against another commit, in one process.

The stand-alone ``benchmarks/overhead.py`` swings by tens of percent on a shared machine between runs; a regression
check needs both trees timed side by side. This script copies ``sde_diffusion`` of another checkout into a temporary
folder under the name ``sde_old`` (rewriting its absolute ``sde_diffusion`` imports), imports it next to this tree's
package and times both with a zero-cost model, interleaved round by round (1 thread, float32, min over rounds of
``calls`` calls, per step). What is compared is everything around the network: the loop, the solver's arithmetic,
``Model.predict``, the finiteness check.

Usage::

    git worktree add /tmp/old <commit>
    python benchmarks/overhead_ab.py /tmp/old [--steps 48] [--rounds 4] [--calls 30] [--solvers ddim heun ...]
"""

from __future__ import annotations

import argparse
import importlib
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sde_diffusion  # noqa: E402

#: (name, options) compared by default; options must be valid in both trees
DEFAULT_SOLVERS = (
    ("ddim", {}),
    ("euler", {}),
    ("heun", {}),
    ("dpm_solver++", {}),
    ("dpm_solver++", {"order": 3, "multistep": True}),
    ("dpm_solver", {}),
    ("dpm_solver++", {"order": 3, "multistep": False}),
    ("dpm_solver", {"order": 2, "multistep": False}),
    ("deis", {}),
    ("unipc", {}),
    ("ipndm", {}),
    ("pndm", {}),
    ("plms", {}),
)


def import_old(tree: Path, into: Path):
    """``tree/sde_diffusion`` imported as ``sde_old`` from a copy in ``into``."""
    dst = into / "sde_old"
    shutil.copytree(tree / "sde_diffusion", dst)
    pattern = re.compile(r"\b(from|import) sde_diffusion\b")
    for f in dst.rglob("*.py"):
        text = f.read_text()
        new = pattern.sub(r"\1 sde_old", text)
        if new != text:
            f.write_text(new)
    sys.path.insert(0, str(into))
    return importlib.import_module("sde_old")


def per_step(pkg, name: str, opts: dict, x, out, steps: int, calls: int, check: bool) -> float:
    model = pkg.Model(lambda x_, t_: out, pkg.VPLinear(), "eps")
    solver = pkg.solvers.get_solver(name, **opts)

    def run():
        pkg.sample(model, x, solver=solver, steps=steps, check_finite=check)

    run()
    run()
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best / steps


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old_tree", type=Path, help="a checkout of the commit to compare with")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--solvers", nargs="+", help="registry names (default options) instead of the default list")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    specs = [(n, {}) for n in args.solvers] if args.solvers else list(DEFAULT_SOLVERS)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((1, 4, 64, 64), generator=g)
    out = torch.randn((1, 4, 64, 64), generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        old = import_old(args.old_tree, Path(tmp))
        best: dict = {}
        for r in range(args.rounds):
            pkgs = (("old", old), ("new", sde_diffusion))
            for name, opts in specs:
                for check in (False, True):
                    for tag, pkg in pkgs if r % 2 == 0 else pkgs[::-1]:
                        key = (name, repr(opts), check, tag)
                        v = per_step(pkg, name, opts, x, out, args.steps, args.calls, check)
                        best[key] = min(best.get(key, float("inf")), v)
    print(f"us/step, {args.steps} steps, 1x4x64x64 float32, 1 thread, min over {args.rounds} rounds x {args.calls}")
    print(f"{'solver':50s} {'check off: old -> new (ratio)':>32s}   {'check on: old -> new (ratio)':>32s}")
    for name, opts in specs:
        cells = []
        for check in (False, True):
            a, b = best[(name, repr(opts), check, "old")], best[(name, repr(opts), check, "new")]
            cells.append(f"{a * 1e6:8.2f} -> {b * 1e6:8.2f} ({b / a:.3f})")
        label = name + (f" {opts}" if opts else "")
        print(f"{label:50s} {cells[0]:>32s}   {cells[1]:>32s}")
    return best


if __name__ == "__main__":
    main()
