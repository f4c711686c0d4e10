"""Solvers: one module per family, each registering its classes in
[`sde_diffusion.solvers.base`][sde_diffusion.solvers.base].

Every public module of this package is imported here, so adding a module is enough to register its solvers.
"""

import importlib
import pkgutil

from .base import Solver, get_solver, register, registered_solvers
from .classic import Euler, EulerMaruyama, Heun, PredictorCorrector
from .first_order import DDIM, DDPM, DDIMInverse

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "DDIM",
    "DDIMInverse",
    "DDPM",
    "Euler",
    "EulerMaruyama",
    "Heun",
    "PredictorCorrector",
    "Solver",
    "get_solver",
    "register",
    "registered_solvers",
]
