"""Run the set operations kept as plain .sql files in ``sql/``.

Files read their inputs from views the caller registers (``register_parquet``) and take
values as DuckDB named parameters (``$name``), so each file also runs by hand in the
DuckDB shell once the views exist.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Iterable

from alma_data.resources import resource_dir


@cache
def load_sql(name: str) -> str:
    path = resource_dir("sql") / f"{name}.sql"
    if not path.is_file():
        known = sorted(p.stem for p in resource_dir("sql").glob("*.sql"))
        raise FileNotFoundError(f"no SQL file {name!r} in {path.parent}; known: {known}")
    return path.read_text()


def register_parquet(con, view: str, files: Iterable[str | Path]) -> None:
    listing = ", ".join("'" + str(f).replace("'", "''") + "'" for f in files)
    con.execute(f'CREATE OR REPLACE TEMP VIEW "{view}" AS SELECT * FROM read_parquet([{listing}], union_by_name = true)')


def run_sql(con, name: str, **params: Any):
    """``sql/<name>.sql`` as a DuckDB relation, given the parameters it mentions (``$name``)."""
    text = load_sql(name)
    used = {k: v for k, v in params.items() if f"${k}" in text}
    return con.sql(text, params=used or None)


def register_round_views(con, store, round: int,
                         tables: tuple[str, ...] = ("prompts", "responses", "judgments")) -> None:
    """Views named after the tables, over one round's shards of a run's store only."""
    for table in tables:
        register_parquet(con, table, store.files(round, table))
