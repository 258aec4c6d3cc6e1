"""The `experiments` extra (ray, cma, matplotlib), imported only when needed, with the install command when missing."""

from __future__ import annotations

import importlib
from typing import Any

from mergehub.errors import ExperimentError

__all__ = ["INSTALL_HINT", "require"]

INSTALL_HINT = "pip install 'mergehub[experiments]'"


def require(module: str, purpose: str, *, alternative: str = "") -> Any:
    """Import `module` (ray, cma, matplotlib), or raise an ExperimentError saying what needs it and how to install it.

    Raises:
        ExperimentError: the module is not installed.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExperimentError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed.",
            hint=f"Install it with `{INSTALL_HINT}`{alternative}.",
        ) from e
