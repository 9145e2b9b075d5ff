"""Placeholder: being written."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add subcommands."""


def register_bench(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add benchmark targets."""
