"""The per-grid float64 table: columns equal the schedule, ``at_lambda`` round-trips the half log-SNR."""

import pytest
import torch
from solver_checks import all_schedules

from sde_diffusion import VPLinear
from sde_diffusion.grids import make_grid
from sde_diffusion.solvers.table import STEP_COLUMNS, GridTable

SCHEDULES = all_schedules({"num_train_timesteps": 1000, "beta_schedule": "scaled_linear"})


@pytest.mark.parametrize("sch", SCHEDULES, ids=repr)
def test_columns_are_the_schedule_on_the_grid(sch):
    ts = make_grid(sch, "logsnr", 12)
    tab = GridTable(sch, ts)
    torch.testing.assert_close(tab.lam_grid, sch.lambda_(ts), rtol=0, atol=0)
    torch.testing.assert_close(tab.alpha, sch.alpha(ts[:-1]), rtol=1e-15, atol=0)
    torch.testing.assert_close(tab.sigma_next, sch.sigma(ts[1:]), rtol=1e-15, atol=0)
    assert torch.equal(tab.h, tab.lam_next - tab.lam) and bool((tab.h > 0).all())
    assert tuple(tab.keys()) == STEP_COLUMNS and all(tab[k] is getattr(tab, k) for k in STEP_COLUMNS)
    torch.testing.assert_close(tab.f_grid, sch.f(ts), rtol=1e-15, atol=0)
    torch.testing.assert_close(tab.g2_grid, sch.g2(ts), rtol=1e-15, atol=0)
    with pytest.raises(KeyError):
        tab["t_mid"]


@pytest.mark.parametrize("sch", SCHEDULES, ids=repr)
def test_at_lambda_round_trip(sch):
    """Stage points anywhere in the range: ``lambda(t(lam)) = lam`` to rounding, and alpha/sigma are the schedule's
    at that ``t`` (per-sample shapes broadcast)."""
    lam = torch.linspace(sch.lambda_min, sch.lambda_max, 41, dtype=torch.float64)[1:-1].reshape(13, 3)
    tab = GridTable(sch, make_grid(sch, "logsnr", 4))
    p = tab.at_lambda(lam)
    assert p.t.shape == lam.shape
    torch.testing.assert_close(p.lam, lam, rtol=1e-12, atol=1e-12)
    t, a, s = p
    torch.testing.assert_close(a, sch.alpha(t), rtol=1e-15, atol=0)
    torch.testing.assert_close(s, sch.sigma(t), rtol=1e-15, atol=0)
    # and the table's own grid points come back as themselves
    q = tab.at_lambda(tab.lam_grid)
    torch.testing.assert_close(q.t, tab.ts, rtol=1e-10, atol=1e-12)


def test_per_sample_grid_table():
    sch = VPLinear()
    ts = torch.stack([make_grid(sch, "logsnr", 5), make_grid(sch, "time_uniform", 5)], 1)
    tab = GridTable(sch, ts)
    assert tab.per_sample and tab.h.shape == (5, 2) and tab.num_steps == 5
    torch.testing.assert_close(tab.lam[:, 1], sch.lambda_(ts[:-1, 1]), rtol=0, atol=0)
