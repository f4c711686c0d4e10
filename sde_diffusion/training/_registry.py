"""The name-or-callable look-up behind the training registries
([`get_dataset`][sde_diffusion.training.data.get_dataset], [`get_loss`][sde_diffusion.training.losses.get_loss])."""

from __future__ import annotations

from collections.abc import Callable, Mapping

__all__ = ["lookup"]


def lookup(registry: Mapping[str, Callable], name: str | Callable, what: str) -> Callable:
    """``name`` itself when it is callable, else ``registry[name]``; an unknown name raises ``ValueError`` that says
    ``what`` was asked for and lists the known names."""
    if callable(name):
        return name
    if name in registry:
        return registry[name]
    raise ValueError(f"unknown {what} {name!r}; choose from {sorted(registry)}")
