r"""Define a custom noise schedule and run the property suite of ``sde_diffusion.testing`` on it.

The schedule is the *shifted cosine* of "simple diffusion" (Hoogeboom, Heek & Salimans 2023, arXiv:2301.11093):
the cosine schedule's log-SNR moved down by ``2 log k`` (``k = resolution / 64``), i.e. in the half log-SNR

    lambda(t) = -log tan(pi t / 2) - log k.

It is variance preserving, so everything follows from ``lambda``:

    log alpha = -softplus(-2 lambda) / 2,    log sigma = -softplus(2 lambda) / 2,
    d lambda/dt = -pi / sin(pi t),
    f = d log alpha/dt = sigma^2 d lambda/dt,    d log sigma/dt = -alpha^2 d lambda/dt,
    inverse:  t = (2/pi) atan(exp(-lambda) / k).

Run:  python examples/check_custom_schedule.py        (takes a couple of seconds)
"""

from __future__ import annotations

import math

import torch

from sde_diffusion import NoiseSchedule
from sde_diffusion.testing import ScheduleCheckError, check_schedule


class ShiftedCosine(NoiseSchedule):
    """Shifted cosine VP schedule on ``[1e-3, 0.999]`` (``alpha(1) = 0``, so the end is clipped)."""

    is_vp = True
    domain = (0.0, 1.0)  # open interval where the formulas hold; the public methods reject t outside it

    def __init__(self, resolution: int = 256):
        self.log_shift = math.log(resolution / 64)
        self._set_range(None, None, (1e-3, 0.999))  # sets and validates t_min, t_max

    def _lam(self, t):
        return -torch.log(torch.tan(0.5 * math.pi * t)) - self.log_shift

    def _dlam(self, t):
        return -math.pi / torch.sin(math.pi * t)

    # ---- the subclassing contract: log alpha, log sigma, their t-derivatives, and the inverse of lambda ----
    def _log_alpha(self, t):
        return -0.5 * torch.nn.functional.softplus(-2.0 * self._lam(t))

    def _log_sigma(self, t):
        return -0.5 * torch.nn.functional.softplus(2.0 * self._lam(t))

    def _f(self, t):
        return torch.exp(2.0 * self._log_sigma(t)) * self._dlam(t)

    def _dlog_sigma(self, t):
        return -torch.exp(2.0 * self._log_alpha(t)) * self._dlam(t)

    def _inverse_lambda(self, lam):
        return (2.0 / math.pi) * torch.atan(torch.exp(-lam - self.log_shift))

    def _params(self):
        return {"log_shift": self.log_shift, **super()._params()}


class BrokenShiftedCosine(ShiftedCosine):
    """The same schedule with a slip: ``d log sigma/dt`` off by a factor 2 (so ``g^2`` is wrong)."""

    def _dlog_sigma(self, t):
        return 0.5 * super()._dlog_sigma(t)


def main() -> None:
    torch.set_num_threads(1)
    print(check_schedule(ShiftedCosine()))
    try:
        check_schedule(BrokenShiftedCosine(), max_examples=20)
    except ScheduleCheckError as e:
        print(f"\nas expected, the broken variant fails property {e.prop!r}:\n{e}")


if __name__ == "__main__":
    main()
