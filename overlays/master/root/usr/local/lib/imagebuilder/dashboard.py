"""The dashboard: the page and the JSON the collector serves.

The page is one self-contained file, dashboard.html beside this one (the LAN may have no internet). Every
value reaches it through JSON and textContent/setAttribute, so a hostname like <script> shows as text.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

# Read when the collector starts: a missing page fails its start, not the first request.
PAGE = Path(__file__).with_name("dashboard.html").read_text()


def to_json(document: Any) -> str:
    """JSON that a browser's JSON.parse accepts: never NaN or Infinity, which would blank the page.

    Packets with such values are dropped on arrival; should one reach here all the same (a bug), it
    shows as null rather than taking every other node's figures with it."""
    try:
        return json.dumps(document, allow_nan=False)
    except ValueError:
        return json.dumps(_finite_only(document), allow_nan=False)


def _finite_only(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_only(v) for v in value]
    return value


def render_page(cluster: str, document: dict[str, Any]) -> str:
    """The page with its title and the first figures in place (it polls /api/nodes for the next)."""
    # Inside <script> only "</" could end the element; escaping <, > and & keeps any text inert.
    data = (to_json(document).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))
    title = html.escape(f"{cluster} cluster")
    return PAGE.replace("__TITLE__", title).replace("__INITIAL__", data)
