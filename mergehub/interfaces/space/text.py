"""Text on the page: every message, status and error is shown as written (escaped), whole, never as Markup.

Gradio renders Markdown components as Markdown with HTML: a message holding `<server path>` or a YAML
excerpt would lose everything between angle brackets, and `*`, `_` or a backtick would restyle it.
`plain` escapes what Markdown or HTML would interpret; `status` puts an icon before it; `link` and
`table` build the only Markup the page adds itself. No gradio here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import quote

__all__ = ["plain", "status", "link", "table", "FAILED", "DONE", "WORKING", "WARNING", "STOPPED", "LOCKED"]

FAILED, DONE, WORKING, WARNING, STOPPED, LOCKED = "❌", "✅", "⏳", "⚠️", "⏹️", "🔒"
"""The icons a status line starts with."""

_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_MARKDOWN = set("\\`*_{}[]()#+-.!|~$=")  # those Markdown acts on; CommonMark lets a backslash escape each


def _escape_line(line: str) -> str:
    out = []
    for char in line:
        if char in _HTML:
            out.append(_HTML[char])
        elif char in _MARKDOWN:
            out.append("\\" + char)
        else:
            out.append(char)
    text = "".join(out)
    stripped = text.lstrip(" ")
    return "&nbsp;" * (len(text) - len(stripped)) + stripped  # leading spaces would make a code block


def plain(text: str) -> str:
    """Markdown that shows `text` exactly: HTML and Markdown characters escaped, each line break kept."""
    return "  \n".join(_escape_line(line) for line in str(text).replace("\r\n", "\n").split("\n"))


_URL = re.compile(r"https?://[^\s<>()\[\]]+[^\s<>()\[\].,;:!?'\"]")


def status(icon: str, text: str, *, trusted: str = "") -> str:
    """A status line: the icon, then `text` shown exactly, its web addresses as links; `trusted` (Markup the page
    built, e.g. a link) follows."""
    parts, end = [], 0
    for match in _URL.finditer(text):
        parts += [plain(text[end : match.start()]), link(match.group(), match.group())]
        end = match.end()
    return f"{icon} {''.join([*parts, plain(text[end:])])}{trusted}"


def link(label: str, url: str) -> str:
    """A Markdown link showing `label` as written."""
    return f"[{plain(label)}]({quote(url, safe=':/?&=#%@+,;~')})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; cells are Markup the caller built (escape text with `plain`), one line each."""

    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("  \n", " ").replace("\n", " ") for c in cells) + " |"

    return "\n".join([row(header), row(["---"] * len(header)), *(row(r) for r in rows)])
