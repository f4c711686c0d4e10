"""Plans are structures of arrays; the loop's Python heap does not grow with the step count and what stays held after
a call is bounded in bytes and can be cleared (issue 15, item 5)."""

import gc
import tracemalloc

import torch

import sde_diffusion as sd
from sde_diffusion import PointMass, VPLinear, sample
from sde_diffusion.solvers import base

SCH = VPLinear()
MODEL = PointMass(torch.tensor([0.3, -0.2])).model(SCH)


def _heap(fn):
    """(peak growth during ``fn()``, growth still held after it) of the Python heap, in bytes."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        gc.collect()
        now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before, now - before


def _run(steps, solver="ddim"):
    grid = torch.linspace(SCH.t_max, SCH.t_min, steps + 1, dtype=torch.float64)
    return lambda: sample(MODEL, torch.ones(2, 2), solver=solver, grid=grid)


def _small_limits(monkeypatch):
    """Shrink the cached-rows limit so that "long" grids stay cheap to run under tracemalloc."""
    monkeypatch.setattr(base, "ROWS_CACHED_UP_TO", 64)
    monkeypatch.setattr(base, "ROW_CHUNK", 32)


def test_heap_per_step_is_constant_for_long_grids(monkeypatch):
    _small_limits(monkeypatch)
    sd.clear_caches()
    n1, n2 = 500, 2500
    peak1, _ = _heap(_run(n1))
    sd.clear_caches()
    peak2, _ = _heap(_run(n2))
    per_step = (peak2 - peak1) / (n2 - n1)
    # one step record costs ~1 KB of Python objects; a long grid keeps only a chunk of them alive
    print(f"peak heap {peak1} B ({n1} steps), {peak2} B ({n2} steps): {per_step:.1f} B/step")
    assert per_step < 64, (peak1, peak2, per_step)


def test_held_after_the_call_is_bounded_and_clearable(monkeypatch):
    _small_limits(monkeypatch)
    sd.clear_caches()
    _, held = _heap(_run(2000))
    print(f"held after the call: {held} B")
    assert held < 64 * 1024, held  # the cached plan keeps its columns (tensors), not one object per step
    assert 0 < base.plan_cache_bytes() <= base.PLAN_CACHE_BYTES
    sd.clear_caches()
    assert base.plan_cache_bytes() == 0


def test_plan_is_a_structure_of_arrays_and_cache_bounded_by_bytes(monkeypatch):
    sd.clear_caches()
    sample(MODEL, torch.ones(2, 2), solver="dpm_solver++", steps=30)
    ((_, plan, size),) = base._PLAN_CACHE.values()
    assert plan.num_steps == 30 and all(v.shape[0] == 30 for v in plan.columns.values() if hasattr(v, "shape"))
    assert len(plan.rows) == 30 and plan.rows[3].index == 3 and plan.rows[-1].last
    # a budget of two such plans keeps at most two
    monkeypatch.setattr(base, "PLAN_CACHE_BYTES", 2 * size + 1)
    for steps in (31, 32, 33, 34):
        sample(MODEL, torch.ones(2, 2), solver="dpm_solver++", steps=steps)
    assert len(base._PLAN_CACHE) <= 2 and base.plan_cache_bytes() <= 2 * size + 1
    sd.clear_caches()


def test_chunked_rows_give_the_same_answer(monkeypatch):
    """A grid longer than the cached-rows limit builds its records in chunks: same bits as one list."""
    _small_limits(monkeypatch)
    n = base.ROWS_CACHED_UP_TO + 10
    grid = torch.linspace(SCH.t_max, SCH.t_min, n + 1, dtype=torch.float64)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    sd.clear_caches()
    a = sample(MODEL, x, solver="dpm_solver++", grid=grid).x
    assert base._PLAN_CACHE and all(entry[1].rows is None for entry in base._PLAN_CACHE.values())
    sd.clear_caches()
    monkeypatch.setattr(base, "ROWS_CACHED_UP_TO", n)
    b = sample(MODEL, x, solver="dpm_solver++", grid=grid).x
    sd.clear_caches()
    assert torch.equal(a, b)


def test_vector_columns_become_tuples_per_step():
    """A (N, K) column reaches the step as a K-tuple (floats for a shared grid, (B, 1) device tensors per sample)."""
    from sde_diffusion.solvers.base import Solver, vector_column

    class Probe(Solver):
        def coefficients(self, schedule, ts, table):
            return {"w": vector_column(torch.stack([table.h, 2 * table.h, 3 * table.h], -1))}

        def step(self, model, x, state, c, noise):
            return x, state + (c.w,)

    x = torch.zeros(2, 1)
    shared = base.prepare_plan(Probe(), SCH, torch.linspace(1.0, 0.1, 4, dtype=torch.float64), x, cache=False)
    c = shared.row(1)
    assert isinstance(c.w, tuple) and c.w == (c.h, 2 * c.h, 3 * c.h)
    ts = torch.stack([torch.linspace(1.0, 0.1, 4), torch.linspace(0.9, 0.2, 4)], 1).double()
    per_sample = base.prepare_plan(Probe(), SCH, ts, x, cache=False).row(2)
    assert len(per_sample.w) == 3 and per_sample.w[2].shape == (2, 1)
    torch.testing.assert_close(per_sample.w[2], 3 * per_sample.h)
