"""Per-step coefficient vectors and matrices (``vector_column`` / ``matrix_column``) and the typed stage records of
the singlestep exponential integrators built on them."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from sde_diffusion import VPLinear
from sde_diffusion.grids import make_grid
from sde_diffusion.solvers import get_solver
from sde_diffusion.solvers.base import Solver, matrix_column, prepare_plan, vector_column
from sde_diffusion.solvers.dpm_solver import STAGE_NODES, singlestep_table
from sde_diffusion.solvers.table import GridTable

SCH = VPLinear()


class _Probe(Solver):
    """Exposes a (K, M) matrix column ``m[k][j] = (k + 1) * h + j`` and a K-vector ``v[k] = (k + 1) * h``."""

    def coefficients(self, schedule, ts, table):
        h = table.h[..., None]
        v = h * torch.arange(1, 4, dtype=torch.float64)
        m = v[..., None] + torch.arange(2, dtype=torch.float64)
        return {"v": vector_column(v), "m": matrix_column(m)}

    def step(self, model, x, state, c, noise):
        return x, state


def test_matrix_column_becomes_tuple_of_tuples():
    x = torch.zeros(2, 1)
    ts = torch.linspace(1.0, 0.1, 5, dtype=torch.float64)
    c = prepare_plan(_Probe(), SCH, ts, x, cache=False).row(2)
    assert isinstance(c.m, tuple) and all(isinstance(r, tuple) and len(r) == 2 for r in c.m) and len(c.m) == 3
    assert c.m == tuple(((k + 1) * c.h, (k + 1) * c.h + 1.0) for k in range(3))
    assert c.v == tuple((k + 1) * c.h for k in range(3))
    # per-sample grids: every entry is a (B, 1) device tensor
    ts2 = torch.stack([ts, torch.linspace(0.9, 0.2, 5, dtype=torch.float64)], 1)
    c2 = prepare_plan(_Probe(), SCH, ts2, x, cache=False).row(1)
    assert len(c2.m) == 3 and c2.m[2][1].shape == (2, 1)
    torch.testing.assert_close(c2.m[2][1], 3 * c2.h + 1.0)
    torch.testing.assert_close(c2.v[1], 2 * c2.h)


def test_matrix_column_needs_two_entry_dimensions():
    for bad in (torch.zeros(4), torch.zeros(4, 3)):
        try:
            matrix_column(bad)
        except ValueError:
            continue
        raise AssertionError(f"matrix_column accepted shape {tuple(bad.shape)}")


def test_singlestep_stage_vectors_are_the_stage_points():
    """Stage ``i`` of a third-order step sits at ``lambda + r_{i+1} h`` (times, alpha, sigma from the schedule), and
    every stage update is an exponential integrator from the step's start: its weights sum to the one-node weight
    ``-sigma_j expm1(r h)`` (noise prediction) -- the sum is exact for every rule."""
    ts = make_grid(SCH, "logsnr", 6)
    base = GridTable(SCH, ts)
    tab = singlestep_table(base, 1, "paper", (1, 2, 3, 3, 2, 3))
    lam = SCH.lambda_(ts)
    h = lam[1:] - lam[:-1]
    order = tab["order"].tolist()
    t_st, a_st, s_st = (tab[k].values for k in ("t_stage", "alpha_stage", "sigma_stage"))
    r_st, w_st = tab["ratio_stage"].values, tab["w_stage"].values
    assert t_st.shape == (6, 2) and w_st.shape == (6, 2, 2) and tab["w"].values.shape == (6, 3)
    for i, k in enumerate(order):
        for s in range(k - 1):
            r = STAGE_NODES[k][s + 1]
            lam_s = lam[i] + r * h[i]
            t_s = SCH.inverse_lambda(lam_s)
            torch.testing.assert_close(t_st[i, s], t_s, rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(a_st[i, s], SCH.alpha(t_s), rtol=1e-12, atol=0)
            torch.testing.assert_close(s_st[i, s], SCH.sigma(t_s), rtol=1e-12, atol=0)
            torch.testing.assert_close(r_st[i, s], SCH.alpha(t_s) / SCH.alpha(ts[i]), rtol=1e-12, atol=0)
            one_node = -SCH.sigma(t_s) * torch.expm1(r * h[i])
            torch.testing.assert_close(w_st[i, s, : s + 1].sum(), one_node, rtol=1e-12, atol=0)
            assert (w_st[i, s, s + 1 :] == 0).all()
        assert (tab["w"].values[i, k:] == 0).all()
        torch.testing.assert_close(
            tab["w"].values[i].sum(), -SCH.sigma(ts[i + 1]) * torch.expm1(h[i]), rtol=1e-12, atol=0
        )


def test_embedded_lower_order_update_has_its_own_vector():
    """DPM-Solver-23's embedded solution is DPM-Solver-2 with ``r_1 = 1/3``: its ``w_low`` weights are the
    midpoint-rule weights ``(W - W/(2 r), W/(2 r))`` with ``W = -sigma_next expm1(h)``."""
    ts = make_grid(SCH, "logsnr", 4)
    solver = get_solver("dpm_solver_adaptive", order=3)
    tab = solver.coefficients(SCH, ts, GridTable(SCH, ts))
    lam = SCH.lambda_(ts)
    whole = -SCH.sigma(ts[1:]) * torch.expm1(lam[1:] - lam[:-1])
    w_low = tab["w_low"].values
    assert w_low.shape == (4, 2)
    torch.testing.assert_close(w_low[:, 1], whole / (2.0 / 3.0), rtol=1e-12, atol=0)
    torch.testing.assert_close(w_low[:, 0], whole - whole / (2.0 / 3.0), rtol=1e-12, atol=0)
    torch.testing.assert_close(tab["ratio_low"], tab["ratio"], rtol=0, atol=0)


def test_solvers_read_records_by_fixed_field_names():
    """No solver builds record field names at run time: no ``getattr(c, ...)`` on a step record and no f-string
    keys in a coefficient dict (vectors and matrices carry per-stage / per-weight values)."""
    root = Path(__file__).resolve().parents[1] / "sde_diffusion" / "solvers"
    found = []
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and node.args
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id == "c"
            ):
                found.append(f"{path.name}:{node.lineno} getattr(c, ...)")
            if isinstance(node, ast.Dict):
                found += [f"{path.name}:{k.lineno} f-string key" for k in node.keys if isinstance(k, ast.JoinedStr)]
            if isinstance(node, ast.DictComp) and isinstance(node.key, ast.JoinedStr):
                found.append(f"{path.name}:{node.lineno} f-string key")
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.JoinedStr):
                found.append(f"{path.name}:{node.lineno} f-string subscript")
    assert not found, found
