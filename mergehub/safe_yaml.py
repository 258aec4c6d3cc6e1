"""YAML that someone else wrote (recipes, a parent's recipe, card metadata): bounded in size, no aliases.

A YAML alias repeats a node by reference, so a few hundred bytes of nested aliases expand into
gigabytes once loaded (the "billion laughs"). Aliases are refused outright, not expanded within a
budget: published recipes do not use them, and writing a value out in full is an easy fix.
Texts longer than a cap are refused before parsing; the cap for recipes is
`MERGEHUB_MAX_RECIPE_BYTES` (default 256 KiB: published recipes are a few KB; a 256 KiB one parses in under a second).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mergehub.errors import RecipeError

__all__ = [
    "DEFAULT_MAX_RECIPE_BYTES",
    "AliasRefused",
    "Document",
    "max_recipe_bytes",
    "load",
    "load_documents",
    "compose",
    "read_text",
]

DEFAULT_MAX_RECIPE_BYTES = 256 * 1024
_LIMIT_VARIABLE = "MERGEHUB_MAX_RECIPE_BYTES"


class AliasRefused(yaml.composer.ComposerError):
    """The text uses an alias (`*name`); its `problem_mark` says where."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases as it composes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasRefused(None, None, f"found the alias *{event.anchor}", event.start_mark)
        return super().compose_node(parent, index)


def max_recipe_bytes() -> int:
    """The largest recipe read, in UTF-8 bytes: `MERGEHUB_MAX_RECIPE_BYTES`, else 256 KiB.

    Raises:
        RecipeError: the variable is set but is not a positive integer.
    """
    value = os.environ.get(_LIMIT_VARIABLE, "").strip()
    if not value:
        return DEFAULT_MAX_RECIPE_BYTES
    if not value.isdigit() or int(value) == 0:
        raise RecipeError(
            f"{_LIMIT_VARIABLE}={value[:20]!r} is not a positive number of bytes.",
            hint="Unset it, or give a byte count such as 2000000.",
        )
    return int(value)


def _check_size(size: int, what: str, limit: int) -> None:
    if size > limit:
        raise RecipeError(
            f"{what} is {size:,} bytes; mergehub reads at most {limit:,}.",
            hint=f"Recipes are small: check that this is the right file, or raise {_LIMIT_VARIABLE}.",
        )


def _refuse(error: AliasRefused, what: str) -> RecipeError:
    mark = error.problem_mark
    where = f" at line {mark.line + 1}" if mark is not None else ""
    return RecipeError(
        f"{what} uses YAML anchors and aliases (`&name`, `*name`){where}; mergehub refuses them.",
        hint="Write the repeated value out in full: aliases let a small text expand without bound.",
    )


def load(text: str, *, what: str = "The recipe", max_bytes: int | None = None) -> Any:
    """Parse YAML text with PyYAML's safe loader, refusing aliases and texts over `max_bytes`.

    Raises:
        RecipeError: the text is too large or uses an alias (caused by `AliasRefused`, which carries the line).
        yaml.YAMLError: the text is not valid YAML.
    """
    _check_size(len(text.encode("utf-8")), what, max_recipe_bytes() if max_bytes is None else max_bytes)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except AliasRefused as e:
        raise _refuse(e, what) from e


@dataclass(frozen=True)
class Document:
    """One document of a multi-document YAML text: its data, its own text, and the file line it starts on."""

    data: Any
    text: str
    first_line: int
    """The 1-based line of the file where the document's text begins (its line 1)."""


_MARKER = re.compile(r"^(?:---|\.\.\.)(?=[ \t]|$)")


def load_documents(text: str, *, what: str = "The recipe", max_bytes: int | None = None) -> list[Document]:
    """Every non-empty document of a YAML text (split at `---` and `...` lines), each parsed as `load` does.

    A document's `text` keeps its line numbers relative to `first_line` (its `---` marker is blanked),
    so errors in it can be placed in the file. Documents holding only comments are left out.

    Raises:
        RecipeError: the text is too large or a document uses an alias.
        yaml.YAMLError: a document is not valid YAML (its `problem_mark` counts the file's lines).
    """
    _check_size(len(text.encode("utf-8")), what, max_recipe_bytes() if max_bytes is None else max_bytes)
    pieces: list[tuple[int, list[str]]] = [(1, [])]
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        marker = _MARKER.match(line)
        if marker:
            pieces.append((number, [" " * len(marker.group(0)) + line[len(marker.group(0)) :]]))
        else:
            pieces[-1][1].append(line)
    documents = []
    for first, lines in pieces:
        body = "".join(lines)
        data = load(
            "\n" * (first - 1) + body, what=what, max_bytes=len(text.encode("utf-8")) + first
        )  # lines as in the file
        if data is not None:
            documents.append(Document(data, body, first))
    return documents


def compose(text: str, *, max_bytes: int | None = None) -> yaml.Node | None:
    """The node tree of a YAML text (for locating lines), or None when it is too large, has aliases or is invalid."""
    if len(text.encode("utf-8")) > (max_recipe_bytes() if max_bytes is None else max_bytes):
        return None
    try:
        return yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:
        return None


def read_text(path: str | os.PathLike, *, what: str = "The recipe", max_bytes: int | None = None) -> str:
    """A recipe file's text, reading no more than the cap allows.

    Raises:
        RecipeError: the file cannot be read, is not UTF-8, or is too large.
    """
    limit = max_recipe_bytes() if max_bytes is None else max_bytes
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise RecipeError(f"Cannot read recipe {str(path)!r}: {e.strerror or e}.", hint="Check the path.") from e
    if len(data) > limit:
        size = max(len(data), Path(path).stat().st_size if Path(path).is_file() else 0)
        _check_size(size, f"{what} {str(path)!r}", limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"{what} {str(path)!r} is not UTF-8 text.", hint="Save it as UTF-8.") from e
