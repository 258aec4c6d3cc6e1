"""Figures as people read them: parameter counts, byte sizes (the one size formatter) and durations."""

from __future__ import annotations

__all__ = ["format_count", "format_size", "format_duration"]


def format_count(n: int) -> str:
    """A count with a unit, e.g. `7.00B` or `500.00M`."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def format_size(nbytes: float) -> str:
    """A byte size in decimal units, e.g. `512 B` or `14.00 GB`."""
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000:
            return f"{nbytes:.0f} B" if unit == "B" else f"{nbytes:.2f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.2f} TB"


def format_duration(seconds: float) -> str:
    """A duration as `M:SS`, or `H:MM:SS` from an hour on."""
    seconds = int(max(seconds, 0))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"
