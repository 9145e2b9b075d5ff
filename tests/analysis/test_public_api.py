"""The public surface of ``analysis`` is pinned, loads lazily, and keeps ``--help`` fast."""

from __future__ import annotations

import subprocess
import sys

import analysis

EXPECTED = {
    "AnalysisInputError",
    "BinaryTable",
    "Kappa",
    "McNemar",
    "Predictions",
    "ReportResult",
    "build_report",
    "cohen_kappa",
    "evaluate",
    "kappa_from_table",
    "mcnemar_from_correct",
    "mcnemar_test",
    "read_curves",
    "read_predictions",
    "read_truth",
}


def test_public_names_are_pinned_and_importable():
    assert set(analysis.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(analysis, name).__doc__, name


def test_importing_the_cli_module_does_not_load_scipy_or_matplotlib():
    code = "import sys, analysis.cli; print('scipy' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
