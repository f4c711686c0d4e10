"""Butcher tableaux as data and the one explicit RK step (solvers/tableaux.py) that runs them on the PF-ODE: the
stored tableaux satisfy their order conditions; the step equals the textbook RK recursion on a linear ODE with a known
solution (Gaussian data) and converges at the tableau's order; euler/heun, DEIS rhoRK and PNDM's warm-up all run it."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from solver_checks import fitted_slope

from sde_diffusion.analytic import Gaussian
from sde_diffusion.grids import make_grid
from sde_diffusion.sample import sample
from sde_diffusion.schedules import EDM, VPLinear
from sde_diffusion.solvers import get_solver, tableaux
from sde_diffusion.solvers.base import prepare_plan
from sde_diffusion.solvers.deis import DEIS
from sde_diffusion.solvers.tableaux import TABLEAUX, ButcherTableau, RKLayout, get_tableau, rk_layout

DATA = Gaussian(torch.tensor([0.3, -1.2]), torch.tensor([0.5, 0.8]))


def _x(n=6, seed=0, scale=2.0):
    return scale * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(TABLEAUX))
def test_tableau_order_conditions(name):
    """The stored tableaux are consistent (``c_i = sum_j A_ij``) and satisfy the classical order conditions up to
    their declared order (Butcher trees up to order 4), and not one order higher."""
    t = TABLEAUX[name]
    n = t.stages
    A = np.zeros((n, n))
    for i, row in enumerate(t.A):
        A[i, : len(row)] = row
    b, c = np.array(t.b), np.array(t.c)
    assert np.allclose(A.sum(1), c)
    conditions = {
        1: [b.sum() - 1],
        2: [b @ c - 1 / 2],
        3: [b @ c**2 - 1 / 3, b @ A @ c - 1 / 6],
        4: [b @ c**3 - 1 / 4, b @ (c * (A @ c)) - 1 / 8, b @ A @ c**2 - 1 / 12, b @ A @ A @ c - 1 / 24],
    }
    for p in range(1, t.order + 1):
        assert np.allclose(conditions[p], 0, atol=1e-15), (name, p)
    nxt = t.order + 1
    if nxt in conditions:
        assert not np.allclose(conditions[nxt], 0, atol=1e-12)


def test_tableau_validation_and_lookup():
    assert get_tableau("rk4") is TABLEAUX["rk4"] and get_tableau(TABLEAUX["heun"]) is TABLEAUX["heun"]
    with pytest.raises(ValueError, match="tableau must be one of 'euler', 'heun', 'kutta3', 'rk4'"):
        get_tableau("rk5")
    with pytest.raises(ValueError, match="explicit"):
        ButcherTableau(A=((0.0,), (1.0,)), b=(0.5, 0.5), c=(0.0, 1.0), order=2)
    with pytest.raises(ValueError, match="c\\[i\\]"):
        ButcherTableau(A=((), (1.0,)), b=(0.5, 0.5), c=(0.0, 0.5), order=2)
    with pytest.raises(ValueError, match="sum to 1"):
        ButcherTableau(A=((), (1.0,)), b=(0.5, 0.6), c=(0.0, 1.0), order=2)
    with pytest.raises(ValueError, match="variable 't'"):
        RKLayout(TABLEAUX["rk4"], "t")  # stages inside the step need the schedule at interior times


def _textbook_rk(tab, f, s0, s1, y):
    """One step of ``dy/ds = f(s, y)`` from ``s0`` to ``s1``, written from the definition of a Butcher tableau."""
    d = s1 - s0
    ks = []
    for i in range(tab.stages):
        yi = y + d * sum((a * k for a, k in zip(tab.A[i], ks)), torch.zeros_like(y))
        ks.append(f(s0 + tab.c[i] * d, yi))
    return y + d * sum(b * k for b, k in zip(tab.b, ks))


@pytest.mark.parametrize("name", list(TABLEAUX))
def test_step_is_the_textbook_recursion_on_a_linear_ode(name):
    """On EDM (``alpha = 1``, ``sigma_ve = t``) with Gaussian data the PF-ODE is the linear ODE
    ``dx/dt = eps(x, t) = (x - mu) t/(s^2 + t^2)``; the tableau step (via DEIS rhoRK) equals the textbook RK
    recursion on it to round-off, step by step."""
    sch, tab = EDM(), TABLEAUX[name]
    model = DATA.model(sch)
    ts = torch.tensor([3.0, 2.2, 1.5, 1.1, 0.7], dtype=torch.float64)
    x = _x()
    got = sample(model, x, solver=DEIS(method="rhork", tableau=name), grid=ts, return_trajectory=True).trajectory
    y = x
    for i, (s0, s1) in enumerate(zip(ts[:-1], ts[1:])):
        y = _textbook_rk(tab, lambda s, v: DATA.eps(v, s, sch), s0, s1, y)
        torch.testing.assert_close(got[i + 1], y, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", list(TABLEAUX))
def test_order_on_a_linear_ode_with_known_solution(name):
    """Error against the closed-form solution ``x(t) = mu + (x_T - mu) sqrt((s^2 + t^2)/(s^2 + T^2))`` on uniform
    grids of 8..64 steps: the fitted slope is the tableau's order (within 0.15)."""
    sch, tab = EDM(), TABLEAUX[name]
    model, x = DATA.model(sch), _x()
    t0, t1 = 2.0, 0.5
    exact = DATA.flow(x, t0, t1, sch)
    ns = [8, 16, 32, 64]
    errors = []
    for n in ns:
        ts = torch.linspace(t0, t1, n + 1, dtype=torch.float64)
        errors.append(
            float((sample(model, x, solver="deis", method="rhork", tableau=name, grid=ts).x - exact).abs().max())
        )
    assert abs(fitted_slope(ns, errors) - tab.order) < 0.15, errors


@pytest.mark.parametrize("variable", ["t", "sigma"])
def test_heun_and_euler_are_their_tableaux(variable):
    """``heun`` is the heun tableau (its last step the euler tableau) and ``euler`` the euler tableau of the PF-ODE,
    in ``t`` (``dx/dt = f x + g^2/(2 sigma) eps``) or in ``sigma_ve`` (``d(x/alpha)/dsigma_ve = eps``), against the
    textbook recursion on VP linear."""
    sch = VPLinear()
    model = DATA.model(sch)
    ts = torch.tensor([0.9, 0.6, 0.45, 0.3], dtype=torch.float64)
    x = _x(scale=1.0)

    def textbook(tab, t0, t1, x):
        if variable == "t":
            return _textbook_rk(
                tab, lambda t, v: sch.f(t) * v + 0.5 * sch.g2(t) / sch.sigma(t) * DATA.eps(v, t, sch), t0, t1, x
            )

        def t_of(s):
            return sch.inverse_lambda(-torch.log(torch.as_tensor(s, dtype=torch.float64)))

        def rhs(s, y):
            return DATA.eps(sch.alpha(t_of(s)) * y, t_of(s), sch)

        y = _textbook_rk(tab, rhs, sch.sigma_ve(t0), sch.sigma_ve(t1), x / sch.alpha(t0))
        return sch.alpha(t1) * y

    for name in ("euler", "heun"):
        got = sample(model, x, solver=name, variable=variable, grid=ts, return_trajectory=True).trajectory
        y = x
        for i, (t0, t1) in enumerate(zip(ts[:-1], ts[1:])):
            last = i == len(ts) - 2
            y = textbook(TABLEAUX["euler" if name == "euler" or last else "heun"], t0, t1, y)
            torch.testing.assert_close(got[i + 1], y, rtol=1e-12, atol=1e-12)


def test_pndm_warmup_steps_are_the_rk_tableaux():
    """F-PNDM's first three steps are rk4 steps and PLMS/S-PNDM's first step a heun step in ``sigma_ve``: the same
    states as DEIS rhoRK with that tableau (one RK implementation)."""
    sch = VPLinear()
    model, x = DATA.model(sch), _x(scale=1.0)
    ts = torch.tensor([0.9, 0.6, 0.45, 0.3], dtype=torch.float64)
    f = sample(model, x, solver="pndm", warmup="rk4", grid=ts).x
    torch.testing.assert_close(f, sample(model, x, solver="deis", method="rhork", tableau="rk4", grid=ts).x)
    for solver, opts in (("plms", {}), ("pndm", {"warmup": "heun"})):
        one = sample(model, x, solver=solver, grid=ts[:2], **opts).x
        torch.testing.assert_close(one, sample(model, x, solver="deis", method="rhork", tableau="heun", grid=ts[:2]).x)
    assert get_solver("pndm").final_nfe(10) == 10 + 3 * (TABLEAUX["rk4"].stages - 1)


def _nonzero_terms(tab, variable):
    """Terms of each combination (rows A[1..s-1], then b), from the tableau: one per non-zero entry, two (x_j and
    e_j) for j >= 1 in variable t."""
    rows = list(tab.A[1:]) + [tab.b]
    return [sum(1 + (variable == "t" and j > 0) for j, a in enumerate(row) if a != 0.0) for row in rows]


@pytest.mark.parametrize(
    "name, variable", [(n, "sigma") for n in TABLEAUX] + [("euler", "t"), ("heun", "t")], ids=lambda v: str(v)
)
def test_zero_tableau_entries_cost_no_kernel(name, variable, monkeypatch):
    """The step calls ``lincomb`` once per combination with exactly the tableau's non-zero terms (rk4 has three
    zero entries in A; none becomes a kernel), and one model evaluation per stage."""
    calls, lincomb = [], tableaux.lincomb

    def counting(a, x, *pairs):
        calls.append(len(pairs) // 2)
        return lincomb(a, x, *pairs)

    monkeypatch.setattr(tableaux, "lincomb", counting)
    sch = VPLinear()
    model = DATA.model(sch)
    ts = torch.tensor([0.9, 0.6], dtype=torch.float64)
    solver = DEIS(method="rhork", tableau=name) if variable == "sigma" else get_solver(name, variable="t")
    res = sample(model, _x(), solver=solver, grid=ts)
    tab = TABLEAUX[name]
    expected = _nonzero_terms(tab, variable)
    if name == "heun" and variable == "t":  # (heun's last step is its Euler predictor: one combination)
        expected = expected[:1]
    assert calls == expected
    assert res.nfe == len(expected)  # one evaluation per stage reached


@pytest.mark.parametrize("per_sample", [False, True])
def test_records_carry_typed_vectors(per_sample):
    """rk4 in sigma_ve: the record has fixed fields -- ``rk_ratio`` (4 multipliers: 0-d host tensors of the state's
    dtype on a shared grid, ``(B, 1)`` tensors per sample), ``rk_we`` (4 x 4 row-major), the stage points -- and each
    combination is a DDIM(eta=0) transfer to its stage point: its weights sum to ``sigma_i - (alpha_i/alpha) sigma``
    (the stage at ``c_i``; the result at the step's end) and vanish where the tableau does."""
    sch = VPLinear()
    x = torch.zeros(3, 2)
    ts = make_grid(sch, "logsnr", 5)
    if per_sample:
        ts = torch.stack([ts, make_grid(sch, "logsnr", 5, t_end=2e-3), make_grid(sch, "logsnr", 5, t_end=3e-3)], 1)
    layout = rk_layout(TABLEAUX["rk4"], "sigma")
    plan = prepare_plan(DEIS(method="rhork", tableau="rk4"), sch, ts, x, cache=False)
    c = plan.row(2)
    for f in layout.fields:
        assert hasattr(c, f)
    assert len(c.rk_ratio) == 4 and len(c.rk_we) == 16 and len(c.rk_t_stage) == 4
    if per_sample:
        assert all(isinstance(a, torch.Tensor) and a.shape == (3, 1) for a in c.rk_ratio)
    else:
        assert all(isinstance(a, torch.Tensor) and a.ndim == 0 and a.dtype == x.dtype for a in c.rk_ratio)
        assert all(isinstance(w, float) for w in c.rk_we)
    rows = list(TABLEAUX["rk4"].A[1:]) + [TABLEAUX["rk4"].b]
    for r, row in enumerate(rows):
        i = r + 1
        a_i = c.rk_alpha_stage[i] if i < 4 else c.alpha_next
        s_i = c.rk_sigma_stage[i] if i < 4 else c.sigma_next
        ws = [c.rk_we[r * 4 + j] for j in range(4)]
        total = sum(ws)
        torch.testing.assert_close(
            torch.as_tensor(total, dtype=torch.float64),
            torch.as_tensor(s_i - a_i / c.alpha * c.sigma, dtype=torch.float64),
            rtol=1e-6,
            atol=1e-9,
        )
        for j in range(4):
            if j >= len(row) or row[j] == 0.0:
                assert torch.all(torch.as_tensor(ws[j]) == 0)


def test_step_is_plain_data_no_generated_source():
    """The RK step is one generic function over data: nothing in the solvers compiles or executes generated source."""
    root = Path(__file__).resolve().parents[1] / "sde_diffusion" / "solvers"
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("exec", "eval", "compile")
            ):
                found.append(f"{path.name}:{node.lineno} {node.func.id}")
    assert not found, found
