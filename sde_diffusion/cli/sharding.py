"""``sde-diffusion sample`` by blocks of global indices: the same code path for one process and for every rank of a
``torchrun`` job (see [`sde_diffusion.distributed`][sde_diffusion.distributed]).

Sample ``i`` starts from ``x_T`` drawn with its own generator seeded by
[`sample_seed`][sde_diffusion.distributed.sample_seed]``(seed, i)``; the samples are cut into blocks of
``--batch-size`` consecutive indices, one call of [`sample`][sde_diffusion.sample.sample] each (a stochastic
solver's noise from a generator seeded by ``(seed, block)``), and a rank runs a contiguous run of blocks. A block is
computed the same way whichever rank runs it, so the ranks' samples together are the single-process samples, bit
for bit on CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..distributed import (
    INDEX_NAME,
    Job,
    block_range,
    read_shard,
    sample_seed,
    shard_path,
    write_index,
    write_shard,
)

__all__ = ["SampledPart", "start_states", "sample_part", "write_sharded", "OUTPUTS_SHARDED"]

#: what a sharded run must not find in --out (shards of a crashed run are resumed)
OUTPUTS_SHARDED = (INDEX_NAME,)


@dataclass
class SampledPart:
    """A rank's samples ``x`` of global indices ``[start, stop)``, the time grid ``ts`` and what was spent (the
    largest ``nfe``/``steps`` of its blocks; ``None`` for a rank without samples), and the wall time."""

    x: torch.Tensor
    start: int
    stop: int
    ts: torch.Tensor | None
    nfe: int | None
    steps: int | None
    wall: float


def start_states(start, seed: int, lo: int, hi: int) -> torch.Tensor:
    """The start states of samples ``lo .. hi - 1``: sample ``i`` drawn by ``start(1, generator)`` with the
    generator seeded by ``sample_seed(seed, i)``."""
    gen = torch.Generator()
    return torch.cat([start(1, gen.manual_seed(sample_seed(seed, i))) for i in range(lo, hi)])


def sample_part(
    model, start, solver, steps, grid, *, seed, n, batch_size, job: Job, device, show, analytic_first_step=False
) -> SampledPart:
    """Run this rank's blocks of ``[0, n)`` (blocks of ``batch_size`` indices) and return its part."""
    from tqdm.auto import tqdm

    from ..sample import sample

    blocks = block_range(math.ceil(n / batch_size), job.rank, job.world_size)
    lo, hi = min(blocks.start * batch_size, n), min(blocks.stop * batch_size, n)
    x = torch.empty((hi - lo, *start(1, torch.Generator().manual_seed(0)).shape[1:]), dtype=torch.float64)
    spent, ts = (0, 0), None
    t0 = time.perf_counter()
    for k in tqdm(blocks, desc="batches", disable=True if len(blocks) <= 1 else show, leave=False):
        b_lo, b_hi = k * batch_size, min((k + 1) * batch_size, n)
        x_T = start_states(start, seed, b_lo, b_hi)
        gen = torch.Generator(device=device).manual_seed(sample_seed(seed, k, stream="noise"))
        res = sample(
            model,
            x_T,
            solver=solver,
            steps=steps,
            grid=grid,
            generator=gen if solver.stochastic else None,
            analytic_first_step=analytic_first_step,
        )
        x[b_lo - lo : b_hi - lo] = res.x.detach().to("cpu", torch.float64)
        spent = max(spent, (res.nfe, len(res.ts) - 1))  # an adaptive solver's may vary by block
        ts = res.ts if ts is None or len(res.ts) >= len(ts) else ts
        del x_T
    nfe, used = spent if ts is not None else (None, None)
    return SampledPart(x, lo, hi, ts, nfe, used, time.perf_counter() - t0)


def write_sharded(job: Job, out: Path, part_fn, run: dict, n: int, shown_count: int):
    """The sharded outputs of ``sample`` in a ``torchrun`` job, from every rank.

    Each rank resumes its shard ``OUT/samples.shard-R-of-W.pt`` when a complete one of the same run is there, else
    computes its part with ``part_fn()`` and writes the shard (atomically). Rank 0 then gathers the shard entries and
    the first ``shown_count`` samples (for the metric and the plot) and returns ``(shown, ts, nfe, steps, wall,
    resumed ranks)``; it writes the index ``OUT/samples.index.json`` itself, after its caller's plot (see
    [`write_index`][sde_diffusion.distributed.write_index]), with the returned ``finish(entries)``. The other ranks
    return ``None``.
    """
    path = shard_path(out, job.rank, job.world_size)
    state = read_shard(path, run)
    if state is not None:
        x, lo, hi = state["x"], state["start"], state["stop"]
        meta, wall, resumed = state["run_meta"], 0.0, True
        checksum = state["checksum"]
    else:
        part = part_fn()
        x, lo, hi, wall, resumed = part.x, part.start, part.stop, part.wall, False
        meta = {"ts": part.ts, "nfe": part.nfe, "steps": part.steps}
        checksum = write_shard(path, x, lo, run, run_meta=meta)
    entry = {"file": path.name, "rank": job.rank, "start": lo, "stop": hi, "checksum": checksum}
    first = x[: max(0, min(hi, shown_count) - lo)]
    parts = job.gather((entry, first, meta, wall, resumed))
    if not job.is_main:
        return None
    assert parts is not None  # (rank 0 gathers every rank's part)
    entries = [p[0] for p in parts]
    shown = torch.cat([p[1] for p in parts])
    metas = [p[2] for p in parts if p[2]["nfe"] is not None]
    nfe, steps = max((m["nfe"], m["steps"]) for m in metas)
    ts = max((m["ts"] for m in metas), key=len)
    resumed_ranks = [p[0]["rank"] for p in parts if p[4]]

    def finish() -> Path:
        """Write the index last and remove shards of other world sizes (an earlier, crashed layout)."""
        index = write_index(out, entries, run, n)
        keep = {e["file"] for e in entries}
        for stale in out.glob("samples.shard-*-of-*.pt"):
            if stale.name not in keep:
                stale.unlink()
        return index

    return shown, ts, nfe, steps, max(p[3] for p in parts), resumed_ranks, finish
