"""On CI (``CI=true``) a test skipped for a missing Chromium or docker-compose fails instead."""

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

def test_other():
    pytest.skip("needs a GPU")
"""


@pytest.fixture
def mini(pytester):
    pytester.makeconftest("from tests.conftest import pytest_runtest_makereport  # noqa: F401")
    pytester.makepyfile(MINI_SUITE)
    return pytester


def test_missing_tools_fail_on_ci(mini, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = mini.runpytest_inprocess("-p", "no:cacheprovider")
    # A skipif marker skips in the setup phase, so that one shows as an error: either way red.
    result.assert_outcomes(failed=1, errors=1, skipped=1)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*CI=true and a required tool is missing*"])


@pytest.mark.parametrize("value", ["", "false", "0"])
def test_missing_tools_skip_off_ci(mini, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    mini.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(skipped=3)
