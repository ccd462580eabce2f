"""Where the SQL files, recipes and bundled seeds live.

A wheel carries them inside the package (``alma_data/_resources``); a source checkout
(editable install, tests) keeps them at the repository's top level.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_LAYOUT = {"sql": "sql", "pipelines": "pipelines", "seed": "data/seed"}


@cache
def resource_dir(kind: str) -> Path:
    if kind not in _LAYOUT:
        raise KeyError(f"unknown resource kind {kind!r}; one of {sorted(_LAYOUT)}")
    for candidate in (_PACKAGE / "_resources" / kind, _PACKAGE.parent / _LAYOUT[kind]):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"alma-data's {kind!r} folder is missing from {_PACKAGE}; reinstall the package (pip install .)"
    )
