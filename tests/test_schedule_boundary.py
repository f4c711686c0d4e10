"""The sealed schedule boundary: no module outside ``schedules.py`` calls a schedule's underscored (pre-0.2) protocol
names or reads its private fields; the public unchecked protocol (``log_alpha_unchecked``, ...) is the way in."""

import re
from pathlib import Path

import pytest
import torch

import sde_diffusion
from sde_diffusion import VEGeometric, VPLinear
from sde_diffusion.schedules import LEGACY_NAMES, NoiseSchedule

PACKAGE = Path(sde_diffusion.__file__).parent
PRIVATE_FIELDS = ("_log_alpha_grid", "_t_grid", "_slopes", "_segment", "_set_range", "_log_ratio")
#: ``x._name(`` or ``x._field`` with a receiver other than ``self`` (a class's own helpers are its business)
PATTERN = re.compile(
    r"(?<!\bself)\.(" + "|".join(sorted(LEGACY_NAMES, key=len, reverse=True) + list(PRIVATE_FIELDS)) + r")\b"
)


def _offenders() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "schedules.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if PATTERN.search(code):
                out.setdefault(rel, []).append(f"{rel}:{n}: {line.strip()}")
    return out


def test_no_module_outside_schedules_uses_the_private_protocol():
    offenders = _offenders()
    assert not offenders, "underscored schedule calls outside schedules.py:\n" + "\n".join(sum(offenders.values(), []))


def test_the_pattern_catches_what_it_should():
    assert PATTERN.search("t = schedule._inverse_lambda(lam)")
    assert PATTERN.search("a, s = model.schedule._alpha_sigma(t)")
    assert PATTERN.search("log_ab = 2.0 * sch._log_alpha_grid")
    assert not PATTERN.search("a, s = self._alpha_sigma(t)")
    assert not PATTERN.search("t = schedule.inverse_lambda_unchecked(lam)")


def test_legacy_names_alias_the_public_protocol():
    """Callers of the old names get the new methods, and an old-style subclass (overriding ``_f``) is honoured by the
    public names, with ``super()`` reaching the parent's implementation."""
    sch = VPLinear()
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    assert torch.equal(sch._log_alpha(t), sch.log_alpha_unchecked(t))
    assert torch.equal(sch._alpha_sigma(t)[1], sch.alpha_sigma_unchecked(t)[1])
    assert sch._params() == sch.params()

    class OldStyle(VEGeometric):
        def _inverse_lambda(self, lam):
            return super()._inverse_lambda(lam) + 1.0

    s = OldStyle()
    lam = torch.tensor([0.5], dtype=torch.float64)
    assert torch.equal(s.inverse_lambda_unchecked(lam), VEGeometric().inverse_lambda_unchecked(lam) + 1.0)
    assert torch.equal(s.inverse_lambda(lam), s.inverse_lambda_unchecked(lam))


def test_missing_protocol_method_raises():
    class Incomplete(NoiseSchedule):
        t_min, t_max = 0.1, 1.0

    with pytest.raises(NotImplementedError):
        Incomplete().log_alpha(0.5)
