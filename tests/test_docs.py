"""The docs match the code (issue 22): every environment variable the code reads is
documented, every shell snippet of the README and the guides runs (or says why not), no
document cites a file the repository lacks, and no ``--help`` shows a doubled ``%``."""

from __future__ import annotations

import ast
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Packages whose environment reads count (tests/ reads its own SLICERANK_TEST_* variables).
CODE = ("slicerank_base", "cmr_ingest", "ranking_scheduler", "ml_backend", "analysis",
        "ls_config", "slicerank", "benchmarks")  # fmt: skip
#: Where a variable counts as documented.
DOCS = [ROOT / "README.md", ROOT / ".env.example", *sorted((ROOT / "docs").rglob("*.md"))]
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]
VAR = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
#: A fenced block in these languages is a shell snippet.
SHELL = {"sh", "bash", "shell", "console"}
#: An HTML comment right before a block that must not run: <!-- snippet: skip (why) -->.
SKIP = re.compile(r"<!--\s*snippet:\s*skip\s*\((?P<why>[^)]+)\)\s*-->\s*$")


# -- environment variables -------------------------------------------------------------------


def _env_like(node: ast.AST) -> bool:
    return (isinstance(node, ast.Name) and node.id in ("environ", "env")) or (
        isinstance(node, ast.Attribute) and node.attr == "environ"
    )


def _names(nodes) -> set[str]:
    return {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and VAR.match(n.value)}  # fmt: skip


def env_reads(source: str) -> set[str]:
    """Variable names a module reads: ``environ.get("X")``, ``environ["X"]``, ``getenv("X")``,
    ``helper(environ, "X")``, a local reader ``get("X")``, ``X_ENV = "X"`` constants, and
    ``for name in ("X", ...): environ.get(name)``."""
    tree = ast.parse(source)
    readers = {
        f.name for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        and any(_env_like(n) for n in ast.walk(f))
    }  # fmt: skip
    out: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            f = n.func
            if (
                isinstance(f, ast.Attribute)
                and f.attr in ("get", "pop")
                and _env_like(f.value)
                or getattr(f, "attr", getattr(f, "id", None)) == "getenv"
            ):
                out |= _names(n.args[:1])
            elif any(_env_like(a) for a in n.args) or getattr(f, "id", None) in readers:
                out |= _names(n.args)
        elif isinstance(n, ast.Subscript) and _env_like(n.value) and isinstance(n.ctx, ast.Load):
            out |= _names([n.slice])
        elif isinstance(n, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id.endswith("_ENV") for t in n.targets
        ):
            out |= _names([n.value])
        elif isinstance(n, ast.For) and any(
            isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
            and _env_like(c.func.value) and c.args and isinstance(c.args[0], ast.Name)
            for b in n.body for c in ast.walk(b)
        ):  # fmt: skip
            out |= _names(ast.walk(n.iter))
    return out


def code_variables() -> dict[str, list[str]]:
    """Every variable the product and benchmark code reads -> the files that read it."""
    found: dict[str, list[str]] = {}
    for package in CODE:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in env_reads(path.read_text()):
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_the_scanner_sees_each_way_the_code_reads_a_variable():
    source = """
import os
A_ENV = "V_ONE"
def f(environ):
    environ.get("V_TWO"); os.environ["V_THREE"]; os.getenv("V_FOUR"); _int(environ, "V_FIVE", 1)
    def get(name): return environ.get(name)
    get("V_SIX")
    for name, key in (("V_SEVEN", "k"),):
        environ.get(name)
    print("NOT_READ")
"""
    assert env_reads(source) == {
        f"V_{n}" for n in ("ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN")
    }
    found = code_variables()
    # A scanner that silently found nothing would pass the next test.
    assert {"REDIS_URL", "SLICERANK_ID_SALT", "SCHEDULER_DB_URL", "SLICERANK_ANALYSIS_SEED",
            "SLICERANK_INCLUDE_BURNED_IN", "SLICERANK_START_WAIT_S"} <= found.keys()  # fmt: skip


def test_every_variable_the_code_reads_is_documented():
    text = "\n".join(p.read_text() for p in DOCS)
    missing = {
        name: files for name, files in code_variables().items()
        if not re.search(rf"(?<![A-Z0-9_]){name}(?![A-Z0-9_])", text)
    }  # fmt: skip
    assert not missing, (
        f"variables read by the code but named in no doc (README table, .env.example or "
        f"docs/): {missing}"
    )


# -- shell snippets ---------------------------------------------------------------------------


def shell_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, why skipped or None)`` of each shell block of ``path``; an untagged block
    that starts like a command is an error (tag it ``sh`` so it is run or marked)."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        body = "\n".join(lines[i + 1 : j])
        if lang in SHELL:
            before = lines[start - 1] if start else ""
            skip = SKIP.search(before)
            out.append((start + 1, body, skip.group("why") if skip else None))
        elif not lang:
            first = body.strip().split(None, 1)[0] if body.strip() else ""
            assert first not in ("slicerank", "make", "docker", "export", "cp", "python3"), (
                f"{path.name}:{start + 1}: a shell snippet without a language tag: tag it sh"
            )
        i = j + 1
    return out


def test_every_shell_snippet_is_run_or_says_why_not():
    seen = 0
    for path in GUIDES:
        for line, _, why in shell_blocks(path):
            seen += 1
            assert why is None or len(why.strip()) > 10, (
                f"{path.name}:{line}: say why it is skipped"
            )
    assert seen >= 5


@pytest.mark.parametrize("guide", [p for p in GUIDES if any(w is None for *_, w in shell_blocks(p))],
                         ids=lambda p: p.name)  # fmt: skip
def test_the_runnable_shell_snippets_of_a_guide_run(guide, tmp_path):
    """Each guide's runnable snippets run in order in one empty folder, with ``slicerank`` on
    PATH as a newcomer has it after set-up (``python3`` is the system's, as on Debian)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "slicerank"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m slicerank "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLICERANK_", "SCHEDULER_"))}
    env.update(PATH=f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", PYTHONPATH=str(ROOT))
    work = tmp_path / "work"
    work.mkdir()
    for line, code, why in shell_blocks(guide):
        if why is not None:
            continue
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, f"{guide.name}:{line} failed:\n{code}\n{done.stderr[-2000:]}"


# -- references and help text -----------------------------------------------------------------


def test_no_document_cites_a_file_the_repository_lacks():
    """Project documents (``README.md``, ``INTERFACES.md``: capitals) named in docs or code
    exist here, and every relative Markdown link of the docs leads to a file."""
    names = {p.name for p in ROOT.rglob("*.md") if ".git" not in p.parts and ".venv" not in p.parts}
    missing = []
    for path in [*DOCS, *(p for pkg in CODE for p in (ROOT / pkg).rglob("*.py"))]:
        text = path.read_text()
        for name in set(re.findall(r"\b([A-Z][A-Z0-9_]+\.md)\b", text)):
            if name not in names:
                missing.append(f"{path.relative_to(ROOT)}: {name}")
        if path.suffix == ".md":
            for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
                if "://" not in target and not (path.parent / target).exists():
                    missing.append(f"{path.relative_to(ROOT)}: link {target}")
    assert not missing, missing


def test_no_help_text_shows_a_doubled_percent_sign():
    from slicerank.cli import build_parser

    parser = build_parser()
    actions = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    pages = [parser.format_help()]
    for action in actions:
        for sub in action.choices.values():
            pages.append(sub.format_help())
    assert len(pages) > 10
    doubled = [page.splitlines()[0] for page in pages if "%%" in page]
    assert not doubled, doubled
