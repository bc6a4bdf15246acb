"""JSON files read from users (splits, points, records) and written by pointcell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pointcell.errors import PointcellInputError
from pointcell.io.atomic import atomic_output


def read_json(path: Path, what: str, *, advice: str = "") -> Any:
    """The JSON in ``path``, or one line naming the file, what it should hold and why it
    cannot be read (plus ``advice``, when given)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        tail = f"; {advice}" if advice else ""
        raise PointcellInputError(f"{path}: cannot read the {what} as JSON ({exc}){tail}") from exc


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON at ``path``, which appears whole or not at all."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
