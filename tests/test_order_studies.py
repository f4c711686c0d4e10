"""Order studies that find their asymptotic range themselves: verdicts from local orders, automatic refinement and
reference-free Richardson orders -- on synthetic error sequences whose behaviour is known by construction, and on
real solvers against their declared orders."""

from __future__ import annotations

import json
import math

import pytest

from sde_diffusion import registered_solvers
from sde_diffusion.solvers.first_order import DDIM
from sde_diffusion.studies import SCHEMA_VERSION, StudyResult, convergence_study, fit_order, load_bundle
from sde_diffusion.studies.fitting import ASYMPTOTIC_TOL, CONFIRM_TOL, richardson_orders
from sde_diffusion.studies.plots import nice_log_ticks, plot_local_orders, study_figure
from sde_diffusion.studies.report import bundle, local_order_table, order_table

DOUBLINGS = [8 * 2**k for k in range(16)]  # 8 .. 262144
RING_BUDGETS = [5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50]  # the default study's, uneven spacing


def _error(n: float, p_inf: float, c: float, kappa: float) -> float:
    """``log e = -p_inf log n + (c / kappa) n^-kappa``: its local order is exactly ``p_inf + c n^-kappa``."""
    return math.exp(-p_inf * math.log(n) + c / kappa * n**-kappa)


def _rising(n: float, rate: float) -> float:
    """``log e = -1.5 log n - a (log n)^2``: the local order rises by ``rate`` per doubling, without end."""
    a = rate / (2 * math.log(2))
    return math.exp(-1.5 * math.log(n) - a * math.log(n) ** 2)


def _prefixes(ns):
    return [ns[:k] for k in range(3, len(ns) + 1)]


# ---------------------------------------------------------------------------------------------------------------------
# synthetic sequences
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ns", [DOUBLINGS, RING_BUDGETS + [100 * 2**k for k in range(10)]], ids=["2x", "ring"])
@pytest.mark.parametrize("rate", [0.03, 0.1, 0.3])
def test_a_rising_slope_is_never_labelled_asymptotic(rate, ns):
    """However far it is refined, a local order that keeps rising is 'not reached' -- at every stage of the
    refinement -- and the verdict says where it is heading."""
    for pts in _prefixes(ns):
        fit = fit_order(pts, [_rising(n, rate) for n in pts], declared=3)
        assert fit.asymptotic is None and fit.status == "not_reached", (pts[-1], fit.local[-3:])
    assert "rising" in fit.verdict and fit.verdict.startswith("not reached")


@pytest.mark.parametrize("kappa", [0.3, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("c", [-3.0, -1.0, 2.0])
def test_a_converging_slope_is_claimed_only_close_to_its_limit(c, kappa):
    """Local orders ``3 + c n^-kappa`` converge to 3 from below (c < 0) or above: whenever a prefix is claimed
    asymptotic its order is within the confirmation tolerance of the limit, and the local orders of the range agree
    within the stated tolerance; with enough refinement it is claimed."""
    claimed = []
    for pts in _prefixes(DOUBLINGS):
        fit = fit_order(pts, [_error(n, 3.0, c, kappa) for n in pts], declared=3)
        if fit.reached:
            lo = fit.nfe.index(fit.asymptotic.nfe_min)
            in_range = fit.local[lo:]
            assert max(in_range) - min(in_range) <= ASYMPTOTIC_TOL + 1e-12
            assert abs(fit.order - 3.0) <= CONFIRM_TOL, (pts[-1], fit.describe())
            assert fit.asymptotic.nfe_max >= 4 * fit.asymptotic.nfe_min
            claimed.append(pts[-1])
    if abs(c) * DOUBLINGS[-1] ** -kappa < ASYMPTOTIC_TOL / 4:  # converged well inside the tolerance by the end
        assert claimed, "never claimed although the local order converges"


def test_a_pure_power_law_is_confirmed_and_a_wrong_declaration_is_below_or_above():
    ns = [16, 32, 64]
    err = [5.0 * n**-2.0 for n in ns]
    assert fit_order(ns, err, declared=2).verdict == "order 2 confirmed"
    assert fit_order(ns, err, declared=3).verdict == "below declared (2.00 < 3)"
    assert fit_order(ns, err, declared=1).verdict == "above declared (2.00 > 1)"
    assert fit_order(ns[:2], err[:2], declared=2).status == "not_reached"  # one segment proves nothing
    assert fit_order([16, 20, 25], [5.0 * n**-2.0 for n in (16, 20, 25)], declared=2).status == "not_reached"  # < 4x


def test_a_floor_is_found_from_the_local_orders_alone():
    """Order 3 down to a plateau at 1e-10 (with jitter): the range is confirmed below the plateau, and the plateau
    found where the power law meets it; a sequence still pre-asymptotic when it meets the floor gets
    'floor at NFE n'."""
    plateau = 1e-10

    def power(n):
        return 10.0 * n**-3.0

    def err(n):
        return max(power(n), plateau * (1 + 0.3 * math.sin(n)))

    first_floor = next(n for n in DOUBLINGS if power(n) < plateau)
    fit = fit_order(DOUBLINGS, [err(n) for n in DOUBLINGS], declared=3)
    assert fit.status == "confirmed" and fit.order == pytest.approx(3.0, abs=1e-9)
    assert fit.floor_nfe in (first_floor // 2, first_floor) and fit.asymptotic.nfe_max < fit.floor_nfe

    def pre_asymptotic(n):  # still rising by 0.3 per doubling when it reaches the floor
        return max(_rising(n, 0.3), plateau)

    first = next(n for n in DOUBLINGS if _rising(n, 0.3) < plateau)
    fit = fit_order(DOUBLINGS, [pre_asymptotic(n) for n in DOUBLINGS], declared=3)
    assert fit.status == "floor" and fit.floor_nfe in (first, 2 * first)  # the point at the bend may stay
    assert fit.verdict == f"floor at NFE {fit.floor_nfe}"
    # a known absolute floor excludes the points at or below it directly
    known = fit_order(DOUBLINGS, [err(n) for n in DOUBLINGS], floor=2 * plateau, declared=3)
    assert known.status == "confirmed" and all(power(n) <= 3 * plateau for n in known.excluded)


def test_richardson_orders_of_an_exact_expansion():
    """x_N = x* + C N^-p (1 + D/N): the differences of successive doublings give log2 ratios -> p, each with the
    change from the previous triplet (doubled) as its error bar, which bounds the remaining error here."""
    p, steps = 2.0, [10 * 2**k for k in range(7)]
    x = [1.0 + 3.0 * n**-p * (1 + 5.0 / n) for n in steps]
    est = richardson_orders(steps, [abs(a - b) for a, b in zip(x[:-1], x[1:])], steps)
    assert len(est) == len(steps) - 2 and est[0].error_bar is None
    assert est[-1].steps == (steps[-3], steps[-2], steps[-1])
    for e in est[-3:]:  # once the deviation halves per doubling
        assert abs(e.order - p) <= e.error_bar
    assert est[-1].order == pytest.approx(p, abs=0.03)


# ---------------------------------------------------------------------------------------------------------------------
# real solvers, automatic refinement
# ---------------------------------------------------------------------------------------------------------------------


def _needs(*names):
    missing = [n for n in names if n not in registered_solvers()]
    return pytest.mark.skipif(bool(missing), reason=f"solvers not registered: {missing}")


def _ring(solvers, **kw):
    """The ring from NFE 25 and 50, refined by doubling (32 start states: the order does not need more)."""
    kw = {"n": 32, "sweep": False, "distributional": False, "progress": False, "refine": True, **kw}
    return convergence_study("ring", solvers, [25, 50], **kw)


def _check_confirmed(res, expected):
    for label, order in expected.items():
        fit = res.fit(label)
        assert fit.status == "confirmed", (label, fit.verdict, fit.local)
        assert fit.order == pytest.approx(order, abs=0.15), (label, fit.describe())
        assert res.chains[label]["refinement_stop"] == "reached"
        rich = res.richardson(label)[-1]
        assert rich.order == pytest.approx(fit.order, abs=0.15), (label, rich.describe(), fit.describe())


@_needs("unipc", "dpm_solver++")
def test_ring_unipc_and_dpm_solver_2m_confirm_their_orders_by_refinement():
    """On the ring, NFE 25-50 is pre-asymptotic (local orders ~2 for UniPC); refinement finds the asymptotic range
    and confirms 3 and 2; the reference-free Richardson estimate agrees with the reference-based order."""
    res = _ring(["unipc", "dpm_solver++:order=2,multistep=true"])
    _check_confirmed(res, {"unipc": 3.0, "dpm_solver++:order=2,multistep=true": 2.0})
    assert res.budgets == [25, 50] and max(r.nfe_budget for r in res.runs) <= 1600


@pytest.mark.slow
@_needs("unipc", "deis", "dpm_solver++")
def test_ring_unipc_deis_and_dpm_solver_2m_confirm_their_orders_from_the_default_budgets():
    """The issue's case: from the default study's budgets (NFE 5-50), UniPC-3, DEIS-3 and DPM-Solver++(2M) are
    confirmed within 0.15 of 3, 3 and 2."""
    res = convergence_study(
        "ring",
        ["unipc", "deis", "dpm_solver++:order=2,multistep=true"],
        RING_BUDGETS,
        n=64,
        refine=True,
        progress=False,
    )
    _check_confirmed(res, {"unipc": 3.0, "deis": 3.0, "dpm_solver++:order=2,multistep=true": 2.0})


class FirstOrderDeclaredThird(DDIM):
    """DDIM (first order) claiming third order: the study must not believe it."""

    order = 3.0


def test_a_first_order_solver_declared_third_order_is_below_declared():
    res = _ring([FirstOrderDeclaredThird()])
    fit = res.fit("FirstOrderDeclaredThird")
    assert fit.declared == 3.0 and fit.status == "below", fit.verdict
    assert fit.order == pytest.approx(1.0, abs=0.15) and fit.verdict.startswith("below declared (1.0")


@pytest.fixture(scope="module")
def gauss_refined():
    solvers = ["ddim", "heun"] + [
        s for s in ("unipc", "dpm_solver++:order=2,multistep=true") if s.split(":")[0] in registered_solvers()
    ]
    return convergence_study("gauss2d", solvers, [32, 64, 128], n=32, refine=True, progress=False)


def test_richardson_agrees_with_the_reference_on_the_gaussian(gauss_refined):
    _check_confirmed(gauss_refined, {label: gauss_refined.solvers[label]["order"] for label in gauss_refined.labels})


def test_without_a_reference_the_richardson_differences_decide():
    res = convergence_study("gauss2d", ["ddim", "heun"], [32, 64], reference="none", n=32, refine=True, progress=False)
    for label, order in (("ddim", 1.0), ("heun", 2.0)):
        assert res.fit(label) is None  # no reference error
        rich = res.fit(label, "richardson")
        assert rich.status == "confirmed" and rich.order == pytest.approx(order, abs=0.15), rich.verdict
        assert res.chains[label]["refinement_stop"] == "reached"
    assert "order 2 confirmed" in order_table(res)


def test_a_float32_round_off_floor_stops_the_refinement():
    res = convergence_study(
        "gauss2d",
        ["unipc"] if "unipc" in registered_solvers() else ["heun"],
        [16, 32],
        n=32,
        dtype="float32",
        refine=True,
        progress=False,
    )
    (label,) = res.labels
    fit = res.fit(label)
    assert res.chains[label]["refinement_stop"] in ("floor", "reached")
    if fit.status == "floor":
        assert fit.floor_nfe == max(r.nfe for r in res.runs) and fit.verdict == f"floor at NFE {fit.floor_nfe}"


def test_refinement_limits_time_and_nfe():
    none = convergence_study("ring", ["ddim"], [5, 10], n=8, sweep=False, refine=True, refine_time=0.0, progress=False)
    assert none.chains["ddim"]["refinement_stop"] == "time" and not any(r.refined for r in none.runs)
    capped = convergence_study("ring", ["heun"], [5, 10], n=8, sweep=False, refine=True, max_nfe=40, progress=False)
    assert capped.chains["heun"]["refinement_stop"] == "max_nfe"
    assert [r.nfe_budget for r in capped.runs if r.refined] == [20, 40] and capped.budgets == [5, 10]
    assert capped.fit("heun").status == "not_reached"
    # budgets that map to the same step count (Heun: 1 and 2 NFE are both one step) still advance the refinement
    tiny = convergence_study("gauss2d", ["heun"], [1], n=4, refine=True, max_nfe=16, progress=False)
    assert [r.nfe_budget for r in tiny.runs] == [1, 2, 4, 8, 16] and tiny.chains["heun"]["steps"] == [1, 2, 4, 8]


# ---------------------------------------------------------------------------------------------------------------------
# reports, JSON, figures
# ---------------------------------------------------------------------------------------------------------------------


def test_json_keeps_every_point_the_local_orders_and_the_verdict(gauss_refined, tmp_path):
    d = json.loads(gauss_refined.to_json())
    assert d["schema_version"] == SCHEMA_VERSION == 2
    assert len(d["runs"]) == len(gauss_refined.runs) and any(r["refined"] for r in d["runs"])
    for label in gauss_refined.labels:
        fit = d["fits"][label]["error"]
        assert fit["verdict"] == gauss_refined.fit(label).verdict and fit["status"] == "confirmed"
        assert len(fit["local_orders"]) == len(fit["nfe"]) - 1 == len(fit["errors"]) - 1
        assert d["chains"][label]["diffs"] and d["fits"][label]["richardson"]["local_orders"]
    back = StudyResult.from_json(gauss_refined.to_json())
    assert back.to_dict() == gauss_refined.to_dict()
    assert [e.order for e in back.richardson("ddim")] == [e.order for e in gauss_refined.richardson("ddim")]
    assert set(load_bundle(json.dumps(bundle({"order": back})))) == {"order"}
    with pytest.raises(ValueError, match="version-2"):
        StudyResult.from_dict({**d, "schema_version": 1})


def test_tables_show_effective_asymptotic_richardson_verdict_and_local_orders(gauss_refined):
    md = order_table(gauss_refined)
    assert "effective order over NFE 32-128" in md and "Richardson" in md and "order 1 confirmed" in md
    local = local_order_table(gauss_refined)
    assert local.startswith("| solver | 32-64 | 64-128 | 128-256 |")
    ddim = gauss_refined.fit("ddim")
    assert f"{ddim.local[0]:.2f}" in local.split("`ddim`")[1].split("\n")[0]


def test_local_order_panel_and_ticks_that_do_not_overlap(gauss_refined, tmp_path):
    fig = plot_local_orders(gauss_refined)
    ax = fig.axes[0]
    assert len(ax.lines) >= len(gauss_refined.labels)
    fig = study_figure(gauss_refined, gauss_refined)
    fig.savefig(tmp_path / "s.png", dpi=30)
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    for lo, hi in [(5, 50), (5, 1600), (23, 239), (7, 1131), (2, 16), (4, 8), (1, 1)]:
        ticks = nice_log_ticks(lo, hi)
        assert ticks[0] == lo and ticks[-1] == hi
        assert all(b / a >= 1.7 for a, b in zip(ticks[:-1], ticks[1:]))
