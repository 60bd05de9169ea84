"""The `probex` command line. It parses arguments and calls one function per subcommand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_zoo(args: argparse.Namespace) -> int:
    from probex_core.zoo import generate_zoo

    generate_zoo(preset=args.preset, out=Path(args.out), seed=args.seed, progress=True)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from probex_core.bench import run_bench

    run_bench(args.name, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probex", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    zoo = sub.add_parser("zoo", help="the built-in model zoo")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True)
    gen = zoo_sub.add_parser("generate", help="train and write a zoo as a local hub")
    gen.add_argument("--preset", choices=["tiny", "default"], default="default")
    gen.add_argument("--out", required=True, help="output directory (hub/ and manifest.json)")
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=_cmd_zoo)

    bench = sub.add_parser("bench", help="side-by-side benchmarks that print ratios")
    bench.add_argument("name", nargs="?", default=None)
    bench.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
