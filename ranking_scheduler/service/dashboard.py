"""The coverage dashboard page (``GET /dashboard``): one self-contained HTML document.

The page has no external resources at all (no CDN, no fonts, no separate JS/CSS files): the
service may run on a hospital network without internet, and one document is trivially cached
and served. Its inline script draws the figures (inline SVG) from the stats dict of
:func:`ranking_scheduler.service.stats.compute_stats` embedded in the page, then re-fetches the same
numbers from ``/api/stats`` every few seconds. Every figure carries ``data-stat="<path>"``
(a dotted path into the stats JSON) and ``data-value`` (the JSON value it shows), so a browser
test can compare the page with ``/api/stats``.
"""

from __future__ import annotations

import html
import json
import re
from functools import cache
from importlib import resources
from typing import Any

from ranking_scheduler.service.stats import jsonable

__all__ = ["DEFAULT_REFRESH_S", "render_dashboard"]

_PLACEHOLDER = re.compile(r"__(?:TITLE|API_HREF|REFRESH_TEXT|API_URL|REFRESH_MS|INITIAL_STATS)__")

DEFAULT_REFRESH_S = 5.0
"""How often the page re-fetches ``/api/stats`` (seconds)."""


@cache
def _template() -> str:
    return (
        resources.files("ranking_scheduler.service")
        .joinpath("templates/dashboard.html")
        .read_text("utf-8")
    )


def _script_json(value: Any) -> str:
    """JSON that is safe inside ``<script>``: ``</script>`` or ``<!--`` in a rater name or a
    rejection reason must not end the script element early (that would be an XSS hole)."""
    text = json.dumps(jsonable(value), ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_dashboard(
    stats: dict[str, Any] | None = None,
    *,
    api_url: str = "/api/stats",
    refresh_s: float = DEFAULT_REFRESH_S,
    title: str = "slicerank · labelling coverage",
) -> str:
    """Return the dashboard as one HTML page.

    ``stats`` (from :func:`~ranking_scheduler.service.stats.compute_stats`) is embedded so the page
    shows figures at once, before its first fetch; with None it shows placeholders until the
    first fetch of ``api_url`` answers. ``api_url`` is fetched same-origin with the page's own
    query string appended (so ``/dashboard?token=...`` authenticates ``/api/stats`` too);
    ``refresh_s`` is the refresh period (0 disables refreshing, e.g. for a static snapshot).
    """
    if refresh_s < 0:
        raise ValueError(f"refresh_s must be >= 0 seconds, got {refresh_s!r}")
    if not api_url or any(c in api_url for c in "\"'<> \n"):
        raise ValueError(f"api_url {api_url!r} is not a plain URL path")
    page = _template()
    replacements = {
        "__TITLE__": html.escape(title),
        "__API_HREF__": html.escape(api_url),
        "__REFRESH_TEXT__": (
            f"Refreshes every {refresh_s:g} s from <code>{html.escape(api_url)}</code>"
            if refresh_s > 0
            else "A snapshot: does not refresh"
        ),
        "__API_URL__": _script_json(api_url),
        "__REFRESH_MS__": str(int(refresh_s * 1000)),
        "__INITIAL_STATS__": _script_json(stats),
    }
    # One pass, so a placeholder-like string inside a value (a reason, the title) stays literal.
    return _PLACEHOLDER.sub(lambda m: replacements[m.group(0)], page)
