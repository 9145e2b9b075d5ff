"""On CI (``CI=true``) every skipped test fails the run, except tests marked ``gpu`` (CI has no
GPU); a module skipped at collection fails too. Off CI, skips stay skips."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

MINI_SUITE = """
import pytest

@pytest.mark.skipif(True, reason="Debian chromium is not installed")
def test_browser():
    pass

def test_compose():
    pytest.skip("docker-compose is not installed")

def test_gpu_unmarked():
    pytest.skip("needs a GPU")

def test_label_studio():
    pytest.importorskip("no_such_module_label_studio")

@pytest.mark.gpu
def test_gpu_marked():
    pytest.skip("needs a GPU")

def test_runs():
    assert True
"""
SKIPPED_MODULE = """
import pytest

pytest.importorskip("no_such_module_at_all")

def test_hidden():
    pass
"""


@pytest.fixture
def mini(pytester):
    pytester.makeconftest(
        "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport  "
        "# noqa: F401\n"
        "def pytest_configure(config):\n"
        "    config.addinivalue_line('markers', 'gpu: needs a GPU')\n"
    )
    pytester.makepyfile(test_mini=MINI_SUITE, test_skipped_module=SKIPPED_MODULE)
    return pytester


def test_every_skip_fails_on_ci_but_marked_gpu_tests(mini, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = mini.runpytest_inprocess("-p", "no:cacheprovider", "test_mini.py")
    # A skipif marker skips in the setup phase, so that one shows as an error: either way red.
    result.assert_outcomes(passed=1, failed=3, errors=1, skipped=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*CI=true and the test *test_gpu_unmarked was skipped*"])
    # A module skipped while collected is a collection error (it stops the run).
    result = mini.runpytest_inprocess("-p", "no:cacheprovider", "test_skipped_module.py")
    result.assert_outcomes(errors=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*CI=true and the module *test_skipped_module.py was skipped*"])


@pytest.mark.parametrize("value", ["", "false", "0"])
def test_skips_stay_skips_off_ci(mini, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    mini.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=6)
