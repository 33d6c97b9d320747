"""Reachability of the servers a command talks to: an MLflow tracking server or a Prefect API that does
not answer fails the command within seconds, naming the URL and the fix, instead of after minutes of
client retries (MLflow backs off for minutes) or halfway through a stage."""

from __future__ import annotations

import urllib.error
import urllib.request

from dcm.errors import StageError


def check_reachable(health_url: str, what: str, fix: str, timeout_s: float) -> None:
    """Any HTTP answer counts as reachable (auth or routing errors surface later, with their own
    message); no answer within `timeout_s` is a StageError."""
    try:
        with urllib.request.urlopen(health_url, timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise StageError(f"{what} at {health_url} is unreachable ({reason}); {fix}") from None


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))
