"""The stochastic study: exact Gaussian laws by probes (checked against k-diffusion's runs of the same methods and
against the closed-form flow of an exact ODE step), distribution errors with floors, the markdown table."""

import pytest

from sde_diffusion.solvers import get_solver
from sde_diffusion.studies import get_problem
from sde_diffusion.studies.stochastic import (
    KDIFFUSION,
    distribution_error,
    gaussian_law,
    kdiffusion_samplers,
    law_w2,
    stochastic_study,
    study_table,
)


@pytest.fixture(scope="module")
def gauss():
    return get_problem("gauss2d")


@pytest.mark.parametrize(
    "name, opts",
    [
        ("ddim", {}),
        ("euler_ancestral", {}),
        ("dpm_solver++_2s_ancestral", {"eta": 0.6}),
        ("sde_dpm_solver++_2s", {}),
        ("sde_dpm_solver++_3m", {}),
    ],
)
def test_point_mass_law_is_exact(name, opts):
    """On point-mass data an ancestral / SDE-DPM-Solver++ step is the exact posterior transition, so the exact law
    of the output (by probes) is the true marginal at any step count: W2 at round-off level."""
    point = get_problem("point")
    solver = get_solver(name, **opts)
    assert solver.exact_for_point_mass
    mean, var = gaussian_law(point, solver, 7)
    assert law_w2(point, mean, var) < 1e-12


@pytest.mark.parametrize(
    "ours, opts, theirs",
    [
        ("euler_ancestral", {}, "kd:euler_ancestral"),
        ("dpm_solver++_2s_ancestral", {}, "kd:dpmpp_2s_ancestral"),
        ("sde_dpm_solver++_2s", {}, "kd:dpmpp_sde"),
        ("sde_dpm_solver++_3m", {"lower_order_final": False}, "kd:dpmpp_3m_sde"),
    ],
)
def test_probe_law_equals_kdiffusion_law(ours, opts, theirs):
    """The same method run by k-diffusion (on y = x/alpha and sigma_ve, probed through a Brownian path in sigma_ve)
    has the same exact law as ours on the same Karras sigmas (EDM schedule, where t = sigma_ve, so that the
    sub-step Brownian correlations of DPM++ SDE agree too)."""
    if not kdiffusion_samplers():
        pytest.skip("k-diffusion is not installed")
    edm = get_problem("gauss2d", "edm")
    a = distribution_error(edm, get_solver(ours, **opts), 12)
    b = distribution_error(edm, theirs, 12)
    assert a["nfe"] == b["nfe"]
    assert abs(a["error"] - b["error"]) < 1e-10


def test_mixture_error_has_a_floor():
    ring = get_problem("ring")
    row = distribution_error(ring, get_solver("dpm_solver++"), 20, samples=500)
    assert row["metric"] == "sliced W2" and row["floor"] > 0 and row["error"] > 0


def test_study_and_table(gauss):
    res = stochastic_study(
        ("gauss2d",),
        (4, 8),
        solvers={"ddim": get_solver("ddim"), "heun": get_solver("heun"), "anc": get_solver("euler_ancestral")},
        kdiffusion=False,
    )
    rows = res["problems"]["gauss2d"]
    assert rows["heun"][4]["nfe"] == 3 and rows["anc"][8]["steps"] == 8
    assert rows["anc"][8]["error"] < rows["anc"][4]["error"]
    text = study_table(res)
    assert "| anc |" in text and "NFE 8" in text
    assert set(KDIFFUSION) >= set(kdiffusion_samplers())
