"""Where Label Studio serves local files from, and the URLs of the slices under it: one place.

Label Studio reads a task URL ``/data/local-files/?d=REL`` as ``LOCAL_FILES_DOCUMENT_ROOT/REL``
and serves it only if the file also lies under a Local Files storage's path. So the document
root that Label Studio starts with, the storage path and every task URL must all come from the
same pair of folders; a root one level off answers 404 for every image while the REST API, the
simulated raters and the model (which reads from disk) all keep working. Every launcher (the
demo, ``slicerank provision``, the local server, compose's provision service through
``LOCAL_FILES_DOCUMENT_ROOT``) builds a :class:`LocalFiles` and takes both from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

URL_PREFIX = "/data/local-files/?d="
"""How a task refers to a file below the document root."""


@dataclass(frozen=True)
class LocalFiles:
    """A media root (``manifest.csv`` + PNGs, the Local Files storage) strictly below the folder
    Label Studio serves local files from (``LOCAL_FILES_DOCUMENT_ROOT``).

    Build it with :meth:`below`, which resolves both folders and checks how they sit.
    """

    media_root: Path
    document_root: Path

    @classmethod
    def below(
        cls, media_root: str | os.PathLike, document_root: str | os.PathLike | None = None
    ) -> LocalFiles:
        """The media root served from ``document_root`` (default: the media root's parent).

        Raises ``ValueError`` naming both folders when the media root is not strictly below the
        document root: Label Studio 1.23 refuses a storage on the document root itself, and a
        media root outside it could never be served.
        """
        media = Path(media_root).resolve()
        root = Path(document_root).resolve() if document_root else media.parent
        if media == root:
            raise ValueError(
                f"media root {media} is the Label Studio document root itself "
                "(LOCAL_FILES_DOCUMENT_ROOT); Label Studio 1.23 refuses a Local Files storage "
                "there: use its parent as the document root"
            )
        if not media.is_relative_to(root):
            raise ValueError(
                f"media root {media} is not inside the Label Studio document root {root} "
                "(LOCAL_FILES_DOCUMENT_ROOT)"
            )
        return cls(media, root)

    def url(self, path: str) -> str:
        """The task URL of ``path`` (relative to the media root, as in the manifest)."""
        rel_root = self.media_root.relative_to(self.document_root)
        rel = PurePosixPath(*rel_root.parts, *PurePosixPath(path).parts)
        return f"{URL_PREFIX}{quote(str(rel))}"

    def environment(self) -> dict[str, str]:
        """The variables Label Studio needs to serve these files (both spellings 1.23 reads)."""
        root = str(self.document_root)
        return {
            "LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LOCAL_FILES_DOCUMENT_ROOT": root,
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": root,
        }
