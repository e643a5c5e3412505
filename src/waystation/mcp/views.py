"""What agents get to see: results built from allow-listed fields, and a last scrub for secrets.

Every tool result and resource passes `scrub()`; the builders here never copy a row wholesale, so a
new secret column on a table does not leak by default.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from waystation.audit.models import AuditEntry
from waystation.flows.models import Flow
from waystation.flows.service import flow_out

REDACTED = "[redacted]"
# Keys whose values are secrets wherever they appear (arguments, results, nested objects).
_SECRET_KEY = re.compile(r"(pass(word)?|secret|token|sealed|hash|api[_-]?key|private|credential)", re.I)
# Strings that look like a Waystation secret whatever key they sit under.
_NOT_SECRET_KEYS = frozenset({"token_id", "token_name"})
_SECRET_VALUE = re.compile(r"\b(wst|wsd|wsb|wsc)_[A-Za-z0-9_-]{16,}|whsec_[A-Za-z0-9+/=]{16,}")


def _secret_key(key: object) -> bool:
    return isinstance(key, str) and key not in _NOT_SECRET_KEYS and _SECRET_KEY.search(key) is not None


def redact(value: Any) -> Any:
    """A copy of `value` with secret-looking keys and strings replaced (for audit rows and arguments)."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if _secret_key(k) and v not in (None, "") else redact(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, public_url(value) if "://" in value else value)
    return value


def scrub(value: Any) -> Any:
    """The last pass over every result: like `redact`, but keys that only report whether a secret
    exists (`has_endpoint_secret`, `has_password`) keep their booleans."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(v, bool) or v is None:
                out[k] = v
            elif _secret_key(k):
                out[k] = REDACTED
            else:
                out[k] = scrub(v)
        return out
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, value)
    return value


def public_url(url: str) -> str:
    """A URL without credentials in it (user info, query string): what an agent may see of it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    if not parts.scheme or not parts.hostname:
        return url
    if parts.username is None and parts.password is None and not parts.query:
        return url
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


def flow_view(flow: Flow) -> dict[str, Any]:
    out = flow_out(flow).model_dump(mode="json")
    if out.get("endpoint_url"):
        out["endpoint_url"] = public_url(out["endpoint_url"])
    return out


def audit_view(entry: AuditEntry) -> dict[str, Any]:
    return {
        "ts": entry.ts.isoformat(),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "summary": entry.summary,
    }
