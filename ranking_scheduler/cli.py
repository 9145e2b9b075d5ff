"""Subcommands of ``slicerank`` that drive ``ranking_scheduler``.

``simulate`` and ``bench engine`` live in ``simulator.cli``; ``scheduler`` and
``bench service`` in ``service.cli``.
"""

from __future__ import annotations

import argparse

from ranking_scheduler.service import cli as service_cli
from ranking_scheduler.simulator import cli as simulate_cli


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the ``slicerank`` parser."""
    simulate_cli.register(subparsers)
    service_cli.register(subparsers)


def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add the ``engine`` and ``service`` benchmark targets."""
    simulate_cli.register_bench(bench_subparsers)
    service_cli.register_bench(bench_subparsers)
