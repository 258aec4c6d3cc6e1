"""Tensor sources: where input models' headers, configs, small files and tensors come from.

`base` defines the `TensorSource` protocol and the pure safetensors header parser; `local` reads a
directory, `hub` a Hub repo by HTTP range reads at a pinned commit (`stream_hash` checks what
streams). `open_sources` opens a merge's models once, keyed by their `ModelRef`, and closes them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType

from mergehub.errors import MergehubError, ModelReferenceError
from mergehub.recipe import ModelDocument, ModelRef
from mergehub.sources.base import DTYPES, INDEX_NAME, TensorInfo, TensorSource, parse_safetensors_header
from mergehub.sources.local import LocalSource

__all__ = [
    "DTYPES",
    "INDEX_NAME",
    "TensorInfo",
    "TensorSource",
    "LocalSource",
    "Sources",
    "parse_safetensors_header",
    "open_source",
    "open_sources",
]


def open_source(
    ref: ModelRef, *, token: str | bool | None = None, cache_dir: str | Path | None = None, label: str | None = None
) -> TensorSource:
    """Open a model reference as a tensor source: an existing local directory, else a Hub repo.

    Hub repos resolve to a commit through huggingface_hub (honouring HF_ENDPOINT, HF_TOKEN, HF_HOME).
    `label` names the model in messages (default: the reference). A `model+adapter` reference opens both
    and applies the LoRA adapter as tensors are read (`AdapterSource`).

    Raises:
        ModelReferenceError: the reference is neither a directory nor a Hub ID.
        SourceError: the Hub repo cannot be read.
    """
    if ref.adapter is not None:
        from mergehub.sources.adapter import AdapterSource

        model = open_source(ref.model, token=token, cache_dir=cache_dir)
        try:
            adapter = _open_repo(ref.adapter, token=token, cache_dir=cache_dir, adapter=True)
        except BaseException:
            model.close()
            raise
        return AdapterSource(model, adapter, label=label or str(ref))
    return _open_repo(ref, token=token, cache_dir=cache_dir, label=label)


def _open_repo(
    ref: ModelRef,
    *,
    token: str | bool | None,
    cache_dir: str | Path | None,
    label: str | None = None,
    adapter: bool = False,
) -> TensorSource:
    what = "Adapter" if adapter else "Model"
    if ref.is_local:
        return LocalSource(ref.path, label=label or str(ref), adapter=adapter)
    if not ref.looks_like_hub_id or ref.path.startswith((".", "/", "~")):
        raise ModelReferenceError(
            f"{what} {str(ref)!r} is not a local directory and not a Hub repo ID.",
            hint="Give an existing directory, or a Hub ID like `org/name` or `org/name@revision`.",
        )
    from mergehub.sources.hub import HubSource

    return HubSource(ref, token=token, cache_dir=cache_dir, label=label, adapter=adapter)


class Sources(Mapping[ModelRef, TensorSource]):
    """A merge's open models, keyed by the reference the recipe (or plan) names them by; closes them all on exit."""

    def __init__(self, sources: Mapping[ModelRef, TensorSource]) -> None:
        self._sources = dict(sources)

    def __getitem__(self, ref: ModelRef) -> TensorSource:
        return self._sources[ref]

    def __iter__(self) -> Iterator[ModelRef]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def by_key(self) -> dict[str, TensorSource]:
        """The sources by their plan key, `str(ModelRef)`."""
        return {str(ref): source for ref, source in self._sources.items()}

    def close(self) -> None:
        """Close every source (each once; later calls do nothing)."""
        sources, self._sources = self._sources, {}
        for source in sources.values():
            source.close()

    def __enter__(self) -> Sources:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def open_sources(
    models: ModelDocument | Mapping[ModelRef, ModelRef] | Iterable[ModelRef],
    *,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
) -> Sources:
    """Open models once, as a context manager that closes them all: `with open_sources(recipe) as sources:`.

    `models` is a recipe or an MoE config (every model it references, base first; an error is located where it
    names the model), references, or keys mapped to what to open (a plan's models at their pinned commits).
    If one model cannot be opened, those already open are closed before the error propagates.

    Raises:
        ModelReferenceError: a reference is neither a directory nor a Hub ID.
        SourceError: a Hub repo cannot be read.
    """
    recipe = models if isinstance(models, ModelDocument) else None
    if recipe is not None:
        pairs = [(ref, ref) for ref in recipe.referenced_models()]
    else:
        pairs = list(models.items()) if isinstance(models, Mapping) else [(ref, ref) for ref in models]
    opened = Sources({})
    try:
        for key, ref in pairs:
            try:
                opened._sources[key] = open_source(ref, token=token, cache_dir=cache_dir, label=str(key))
            except MergehubError as e:
                if recipe is not None:
                    recipe.locate(e, recipe.location_of(key))
                raise
    except BaseException:
        opened.close()
        raise
    return opened
