"""Row checks shared by the tasks: a bad row of data is one line naming its source, row and field.

Each task module has a ``check_row(row)`` for its own columns; ``validate_rows`` runs it, after the
common ``prompt`` check, on every row where the rows are loaded.
"""

from __future__ import annotations

from typing import Callable


def validate_rows(rows: list[dict], source: str, check_row: Callable[[dict], None]) -> list[dict]:
    """Return ``rows`` after checking each one: a ``prompt`` that is a non-empty string, then the task's
    own columns (``check_row`` raises ``ValueError`` naming the field). A bad row raises one line
    naming the source, the row and the field."""
    for i, row in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise ValueError(f"is a {type(row).__name__}, not a mapping of fields")
            check_field(row, "prompt", str)
            check_row(row)
        except ValueError as error:
            raise ValueError(f"{source} row {i}: {error}") from None
    return rows


def check_split(split: str, splits: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming the valid choices unless ``split`` is one of a task's ``splits``."""
    if split not in splits:
        raise ValueError(f"split must be one of {', '.join(map(repr, splits))}, got {split!r}")


def check_field(row: dict, name: str, kind: type | tuple[type, ...]) -> None:
    """Raise ``ValueError`` unless ``row[name]`` exists and is a ``kind`` (non-empty when a string)."""
    if name not in row:
        raise ValueError(f"field `{name}` is missing")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, kind) or value == "":
        kinds = kind if isinstance(kind, tuple) else (kind,)
        what = " or ".join(dict.fromkeys(_KIND_NAMES.get(k, k.__name__) for k in kinds))
        raise ValueError(f"field `{name}`={value!r} must be a {'non-empty ' if kind is str else ''}{what}")


_KIND_NAMES = {str: "string", int: "number", float: "number", list: "list", tuple: "list"}
