"""The `probex` command line: one function per subcommand, each calling into probex_core."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_zoo(args: argparse.Namespace) -> int:
    from probex_core.errors import UserError
    from probex_core.zoo import generate_zoo

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, not {args.workers}")
    generate_zoo(
        preset=args.preset, out=Path(args.out), seed=args.seed, progress=True, workers=args.workers
    )
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from bench import run_bench

    run_bench(args.name, quick=args.quick)
    return 0


def _home(args: argparse.Namespace):
    """The home every subcommand works in ($PROBEX_HOME, else ./.probex)."""
    from probex_core.catalog import Home

    return Home.from_env()


def _cmd_run(args: argparse.Namespace) -> int:
    from assets.experts import ExpertTraining
    from orchestration.runner import ensure_default_hub, run_all
    from probex_core.env import hub_from_env

    home = _home(args)
    hub = hub_from_env(args.hub)
    quick = hub is None and args.zoo == "tiny"
    hub = hub or str(ensure_default_hub(home, args.zoo, args.seed))
    epochs = args.epochs or (QUICK_EPOCHS if quick else None)
    training = ExpertTraining(epochs=epochs) if epochs else None
    run_all(home, hub, training=training, force=args.force, dask=args.dask)
    print(_summary(home))
    return 0


QUICK_EPOCHS = 100  # `probex run --zoo tiny`: a quick look, not the README's measurements


def _summary(home) -> str:
    """The end of a run: one row per tree, the hub-wide scores, and where the rest is."""
    from probex_core.catalog import query

    lines = ["", _table(query(home, load_named("report_summary")))]
    hub = query(home, load_named("report_hub"))
    if len(hub):
        lines.append("")
        lines.append(
            "hub-wide: "
            + "; ".join(
                f"{r.metric} ({r.method}, {r.split}) {r.value:.3f}" for r in hub.itertuples()
            )
        )
    lines.append(
        '\nmore: `probex report`; `probex sql "SELECT * FROM evaluations"` (every metric), '
        "views: models, trees, experts, predictions, evaluations, rejected_repos, embeddings, "
        "cards"
    )
    cards = query(home, "SELECT count(*) AS n FROM cards").n.iloc[0]
    if cards:
        lines.append(
            f"model cards: {cards} undocumented models have one under {home.root / 'cards'} "
            "(`probex cards --out DIR` copies them)"
        )
    return "\n".join(lines)


LOOPBACK = "127.0.0.1"


def ui_command(home, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """argv and environment of `dg dev` (Dagster's current CLI; `dagster dev` is superseded)
    on this home's instance and probex's definitions."""
    import os
    import shutil

    from orchestration.runner import dagster_home
    from probex_core.env import HOME_VAR, HUB_VAR, hub_from_env
    from probex_core.pipeline.query import last_run_hub

    exe = Path(sys.executable).with_name("dg")
    argv = [
        str(exe) if exe.is_file() else shutil.which("dg") or "dg",
        "dev",
        "-m",
        "orchestration.definitions",
        "-h",
        host,
        "-p",
        str(port),
    ]
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home(home)), HOME_VAR: home.spec}
    hub = hub_from_env() or last_run_hub(home)  # else the hub `probex run` last read
    if hub:
        env[HUB_VAR] = hub
    return argv, env


def _cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    argv, env = ui_command(_home(args), args.host, args.port)
    if args.host != LOOPBACK:
        print(f"probex: serving on {args.host}: anyone who reaches it can run jobs", flush=True)
    print(f"Dagster UI on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    try:
        return subprocess.call(argv, env=env)
    except KeyboardInterrupt:
        return 0


def load_named(name: str) -> str:
    from probex_core.catalog import load_sql

    return load_sql(name)


def _table(df) -> str:
    if df.empty:
        return "(no rows)"
    return df.astype(object).where(df.notna(), "").to_markdown(index=False, floatfmt=".4g")


def _cmd_sql(args: argparse.Namespace) -> int:
    from probex_core.catalog import query

    print(_table(query(_home(args), args.query)))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from probex_core.pipeline.query import search_catalog

    print(_table(search_catalog(_home(args), args.text, k=args.k, tree=args.tree)))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from probex_core.pipeline.query import predict_one

    print(predict_one(_home(args), args.target, hub=args.hub, top=args.top).render())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from probex_core.pipeline.report import build_report, write_report

    home = _home(args)
    if args.experiments:
        from probex_core.pipeline.experiments import run_experiments_on_home

        run_experiments_on_home(home, progress=lambda line: print(line, flush=True))
    report = build_report(home, measure_speed=not args.no_speed)
    path = write_report(home, report)
    print(report.markdown())
    print(f"report written to {path} (with {len(report.plots)} plots beside it)")
    return 0


def _cmd_cards(args: argparse.Namespace) -> int:
    from probex_core.cards.upload import upload_cards
    from probex_core.pipeline.cards import build_cards, export_cards

    home = _home(args)
    report = build_cards(home, contradicted=args.contradicted)
    s = report.summary
    print(
        f"{s['cards']} model cards under {s['cards_dir']}: {s['written']} written, "
        f"{s['unchanged']} unchanged, {s['removed']} removed; "
        f"{s['listing_some_class']} list at least one training class"
    )
    if args.out:
        print(f"copied {export_cards(home, Path(args.out))} cards to {args.out}")
    if args.upload:
        failures = upload_cards(home, args.repo, endpoint=args.endpoint)
        if failures:
            print(f"probex: error: {len(failures)} uploads failed", file=sys.stderr)
            return 1
    return 0


class _FMT(argparse.HelpFormatter):
    """Every option's default in its help, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or not action.option_strings  # positionals and subcommands
            or any(action.default is v for v in (None, False, argparse.SUPPRESS))
        ):
            return text
        return f"{text} (default: %(default)s)"


def _command(sub, name: str, text: str, func=None) -> argparse.ArgumentParser:
    """One subcommand: its help line doubles as its description; defaults shown."""
    parser = sub.add_parser(name, help=text, description=text, formatter_class=_FMT)
    if func is not None:
        parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probex",
        description="Read what neural networks were trained for from their weights alone: crawl "
        "a hub, recover its Model Trees, train one ProbeX expert per tree, then predict the "
        "training classes of undocumented models and search models by text.",
        epilog="Everything is stored under $PROBEX_HOME (default ./.probex). Start with "
        "`probex run --zoo tiny` (a few minutes), then `probex report`.",
        formatter_class=_FMT,
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    zoo = _command(sub, "zoo", "the built-in model zoo")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True)
    gen = _command(zoo_sub, "generate", "train and write a zoo as a local hub", _cmd_zoo)
    gen.add_argument(
        "--preset",
        choices=["tiny", "default"],
        default="default",
        help="tiny: 3 small trees for tests and a quick look; default: 5 trees, 3,130 models",
    )
    gen.add_argument("--out", required=True, help="output directory (hub/ and manifest.json)")
    gen.add_argument("--seed", type=int, default=0, help="seed of every weight and split")
    gen.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes training trees side by side (default: one per usable core)",
    )

    run = _command(sub, "run", "materialise everything in-process (incremental)", _cmd_run)
    run.add_argument(
        "--hub", help="hub directory or source spec (default: PROBEX_HUB, else the built-in zoo)"
    )
    run.add_argument(
        "--zoo",
        choices=["tiny", "default"],
        default="default",
        help="built-in zoo preset used when no hub is given",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of the built-in zoo")
    run.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"expert training epochs (default: 300; {QUICK_EPOCHS} for the built-in tiny zoo)",
    )
    run.add_argument("--force", action="store_true", help="rebuild every tree, not only stale ones")
    run.add_argument(
        "--dask",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="build the trees on a Dask cluster: its scheduler address (tcp://host:port), or "
        "none for a local cluster of worker processes started for the run",
    )

    ui = _command(sub, "ui", "the Dagster UI (dg dev) on this home, on 127.0.0.1", _cmd_ui)
    ui.add_argument(
        "--host", default=LOOPBACK, help="address to listen on (default: loopback only)"
    )
    ui.add_argument("--port", type=int, default=3000, help="port to listen on")

    sql = _command(sub, "sql", "query the catalog (DuckDB, read-only)", _cmd_sql)
    sql.add_argument("query", help="one SQL statement over the catalog views")

    search = _command(
        sub, "search", "rank models by how likely they were trained on a text", _cmd_search
    )
    search.add_argument("text", help='what the models should have been trained on, e.g. "red star"')
    search.add_argument("-k", type=int, default=10, help="how many models to list")
    search.add_argument("--tree", default=None, help="only this tree")

    predict = _command(
        sub, "predict", "route one model and predict its training classes", _cmd_predict
    )
    predict.add_argument(
        "target", help="a repo directory, a safetensors file, or a repo id of the hub"
    )
    predict.add_argument("--hub", default=None, help="hub to resolve a repo id in")
    predict.add_argument("--top", type=int, default=5, help="how many classes to show")

    report = _command(
        sub,
        "report",
        "the results report: every method per tree, zero-shot, routing, layers, cost; "
        "writes $PROBEX_HOME/report/report.md with its plots",
        _cmd_report,
    )
    report.add_argument("--no-speed", action="store_true", help="skip timing inference per method")
    report.add_argument(
        "--experiments",
        action="store_true",
        help="first train the report's experiments (probes ablation, one shared model across "
        "trees) on every trained tree; minutes per tree",
    )

    cards = _command(
        sub,
        "cards",
        "write a Hugging Face model card for every undocumented model "
        "($PROBEX_HOME/cards/<org>/<name>/README.md; unchanged cards are kept)",
        _cmd_cards,
    )
    cards.add_argument("--out", default=None, help="also copy the cards to DIR/<org>/<name>/")
    cards.add_argument(
        "--contradicted",
        action="store_true",
        help="also for documented models whose declared base model the weights contradict",
    )
    cards.add_argument(
        "--upload",
        action="store_true",
        help="open a pull request adding its card on each undocumented model's hub repo "
        "(HF_TOKEN; without one, says what it would do)",
    )
    cards.add_argument("--repo", action="append", help="upload only this model (repeatable)")
    cards.add_argument(
        "--endpoint", default=None, help="hub endpoint to upload to (default: HF_ENDPOINT)"
    )

    bench = _command(sub, "bench", "side-by-side benchmarks that print ratios", _cmd_bench)
    bench.add_argument("name", nargs="?", default=None, help="one bench (all when omitted)")
    bench.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user's input can cause (no catalog, a bad path or repo id, an unknown tree, bad
    SQL): one line, not a traceback. Anything else is a bug and keeps its traceback."""
    import duckdb

    from probex_core.errors import UserError
    from probex_core.hub import RepoError

    return (UserError, FileNotFoundError, NotADirectoryError, RepoError, KeyError, duckdb.Error)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _user_errors() as e:
        if args.debug:
            raise
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"probex: error: {' '.join(str(text).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
