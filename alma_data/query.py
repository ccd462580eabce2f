"""The connection ``alma-data query`` runs a user's SQL on: it reads the run's tables, nothing else.

A query over a dataset must not change the dataset. DuckDB's own switch for that,
``enable_external_access = false`` locked with ``lock_configuration``, turns off every file
the engine would open itself; but a path it is told to allow (``allowed_paths``) is open for
writing as well as reading (``COPY ... TO '<shard>' (USE_TMP_FILE false)`` overwrote a shard
on DuckDB 2.0.1). So the engine is allowed no file of the run at all: each table is a view
over an Arrow dataset of its shards, which pyarrow reads (locally or from the run's object
store) and DuckDB scans from memory. The only folder DuckDB may touch is a private temporary
one for spilling, removed when the query ends.

Statements that exist to write or to reach outside (COPY, EXPORT, ATTACH, INSTALL/LOAD,
PRAGMA) are refused before anything runs, with a line that says what to do instead;
anything else a query tries on a file (``read_text('/etc/passwd')``) is stopped by DuckDB
and reported the same way. Results reach a file only through ``--out``, written in Python.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import tempfile
import threading
from contextlib import contextmanager
from typing import Iterator

from alma_data.errors import AlmaError
from alma_data.store import Store

SETTABLE = ("threads", "memory_limit", "max_memory", "preserve_insertion_order", "default_order",
            "default_null_order", "TimeZone", "Calendar", "enable_progress_bar", "errors_as_json")
"""DuckDB settings a query may still change once the connection is locked (none of them
opens a file)."""

_REFUSED = {
    "COPY": "it writes a file; a query's result reaches a file only through --out FILE "
            "(with --format csv|json|parquet)",
    "COPY_DATABASE": "it copies a database; write a query's result with --out FILE",
    "EXPORT": "it writes files; write a query's result with --out FILE (with --format csv|json|parquet)",
    "ATTACH": "a query sees the run's tables only (list them with: alma-data tables)",
    "DETACH": "a query sees the run's tables only (list them with: alma-data tables)",
    "LOAD": "a query cannot install or load DuckDB extensions",
    "EXTENSION": "a query cannot install or load DuckDB extensions",
    "PRAGMA": "some pragmas read or write files; use DESCRIBE t, SHOW TABLES, SUMMARIZE t or "
              "select * from pragma_table_info('t')",
}
_ALLOWED = {"SELECT", "EXPLAIN", "SET", "VARIABLE_SET", "CALL", "CREATE", "CREATE_FUNC", "INSERT", "UPDATE",
            "DELETE", "DROP", "ALTER", "PREPARE", "EXECUTE", "TRANSACTION", "ANALYZE", "MULTI"}
"""Statement kinds a query may run. Besides reading they only change the connection's own
in-memory catalog (a temporary table or macro), which ends with the query."""


class QueryRefused(AlmaError):
    """A statement or file access ``alma-data query`` does not allow."""


def check_statements(con, sql: str) -> None:
    """Refuse the whole text, before any of it runs, if one of its statements may not run."""
    for statement in con.extract_statements(sql):
        kind = statement.type.name
        if kind in _ALLOWED:
            continue
        first = statement.query.strip().split(None, 1)[0].upper() if statement.query.strip() else kind
        why = _REFUSED.get(kind, "a query only reads the run's tables")
        raise QueryRefused(f"a query may not run {first} statements: {why}")


def explain_refusal(exc: Exception) -> QueryRefused | None:
    """DuckDB's refusal of a file or a setting, as one line; None for any other error."""
    import duckdb

    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, duckdb.PermissionException):
        target = re.search(r'"([^"]*)"', text)
        where = f" ({target.group(1)})" if target else ""
        return QueryRefused(f"a query reads the run's tables by their names and opens no file itself{where}; "
                            "list the tables with: alma-data tables, write results with --out FILE")
    if "configuration has been locked" in text:
        name = re.search(r'option "([^"]*)"', text)
        return QueryRefused(f"a query may not change the setting {name.group(1) if name else ''!s}: the query "
                            "connection's file access is off and locked; settings a query may change: "
                            + ", ".join(SETTABLE))
    return None


def _table_dataset(store: Store, table: str, rounds: list[int]):
    """One Arrow dataset over a table's shards in all its rounds, with the round as a column
    (as DuckDB's ``hive_partitioning`` gives it) and columns unioned by name across rounds."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    def on_fs(f) -> str:  # a remote store's files come as URLs; pyarrow's filesystem wants paths
        return str(f).split("://", 1)[1] if store.remote else str(f)

    per_round = [[on_fs(f) for f in store.files(r, table)] for r in rounds]
    # Every shard of one round's table has its writer's schema: one footer per round suffices.
    schemas = [pq.read_schema(files[0], filesystem=store.arrow_fs) for files in per_round if files]
    files = [f for fs in per_round for f in fs]
    if not files:
        return None
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    if "round" not in schema.names:
        schema = schema.append(pa.field("round", pa.int64()))
    root = on_fs(store.root)
    return ds.dataset(files, schema=schema, format="parquet", filesystem=store.arrow_fs,
                      partitioning=ds.partitioning(pa.schema([("round", pa.int64())]), flavor="hive"),
                      partition_base_dir=root)


def damaged_table_named(sql: str, damaged: dict[str, str]) -> str | None:
    """The message of a damaged table the SQL names (its views are left out of the connection)."""
    for table, message in damaged.items():
        if re.search(rf"(?<![\w.]){re.escape(table)}(?!\w)", sql, flags=re.IGNORECASE):
            return message
    return None


def tables_named(sql: str, tables: dict[str, list[int]]) -> list[tuple[int, str]]:
    """(round, table) of every finished table the SQL names; every table when it names none."""
    named = [t for t in tables if re.search(rf"(?<![\w.]){re.escape(t)}(?!\w)", sql, flags=re.IGNORECASE)]
    return [(r, t) for t in (named or list(tables)) for r in tables[t]]


def unreadable_shards(store: Store, sql: str, exc: BaseException):
    """A query failed while reading: hash the shards of the tables it names, and if one is not
    what its manifest recorded (bytes changed with the size and time kept, which only hashing
    sees), the error that names it and its repair; None when every shard is intact (the query's
    own error is then the user's to read)."""
    from alma_data.store.integrity import DamageError, describe, hash_tables, repair_command

    damage = hash_tables(store, tables_named(sql, store.done_tables()))
    if not damage:
        return None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DamageError(f"the query could not read the run's data ({first[:160]}): {describe(damage)}; "
                       f"repair: {repair_command(store)} (writes just that again; other tables still answer)")


@contextmanager
def read_only_connection(store: Store, damaged: dict[str, str] | None = None) -> Iterator:
    """A DuckDB connection with one view per finished table over all rounds, that opens no
    file of its own: external access off, the configuration locked. A damaged table gets no
    view (its message goes into ``damaged``), so the healthy ones are still queried."""
    import duckdb

    from alma_data.store.integrity import DamageError

    spill = tempfile.mkdtemp(prefix="alma-query-")
    con = duckdb.connect(":memory:")
    try:
        for table, rounds in store.done_tables().items():
            try:
                dataset = _table_dataset(store, table, rounds)
            except DamageError as exc:
                if damaged is None:
                    raise
                damaged[table] = str(exc)
                continue
            if dataset is not None:
                con.register(table, dataset)
        con.execute("SET allowed_directories = []")
        con.execute("SET allowed_paths = []")
        con.execute("SET temp_directory = ?", [spill])  # DuckDB allows its temporary folder itself
        con.execute("SET autoinstall_known_extensions = false")
        con.execute("SET autoload_known_extensions = false")
        con.execute("SET enable_external_access = false")
        con.execute("SET allowed_configs = ?", [list(SETTABLE)])
        con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def _interrupted(exc: BaseException) -> bool:
    import duckdb

    return isinstance(exc, duckdb.InterruptException) or (
        isinstance(exc, RuntimeError) and "interrupted" in str(exc).lower())


@contextmanager
def stopped_by_signals(con) -> Iterator[None]:
    """Ctrl-C and SIGTERM stop a running query. While DuckDB runs one it holds the main thread
    in C, where Python's signal handlers wait for the query to end (a long one: for good); the
    byte each signal writes to the wake-up socket lets a thread interrupt the connection, and the
    handler (KeyboardInterrupt, or the command's SIGTERM handler) runs as the query returns."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    stops = {int(signal.SIGINT), int(signal.SIGTERM)}

    got: list[int] = []

    def watch() -> None:
        while data := reader.recv(64):
            if stops & set(data):
                got.extend(b for b in data if b in stops)
                con.interrupt()

    # DuckDB also runs Python's signal handlers itself while a query runs (it checks for
    # signals), swallows what they raise and reports "Query interrupted". On a loaded machine
    # that can happen before the watcher thread is scheduled at all, so the handlers record
    # the stop too: without it the interruption reached the user as a traceback and exit 1.
    previous = {s: signal.getsignal(s) for s in stops}

    def record(signum, frame) -> None:
        got.append(signum)
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        elif signum == signal.SIGTERM:
            from alma_data.errors import Stopped

            raise Stopped(signal.SIGTERM)
        else:
            raise KeyboardInterrupt()

    for s in stops:
        signal.signal(s, record)
    old = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="query-interrupt", daemon=True)
    watcher.start()
    try:
        yield
    except Exception as exc:
        # The interrupted query raises before Python's handler for the signal has run (this
        # DuckDB says RuntimeError "Query interrupted"): say which stop it was.
        if got and _interrupted(exc):
            from alma_data.errors import Stopped

            raise (Stopped(signal.SIGTERM) if got[-1] == signal.SIGTERM else KeyboardInterrupt()) from None
        raise
    finally:
        signal.set_wakeup_fd(old)
        for s, handler in previous.items():
            if signal.getsignal(s) is record:  # a handler that ran may have set SIG_IGN for the clean-up
                signal.signal(s, handler)
        writer.close()  # the watcher's recv returns b"" and it ends
        watcher.join(5)
        reader.close()


def _write_rows(rel, fmt: str, out) -> None:
    """A result as CSV or JSON into an open text stream (the terminal or a file). The whole
    result is fetched first, so a query that fails writes nothing (a device or pipe as ``--out``
    is written in place, with no temporary name to protect it)."""
    import csv
    import json

    rows = rel.fetchall()
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(rel.columns)
        writer.writerows(rows)
    else:
        json.dump([dict(zip(rel.columns, r)) for r in rows], out, indent=2, default=str)
        out.write("\n")


def write_result(rel, args) -> None:
    """The result of a query on the terminal or in ``--out``: written here, never by DuckDB,
    whose connection may not open files. A file goes through a temporary name, so a query that
    fails half way leaves an existing ``--out`` as it was."""
    import sys

    from alma_data.outputs import atomic_file, atomic_path

    fmt = args.format
    if fmt == "parquet":
        import pyarrow.parquet as pq

        reader = rel.to_arrow_reader(64 * 1024)
        with atomic_path(args.out) as tmp:
            with pq.ParquetWriter(str(tmp), reader.schema, compression="zstd") as writer:
                for batch in reader:
                    writer.write_batch(batch)
    elif not args.out:
        if fmt == "table":
            rel.show(max_width=200, max_rows=args.max_rows)
        else:
            _write_rows(rel, fmt, sys.stdout)
    else:
        with atomic_file(args.out, "w", newline="") as out:
            if fmt == "table":
                out.write(str(rel))
            else:
                _write_rows(rel, fmt, out)
