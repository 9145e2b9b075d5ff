"""Subcommands of ``slicerank`` that drive ``ranking_scheduler``.

``simulate`` lives in ``simulator.cli`` and ``scheduler`` in ``service.cli``; their benchmarks
(``bench engine``, ``bench service``, ``bench faults``) in ``benchmarks/``.
"""

from __future__ import annotations

import argparse

from ranking_scheduler.service import cli as service_cli
from ranking_scheduler.simulator import cli as simulate_cli


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the ``slicerank`` parser."""
    simulate_cli.register(subparsers)
    service_cli.register(subparsers)
