"""Command line: ``kpistream settings|topics|worker|generate|replay|top``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence

from kpistream.exceptions import KpistreamError
from kpistream.settings import Settings


def _settings_cmd(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(settings.masked(), indent=2, default=str))
    return 0


def _topics_cmd(settings: Settings, args: argparse.Namespace) -> int:
    from kpistream.admin import ensure_topics

    created = asyncio.run(ensure_topics(settings))
    print(f"created: {', '.join(created) or 'nothing (all topics exist)'}")
    return 0


def _worker_cmd(settings: Settings, args: argparse.Namespace) -> int:
    import faust

    from kpistream.admin import ensure_topics
    from kpistream.app import create_app

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(ensure_topics(settings))
    os.makedirs(settings.data_dir, exist_ok=True)  # faust refuses a missing datadir
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level)
    worker.execute_from_commandline()
    return 0


def _generate_cmd(settings: Settings, args: argparse.Namespace) -> int:
    from kpistream.generator.cli import run_generate

    return run_generate(settings, args)


def _top_cmd(settings: Settings, args: argparse.Namespace) -> int:
    from kpistream.top import run_top

    return run_top(settings, args.window, args.dimension, args.limit, args.interval, args.once)


def _replay_cmd(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from kpistream.generator.producer import produce
    from kpistream.generator.replay import read_records

    try:
        records = list(read_records(Path(args.file), args.kind))
    except (OSError, ValueError) as exc:
        print(f"kpistream replay: {exc}", file=sys.stderr)
        return 2
    sent = asyncio.run(produce(settings, records, rate=args.rate))
    print(f"produced {sent} records from {args.file}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpistream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("settings", help="print the effective configuration (secrets masked)")
    topics = sub.add_parser("topics", help="manage topics")
    topics.add_argument("action", choices=["create"])
    sub.add_parser("worker", help="run a worker (several form one consumer group)")
    gen = sub.add_parser("generate", help="produce synthetic orders, spend and surveys")
    from kpistream.generator.cli import add_generate_arguments

    add_generate_arguments(gen)
    replay = sub.add_parser("replay", help="produce a JSONL or CSV file into the input topics")
    replay.add_argument("file")
    replay.add_argument("--kind", choices=["order", "spend", "survey"], default=None,
                        help="topic of plain records (required for CSV)")
    replay.add_argument("--rate", type=float, default=None, help="records per second")
    top = sub.add_parser("top", help="live terminal view of the KPI rows in Redis")
    top.add_argument("--window", default=None, help="only this window (e.g. 1h)")
    top.add_argument("--dimension", default=None,
                     choices=["all", "channel", "campaign", "segment"])
    top.add_argument("--limit", type=int, default=40, help="rows shown")
    top.add_argument("--interval", type=float, default=1.0, help="refresh, seconds")
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    return parser


COMMANDS = {"settings": _settings_cmd, "topics": _topics_cmd, "worker": _worker_cmd,
            "generate": _generate_cmd, "top": _top_cmd, "replay": _replay_cmd}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except Exception as exc:  # pydantic's ValidationError names every bad variable
        print(f"kpistream: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    if args.command == "worker":
        sys.argv = [sys.argv[0]]  # faust's Worker parses argv itself
    try:
        return COMMANDS[args.command](settings, args)
    except KpistreamError as exc:
        print(f"kpistream: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
