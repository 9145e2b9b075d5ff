"""Debian's Chromium for the browser tests: where it is and the flags it needs here."""

from __future__ import annotations

import shutil

#: The Chromium binary (Debian's package), or None when it is not installed.
CHROMIUM: str | None = shutil.which("chromium") or shutil.which("chromium-browser")

#: Headless, no sandbox (root), and nothing that reaches for the network on its own.
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
