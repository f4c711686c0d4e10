"""Every registered solver through ``sample``, ``study`` and ``optimise-grid`` (issue 15): each command finishes within
a time bound, and either succeeds or refuses with a one-line reason (exit status 2) -- never a hang, never a traceback.

The solvers are read from the registry when the tests are collected, so a solver added later is covered without
editing this file. A hang is caught by an alarm (SIGALRM) that interrupts the command in-process.
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import time

import pytest
import torch

from sde_diffusion import cli, registered_solvers

SOLVERS = sorted(registered_solvers())
BOUND_S = 60.0  # per solver and command; each takes about a second on an idle core
NFE = 8


def solver(name: str):
    return registered_solvers()[name]()


def budget(name: str) -> int:
    """``NFE``, or the solver's smallest budget when one step costs more (restart: 13)."""
    return max(NFE, solver(name).final_nfe(1))


def sample_argv(name: str, out) -> list[str]:
    budget_ = [] if solver(name).adaptive else ["--nfe", str(budget(name))]  # an adaptive solver chooses its steps
    return ["sample", "--problem", "gauss2d", "--solver", name, *budget_, "--n", "16", "--out", str(out)]


def study_argv(names: list[str], out) -> list[str]:
    return [
        "study", "--problem", "gauss2d", "--solvers", *names, "--nfe", str(NFE), "--n", "16", "--order-problem",
        "none", "--no-refine", "--reference", "none", "--out", str(out),
    ]  # fmt: skip


def grid_argv(name: str, out) -> list[str]:
    return [
        "optimise-grid", "--problem", "gauss2d", "--solver", name, "--nfe", str(NFE), "--pilot", "8", "--heldout",
        "8", "--max-evals", "3", "--out", str(out),
    ]  # fmt: skip


def refusal(command: str, name: str) -> str | None:
    """The reason ``command`` refuses solver ``name`` (words of its one-line message), or ``None``: it must run."""
    s = solver(name)
    if s.direction == "forward":
        return "integrates forward in time"  # an inversion: noise -> data is what the commands do
    if s.adaptive and command != "sample":
        return "is adaptive"  # no NFE budget or grid to set
    if s.stochastic and command == "optimise-grid":
        return "is stochastic"
    return None


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


def run(argv: list[str], bound: float = BOUND_S) -> tuple[int, str, str, float]:
    """``cli.main(argv)`` in-process, interrupted (a test failure) if it outlives ``bound`` seconds."""
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, bound)
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(argv)
            except SystemExit as e:
                code = e.code
    except Hang:
        pytest.fail(f"{' '.join(argv)} did not finish within {bound} s")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - t0


def check_refused(argv: list[str], reason: str, tmp_path) -> None:
    code, out, err, _ = run(argv)
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and reason in err and "Traceback" not in err, err
    assert not any(tmp_path.iterdir())  # refused before writing anything


@pytest.mark.parametrize("name", SOLVERS)
def test_every_registered_solver_samples_or_is_refused_with_a_reason(name, tmp_path):
    reason = refusal("sample", name)
    if reason is not None:
        return check_refused(sample_argv(name, tmp_path / "s"), reason, tmp_path)
    code, out, err, wall = run(sample_argv(name, tmp_path / "s"))
    assert code == 0, err
    saved = torch.load(tmp_path / "s" / "samples.pt")
    assert saved["x"].shape == (16, 2) and torch.isfinite(saved["x"]).all()
    assert f"NFE {saved['nfe']}" in out  # what was spent is what is printed
    if not solver(name).adaptive:
        assert 1 <= saved["nfe"] <= budget(name)


@pytest.mark.parametrize("name", SOLVERS)
def test_every_registered_solver_optimises_a_grid_or_is_refused_with_a_reason(name, tmp_path):
    reason = refusal("optimise-grid", name)
    if reason is not None:
        return check_refused(grid_argv(name, tmp_path / "g.json"), reason, tmp_path)
    code, out, err, wall = run(grid_argv(name, tmp_path / "g.json"))
    assert code == 0, err
    d = json.loads((tmp_path / "g.json").read_text())
    assert d["nfe"] == NFE and len(d["grid"]) == d["steps"] + 1


def test_every_registered_solver_runs_in_one_study_or_is_refused_with_a_reason(tmp_path):
    """All the solvers that must run go through one study (one report and figure); each refused one alone."""
    runnable = [n for n in SOLVERS if refusal("study", n) is None]
    for name in sorted(set(SOLVERS) - set(runnable)):
        check_refused(study_argv([name], tmp_path / "st"), refusal("study", name), tmp_path)
    code, out, err, wall = run(study_argv(runnable, tmp_path / "st"), bound=BOUND_S * len(runnable))
    assert code == 0, err
    doc = json.loads((tmp_path / "st" / "study.json").read_text())
    (main,) = doc["studies"].values() if "studies" in doc else [doc]
    text = json.dumps(main)
    for name in runnable:
        assert name in text, name


def test_the_registry_is_not_empty():
    assert {"ddim", "heun", "dpm_solver++", "unipc"} <= set(SOLVERS)
