"""Settings of ``cmr_ingest``, read once from the environment at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cmr_ingest.geometry import DEFAULT_TOLERANCE_DEG

#: Environment variable holding the secret salt of the id hashes.
SALT_ENV = "SLICERANK_ID_SALT"
#: Shortest salt accepted: a short salt makes the ids guessable from the UIDs.
MIN_SALT_LENGTH = 8


@dataclass(frozen=True)
class IngestSettings:
    """What ``slicerank ingest`` needs besides its arguments.

    ``id_salt`` (env ``SLICERANK_ID_SALT``) keys the hashes that become ``image_id`` and
    ``scan_id``; keep it secret and keep it the same between runs so ids stay stable.
    ``orientation_tolerance_deg`` (env ``SLICERANK_ORIENTATION_TOLERANCE``) and
    ``png_compress_level`` (env ``SLICERANK_PNG_COMPRESS_LEVEL``, 0–9) have defaults.
    ``include_burned_in`` (env ``SLICERANK_INCLUDE_BURNED_IN``, default off) keeps slices
    flagged for burned-in text; ``check_pixels_for_text`` (env
    ``SLICERANK_CHECK_PIXELS_FOR_TEXT``, default on: 0 false alarms in 1,222 synthetic and 12
    real slices, docs/bench/security.md) also searches the pixels for text.
    """

    id_salt: str = field(repr=False)
    orientation_tolerance_deg: float = DEFAULT_TOLERANCE_DEG
    png_compress_level: int = 1
    include_burned_in: bool = False
    check_pixels_for_text: bool = True

    def __post_init__(self) -> None:
        if len(self.id_salt) < MIN_SALT_LENGTH:
            raise ValueError(
                f"the id salt must be at least {MIN_SALT_LENGTH} characters: set {SALT_ENV} to a "
                "secret, e.g. the output of: python3 -c 'import secrets; print(secrets.token_hex(16))'"
            )
        if not 0.0 < self.orientation_tolerance_deg <= 90.0:
            raise ValueError(
                f"orientation tolerance must be in (0, 90] degrees, got {self.orientation_tolerance_deg}"
            )
        if not 0 <= self.png_compress_level <= 9:
            raise ValueError(f"PNG compress level must be 0..9, got {self.png_compress_level}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], salt_env: str = SALT_ENV) -> IngestSettings:
        """Build the settings from ``environ`` (pass ``os.environ``); the salt from ``salt_env``."""
        kwargs: dict = {"id_salt": environ.get(salt_env, "")}
        for name, key, kind, what in (
            ("SLICERANK_ORIENTATION_TOLERANCE", "orientation_tolerance_deg", float,
             "a number of degrees in (0, 90], e.g. 40"),
            ("SLICERANK_PNG_COMPRESS_LEVEL", "png_compress_level", int, "a whole number 0..9"),
        ):  # fmt: skip
            raw = environ.get(name, "").strip()
            if not raw:
                continue
            try:
                kwargs[key] = kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not {what}") from None
        for name, key in (("SLICERANK_INCLUDE_BURNED_IN", "include_burned_in"),
                          ("SLICERANK_CHECK_PIXELS_FOR_TEXT", "check_pixels_for_text")):  # fmt: skip
            value = environ.get(name, "").strip().lower()
            if value in ("1", "true", "yes", "on"):
                kwargs[key] = True
            elif value in ("0", "false", "no", "off"):
                kwargs[key] = False
            elif value:
                raise ValueError(f"{name}={value!r} is not a yes/no value; use 1 or 0")
        if not kwargs["id_salt"]:
            raise ValueError(
                f"{salt_env} is not set: ingestion needs a secret salt for the id hashes, e.g. "
                f"export {salt_env}=$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
            )
        return cls(**kwargs)
