"""Tensor sources: where input models' headers, configs and tensors come from."""

from __future__ import annotations

from pathlib import Path

from mergehub.errors import ModelReferenceError
from mergehub.recipe import ModelRef
from mergehub.sources.base import DTYPES, TensorInfo, TensorSource, parse_safetensors_header
from mergehub.sources.local import LocalSource

__all__ = ["DTYPES", "TensorInfo", "TensorSource", "LocalSource", "parse_safetensors_header", "open_source"]


def open_source(ref: ModelRef, *, token: str | bool | None = None, cache_dir: str | Path | None = None) -> TensorSource:
    """Open a model reference as a tensor source: an existing local directory, else a Hub repo.

    Hub repos resolve to a commit through huggingface_hub (honouring HF_ENDPOINT, HF_TOKEN, HF_HOME).

    Raises:
        ModelReferenceError: the reference is neither a directory nor a Hub ID.
        SourceError: the Hub repo cannot be read.
    """
    if ref.is_local:
        return LocalSource(ref.path, label=str(ref))
    if not ref.looks_like_hub_id or ref.path.startswith((".", "/", "~")):
        raise ModelReferenceError(
            f"Model {str(ref)!r} is not a local directory and not a Hub repo ID.",
            hint="Give an existing directory, or a Hub ID like `org/name` or `org/name@revision`.",
        )
    from mergehub.sources.hub import HubSource

    return HubSource(ref, token=token, cache_dir=cache_dir)
