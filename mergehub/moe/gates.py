"""An MoE's router weights, one (experts, hidden) matrix per layer, from the experts' prompts or from a seed.

Gate modes, as mergekit-moe defines them:

- `hidden` (or `hidden_last`): the base model runs over each expert's prompts (bfloat16, as mergekit
  loads it); a prompt list's state at layer L is the hidden state entering layer L at the last token,
  averaged over the prompts. `hidden_avg` averages over all token positions (padding included, as mergekit does).
- `cheap_embed`: the sum of the prompts' token embeddings (padding masked), normalised, the same for every layer.
- `random`: standard normal draws; `uniform_random`: uniform in ±1/sqrt(hidden), as torch initialises a Linear.

With prompts, an expert's vector is its positive prompts' state minus its negative prompts' state
(when it has some), normalised to unit length per layer. Prompts are tokenised as mergekit does: the
base's tokenizer, the BOS token text prepended, no other special tokens, left padding with the BOS
token (the EOS token when there is none) as padding.

Seeds: the random modes draw the whole (layers, experts, hidden) tensor at once from a CPU generator
seeded with the merge's seed, so `--seed S` gives exactly what `mergekit-moe --random-seed S` gives.

Prompt states are cached on disk (`PromptStateCache`), keyed by the base model's identity (its commit,
or a local directory's files and times), the mode and the exact prompt list, so a new expert or a
changed prompt of one expert recomputes only what changed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mergehub.errors import GateError, MissingTensorError
from mergehub.sources.base import MadeHere, TensorInfo, TensorSource, dtype_code
from mergehub.vocab import tokenizer_files

__all__ = [
    "GATE_MODES",
    "PROMPT_MODES",
    "PromptSet",
    "GateSpec",
    "PromptStateCache",
    "GateSource",
    "compute_gates",
    "default_cache_dir",
    "router_name",
]

PROMPT_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed")
"""Gate modes computed from the experts' prompts."""
GATE_MODES = (*PROMPT_MODES, "random", "uniform_random")
HIDDEN_DTYPE = "bfloat16"
"""The dtype mergekit-moe runs the base model in for the hidden modes (whatever the base's own dtype)."""
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class PromptSet:
    """One gated expert's prompts: those it should be routed (positive) and not routed (negative)."""

    positive: tuple[str, ...]
    negative: tuple[str, ...] = ()


@dataclass(frozen=True)
class GateSpec:
    """What the router weights are computed from: the mode, each gated expert's prompts (routed first), the seed.

    `routed` experts get `router_name(layer)` rows; the rest (shared experts with gates)
    `router_name(layer, shared=True)`.
    """

    mode: str
    prompts: tuple[PromptSet, ...]
    routed: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    seed: int = 0

    @property
    def gated(self) -> int:
        """How many experts have router rows (routed and gated shared experts)."""
        return len(self.prompts)

    @property
    def needs_prompts(self) -> bool:
        """Whether the mode computes gates from prompts (and so needs the base's tokenizer)."""
        return self.mode in PROMPT_MODES

    @property
    def runs_base(self) -> bool:
        """Whether the mode runs the base model's forward pass."""
        return self.mode.startswith("hidden")


def router_name(layer: int, *, shared: bool = False) -> str:
    """The name of a layer's router rows in the `GateSource`."""
    return f"{'shared_router' if shared else 'router'}.{layer}"


def default_cache_dir() -> Path:
    """Where prompt states are cached: `$HF_HOME/mergehub/prompt-states` (huggingface_hub's home)."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "mergehub" / "prompt-states"


class PromptStateCache:
    """Prompt states on disk, one safetensors file per (base identity, mode, prompt list)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def _path(self, key: Mapping[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return self.directory / f"{digest}.safetensors"

    def get(self, key: Mapping[str, Any]) -> torch.Tensor | None:
        """The cached state for `key`, or None (a missing or unreadable file is a miss)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self._path(key)
        try:
            state = load_file(path)["state"] if path.is_file() else None
        except (OSError, SafetensorError, KeyError):
            state = None
        self.hits += state is not None
        self.misses += state is None
        return state

    def put(self, key: Mapping[str, Any], state: torch.Tensor) -> None:
        """Store a state (written to a temporary file, then renamed: readers never see half a file)."""
        from safetensors.torch import save_file

        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
                temporary = Path(f.name)
            save_file(
                {"state": state.contiguous()}, temporary, metadata={"key": json.dumps(key, sort_keys=True)[:4000]}
            )
            temporary.replace(path)
        except OSError:
            pass  # a cache that cannot be written only costs time


def _base_identity(source: TensorSource) -> str | None:
    """What pins the base's weights and tokenizer: its commit, or a local directory's path, file sizes and times."""
    if source.revision is not None:
        return f"{source.label}@{source.revision}"
    directory = getattr(source, "directory", None)
    if directory is None:
        return None
    files = sorted({info.file for info in source.tensors().values()} | {"config.json", *tokenizer_files(source)})
    stats = []
    for name in files:
        try:
            stat = (Path(directory) / name).stat()
        except OSError:
            continue
        stats.append((name, stat.st_size, stat.st_mtime_ns))
    return json.dumps([str(Path(directory).resolve()), stats])


class _Base:
    """The base model's config and tokenizer files in a temporary directory, for transformers to read."""

    def __init__(self, source: TensorSource) -> None:
        self.source = source
        self._dir = tempfile.TemporaryDirectory(prefix="mergehub-base-")
        self.path = Path(self._dir.name)
        files = tokenizer_files(source)
        config = source.read_file("config.json")
        for name, data in {**files, **({"config.json": config} if config is not None else {})}.items():
            (self.path / name).write_bytes(data)
        self.has_tokenizer = bool(files)
        self._tokenizer: Any = None

    def tokenizer(self) -> Any:
        """The base's tokenizer, set up as mergekit-moe sets it: left padding with BOS (else EOS) as the pad token."""
        if self._tokenizer is None:
            if not self.has_tokenizer:
                raise GateError(
                    f"{self.source.label} has no tokenizer files; the gate mode needs them to tokenise the prompts.",
                    hint="Use a base with its tokenizer, or `gate_mode: random` / `uniform_random`.",
                )
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(self.path)
            except (ValueError, OSError, KeyError) as e:
                raise GateError(
                    f"transformers cannot load {self.source.label}'s tokenizer: {e}", hint="Check its tokenizer files."
                ) from e
            tokenizer.padding_side = "left"
            tokenizer.pad_token_id = tokenizer.bos_token_id
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._tokenizer = tokenizer
        return self._tokenizer

    def tokenize(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask` of a prompt list, padded on the left."""
        tokenizer = self.tokenizer()
        if len(prompts) > 1 and tokenizer.pad_token_id is None:
            raise GateError(
                f"{self.source.label}'s tokenizer has no BOS or EOS token to pad prompts with.",
                hint="Give each expert a single prompt, or use a base whose tokenizer has a BOS or EOS token.",
            )
        batch = tokenizer(
            [(tokenizer.bos_token or "") + p for p in prompts],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def close(self) -> None:
        self._dir.cleanup()


def _reduce_hidden(states: torch.Tensor, mode: str) -> torch.Tensor:
    """(layers, prompts, tokens, hidden) → (layers, hidden): the last token or all tokens, then prompts, averaged."""
    per_prompt = states.sum(dim=2) / states.shape[2] if mode == "hidden_avg" else states[:, :, -1, :]
    return per_prompt.sum(dim=1) / per_prompt.shape[1]


def _cheap_embedding(embedding: torch.Tensor, batch: Mapping[str, torch.Tensor], num_layers: int) -> torch.Tensor:
    """The prompts' summed token embeddings (padding masked), normalised, repeated for every layer."""
    ids = batch["input_ids"]
    if ids.numel() and int(ids.max()) >= embedding.shape[0]:
        raise GateError(
            f"The tokenizer gives token id {int(ids.max())}, beyond the base's {embedding.shape[0]} embedding rows.",
            hint="The base's tokenizer and embedding do not match; check the base model.",
        )
    tokens = embedding.float()[ids]  # the rows a one-hot product would pick, exactly
    summed = (tokens * batch["attention_mask"].unsqueeze(-1)).sum(dim=1).sum(dim=0, keepdim=True)
    return (summed / summed.norm(dim=-1, keepdim=True).clamp(min=1e-8)).repeat(num_layers, 1)


def _embedding_name(source: TensorSource) -> str:
    for name in ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight", "transformer.wte.weight"):
        if name in source.tensors():
            return name
    raise MissingTensorError(
        f"{source.label} has no input embedding (model.embed_tokens.weight) for `gate_mode: cheap_embed`.",
        hint="Use `gate_mode: hidden` or a random gate mode.",
    )


def _prompt_states(
    spec: GateSpec,
    lists: Sequence[tuple[str, ...]],
    base: _Base,
    *,
    device: torch.device,
    cache: PromptStateCache | None,
) -> dict[tuple[str, ...], torch.Tensor]:
    """Each distinct prompt list's (layers, hidden) state, from the cache where it holds it."""
    identity = _base_identity(base.source) if cache is not None else None
    keys = {
        prompts: {
            "format": _CACHE_FORMAT,
            "base": identity,
            "mode": spec.mode,
            "prompts": list(prompts),
            "device": device.type,
            "dtype": HIDDEN_DTYPE if spec.runs_base else "float32",
            "layers": spec.num_layers,
        }
        for prompts in dict.fromkeys(lists)
    }
    states: dict[tuple[str, ...], torch.Tensor] = {}
    if cache is not None and identity is not None:
        for prompts, key in keys.items():
            if (state := cache.get(key)) is not None:
                states[prompts] = state
    uncached = [prompts for prompts in keys if prompts not in states]
    if uncached:
        batches = [base.tokenize(prompts) for prompts in uncached]
        if spec.runs_base:
            from mergehub.moe.forward import hidden_states

            layer_states = hidden_states(
                base.source,
                base.path,
                batches,
                num_layers=spec.num_layers,
                dtype=getattr(torch, HIDDEN_DTYPE),
                device=device,
            )
            computed = [_reduce_hidden(s, spec.mode) for s in layer_states]
        else:
            embedding = base.source.read(_embedding_name(base.source))
            computed = [_cheap_embedding(embedding, batch, spec.num_layers) for batch in batches]
        for prompts, state in zip(uncached, computed):
            states[prompts] = state
            if cache is not None and identity is not None:
                cache.put(keys[prompts], state)
    return states


def compute_gates(
    spec: GateSpec, base: TensorSource, *, device: torch.device, cache: PromptStateCache | None = None
) -> torch.Tensor:
    """The router weights of every layer, (layers, gated experts, hidden): from the prompts, or drawn from the seed.

    Raises:
        GateError: the base's tokenizer or forward pass fails.
    """
    shape = (spec.num_layers, spec.gated, spec.hidden_size)
    generator = torch.Generator().manual_seed(spec.seed)
    if spec.mode == "random":
        return torch.randn(shape, generator=generator)
    if spec.mode == "uniform_random":
        scale = math.sqrt(1.0 / spec.hidden_size)
        return torch.rand(shape, generator=generator) * 2 * scale - scale
    helper = _Base(base)
    try:
        lists = [p.positive for p in spec.prompts] + [p.negative for p in spec.prompts if p.negative]
        states = _prompt_states(spec, lists, helper, device=device, cache=cache)
    finally:
        helper.close()
    vectors = []
    for prompts in spec.prompts:
        state = states[prompts.positive].clone()
        if prompts.negative:
            state -= states[prompts.negative]
        state /= state.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)
        vectors.append(state)
    return torch.stack(vectors, dim=0).permute(1, 0, 2)


class GateSource(MadeHere):
    """Computed router weights as a tensor source: `router.L` (routed experts) and `shared_router.L` per layer."""

    def __init__(self, vectors: torch.Tensor, routed: int, label: str = "router prompts") -> None:
        self.label = label
        self._tensors: dict[str, torch.Tensor] = {}
        for layer in range(vectors.shape[0]):
            self._tensors[router_name(layer)] = vectors[layer, :routed].contiguous()
            if vectors.shape[1] > routed:
                self._tensors[router_name(layer, shared=True)] = vectors[layer, routed:].contiguous()
        self._infos = _infos(self._tensors)

    @classmethod
    def planned(cls, spec: GateSpec, dtype: torch.dtype) -> GateSource:
        """A stand-in with the shapes and dtype the computed gates will have (zeros), for planning."""
        return cls(torch.zeros((spec.num_layers, spec.gated, spec.hidden_size), dtype=dtype), spec.routed)

    def tensors(self) -> Mapping[str, TensorInfo]:
        """Each layer's router rows."""
        return self._infos

    def config(self) -> dict:
        """No config: the gates are not a model."""
        return {}

    def read_file(self, filename: str) -> bytes | None:
        """No files."""
        return None

    def read(self, name: str) -> torch.Tensor:
        """One layer's router rows."""
        if name not in self._tensors:
            raise MissingTensorError(
                f"The computed gates have no {name!r}.", hint="This is a bug in mergehub; please report it."
            )
        return self._tensors[name]


def _infos(tensors: Mapping[str, torch.Tensor]) -> dict[str, TensorInfo]:
    infos, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        infos[name] = TensorInfo(
            name, dtype_code(tensor.dtype), tuple(tensor.shape), "(computed)", offset, offset + size
        )
        offset += size
    return infos
