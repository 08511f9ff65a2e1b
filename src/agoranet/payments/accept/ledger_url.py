"""Telling a PostgreSQL ledger's URL from a SQLite ledger's path, and showing it safely.

Kept apart from :mod:`agoranet.payments.accept.pg_ledger` so that the CLI and the node's
settings can tell the two apart without psycopg (an optional extra) installed.
"""

from __future__ import annotations

import re

__all__ = ["is_postgres_url", "redact_url"]


def is_postgres_url(text: str) -> bool:
    """Whether ``text`` names a PostgreSQL ledger (``postgresql://`` or ``postgres://``)."""
    return text.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and banners."""
    redacted = re.sub(r"(://[^:/@?#]*):[^@/?#]*@", r"\1:***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", redacted)
