"""Storage and tracking URLs in messages: never with their password."""

from __future__ import annotations


def redact(url: str) -> str:
    """`scheme://user:password@host/...` as `scheme://user:***@host/...` (a password may hold '/',
    ':' or '@': the host part starts after the last '@'); other strings unchanged."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url
