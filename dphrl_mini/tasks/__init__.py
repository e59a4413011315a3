"""Verifiable tasks with many correct answers (DESIGN.md §2): countdown, text-to-SQL, math."""

from __future__ import annotations

from types import ModuleType

from . import countdown, math, sql
from .rows import validate_rows

__all__ = ["TASKS", "get_task", "validate_rows"]

TASKS: dict[str, ModuleType] = {"countdown": countdown, "sql": sql, "math": math}


def get_task(name: str) -> ModuleType:
    """The task module called ``name``; raises ``ValueError`` listing the valid names."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]

