"""The one token scrubber: what no log line, page or annotation may show."""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["scrub_tokens"]

_TOKEN_PATTERNS = (
    (re.compile(r"\bhf_(?:oauth_)?[A-Za-z0-9]{16,}\b"), "hf_***"),
    (re.compile(r"\bapi_org_[A-Za-z0-9]{16,}\b"), "api_org_***"),
    (re.compile(r"(?i)\b(bearer|token)([=:\s]+)[A-Za-z0-9._\-]{16,}"), r"\1\2***"),
)


def scrub_tokens(text: str, secrets: Iterable[str | bool | None] = ()) -> str:
    """`text` with each of the `secrets` (strings of 4 characters or more) and anything shaped like a Hugging Face
    token (`hf_...`, `api_org_...`, `Bearer ...`) replaced by `***`."""
    for secret in secrets:
        if isinstance(secret, str) and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern, replacement in _TOKEN_PATTERNS:
        text = pattern.sub(replacement, text)
    return text
