"""Calibration (issue 14): deterministic for a seed, never worse on held-out data than the best fixed configuration
it started from, its reported errors reproduce through ``sample(**cal.sample_kwargs())``, and it round-trips JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sde_diffusion import sample
from sde_diffusion.calibration import AUTO_SOLVERS, Calibration, calibrate, significantly_smaller
from sde_diffusion.reference import probability_flow_reference
from sde_diffusion.schedules import EDM
from sde_diffusion.sdes import ForwardSDE
from sde_diffusion.studies.metrics import rms_error
from sde_diffusion.studies.problems import get_problem
from sde_diffusion.studies.specs import parse_solver_spec

SMALL = dict(
    solvers=["ddim", "dpm_solver++:order=2,multistep=true"],
    grids=("logsnr", "karras", "vp_quadratic", "time_uniform"),
    pilot=32,
    heldout=48,
    refine=1,
    rtol=1e-7,
    progress=False,
)


@pytest.fixture(scope="module")
def ring():
    return get_problem("ring", "edm")


@pytest.fixture(scope="module")
def cal(ring):
    return calibrate(ring.model(), 6, x_shape=(2,), seed=3, **SMALL)


def _strip(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "elapsed_s"}


def test_calibration_is_deterministic_with_a_seed(ring, cal):
    again = calibrate(ring.model(), 6, x_shape=(2,), seed=3, **SMALL)
    assert _strip(again.to_dict()) == _strip(cal.to_dict())


def test_never_worse_than_the_best_fixed_configuration_on_held_out_data(cal):
    assert cal.heldout_error <= cal.baseline["heldout_error"] and cal.gain >= 1.0
    assert cal.baseline["grid"] in SMALL["grids"]  # the start: a named grid at its default parameter
    for r in cal.runners_up:  # (an analytic-first-step runner-up may be lower, but not significantly)
        assert r["heldout_error"] >= cal.heldout_error or r["analytic_first_step"]
    assert 0 < cal.reference_error < 1e-4 and cal.reference_error < cal.heldout_error


def test_reported_held_out_error_reproduces_through_sample(ring, cal):
    model = ring.model()
    x = ForwardSDE(model.schedule).prior_sample((48, 2), torch.Generator().manual_seed(4), dtype=torch.float64)
    ref = probability_flow_reference(model, x, [cal.t_start, cal.t_end], rtol=1e-7, atol=1e-7)[-1]
    out = sample(model, x, **cal.sample_kwargs())
    assert out.nfe <= cal.nfe and out.ts.shape == (cal.steps + 1,)
    assert rms_error(out.x, ref) == pytest.approx(cal.heldout_error, rel=1e-9)
    # the grid is the stored one, with exact ends, and its knots are the stored lambdas
    assert out.ts[0].item() == cal.t_start and out.ts[-1].item() == cal.t_end
    torch.testing.assert_close(
        model.schedule.lambda_(out.ts)[1:-1], torch.tensor(cal.lambdas)[1:-1], rtol=1e-12, atol=0
    )


def test_json_round_trip(tmp_path, cal):
    path = cal.save(tmp_path / "c.json")
    back = Calibration.load(path)
    assert back == cal and json.loads(path.read_text())["kind"] == "sde_diffusion.calibration"
    assert torch.equal(back.grid_for(), cal.grid_for())
    with pytest.raises(ValueError, match="calibration"):
        Calibration.from_dict({**cal.to_dict(), "schema_version": 99})


def test_grid_moves_to_another_schedule_by_its_lambda_knots(cal):
    other = EDM(sigma_min=1e-3, sigma_max=200.0)  # wider lambda range than the calibrated EDM(0.002, 80)
    ts = cal.grid_for(other)
    torch.testing.assert_close(other.lambda_(ts), torch.tensor(cal.lambdas), rtol=1e-12, atol=1e-12)


def test_start_states_given_as_x_T(ring):
    x = ForwardSDE(ring.schedule).prior_sample((40, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    c = calibrate(ring.model(), 4, x_T=x, **{**SMALL, "solvers": ["ddim"], "refine": 0})
    assert (c.pilot, c.heldout) == (20, 20) and math.isfinite(c.heldout_error)


def test_bad_arguments(ring):
    with pytest.raises(ValueError, match="exactly one of x_shape"):
        calibrate(ring.model(), 5)
    with pytest.raises(ValueError, match="deterministic"):
        calibrate(ring.model(), 5, x_shape=(2,), solvers=["ddpm"], progress=False)
    with pytest.raises(ValueError, match="budget"):
        calibrate(ring.model(), 2, x_shape=(2,), solvers=[], progress=False)


@pytest.mark.parametrize("spec", AUTO_SOLVERS)
def test_auto_solvers_exist_and_are_deterministic(spec):
    sol = parse_solver_spec(spec).build()  # raises if an option was renamed
    assert not sol.stochastic


def test_cli_calibrate_then_sample_uses_the_calibration(tmp_path, capsys, monkeypatch):
    """`train` (a few steps), `calibrate --checkpoint` writes CKPT.calibration.json next to it, and `sample
    --checkpoint` at that NFE uses its solver and grid (unless --no-calibration)."""
    from sde_diffusion.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "ring", "--steps", "20", "--out", "run", "--no-progress"]) == 0
    args = ["calibrate", "--checkpoint", "run/ckpt.pt", "--nfe", "5", "--pilot", "16", "--heldout", "16"]
    assert (
        main([*args, "--solvers", "ddim", "dpm_solver++:order=2", "--rtol", "1e-6", "--refine", "0", "--no-progress"])
        == 0
    )
    path = tmp_path / "run" / "ckpt.calibration.json"
    cal = Calibration.load(path)
    assert cal.nfe == 5 and cal.solver in ("ddim", "dpm_solver++:order=2") and "wrote" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", "run/ckpt.pt", "--nfe", "5", "--n", "8", "--out", "s"]) == 0
    assert "(calibrated)" in capsys.readouterr().out
    saved = torch.load(tmp_path / "s" / "samples.pt", weights_only=True)
    assert saved["nfe"] == 5 and torch.equal(saved["ts"], cal.grid_for())
    assert main(["sample", "--checkpoint", "run/ckpt.pt", "--nfe", "5", "--n", "8", "--no-calibration"]) == 0
    assert "(calibrated)" not in capsys.readouterr().out
    assert main(["calibrate", "--checkpoint", "missing.pt"]) == 2


@pytest.mark.parametrize("afs", [True, False])
def test_analytic_first_step_searched_as_asked(ring, afs):
    """``analytic_first_step=True``/``False`` restrict the search to one variant; with it, the budget buys the steps
    of one evaluation more, and sampling with the calibration spends no more than the budget."""
    model = ring.model()
    c = calibrate(model, 6, x_shape=(2,), seed=3, analytic_first_step=afs, **SMALL)
    assert c.analytic_first_step is afs
    assert all(r["analytic_first_step"] is afs for r in c.runners_up)
    sol = c.build_solver()
    assert c.steps == sol.steps_for_nfe(7 if afs else 6)
    x = ForwardSDE(model.schedule).prior_sample((8, 2), torch.Generator().manual_seed(4), dtype=torch.float64)
    out = sample(model, x, **c.sample_kwargs())
    assert out.nfe == sol.final_nfe(c.steps) - (1 if afs else 0) <= 6


def test_auto_keeps_the_baseline_without_analytic_first_step(cal):
    """The never-worse baseline is a plain fixed configuration; the runners-up may carry either variant."""
    assert cal.baseline["analytic_first_step"] is False
    assert cal.heldout_error <= cal.baseline["heldout_error"]


def test_calibrations_saved_before_the_option_load_without_it(cal):
    d = cal.to_dict()
    del d["analytic_first_step"]
    assert Calibration.from_dict(d).analytic_first_step is False


def test_analytic_first_step_bad_value(ring):
    with pytest.raises(ValueError, match="analytic_first_step"):
        calibrate(ring.model(), 6, x_shape=(2,), analytic_first_step="yes", **SMALL)


def test_significantly_smaller_is_a_paired_test():
    g = torch.Generator().manual_seed(0)
    b = torch.rand(200, generator=g, dtype=torch.float64)
    noise = 0.3 * torch.randn(200, generator=g, dtype=torch.float64)
    assert significantly_smaller(0.8 * b, b)  # smaller on every sample
    assert not significantly_smaller(b, b)  # equal
    assert not significantly_smaller(b + noise - noise.mean() - 1e-3, b)  # smaller on average, within the noise
    assert significantly_smaller(b + noise - noise.mean() - 0.2, b)  # smaller by far more than the noise
    inf = torch.full_like(b, math.inf)
    assert significantly_smaller(b, inf) and not significantly_smaller(inf, b)


def test_auto_is_the_plain_calibration_unless_the_first_step_wins(ring, cal):
    """``"auto"`` runs the plain search exactly as ``False`` does; it returns something else only where the
    analytic-first-step winner is significantly better on the held-out samples."""
    plain = calibrate(ring.model(), 6, x_shape=(2,), seed=3, analytic_first_step=False, **SMALL)
    if cal.analytic_first_step:
        assert cal.heldout_error < plain.heldout_error
    else:
        assert (cal.solver, cal.grid, cal.lambdas, cal.heldout_error) == (
            plain.solver,
            plain.grid,
            plain.lambdas,
            plain.heldout_error,
        )
