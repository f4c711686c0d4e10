"""The "complete solver" example of docs/development.md (the same code as the docstring of ``solvers/base.py``) runs:
it registers, runs through ``sample``, equals the library's DDIM step for step and is exact on point-mass data."""

import re
import textwrap
from pathlib import Path

import pytest
import torch

import sde_diffusion as sd
from sde_diffusion.analytic import Gaussian, PointMass
from sde_diffusion.solvers import base

PAGE = Path(__file__).resolve().parents[1] / "docs" / "development.md"


def page_example() -> str:
    text = PAGE.read_text()
    start = text.index("A complete solver")
    return re.search(r"```py\n(.*?)```", text[start:], re.DOTALL).group(1)


def docstring_example() -> str:
    doc = base.__doc__
    block = doc[doc.index("A complete solver") :].split("::\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip()


def test_page_and_docstring_show_the_same_solver():
    page = page_example()
    assert docstring_example() in page


@pytest.fixture
def my_ddim(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base.registered_solvers()))  # the registration ends with the test
    namespace: dict = {}
    exec(compile(page_example(), str(PAGE), "exec"), namespace)
    return namespace["MyDDIM"]


def test_the_example_equals_ddim(my_ddim):
    assert "my_ddim" in base.registered_solvers() and my_ddim.name == "my_ddim"
    schedule = sd.VPLinear()
    model = Gaussian(torch.tensor([0.3, -1.0]), torch.tensor([0.5, 2.0])).model(schedule)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mine = sd.sample(model, x, solver="my_ddim", steps=7)
    ref = sd.sample(model, x, solver="ddim", steps=7)
    assert mine.nfe == ref.nfe == 7
    torch.testing.assert_close(mine.x, ref.x, rtol=1e-12, atol=1e-12)


def test_the_example_is_exact_on_a_point_mass(my_ddim):
    schedule = sd.VPLinear()
    x0 = torch.tensor([0.4, -0.9], dtype=torch.float64)
    model = PointMass(x0).model(schedule)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = sd.sample(model, x, solver=my_ddim(), steps=3, t_end=schedule.t_min)
    a_T, s_T = (float(v) for v in schedule.alpha_sigma_unchecked(torch.tensor(schedule.t_max, dtype=torch.float64)))
    a_0, s_0 = (float(v) for v in schedule.alpha_sigma_unchecked(torch.tensor(schedule.t_min, dtype=torch.float64)))
    want = a_0 * x0 + s_0 * (x - a_T * x0) / s_T  # eps = (x_t - alpha_t x0) / sigma_t is constant along the flow
    torch.testing.assert_close(out.x, want, rtol=1e-10, atol=1e-10)
