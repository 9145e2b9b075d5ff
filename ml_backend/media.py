"""Where a task's image may be read from: the media root, or Label Studio itself — nothing else.

A task's image reference is attacker-controlled (anyone who can create a task or post to
``/predict`` chooses it), so it is checked before anything is opened or fetched:

* a Label Studio local-files URL (``/data/local-files/?d=REL``) is looked up under the media
  root; ``REL`` must be relative, free of ``..`` and NUL, and the file it names must still lie
  under the media root once symlinks are resolved;
* anything else is fetched over HTTP only when it points at ``LABEL_STUDIO_URL`` (same
  scheme, host and port; a path-only URL is taken relative to it), without following
  redirects and with a size cap; the Label Studio API key goes only there.

Every refusal is an :class:`ImageRefError` naming the task and the reason; the server maps it
to a 400. Decoding is separate (:func:`ml_backend.transforms.load_grayscale` takes a path or
the fetched bytes), so this module holds only the decisions and the two reads.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

#: Largest image accepted from Label Studio (a 16-bit 2048² PNG is ~8 MB).
MAX_FETCH_BYTES = 32 * 1024 * 1024
#: Seconds to wait for Label Studio to send an image.
FETCH_TIMEOUT_S = 10.0
#: Longest image reference accepted (LS's own URLs are far shorter).
MAX_REF_CHARS = 4096


class ImageRefError(ValueError):
    """A task's image reference was refused before anything was read; says which and why."""


def _task_label(task_id: Any) -> str:
    # The id is attacker data too: keep it short and printable in messages.
    text = repr(task_id) if not isinstance(task_id, (int, str)) else str(task_id)
    return text if len(text) <= 40 else text[:37] + "..."


def local_files_path(url: str) -> str | None:
    """``/data/local-files/?d=a/b.png`` → ``a/b.png`` (the last ``d``, as Label Studio reads
    it); None when ``url`` is not a local-files URL."""
    parts = urlsplit(url)
    if "local-files" not in parts.path:
        return None
    values = parse_qs(parts.query, keep_blank_values=True).get("d")
    return values[-1] if values else ""


def check_relative(relative: str) -> str:
    """``relative`` normalised, or ValueError saying why it may not name a media file.

    Purely lexical (no file system access): absolute paths, ``..`` components, NUL bytes,
    backslashes and empty paths are refused.
    """
    if not relative:
        raise ValueError("the file path is empty")
    if "\x00" in relative:
        raise ValueError("the file path contains a NUL byte")
    if "\\" in relative:
        raise ValueError("the file path contains a backslash")
    if relative.startswith("/") or (len(relative) > 1 and relative[1] == ":"):
        raise ValueError("the file path is absolute")
    if ".." in relative.split("/"):
        raise ValueError("the file path climbs out with '..'")
    norm = posixpath.normpath(relative)
    if norm in (".", "") or norm.startswith("../"):
        raise ValueError("the file path does not name a file under the media root")
    return norm


def confine(root: Path, relative: str) -> Path:
    """``root / relative`` with symlinks resolved, refused (ValueError) unless it stays
    strictly under ``root`` (itself resolved)."""
    norm = check_relative(relative)
    real_root = Path(os.path.realpath(root))
    try:
        target = Path(os.path.realpath(real_root / norm))
    except (OSError, ValueError) as exc:
        raise ValueError(f"the file path cannot be resolved ({type(exc).__name__})") from None
    if target == real_root or not target.is_relative_to(real_root):
        raise ValueError("the file path leads outside the media root (through a symlink)")
    return target


def media_candidates(root: Path, relative: str) -> list[Path]:
    """Where ``relative`` (a local-files ``?d=`` path) may be under the media root: as given,
    and without its first folder, since Label Studio's document root may be the media root or
    its parent. Every candidate is confined: ValueError when either form leads out."""
    norm = check_relative(relative)
    out = [confine(root, norm)]
    _, _, rest = norm.partition("/")
    if rest:
        out.append(confine(root, rest))
    return out


def label_studio_url_for(ref: str, label_studio_url: str) -> str:
    """The absolute URL to fetch ``ref`` from, or ValueError unless it is on Label Studio.

    A path-only reference (``/data/upload/1/x.png``) is taken relative to Label Studio; an
    absolute one must have its scheme, host and port, and no user info.
    """
    if not label_studio_url:
        raise ValueError("no LABEL_STUDIO_URL is set to fetch it from")
    base = urlsplit(label_studio_url)
    if ref.startswith("//"):
        raise ValueError("scheme-relative URLs are not fetched")
    parts = urlsplit(ref)
    # Dot segments would be collapsed by the HTTP client: the request would not go where the
    # task says. Label Studio's own URLs never hold them.
    if ".." in unquote(parts.path).split("/"):
        raise ValueError("the URL path climbs out with '..'")
    if not parts.scheme and not parts.netloc:
        if not ref.startswith("/"):
            raise ValueError("a relative image URL must start with '/'")
        return f"{base.scheme}://{base.netloc}{ref}"
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the URL scheme {parts.scheme!r} is not fetched (only Label Studio's)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("URLs with user info are not fetched")
    try:
        same = (
            parts.scheme == base.scheme
            and (parts.hostname or "").lower() == (base.hostname or "").lower()
            and _port(parts) == _port(base)
        )
    except ValueError:
        raise ValueError("the URL has an invalid port") from None
    if not same:
        raise ValueError("the URL is not on LABEL_STUDIO_URL (only Label Studio is fetched from)")
    return ref


def _port(parts) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def auth_header(api_key: str) -> dict[str, str]:
    """The Authorization header Label Studio takes for ``api_key`` (legacy token or JWT)."""
    if not api_key:
        return {}
    # Personal access tokens are JWTs (three dot-separated parts); legacy tokens are hex.
    scheme = "Bearer" if api_key.count(".") == 2 else "Token"
    return {"Authorization": f"{scheme} {api_key}"}


@dataclass(frozen=True)
class MediaAccess:
    """The two places images may come from: a media root and a Label Studio server."""

    media_root: Path | None = None
    #: ``image_id → path`` from the media root's manifest.
    manifest: dict[str, str] | None = None
    label_studio_url: str = ""
    api_key: str = field(default="", repr=False)
    #: An ``httpx.Client`` to fetch with (tests pass one with a transport); a fresh one per
    #: fetch when None.
    http_client: Any = None

    def open_task_image(self, task: Any, value: str = "image") -> Path | io.BytesIO:
        """A path under the media root, or the bytes fetched from Label Studio, for the image
        ``task["data"][value]``. Raises :class:`ImageRefError` (refused: nothing read) or
        FileNotFoundError (allowed, but not there)."""
        if not isinstance(task, dict):
            raise ImageRefError(f"a task must be a JSON object, not {type(task).__name__}")
        tid = _task_label(task.get("id"))
        data = task.get("data")
        if not isinstance(data, dict):
            raise ImageRefError(f"task {tid}: 'data' must be a JSON object")
        ref = data.get(value)
        if not isinstance(ref, str) or not ref:
            raise ImageRefError(f"task {tid}: data.{value} must be a non-empty image URL string")
        if any(ord(c) < 32 or ord(c) == 127 for c in ref):
            raise ImageRefError(f"task {tid}: data.{value} contains control characters")
        if len(ref) > MAX_REF_CHARS:
            raise ImageRefError(f"task {tid}: data.{value} is longer than {MAX_REF_CHARS} chars")
        found = self._from_media_root(tid, data, ref)
        if found is not None:
            return found
        if not self.label_studio_url and local_files_path(ref) is not None:
            raise FileNotFoundError(
                f"task {tid}: image {ref[:200]!r} is not under the media root and no "
                "LABEL_STUDIO_URL is set to fetch it from"
            )
        try:
            url = label_studio_url_for(ref, self.label_studio_url)
        except ValueError as exc:
            raise ImageRefError(f"task {tid}: image {ref[:200]!r} refused: {exc}") from None
        return io.BytesIO(self._fetch(tid, url))

    def _from_media_root(self, tid: str, data: dict[str, Any], ref: str) -> Path | None:
        relative = local_files_path(ref)
        if relative is not None:
            try:
                check_relative(relative)
            except ValueError as exc:
                raise ImageRefError(
                    f"task {tid}: image path {relative[:200]!r} refused: {exc}"
                ) from None
        if self.media_root is None:
            return None
        candidates: list[Path] = []
        image_id = data.get("image_id")
        if self.manifest and isinstance(image_id, str) and image_id in self.manifest:
            # A bad manifest row: fall back to the task's own path.
            with contextlib.suppress(ValueError):
                candidates.append(confine(self.media_root, self.manifest[image_id]))
        if relative is not None:
            try:
                candidates += media_candidates(self.media_root, relative)
            except ValueError as exc:
                raise ImageRefError(
                    f"task {tid}: image path {relative[:200]!r} refused: {exc}"
                ) from None
        return next((p for p in candidates if p.is_file()), None)

    def _fetch(self, tid: str, url: str) -> bytes:
        import httpx

        client = self.http_client or httpx.Client(timeout=FETCH_TIMEOUT_S)
        try:
            # No redirects: a redirect could lead the API key's request anywhere.
            with client.stream(
                "GET", url, headers=auth_header(self.api_key), follow_redirects=False
            ) as response:
                if response.status_code != 200:
                    raise FileNotFoundError(
                        f"task {tid}: Label Studio answered {response.status_code} for its image"
                    )
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_FETCH_BYTES:
                        raise ImageRefError(
                            f"task {tid}: the image is larger than {MAX_FETCH_BYTES} bytes"
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise FileNotFoundError(
                f"task {tid}: cannot fetch its image from Label Studio ({type(exc).__name__})"
            ) from None
        finally:
            if self.http_client is None:
                client.close()
