"""The one JSON response helper of the HTTP edge (the API, errors, health and admin alike)."""

from __future__ import annotations

import json
from typing import Any

from quart import Response


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`body` as compact JSON. Non-ASCII is escaped (`\\uXXXX`): a lone surrogate — which JSON may
    carry, from a client or an upstream — cannot be encoded as UTF-8, and would fail the answer."""
    return Response(json.dumps(body, separators=(",", ":")), status, headers, content_type="application/json")
