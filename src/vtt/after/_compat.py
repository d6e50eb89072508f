"""Every use of a dependency's private API after training (the Hub uploads), with the version it was written for.

tests/test_compat.py fails when an upgrade changes what it relies on.
"""

from __future__ import annotations

WRITTEN_FOR = {"huggingface_hub": "2.4.0"}


def hub_network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions huggingface_hub's own backoff retries (time-outs, dropped connections): vtt's upload
    retries retry them too. huggingface_hub keeps the tuple private (`_DEFAULT_RETRY_ON_EXCEPTIONS`)."""
    from huggingface_hub.utils._http import _DEFAULT_RETRY_ON_EXCEPTIONS

    return _DEFAULT_RETRY_ON_EXCEPTIONS
