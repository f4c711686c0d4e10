"""The one option validator (sde_diffusion.solvers.options): wrong types and values fail with the option's name."""

import math

import numpy as np
import pytest

from sde_diffusion.solvers.options import (
    OptionTypeError,
    check_bool,
    check_choice,
    check_int,
    check_int_sequence,
    check_nonnegative,
    check_positive,
)


@pytest.mark.parametrize("bad", [2.0, True, "2", None, 2.5])
def test_int_refuses_other_types(bad):
    with pytest.raises(TypeError, match="order must be an int") as e:
        check_int("order", bad, 1, 3)
    assert isinstance(e.value, ValueError) and isinstance(e.value, OptionTypeError)


def test_int_range_and_choices():
    assert check_int("order", np.int64(2), 1, 3) == 2 and type(check_int("order", np.int64(2))) is int
    with pytest.raises(ValueError, match=r"order must be an int in 1\.\.3, got 4"):
        check_int("order", 4, 1, 3)
    with pytest.raises(ValueError, match=r"n must be an int >= 0"):
        check_int("n", -1, 0)
    with pytest.raises(ValueError, match="must be one of 2, 4; got 3"):
        check_int("ab_order", 3, choices=(2, 4))


def test_choice_lists_the_valid_values_and_compares_types():
    assert check_choice("update", "exact", ("paper", "exact")) == "exact"
    with pytest.raises(ValueError, match="update must be one of 'paper', 'exact'; got 'bogus'"):
        check_choice("update", "bogus", ("paper", "exact"))
    with pytest.raises(TypeError, match="flag must be one of True, False, 'auto'; got 1"):
        check_choice("flag", 1, (True, False, "auto"))  # 1 == True, but it is not a bool
    with pytest.raises(ValueError) as e:
        check_choice("flag", "yes", (True, False, "auto"))
    assert not isinstance(e.value, TypeError)


def test_bool():
    assert check_bool("multistep", False) is False
    for bad in (0, 1, "yes", None):
        with pytest.raises(TypeError, match="multistep must be True or False"):
            check_bool("multistep", bad)


def test_floats():
    assert check_positive("snr", 1) == 1.0 and check_nonnegative("eta", 0) == 0.0
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="snr must be > 0"):
            check_positive("snr", bad)
    for bad in (math.inf, math.nan):
        with pytest.raises(ValueError, match="eta must be finite"):
            check_nonnegative("eta", bad)
    with pytest.raises(TypeError, match="eta must be a real number"):
        check_nonnegative("eta", True)


def test_int_sequence():
    assert check_int_sequence("orders", [3, np.int32(2), 1], 1, 3) == (3, 2, 1)
    with pytest.raises(TypeError, match=r"orders\[1\] must be an int"):
        check_int_sequence("orders", (3, 2.0), 1, 3)
    with pytest.raises(ValueError, match="must not be empty"):
        check_int_sequence("orders", ())
    with pytest.raises(TypeError, match="sequence"):
        check_int_sequence("orders", "32")


BAD_SOLVER_OPTIONS = [
    ("dpm_solver", {"order": 2.0}, "order"),
    ("dpm_solver++", {"order": True}, "order"),
    ("dpm_solver++", {"update": "bogus"}, "update"),
    ("dpm_solver", {"orders": (3, 2.5)}, "orders"),
    ("sde_dpm_solver++", {"eta": float("nan")}, "eta"),
    ("deis", {"order": 2.0}, "order"),
    ("deis", {"method": "ab"}, "method"),
    ("deis", {"method": "rhork", "tableau": "rk5"}, "tableau"),
    ("unipc", {"predictor_order": 2.0}, "predictor_order"),
    ("unipc", {"b_h": "bh3"}, "b_h"),
    ("unipc", {"lower_order_final": 1}, "lower_order_final"),
    ("pndm", {"warmup": "s"}, "warmup"),
    ("ipndm", {"ab_order": 2.0}, "ab_order"),
    ("euler", {"variable": "lambda"}, "variable"),
    ("heun", {"variable": 1}, "variable"),
    ("pc", {"snr": 0.0}, "snr"),
    ("pc", {"n_corrector": 1.0}, "n_corrector"),
    ("ddim", {"eta": -1.0}, "eta"),
    ("ddpm", {"variance": "fixed"}, "variance"),
]


@pytest.mark.parametrize("name,options,option", BAD_SOLVER_OPTIONS, ids=lambda v: str(v))
def test_bad_solver_options_fail_at_construction_naming_the_option(name, options, option):
    """A bad option fails when the solver is built (not inside ``coefficients`` or ``step``), with its name."""
    from sde_diffusion.solvers import get_solver

    with pytest.raises((TypeError, ValueError), match=option):
        get_solver(name, **options)
