"""Clear errors for the Hub's access and connection failures."""

from __future__ import annotations

from .errors import UserError


def hub_error(err: Exception, repo_id: str) -> UserError | None:
    """A clear UserError for the Hub's connection and access errors, else None."""
    from huggingface_hub import errors as hub_errors

    offline = (
        getattr(hub_errors, "LocalEntryNotFoundError", ()),
        getattr(hub_errors, "OfflineModeIsEnabled", ()),
        ConnectionError,
        TimeoutError,
    )
    access = tuple(
        getattr(hub_errors, name)
        for name in ("GatedRepoError", "RepositoryNotFoundError", "RevisionNotFoundError")
        if hasattr(hub_errors, name)
    )
    http = getattr(hub_errors, "HTTPError", None)  # the HTTP client's base error (connection failures included)
    try:
        import requests

        offline += (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    except ImportError:  # pragma: no cover
        pass
    if access and isinstance(err, access):
        return UserError(f"cannot download {repo_id}: {type(err).__name__}: {str(err).splitlines()[0]}")
    hub_http = getattr(hub_errors, "HfHubHTTPError", None)
    if hub_http is not None and isinstance(err, hub_http):
        return UserError(f"the Hub refused {repo_id}: {str(err).splitlines()[0]}")
    if isinstance(err, offline) or (http is not None and isinstance(err, http)):
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return UserError(
            f"cannot reach the Hugging Face Hub to get {repo_id} ({type(err).__name__}: {first}).\n"
            "  Check the network (and HF_ENDPOINT / HF_HUB_OFFLINE=1), then run the same command again: finished "
            "files are kept and the rest resumes."
        )
    return None


def is_hub_connection_error(err: Exception) -> bool:
    from huggingface_hub import errors as hub_errors

    kinds = tuple(
        getattr(hub_errors, n) for n in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") if hasattr(hub_errors, n)
    )
    return isinstance(err, kinds)
