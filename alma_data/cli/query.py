"""``alma-data query``."""

from __future__ import annotations

import argparse
from pathlib import Path

from alma_data.cli.common import split_assignments, store_from
from alma_data.config import RecipeError


def add(sub) -> None:
    q = sub.add_parser("query", help="SQL over a run: one DuckDB view per table over all rounds",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog='examples:\n  alma-data query "select round, count(*) from sft group by all"\n'
                              "  alma-data query run=default --format json stats.sql")
    q.add_argument("assignments", nargs="+", metavar="[run=NAME] SQL")
    q.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    q.add_argument("--out", help="write to this file instead of the terminal")
    q.add_argument("--max-rows", type=int, default=40, help="rows shown in table format")
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import duckdb
    import pyarrow as pa

    from alma_data.outputs import check_output
    from alma_data.query import (check_statements, damaged_table_named, explain_refusal, read_only_connection,
                                 stopped_by_signals, unreadable_shards, write_result)
    from alma_data.store.integrity import DamageError

    special, _, rest = split_assignments(args.assignments, {"run", "runs_dir"})
    if len(rest) != 1:
        raise RecipeError('query takes one SQL statement or a .sql file: alma-data query "select ..."')
    sql = rest[0]
    if sql.endswith(".sql") and " " not in sql.strip():
        try:
            sql = Path(sql).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RecipeError(f"no file {sql}; give a .sql file that exists, or the SQL itself in quotes") from None
        except UnicodeDecodeError as exc:
            raise RecipeError(f"{sql}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
        except OSError as exc:
            raise RecipeError(f"{sql}: cannot be read ({exc.strerror})") from None
    store = store_from(special)
    if args.format == "parquet" and not args.out:
        raise RecipeError("--format parquet needs --out FILE.parquet")
    if args.out:
        args.out = check_output(args.out, flag="--out", runs_dir=store.runs_dir)
    damaged: dict[str, str] = {}
    with read_only_connection(store, damaged) as con, stopped_by_signals(con):
        if (message := damaged_table_named(sql, damaged)) is not None:
            raise DamageError(message)
        try:
            check_statements(con, sql)
            rel = con.sql(sql)
            if rel is not None:
                write_result(rel, args)
        except (duckdb.Error, pa.ArrowException, OSError) as exc:
            refusal = explain_refusal(exc) if isinstance(exc, duckdb.Error) else None
            if refusal is not None:
                raise refusal from None
            # A shard whose bytes changed (size and time kept) fails only when it is read:
            # name it, and record it as verify would, so the repair redoes exactly that.
            # (An OSError with an errno is the system's, writing --out: not the data's.)
            damage = None if getattr(exc, "errno", None) else unreadable_shards(store, sql, exc)
            if damage is not None:
                raise damage from None
            raise
    return 0
