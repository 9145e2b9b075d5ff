"""The ``slicerank`` console script.

Each subcommand lives in the package it drives: every module listed in ``COMMAND_MODULES``
exposes ``register(subparsers)`` (adding its subcommands, each with ``func`` set as the
handler); the ``slicerank bench`` targets come from ``benchmarks.cli``. Those modules import
heavy libraries (torch, Label Studio SDK) inside the handlers, so ``slicerank --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from slicerank import __version__

#: Modules that contribute subcommands, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "cmr_ingest.cli",
    "ls_config.cli",
    "ranking_scheduler.cli",
    "ml_backend.cli",
    "analysis.cli",
    "slicerank.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser with every package's subcommands."""
    parser = argparse.ArgumentParser(
        prog="slicerank",
        description="Label cardiac MRI slices by multiple-image ranking in Label Studio.",
    )
    parser.add_argument("--version", action="version", version=f"slicerank {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = sub.add_parser("bench", help="run a benchmark and write its numbers")
    bench_sub = bench.add_subparsers(dest="bench_target", metavar="TARGET")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    # Benchmarks sit beside the product, not inside it (benchmarks/).
    from benchmarks.cli import register as register_benchmarks

    register_benchmarks(bench_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the console script; returns the process exit status (the convention is in
    :mod:`slicerank_base.reach`: 2 configuration, 3 an unreachable service)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose + 1, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func = getattr(args, "func", None)
    if func is None:
        if args.command == "bench":
            parser.parse_args(["bench", "--help"])
        parser.print_help()
        return 2
    from slicerank_base.reach import (
        EXIT_CONFIG,
        EXIT_UNREACHABLE,
        ConfigError,
        ServiceUnreachable,
    )

    try:
        result = func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ServiceUnreachable as exc:
        # Two lines, no traceback: what is down, where, which variable; then what to do.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:
        message = lost_service(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return int(result or 0)


def lost_service(exc: BaseException) -> str | None:
    """One line for a service that stopped answering after a command's own checks passed
    (Redis or Label Studio going down mid-run), or None for any other error."""
    redis_errors = sys.modules.get("redis.exceptions")
    if redis_errors and isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError)):
        return f"Redis stopped answering (REDIS_URL): {exc}; start it again, then rerun"
    httpx = sys.modules.get("httpx")
    if httpx and isinstance(exc, httpx.TransportError):
        try:
            where = f" at {exc.request.url.scheme}://{exc.request.url.netloc.decode()}"
        except RuntimeError:  # no request attached
            where = ""
        return (
            f"a service{where} stopped answering ({type(exc).__name__}: {exc}); check that it "
            "runs (LABEL_STUDIO_URL for Label Studio), then rerun"
        )
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
