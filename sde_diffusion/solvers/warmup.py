"""The one rule for the per-step orders of multistep and singlestep methods: warm-up and ``lower_order_final``.

A ``k``-step multistep method has no past outputs on its first steps, so step ``i`` uses ``min(k, i + 1)`` of them
(*warm-up*: orders ``1, 2, ..., k, k, ...``). Near ``t_min`` a long final step of high order can be unstable on
coarse grids, so ``lower_order_final`` caps the order of step ``i`` by the number of steps left, ``steps - i``
(``..., k, 2, 1``; DPM-Solver's reference code and diffusers). The cap is applied

* ``True``: on every grid (diffusers' ``UniPCMultistepScheduler``);
* ``"auto"``: only on grids of fewer than ``LOWER_ORDER_FINAL_BELOW = 15`` steps (diffusers'
  ``DPMSolverMultistepScheduler``; there the cap leaves the asymptotic order alone);
* ``False``: never.

The cap makes the last step first order, whose local error ``O(h^2)`` limits the global order to 2 when it applies
at every step count.
"""

from __future__ import annotations

__all__ = ["LOWER_ORDER_FINAL_BELOW", "step_orders", "lowers_final_orders"]

#: ``lower_order_final="auto"`` acts when the number of steps is below this (diffusers' rule; the reference code of
#: DPM-Solver uses 10)
LOWER_ORDER_FINAL_BELOW = 15


def lowers_final_orders(lower_order_final: bool | str, steps: int) -> bool:
    """Whether the ``lower_order_final`` setting (``True``, ``False`` or ``"auto"``) caps the orders on a grid of
    ``steps`` steps."""
    return lower_order_final is True or (lower_order_final == "auto" and steps < LOWER_ORDER_FINAL_BELOW)


def step_orders(
    order: int, steps: int, *, warmup: bool = True, lower_order_final: bool | str = False
) -> tuple[int, ...]:
    """Order of each of ``steps`` steps: ``order``, ``min(order, i + 1)`` with ``warmup`` (multistep methods), and
    at most ``steps - i`` when ``lower_order_final`` applies (see the module docstring)."""
    orders = [min(order, i + 1) if warmup else order for i in range(steps)]
    if lowers_final_orders(lower_order_final, steps):
        orders = [min(k, steps - i) for i, k in enumerate(orders)]
    return tuple(orders)
