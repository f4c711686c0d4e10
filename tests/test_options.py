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
