"""The ``alma-data`` command.

    alma-data build round=1 [recipe=default] [run=NAME] [runs_dir=DIR] [KEY=VALUE ...] [--force]
    alma-data query [run=NAME] [runs_dir=DIR] "SQL" | FILE.sql [--format table|csv|json|parquet] [--out FILE]
    alma-data tables [run=NAME] [runs_dir=DIR]
    alma-data runs [runs_dir=DIR]
    alma-data recipes

One handler per command and the parser that routes to them (over 400 lines: a command is
a few lines of argument checking each, and they read best side by side); how a failure
ends is cli_errors.py's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import threading
from pathlib import Path

from alma_data.cli_errors import error_line, on_sigterm, quiet_stdout, stopped_line
from alma_data.config import RecipeError, apply_override, available_recipes, load_recipe, recipe_from_dict
from alma_data.store import Store, StoreError, list_runs
from alma_data.store.files import DEFAULT_RUNS_DIR

EPILOG = """examples:
  alma-data build round=1                                  # round 1 on the embedded default model
  alma-data build round=1 recipe=paper model=gemma3-270m   # the paper's settings, another base model
  alma-data build round=1 run=try2 train.max_steps=4 seeds.max_sft=32
  alma-data query "select round, count(*) from sft group by all"
  alma-data query run=default --format csv --out scores.csv "select * from judge_eval"
  alma-data tables run=default                             # tables, columns, rows
  alma-data status run=default                             # done / partial / missing, and how to resume
  alma-data verify run=default                             # sha256 of every shard and checkpoint file
  alma-data report run=default                             # plots and report.html in the run folder
  alma-data publish run=default repo=me/alma --dry-run     # the folder the Hub would get
  alma-data runs                                           # runs in data/runs
  alma-data judge pairs.jsonl judge=run:default/round=1/judge  # a judge's accuracy on preference pairs
  alma-data eval questions.jsonl run=default               # base, m1a, last model answer; one judge compares
"""


def _split_assignments(items: list[str], allowed_special: set[str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    special, overrides, rest = {}, {}, []
    given: dict[str, str] = {}
    for item in items:
        if "=" in item and not item.lstrip().lower().startswith(("select", "with", "from")) and " " not in item.split("=", 1)[0]:
            key, value = item.split("=", 1)
            if key in given:
                raise RecipeError(f"{key} is given twice ({given[key]} and {item}); keep one")
            given[key] = item
            (special if key in allowed_special else overrides)[key] = value
        else:
            rest.append(item)
    return special, overrides, rest


def _default_run(runs_dir: str, given: str | None) -> str:
    if given:
        return given
    runs = list_runs(runs_dir)
    if len(runs) == 1:
        return runs[0]
    if "default" in runs or not runs:
        return "default"
    raise StoreError(f"{runs_dir} holds several runs ({', '.join(runs)}); choose one with run=NAME")


def _runs_dir(special: dict[str, str], *, must_exist: bool) -> str:
    """The runs folder named by ``runs_dir=``, checked: a folder (or, for a build, a place one
    can be made), never a file."""
    given = special.get("runs_dir", DEFAULT_RUNS_DIR)
    if not given.strip():
        raise RecipeError(f"runs_dir= is empty; name the folder that holds the runs, e.g. runs_dir={DEFAULT_RUNS_DIR}")
    if "://" in given:
        return given
    path = Path(given).expanduser()
    if path.exists() and not path.is_dir():
        raise RecipeError(f"runs_dir={given} is a file, not a folder; name a folder (a build makes a missing one)")
    if not path.exists():
        if must_exist:
            raise StoreError(f"runs_dir={given} does not exist; name the folder that holds your runs, or build one "
                             f"there first: alma-data build round=1 runs_dir={given}")
        parent = path.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise RecipeError(f"runs_dir={given}: {parent} is a file, so the folder cannot be made; name another folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RecipeError(f"runs_dir={given}: cannot make the folder, {parent} is not writable by this user; "
                              "name a folder you can write")
    elif not os.access(path, os.W_OK | os.X_OK) and not must_exist:
        raise RecipeError(f"runs_dir={given} is not writable by this user; name a folder you can write")
    return given


def cmd_build(args: argparse.Namespace) -> int:
    special, overrides, rest = _split_assignments(args.assignments, {"round", "recipe", "run", "runs_dir"})
    if rest:
        raise RecipeError(f"unexpected argument(s) {rest}; build takes KEY=VALUE pairs, e.g. round=1 responses.n=16")
    if "round" not in special:
        raise RecipeError("say which round to build up to: alma-data build round=1")
    try:
        target = int(special["round"])
    except ValueError:
        raise RecipeError(f"round must be an integer, got {special['round']!r}") from None
    runs_dir = _runs_dir(special, must_exist=False)
    existing = Store(runs_dir, special["run"]) if "run" in special else None
    if existing is not None and existing.exists() and "recipe" not in special:
        # Continuing a run: its own recipe, with any overrides on top.
        recipe = recipe_from_dict(existing.read_run()["recipe"])
        for key, value in overrides.items():
            apply_override(recipe, key, value)
    else:
        recipe = load_recipe(special.get("recipe", "default"), overrides)
    store = Store(runs_dir, special.get("run", recipe.name))
    from alma_data.round import build

    build(recipe, store, target, force=args.force, quiet=args.quiet)
    return 0


def _store_from(special: dict[str, str]) -> Store:
    runs_dir = _runs_dir(special, must_exist=True)
    store = Store(runs_dir, _default_run(runs_dir, special.get("run")))
    store.read_run()  # a clear error when the run does not exist
    return store


def cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from alma_data.outputs import check_output
    from alma_data.query import (check_statements, damaged_table_named, explain_refusal, read_only_connection,
                                 stopped_by_signals, write_result)
    from alma_data.store.integrity import DamageError

    special, _, rest = _split_assignments(args.assignments, {"run", "runs_dir"})
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
    store = _store_from(special)
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
        except duckdb.Error as exc:
            refusal = explain_refusal(exc)
            if refusal is not None:
                raise refusal from None
            raise
    return 0


def cmd_tables(args: argparse.Namespace) -> int:
    special, _, _ = _split_assignments(args.assignments, {"run", "runs_dir"})
    store = _store_from(special)
    for table, rounds in store.done_tables().items():
        m = store.manifest(rounds[-1], table)
        rows = sum(store.manifest(r, table)["rows"] for r in rounds)
        cols = ", ".join(f"{k} {v}" for k, v in m["columns"].items())
        print(f"{table}  rounds {rounds}  {rows:,} rows\n    {cols}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    special, _, _ = _split_assignments(args.assignments, {"runs_dir"})
    runs_dir = _runs_dir(special, must_exist=False)
    runs = list_runs(runs_dir)
    if not runs:
        print(f"no runs in {runs_dir}; start one with: alma-data build round=1")
    for run in runs:
        info = Store(runs_dir, run).read_run()
        print(f"{run}  recipe {info['recipe'].get('name')}  fingerprint {info['fingerprint']}  model {info['recipe'].get('model')}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from alma_data.status import format_status, status_exit

    special, unknown, rest = _split_assignments(args.assignments, {"run", "runs_dir"})
    if unknown or rest:
        raise RecipeError(f"status does not take {sorted(unknown) or rest}: it shows the run under the recipe it was "
                          "built with; it takes run=NAME and runs_dir=DIR")
    text = format_status(_store_from(special))
    print(text)
    return status_exit(text)


def cmd_verify(args: argparse.Namespace) -> int:
    from alma_data.store.integrity import record_verify, repair_command, verify_run

    special, unknown, rest = _split_assignments(args.assignments, {"run", "runs_dir", "threads"})
    if unknown or rest:
        raise RecipeError(f"verify does not take {sorted(unknown) or rest}; it takes run=NAME, runs_dir=DIR, threads=N")
    store = _store_from(special)
    # Hashing is CPU-bound on a local disk (a thread a core), latency-bound on an object
    # store (several reads in flight).
    default = 8 if store.remote else min(8, os.cpu_count() or 1)
    try:
        threads = int(special.get("threads", default))
    except ValueError:
        raise RecipeError(f"threads must be a whole number, got {special['threads']!r}") from None
    report = verify_run(store, threads=threads, progress=not args.quiet)
    record_verify(store, report.damage)  # so the build it names redoes exactly what it found
    for d in report.damage:
        print(f"damaged: {d}")
    print(report.summary())
    if report.damage:
        print(f"repair: {repair_command(store)}   (writes again what is damaged and what was built from it)")
        return 1
    return 0


def _bool(value: str, key: str) -> bool:
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise RecipeError(f"{key} must be true or false, got {value!r}")


def cmd_publish(args: argparse.Namespace) -> int:
    from alma_data.publish import PublishError, export, push

    keys = {"run", "runs_dir", "repo", "rounds", "splits", "raw", "private", "revision", "to", "license"}
    special, unknown, rest = _split_assignments(args.assignments, keys)
    if unknown or rest:
        raise RecipeError(f"publish does not take {sorted(unknown) or rest}; it takes {', '.join(sorted(keys))}")
    if "repo" not in special or "/" not in special["repo"]:
        raise RecipeError("say where to publish: repo=ORG/NAME (a Hub dataset repository)")
    store = _store_from(special)
    rounds = [int(r) for r in special["rounds"].split(",")] if "rounds" in special else None
    splits = special["splits"].split(",") if "splits" in special else None
    folder = Path(special["to"]) if "to" in special else store.local_root / "export" / special["repo"].replace("/", "__")
    try:
        counts = export(store, folder, special["repo"], rounds=rounds, splits=splits,
                        raw=_bool(special.get("raw", "false"), "raw"), license=special.get("license", "apache-2.0"),
                        overwrite=args.overwrite)
        total = sum(sum(c.values()) for c in counts.values())
        print(f"wrote {folder}: {len(counts)} configs ({', '.join(counts)}), {total:,} rows", file=sys.stderr)
        if args.dry_run or "to" in special:
            print(f"dry run: nothing uploaded. Load it with datasets.load_dataset({str(folder)!r}, CONFIG)", file=sys.stderr)
            return 0
        url = push(store, folder, special["repo"], private=_bool(special.get("private", "false"), "private"),
                   revision=special.get("revision"))
    except PublishError as exc:
        print(f"alma-data: error: {exc}", file=sys.stderr)
        return 2
    print(f"published {special['repo']}: {url}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from alma_data.report import build_report

    special, _, _ = _split_assignments(args.assignments, {"run", "runs_dir"})
    store = _store_from(special)
    out = build_report(store)
    pngs = sorted(p.name for p in out.glob("*.png"))
    print(f"wrote {out}/report.md and report.html with {len(pngs)} plots: {', '.join(pngs)}", file=sys.stderr)
    if store.remote:
        print(f"copied into {store.where()}/report", file=sys.stderr)
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    from alma_data.judge_cli import cmd_judge as run

    return run(args, _split_assignments, DEFAULT_RUNS_DIR)


def cmd_eval(args: argparse.Namespace) -> int:
    from alma_data.user_eval import cmd_eval as run

    return run(args, _split_assignments, DEFAULT_RUNS_DIR)


def cmd_lab(args: argparse.Namespace) -> int:
    from alma_data.lab.runner import cmd_lab as run

    return run(args, _split_assignments, DEFAULT_RUNS_DIR)


def cmd_recipes(args: argparse.Namespace) -> int:
    for name in available_recipes():
        r = load_recipe(name)
        print(f"{name}: model {r.model}, K={r.prompts.k}, N={r.responses.n}, rounds={r.rounds}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alma-data", description="Synthetic alignment data after ALMA.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build rounds 1..R of a run (resumes what is missing)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="KEY=VALUE sets any recipe key with a dotted path, e.g. responses.n=16.\n"
                              "Special keys: round=R, recipe=NAME|FILE.yaml, run=NAME, runs_dir=DIR.\n\n" + EPILOG)
    b.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    b.add_argument("--force", action="store_true", help="accept a changed recipe and rebuild what it touches")
    b.add_argument("--quiet", action="store_true", help="no progress bars or summaries")
    b.set_defaults(func=cmd_build)
    q = sub.add_parser("query", help="SQL over a run: one DuckDB view per table over all rounds",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog='examples:\n  alma-data query "select round, count(*) from sft group by all"\n'
                              "  alma-data query run=default --format json stats.sql")
    q.add_argument("assignments", nargs="+", metavar="[run=NAME] SQL")
    q.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    q.add_argument("--out", help="write to this file instead of the terminal")
    q.add_argument("--max-rows", type=int, default=40, help="rows shown in table format")
    q.set_defaults(func=cmd_query)
    for name, func, help_, metavar, example in (
        ("tables", cmd_tables, "list the tables of a run with their columns and rows", "run=NAME",
         "alma-data tables run=default runs_dir=data/runs"),
        ("runs", cmd_runs, "list runs", "runs_dir=DIR", "alma-data runs runs_dir=data/runs"),
        ("status", cmd_status, "each round's tables and checkpoints: done, partial or missing", "run=NAME",
         "alma-data status run=default"),
        ("report", cmd_report, "per-round statistics and plots (Markdown + HTML) in the run folder", "run=NAME",
         "alma-data report run=default   # then open data/runs/default/report/report.html"),
    ):
        sp = sub.add_parser(name, help=help_, formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=f"example:\n  {example}")
        sp.add_argument("assignments", nargs="*", metavar=metavar)
        sp.set_defaults(func=func)
    v = sub.add_parser("verify", help="check every shard and checkpoint file of a run against its manifest (sha256)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Exits 1 naming each damaged file (missing, cut short, changed bytes, unreadable "
                              "manifest);\na build of the run repairs them. threads=N hashes N files at once "
                              "(default: one a core, up to 8;\n8 for a bucket).\n\nexample:\n  alma-data verify run=default runs_dir=data/runs")
    v.add_argument("assignments", nargs="*", metavar="run=NAME")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_verify)
    pb = sub.add_parser("publish", help="publish a run to the Hugging Face Hub as one dataset (or a folder)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="keys: repo=ORG/NAME (required), run=NAME, rounds=1,2, splits=sft,dpo,judge_distill,\n"
                               "      raw=true (add prompts/responses/judgments), private=true, revision=BRANCH,\n"
                               "      license=apache-2.0, to=DIR (write the folder only)\n"
                               "The token comes from HF_TOKEN or `hf auth login`.\n\nexamples:\n"
                               "  alma-data publish run=default repo=me/alma-smollm2 --dry-run\n"
                               "  alma-data publish run=default repo=me/alma-smollm2 splits=sft,dpo private=true")
    pb.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    pb.add_argument("--dry-run", action="store_true", help="write the folder that would be uploaded, upload nothing")
    pb.add_argument("--overwrite", action="store_true", help="replace a to= folder that already holds files")
    pb.set_defaults(func=cmd_publish)
    jd = sub.add_parser("judge", help="score a file or Hub dataset with any judge; pairwise accuracy on preference pairs",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="rows: {prompt, response}, {messages: [{role, content}, ...]}, {prompt, chosen, rejected}\n"
                               "      (text or messages), {input, output_1, output_2, label}\n"
                               "keys: judge=REF (required: run:NAME/round=R/judge, base, a model folder or Hub id),\n"
                               "      shots=K (few-shot examples from the run's seed annotations; base: 3), run=NAME,\n"
                               "      runs_dir=DIR, recipe=NAME (no run), split=test, subset=CONFIG (a Hub dataset's), limit=N,\n"
                               "      long=skip|score (over judge.max_length: leave out, or score in full), seed=0,\n"
                               "      and recipe keys: engine=vllm, judge.max_length=1024, judge.batch_size_score=4\n\n"
                               "examples:\n"
                               "  alma-data judge pairs.jsonl judge=run:default/round=2/judge --out scores.parquet\n"
                               "  alma-data judge pairs.jsonl judge=base shots=3 run=default\n"
                               "  alma-data judge org/preference-test split=test judge=run:default/round=1/judge")
    jd.add_argument("assignments", nargs="*", metavar="FILE KEY=VALUE")
    jd.add_argument("--out", help="write every score to this Parquet file")
    jd.add_argument("--format", choices=["text", "json"], default="text", help="how the summary is printed")
    jd.add_argument("--quiet", action="store_true", help="no progress bar")
    jd.set_defaults(func=cmd_judge)
    ev = sub.add_parser("eval", help="answer a prompt file with checkpoints of a run and compare them with one judge",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="rows: {prompt}, {question_id, category, turns: [...]} (first turn), {instruction, input?}\n"
                               "keys: run=NAME, runs_dir=DIR, models=base,m1a,last, judge=run:round=1/judge (default),\n"
                               "      shots=K, name=SET (default: the file's name), split=test, subset=CONFIG, limit=N,\n"
                               "      max_new_tokens=N (default eval.max_new_tokens), and recipe keys\n"
                               "Writes the tables user_eval and user_eval_summary into the run's last round.\n\n"
                               "example:\n  alma-data eval questions.jsonl run=default models=base,m1a,last")
    ev.add_argument("assignments", nargs="*", metavar="FILE KEY=VALUE")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=cmd_eval)
    lb = sub.add_parser("lab", help="the paper's comparisons on recipe=lab, scored by an exact oracle, over seeds",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="keys: size=full|smoke, seeds=0,1,2, runs_dir=DIR (default data/runs/lab)\n"
                               "Writes lab.json and lab.md (the table) into runs_dir.")
    lb.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    lb.add_argument("--quiet", action="store_true", help="no progress bars or stage summaries")
    lb.set_defaults(func=cmd_lab)
    rc = sub.add_parser("recipes", help="list bundled recipes")
    rc.set_defaults(func=cmd_recipes)
    return p


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting collapse throughput (10x seen here) as soon as
    # another process shares the cores; passive waiting costs little when the machine is idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    # Options may come after the SQL or the KEY=VALUE pairs: gather what follows them.
    args, extra = p.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-")]
    if unknown or (extra and not hasattr(args, "assignments")):
        p.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.assignments = list(args.assignments) + extra
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, where it is caught
        return code
    except BrokenPipeError:
        quiet_stdout()
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        line, code = stopped_line(args, argv, exc)
        print(line, file=sys.stderr)
        return code
    except Exception as exc:
        import duckdb

        if isinstance(exc, duckdb.InterruptException):  # Ctrl-C while DuckDB ran a query
            line, code = stopped_line(args, argv, KeyboardInterrupt())
            print(line, file=sys.stderr)
            return code
        described = error_line(exc, args)
        if described is None:
            raise
        print(described[0], file=sys.stderr)
        return described[1]


if __name__ == "__main__":
    sys.exit(main())
