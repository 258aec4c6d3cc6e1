"""The GGUF file types mergehub writes, parsed from `--gguf f16,q8_0`; and the check that `gguf` is installed.

Only `require_gguf` imports the `gguf` package, so the CLI can check its arguments without it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mergehub.errors import GGUFError

__all__ = ["FILE_TYPES", "INSTALL_HINT", "parse_types", "require_gguf"]

FILE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")
"""The types offered, from the most precise: those the `gguf` package's own encoders write."""

INSTALL_HINT = "Install the GGUF extra: pip install 'mergehub[gguf]'"
# llama.cpp's quantize types that need its C quantizer (k-quants, i-quants, ternary).
_NEEDS_LLAMA_CPP = re.compile(r"^(?:Q[2-6]_K(?:_[SML])?|IQ\d_\w+|TQ[12]_0|MXFP4\w*|Q2_0|Q1_0)$")


def parse_types(types: str | Iterable[str]) -> tuple[str, ...]:
    """Canonical upper-case type names from `f16,q8_0` or a list; repeats dropped, order kept.

    Raises:
        GGUFError: a name is no GGUF type mergehub writes (k-quants need llama.cpp's quantizer).
    """
    names = types.split(",") if isinstance(types, str) else list(types)
    parsed: list[str] = []
    for raw in names:
        name = raw.strip().upper()
        if not name:
            continue
        if name not in FILE_TYPES:
            offered = ", ".join(t.lower() for t in FILE_TYPES)
            if _NEEDS_LLAMA_CPP.match(name):
                raise GGUFError(
                    f"GGUF type {raw.strip()!r} needs llama.cpp's quantizer, which mergehub does not include.",
                    hint=f"Choose among {offered}; or write f16 and run llama.cpp's `llama-quantize` on it.",
                )
            raise GGUFError(f"{raw.strip()!r} is not a GGUF type.", hint=f"Choose among {offered}.")
        if name not in parsed:
            parsed.append(name)
    if not parsed:
        raise GGUFError("No GGUF type given.", hint="Give one or more types, e.g. `f16,q8_0`.")
    return tuple(parsed)


def require_gguf() -> None:
    """Raise a `GGUFError` saying how to install the `gguf` package when it is missing."""
    try:
        import gguf  # noqa: F401
    except ImportError as e:
        raise GGUFError("Writing GGUF needs the `gguf` package, which is not installed.", hint=INSTALL_HINT) from e
