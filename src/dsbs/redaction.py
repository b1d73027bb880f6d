"""Keeping credentials out of everything dsbs stores or uploads: answers, errors, cards, URLs."""

import re

_BEARER = re.compile(r"(?i)((?:bearer|basic)\s+)[^\s\"',;]+")
_KEY_LIKE = re.compile(r"(?i)\b(sk|pk|hf|rk)[-_][A-Za-z0-9_\-]{8,}")
_KEY_PARAM = re.compile(r"(?i)((?:api[_-]?key|key|token|access_token|password)=)[^&\s\"']+")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without credentials: bearer and basic tokens, key-shaped strings, key=... and ``secrets``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _BEARER.sub(r"\1[redacted]", text)
    text = _KEY_PARAM.sub(r"\1[redacted]", text)
    return _KEY_LIKE.sub("[redacted]", text)


def safe_url(url: str | None) -> str | None:
    """A URL as it may be stored: no user:password@, no credential query parameters."""
    if not url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return redact(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
