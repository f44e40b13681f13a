"""Command line: ``kpistream settings|topics|worker|generate|replay|top|customers|health``."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import IO

from redis.exceptions import RedisError

from kpistream.exceptions import ConfigurationError, KpistreamError
from kpistream.kpi.profiles import RANKINGS
from kpistream.settings import Settings, describe_settings_error


def _settings_cmd(settings: Settings, args: argparse.Namespace) -> int:
    print(json.dumps(settings.masked(), indent=2, default=str))
    return 0


def _check_connections(settings: Settings, *, kafka: bool, redis: bool,
                       redis_may_be_down: bool = False, redis_writes: bool = False) -> None:
    """Fail fast, naming the cause, on a wrong credential or certificate (SPEC §9). A worker
    starts while Redis is unreachable (its sinks catch up once Redis answers)."""
    from kpistream.connections import ConnectionCheckError, check_kafka, check_redis

    async def check() -> None:
        if kafka:
            await check_kafka(settings)
        if redis:
            try:
                await check_redis(settings, writes=redis_writes)
            except ConnectionCheckError as exc:
                if not (exc.unreachable and redis_may_be_down):
                    raise
                logging.getLogger("kpistream").warning("redis_unreachable_at_start %s", exc)

    asyncio.run(check())


def _topics_cmd(settings: Settings, args: argparse.Namespace) -> int:
    from kpistream.admin import ensure_topics

    created = asyncio.run(ensure_topics(settings))
    print(f"created: {', '.join(created) or 'nothing (all topics exist)'}")
    return 0


def claim_data_dir(path: str) -> IO[str]:
    """Lock the worker's data directory for this process (released when it exits). Two
    workers sharing one would rebuild each other's on-disk customer store under them."""
    os.makedirs(path, exist_ok=True)  # faust refuses a missing datadir
    lock = open(os.path.join(path, ".worker.lock"), "w")  # noqa: SIM115 (held until exit)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigurationError(
            f"data_dir {path!r} is in use by another worker on this machine: give each "
            "worker its own KPISTREAM_DATA_DIR") from None
    return lock


def _worker_cmd(settings: Settings, args: argparse.Namespace) -> int:
    import faust

    from kpistream.admin import ensure_topics
    from kpistream.app import create_app

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _check_connections(settings, kafka=True, redis=True, redis_may_be_down=True,
                       redis_writes=True)
    asyncio.run(ensure_topics(settings))
    lock = claim_data_dir(settings.data_dir)  # noqa: F841 (held while the worker runs)
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level)
    tune_gc(settings)
    worker.execute_from_commandline()
    return 0


def tune_gc(settings: Settings) -> None:
    """The worker's state is millions of small objects that live for the whole retention;
    with Python's default thresholds the collector rescans them over and over. Startup
    objects (libraries, the app) are frozen out of collections altogether."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*settings.gc_thresholds)


def _generate_cmd(settings: Settings, args: argparse.Namespace) -> int:
    from kpistream.generator.cli import run_generate

    return run_generate(settings, args)


def _top_cmd(settings: Settings, args: argparse.Namespace) -> int:
    from kpistream.top import run_top

    return run_top(settings, args.window, args.dimension, args.limit, args.interval, args.once)


def _customers_cmd(settings: Settings, args: argparse.Namespace) -> int:
    """One customer's profile, or the top customers by one of the rankings."""
    from kpistream.client import get_customer, top_customers

    if args.customer_id:
        profile = asyncio.run(get_customer(settings, args.customer_id))
        if profile is None:
            print(f"kpistream customers: no profile for {args.customer_id!r}", file=sys.stderr)
            return 1
        width = max(len(name) for name in profile)
        for name, value in profile.items():
            print(f"{name:<{width}}  {value}")
        return 0
    profiles = asyncio.run(top_customers(settings, args.top, by=args.by, segment=args.segment))
    print(f"{'customer':<24} {'segment':<12} {'orders':>6} {'revenue':>10} {args.by:>11}")
    for profile in profiles:
        score = profile.get(args.by)
        shown = "—" if score is None else f"{score:.2f}" if isinstance(score, float) else score
        print(f"{profile['customer_id']:<24.24} {profile.get('segment') or '—':<12.12} "
              f"{profile.get('orders', 0):>6} {profile.get('revenue', 0.0):>10.2f} "
              f"{shown:>11}")
    return 0


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


def _health_cmd(settings: Settings, args: argparse.Namespace) -> int:
    """Exit 0 when this pod's worker answers /metrics: an exec probe for Kubernetes that works
    with basic auth and TLS on the web port (an httpGet probe would need the password in the
    manifest)."""
    import base64
    import ssl
    import urllib.error
    import urllib.request

    scheme = "https" if settings.web_ssl_certfile else "http"
    request = urllib.request.Request(f"{scheme}://127.0.0.1:{settings.web_port}/metrics")
    if settings.web_username:
        token = f"{settings.web_username}:{settings.web_password.get_secret_value()}"
        request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    # The probe talks to its own pod over loopback: the certificate's name is not 127.0.0.1
    # and authenticating the server is not what a liveness probe is for.
    context = ssl._create_unverified_context() if scheme == "https" else None
    try:
        with urllib.request.urlopen(request, timeout=args.timeout, context=context) as reply:
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"kpistream health: no answer on port {settings.web_port}: {exc}",
              file=sys.stderr)
        return 1
    if status != 200:
        print(f"kpistream health: /metrics answered HTTP {status}", file=sys.stderr)
        return 1
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
    customers = sub.add_parser("customers", help="a customer's value profile, or the top "
                               "customers (SPEC §8)")
    customers.add_argument("customer_id", nargs="?", default=None)
    customers.add_argument("--top", type=int, default=10, help="how many customers")
    customers.add_argument("--by", choices=RANKINGS, default="revenue")
    customers.add_argument("--segment", default=None, help="only customers of this segment")
    health = sub.add_parser("health", help="exit 0 when this host's worker answers /metrics")
    health.add_argument("--timeout", type=float, default=4.0, help="seconds")
    return parser


COMMANDS = {"settings": _settings_cmd, "topics": _topics_cmd, "worker": _worker_cmd,
            "generate": _generate_cmd, "top": _top_cmd, "replay": _replay_cmd,
            "health": _health_cmd, "customers": _customers_cmd}
# Commands that talk to Kafka or Redis check the connection first (a named cause at once).
NEEDS = {"topics": (True, False), "generate": (True, False), "replay": (True, False),
         "top": (False, True), "customers": (False, True)}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except Exception as exc:
        print(f"kpistream: invalid configuration:\n{describe_settings_error(exc)}",
              file=sys.stderr)
        return 2
    if args.command == "worker":
        sys.argv = [sys.argv[0]]  # faust's Worker parses argv itself
    try:
        kafka, redis = NEEDS.get(args.command, (False, False))
        if (kafka or redis) and not getattr(args, "jsonl", None):
            _check_connections(settings, kafka=kafka, redis=redis)
        return COMMANDS[args.command](settings, args)
    except KpistreamError as exc:
        print(f"kpistream: {exc}", file=sys.stderr)
        return 1
    except RedisError as exc:
        # A command the ACL user may not run (`top` and `customers` as a user without read
        # rights pass the connection check, which only PINGs), named rather than a traceback.
        print(f"kpistream: Redis refused a command: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
