"""Shared machinery of the conformance checks: errors, reports, running a property under Hypothesis."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

F64 = torch.float64


def hypothesis_modules():
    try:
        import hypothesis
        import hypothesis.strategies as st
    except ImportError as e:  # pragma: no cover - exercised only without hypothesis
        raise ImportError("sde_diffusion.testing needs hypothesis: pip install hypothesis") from e
    return hypothesis, st


class PropertyCheckError(AssertionError):
    """A conformance property failed. ``prop`` names it; the message carries the (shrunk) counterexample."""

    def __init__(self, prop: str, message: str, subject: str | None = None):
        where = f" for {subject}" if subject else ""
        super().__init__(f"property '{prop}' failed{where}: {message}")
        self.prop = prop
        self.subject = subject


class ScheduleCheckError(PropertyCheckError):
    """A schedule property of [`SCHEDULE_PROPERTIES`][sde_diffusion.testing.schedule_checks.SCHEDULE_PROPERTIES]
    failed."""


class SolverCheckError(PropertyCheckError):
    """A solver property of [`SOLVER_PROPERTIES`][sde_diffusion.testing.solver_checks.SOLVER_PROPERTIES] failed."""


@dataclass
class CheckReport:
    """What a check did: the properties that ``passed``, those ``skipped`` (with the reason) and ``measured``
    numbers (e.g. the fitted order)."""

    subject: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{self.subject}: {len(self.passed)} properties passed"]
        lines += [f"  ok       {name}" for name in self.passed]
        lines += [f"  skipped  {name}: {why}" for name, why in self.skipped.items()]
        lines += [f"  measured {name} = {value}" for name, value in self.measured.items()]
        return "\n".join(lines)


class NotApplicable(Exception):
    """Raised by a property that does not apply; the message says why."""


def run_given(body: Callable, strategy, max_examples: int, argname: str = "data") -> None:
    """Run ``body`` under Hypothesis (reproducible: derandomised, no database, no deadline, one bug reported); the
    falsifying example is printed as ``run(<argname>=...)``."""
    hypothesis, _ = hypothesis_modules()

    phases = [p for p in hypothesis.Phase if p.name != "explain"]  # (explain re-runs the failure many times)

    @hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=phases,
        report_multiple_bugs=False,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(**{argname: strategy})
    def run(**example):
        last.clear()
        last.update(example)
        body(*example.values())

    last: dict = {}
    try:
        run()
    except Exception as e:
        # Hypothesis replays the shrunk example last; name it ourselves (its own note's wording varies by version)
        if not any("Falsifying example" in n for n in getattr(e, "__notes__", [])):
            e.add_note("Falsifying example: run(" + ", ".join(f"{k}={v!r}" for k, v in last.items()) + ")")
        raise


def run_checks(
    props: dict[str, Callable], names: Iterable[str], args: tuple, error: type[PropertyCheckError], report: CheckReport
) -> CheckReport:
    for name in names:
        try:
            props[name](*args)
        except NotApplicable as s:
            report.skipped[name] = str(s)
            continue
        except PropertyCheckError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the property is reported under its name
            notes = "\n".join(getattr(e, "__notes__", []))
            raise error(name, f"{type(e).__name__}: {e}\n{notes}".rstrip(), report.subject) from e
        report.passed.append(name)
    return report


def select_properties(available: Iterable[str], properties: Iterable[str] | None, default: list[str]) -> list[str]:
    if properties is None:
        return default
    names = list(properties)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown properties {unknown}; choose from {sorted(available)}")
    return names
