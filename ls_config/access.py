"""Check, before any work, that Label Studio answers, takes the API key and holds a project.

Commands call :func:`check_access` first so that a wrong address, key or project id ends in
one or two lines naming the variable (exit 3 or 2, see :mod:`slicerank_base.reach`) instead of
a traceback deep inside the SDK, or a training job queued that can only fail.
"""

from __future__ import annotations

from slicerank_base.reach import CHECK_TIMEOUT_S, ConfigError, check_label_studio, redact_url


def check_access(
    url: str,
    api_key: str,
    *,
    project_id: int | None = None,
    url_variable: str = "LABEL_STUDIO_URL",
    key_variable: str = "LABEL_STUDIO_API_KEY",
    timeout: float = CHECK_TIMEOUT_S,
) -> None:
    """Raise :class:`~slicerank_base.reach.ServiceUnreachable` when Label Studio does not
    answer at ``url``, :class:`~slicerank_base.reach.ConfigError` when ``api_key`` is missing or
    refused or project ``project_id`` (if given) does not exist for that key."""
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.core.api_error import ApiError

    where = redact_url(url)
    if not api_key:
        raise ConfigError(
            f"{key_variable} is not set: copy a token from Label Studio at {where} "
            "(Account & Settings) into it"
        )
    check_label_studio(url, variable=url_variable, timeout=timeout)
    client = LabelStudio(base_url=url, api_key=api_key, timeout=timeout)
    try:
        client.users.whoami()
    except ApiError as exc:
        if exc.status_code in (401, 403):
            raise ConfigError(
                f"Label Studio at {where} refused {key_variable} ({exc.status_code}): copy a "
                "valid token from Account & Settings (legacy tokens need "
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the server)"
            ) from None
        raise
    if project_id is None:
        return
    try:
        client.projects.get(id=project_id)
    except ApiError as exc:
        if exc.status_code in (403, 404):
            raise ConfigError(
                f"Label Studio at {where} has no project {project_id} that {key_variable}'s "
                "user can read: check the id in the project's URL (/projects/ID)"
            ) from None
        raise
