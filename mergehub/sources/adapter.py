"""A model with a LoRA adapter applied as its tensors stream: peft's `merge_and_unload`, one tensor at a time.

A `model+adapter` reference opens two sources, the model and the adapter's repo (both local or on the Hub,
both pinned), and `AdapterSource` presents the model's tensors with the adapter merged in:

    W' = W + scaling · B·A      (Bᵀ·Aᵀ when `fan_in_fan_out`; (B·A)ᵀ for an embedding's lora_embedding_A/B)

computed in float32 and cast to the dtype transformers loads the model in (its config's `dtype`, else each
tensor's stored dtype), as peft merges into the loaded model before mergekit saves it. `scaling` is
`lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`, with `r` and `lora_alpha` taken per module from
`rank_pattern` and `alpha_pattern` by peft's rule (the first key `k` with `(.*\\.)?(k)$` matching the module
name). Tensors saved whole (`modules_to_save`, an embedding's `base_layer`) replace the model's; `lora_bias`
adds `scaling · lora_B.bias` to the bias. Only the adapter's config and header are read to plan: every key is
matched to a tensor of the model and every shape checked, so a wrong adapter fails at `--dry-run`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from mergehub.errors import AdapterError, SourceError, excerpt
from mergehub.sources.base import ADAPTER_CONFIG, DTYPES, TensorInfo, TensorSource, parse_json

__all__ = [
    "ADAPTER_FILE_PREFIX",
    "AdapterSource",
    "LoraDelta",
    "LoraSettings",
    "TensorPatch",
    "match_adapter",
    "apply_patch",
    "parse_adapter_config",
    "pattern_value",
    "load_dtype",
]

ADAPTER_FILE_PREFIX = "adapter:"
"""How an `AdapterSource` names the adapter's files among the model's (in `checksums`, `files_read`, `verify`)."""
_PREFIX = "base_model.model."
_MAX_PROBLEMS = 20
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
"""`init_lora_weights` values that set only A and B, which the saved weights then replace."""
_VARIANTS = {
    "use_dora": "DoRA (`use_dora`)",
    "use_qalora": "QALoRA (`use_qalora`)",
    "use_bdlora": "block-diagonal LoRA (`use_bdlora`)",
    "velora_config": "VeLoRA (`velora_config`)",
    "monteclora_config": "MonteCLoRA (`monteclora_config`)",
    "arrow_config": "Arrow (`arrow_config`)",
    "kasa_config": "KaSA (`kasa_config`)",
    "alora_invocation_tokens": "activated LoRA (`alora_invocation_tokens`)",
    "layer_replication": "`layer_replication`",
    "target_parameters": "LoRA on parameters (`target_parameters`)",
    "trainable_token_indices": "trainable tokens (`trainable_token_indices`)",
}
"""adapter_config.json options that change what merging means (peft's LoRA variants and model surgery)."""
_FLOAT_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
_LORA_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_A|lora_B)\.(?P<param>weight|bias)")
_EMBEDDING_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_embedding_A|lora_embedding_B)")
_BASE_LAYER_KEY = re.compile(r"(?P<module>.+)\.base_layer\.(?P<param>weight|bias)")


@dataclass(frozen=True)
class LoraSettings:
    """What of a PEFT LoRA adapter's `adapter_config.json` decides how it merges."""

    r: int
    lora_alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    rank_pattern: Mapping[str, int] = field(default_factory=dict)
    alpha_pattern: Mapping[str, float] = field(default_factory=dict)
    target_modules: tuple[str, ...] | str | None = None
    base_model: str | None = None

    def rank(self, module: str) -> int:
        """The rank peft gives `module` (`rank_pattern`, else `r`)."""
        return pattern_value(self.rank_pattern, module, self.r)

    def scaling(self, module: str) -> float:
        """The factor peft multiplies B·A by for `module`: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        rank, alpha = self.rank(module), pattern_value(self.alpha_pattern, module, self.lora_alpha)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


def pattern_value(patterns: Mapping[str, Any], module: str, default: Any) -> Any:
    """The value of the first pattern key matching `module` as peft matches it (`(.*\\.)?(key)$`), else `default`."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _number(data: Mapping[str, Any], key: str, label: str, kind: type = float) -> Any:
    value = data.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value <= 0
        or (kind is int and value != int(value))
    ):
        raise AdapterError(
            f"{label}: {ADAPTER_CONFIG} gives `{key}` = {excerpt(value)}, not a positive number.",
            hint="Check the adapter's config.",
        )
    return kind(value)


def _patterns(data: Mapping[str, Any], key: str, label: str, kind: type) -> dict[str, Any]:
    patterns = data.get(key) or {}
    if not isinstance(patterns, dict):
        raise AdapterError(
            f"{label}: `{key}` in {ADAPTER_CONFIG} is not a mapping.", hint="Check the adapter's config."
        )
    return {str(k): _number(patterns, k, f"{label} ({key})", kind) for k in patterns}


def parse_adapter_config(raw: bytes, label: str) -> LoraSettings:
    """Read a PEFT adapter's `adapter_config.json`, refusing what is not a plain LoRA peft merges as W + scaling·B·A.

    Raises:
        SourceError: the file is not a JSON object.
        AdapterError: another PEFT method (LoHa, LoKr, IA3...), a LoRA variant (DoRA...), an initialisation that
            rewrites the model's weights when peft loads it (PiSSA, OLoRA...), or malformed values.
    """
    data = parse_json(raw, ADAPTER_CONFIG, label)
    if not isinstance(data, dict):
        raise SourceError(f"{label}: {ADAPTER_CONFIG} is not a JSON object.", hint="Check the adapter's config.")
    kind = data.get("peft_type")
    if kind != "LORA":
        raise AdapterError(
            f"{label} is a {excerpt(kind)} adapter; mergehub applies LoRA adapters only (peft_type LORA).",
            hint="Merge it with peft (`merge_and_unload`) and reference the merged model instead.",
        )
    variants = [name for key, name in _VARIANTS.items() if data.get(key)]
    if variants:
        raise AdapterError(
            f"{label} uses {', '.join(variants)}, which merges differently from plain LoRA; mergehub does not "
            "apply it.",
            hint="Merge it with peft (`merge_and_unload`) and reference the merged model instead.",
        )
    init = data.get("init_lora_weights", True)
    if init not in _PLAIN_INITS:
        raise AdapterError(
            f"{label} was initialised with init_lora_weights={excerpt(init)}, which rewrites the model's weights "
            "when peft loads it; mergehub does not apply such adapters.",
            hint="Save it as a plain LoRA (peft's `path_initial_model_for_weight_conversion`), or merge it with peft.",
        )
    targets = data.get("target_modules")
    if isinstance(targets, list):
        targets = tuple(str(t) for t in targets)
    elif targets is not None and not isinstance(targets, str):
        raise AdapterError(f"{label}: `target_modules` is {excerpt(targets)}.", hint="Check the adapter's config.")
    base = data.get("base_model_name_or_path")
    return LoraSettings(
        r=_number(data, "r", label, int),
        lora_alpha=_number(data, "lora_alpha", label),
        use_rslora=bool(data.get("use_rslora")),
        fan_in_fan_out=bool(data.get("fan_in_fan_out")),
        rank_pattern=_patterns(data, "rank_pattern", label, int),
        alpha_pattern=_patterns(data, "alpha_pattern", label, float),
        target_modules=targets,
        base_model=base if isinstance(base, str) else None,
    )


@dataclass(frozen=True)
class LoraDelta:
    """scaling · B·A (transposed when `transpose`) added to a weight, or scaling · B's bias to a bias (`a` None)."""

    a: str | None
    b: str
    scaling: float
    transpose: bool = False


@dataclass(frozen=True)
class TensorPatch:
    """What an adapter does to one tensor of the model: replace it whole, add a LoRA delta, or both (in that order)."""

    replacement: str | None = None
    delta: LoraDelta | None = None

    @property
    def adapter_tensors(self) -> tuple[str, ...]:
        """The adapter's tensors this patch reads."""
        names = [self.replacement] if self.replacement else []
        if self.delta is not None:
            names += [n for n in (self.delta.a, self.delta.b) if n]
        return tuple(names)


def _module_names(tensors: Iterable[str]) -> set[str]:
    return {name.rsplit(".", 1)[0] for name in tensors if "." in name}


def _targets_something(targets: tuple[str, ...] | str | None, modules: set[str]) -> bool:
    """Whether peft would find any of `target_modules` among the model's modules (else peft refuses the adapter)."""
    if targets is None or targets == "all-linear":
        return True
    if isinstance(targets, str):
        return any(re.fullmatch(targets, m) for m in modules)
    return any(m in targets or any(m.endswith(f".{t}") for t in targets) for m in modules)


def match_adapter(
    settings: LoraSettings,
    adapter: Mapping[str, TensorInfo],
    model: Mapping[str, TensorInfo],
    label: str,
    model_label: str,
) -> dict[str, TensorPatch]:
    """Match every tensor of an adapter to the model tensor it changes, and check the shapes; headers only.

    Returns:
        The patch of each model tensor the adapter changes, by tensor name.

    Raises:
        AdapterError: a key names a module the model lacks, is not a LoRA weight, or a shape differs from what peft
            would load (`r` from `rank_pattern`, the model's weight shape, `fan_in_fan_out`).
    """
    problems: list[str] = []
    replacements: dict[str, str] = {}
    lora: dict[tuple[str, str], dict[str, TensorInfo]] = {}
    for key, info in adapter.items():
        name = key.removeprefix(_PREFIX).replace(".modules_to_save.", ".")
        if not key.startswith(_PREFIX):
            problems.append(f"{excerpt(key)} is not a LoRA weight of a transformers model (`{_PREFIX}...`).")
        elif match := _LORA_KEY.fullmatch(name):
            part = match["part"][-1] + ("_bias" if match["param"] == "bias" else "")
            lora.setdefault((match["module"], "linear"), {})[part] = info
        elif match := _EMBEDDING_KEY.fullmatch(name):
            lora.setdefault((match["module"], "embedding"), {})[match["part"][-1]] = info
        elif match := _BASE_LAYER_KEY.fullmatch(name):
            replacements[f"{match['module']}.{match['param']}"] = key
        elif "lora_magnitude_vector" in name:
            problems.append(f"{excerpt(key)} is a DoRA magnitude; mergehub applies plain LoRA only.")
        elif name in model:
            replacements[name] = key
        else:
            problems.append(f"{excerpt(key)} changes {excerpt(name)}, which {model_label} lacks.")
    patches: dict[str, TensorPatch] = {}
    for name, key in replacements.items():
        if name not in model:
            problems.append(f"{excerpt(key)} replaces {excerpt(name)}, which {model_label} lacks.")
        elif adapter[key].shape != model[name].shape:
            problems.append(
                f"{excerpt(key)} is {list(adapter[key].shape)}, but {name} of {model_label} is "
                f"{list(model[name].shape)}."
            )
        else:
            patches[name] = TensorPatch(replacement=key)
    for (module, kind), parts in sorted(lora.items()):
        problem = _check_lora(settings, module, kind, parts, model, model_label)
        if problem:
            problems.append(problem)
            continue
        rank_a, rank_b = parts["A"], parts["B"]
        weight = f"{module}.weight"
        transpose = kind == "embedding" or settings.fan_in_fan_out
        scaling = settings.scaling(module)
        patches[weight] = replace(
            patches.get(weight, TensorPatch()), delta=LoraDelta(rank_a.name, rank_b.name, scaling, transpose)
        )
        if "B_bias" in parts:
            bias = f"{module}.bias"
            patches[bias] = replace(
                patches.get(bias, TensorPatch()), delta=LoraDelta(None, parts["B_bias"].name, scaling)
            )
    if not problems and not _targets_something(settings.target_modules, _module_names(model)):
        problems.append(
            f"none of its target_modules ({excerpt(settings.target_modules)}) is a module of {model_label}."
        )
    if problems:
        shown = problems[:_MAX_PROBLEMS] + (
            [f"... and {len(problems) - _MAX_PROBLEMS} more"] if len(problems) > _MAX_PROBLEMS else []
        )
        raise AdapterError(
            f"The adapter {label} does not fit {model_label} ({len(problems)} problem(s)):\n  " + "\n  ".join(shown),
            hint="Check that the adapter was trained on this model (its adapter_config.json names "
            f"{settings.base_model or 'no base model'}).",
        )
    return patches


def _check_lora(
    settings: LoraSettings,
    module: str,
    kind: str,
    parts: Mapping[str, TensorInfo],
    model: Mapping[str, TensorInfo],
    model_label: str,
) -> str:
    """Why one module's LoRA weights do not fit the model, or ""."""
    weight = model.get(f"{module}.weight")
    if weight is None:
        return f"the adapter changes {excerpt(module)}, which {model_label} lacks."
    if "A" not in parts or "B" not in parts:
        return f"{module}: the adapter holds only lora_{'A' if 'A' in parts else 'B'}."
    a, b = parts["A"].shape, parts["B"].shape
    if len(a) != 2 or len(b) != 2 or len(weight.shape) != 2:
        return f"{module}: LoRA on a {len(weight.shape)}-D weight (a convolution?) is not applied by mergehub."
    rank = settings.rank(module)
    if kind == "embedding":
        expected_a, expected_b = (rank, weight.shape[0]), (weight.shape[1], rank)
    else:
        out_features, in_features = weight.shape[::-1] if settings.fan_in_fan_out else weight.shape
        expected_a, expected_b = (rank, in_features), (out_features, rank)
    if (a, b) != (expected_a, expected_b):
        return (
            f"{module}: A is {list(a)} and B is {list(b)}, but for {list(weight.shape)} with rank {rank} "
            f"peft expects {list(expected_a)} and {list(expected_b)}."
        )
    if "B_bias" in parts and (f"{module}.bias" not in model or parts["B_bias"].shape != model[f"{module}.bias"].shape):
        return f"{module}: the adapter has a lora_B bias, but {model_label} has no bias of that shape there."
    return ""


def load_dtype(config: Mapping[str, Any]) -> str | None:
    """The dtype code transformers loads a model in (`dtype="auto"`): its config's `dtype`, else None (as stored)."""
    value = config.get("dtype") or config.get("torch_dtype")
    return _FLOAT_NAMES.get(value.removeprefix("torch.")) if isinstance(value, str) else None


def apply_patch(
    weight: torch.Tensor | None, patch: TensorPatch, parts: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> torch.Tensor:
    """One merged tensor as peft's merge makes it: the replacement or the weight in `dtype`, plus the float32 delta."""
    merged = parts[patch.replacement] if patch.replacement else weight
    assert merged is not None
    merged = merged.to(dtype)
    delta = patch.delta
    if delta is None:
        return merged
    b = parts[delta.b].float()
    update = b if delta.a is None else b @ parts[delta.a].float()
    if delta.transpose:
        update = update.T
    return (merged.float() + update * delta.scaling).to(dtype)


class AdapterSource:
    """A model source whose tensors are read with a LoRA adapter merged in (see the module docstring).

    `model` and `adapter` are the two opened sources (the adapter's opened with `adapter=True`); the merged model
    keeps the model's config, tokenizer and files, and is pinned to both commits.
    """

    def __init__(self, model: TensorSource, adapter: TensorSource, label: str) -> None:
        self.model = model
        self.adapter = adapter
        self.label = label
        self.revision = model.revision
        self.gated = model.gated or adapter.gated
        self._settings: LoraSettings | None = None
        self._patches: dict[str, TensorPatch] | None = None
        self._tensors: dict[str, TensorInfo] | None = None
        self._dtype: str | None = None

    @property
    def settings(self) -> LoraSettings:
        """The adapter's settings, from its adapter_config.json."""
        if self._settings is None:
            raw = self.adapter.read_file(ADAPTER_CONFIG)
            if raw is None:
                raise SourceError(
                    f"{self.adapter.label} has no {ADAPTER_CONFIG}, so it is not a PEFT adapter.",
                    hint="A LoRA reference is `model+adapter`, the adapter a directory or Hub repo saved by peft.",
                )
            self._settings = parse_adapter_config(raw, self.adapter.label)
        return self._settings

    def patches(self) -> Mapping[str, TensorPatch]:
        """What the adapter does to each tensor it changes, checked against the model's headers."""
        if self._patches is None:
            settings = self.settings
            self._patches = match_adapter(
                settings, self.adapter.tensors(), self.model.tensors(), self.adapter.label, self.model.label
            )
        return self._patches

    def tensors(self) -> Mapping[str, TensorInfo]:
        """The model's tensors, floating ones in the dtype transformers would load them in."""
        if self._tensors is None:
            self.patches()
            self._dtype = load_dtype(self.model.config())
            self._tensors = {
                name: replace(info, dtype=self._dtype) if self._dtype and DTYPES[info.dtype].is_floating_point else info
                for name, info in self.model.tensors().items()
            }
        return self._tensors

    def config(self) -> dict:
        """The model's config.json."""
        return self.model.config()

    def read_file(self, filename: str) -> bytes | None:
        """A small file of the model's repo (tokenizer, generation config, README)."""
        return self.model.read_file(filename)

    def read(self, name: str) -> torch.Tensor:
        """One tensor of the model with the adapter merged in."""
        return self.read_many([name])[name]

    def read_many(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Several tensors: the model's and the adapter's parts they need are each read in one `read_many`."""
        names = list(names)
        infos, patches = self.tensors(), self.patches()
        replaced = {n for n in names if n in patches and patches[n].replacement}
        weights = self.model.read_many([n for n in names if n not in replaced])
        parts = self.adapter.read_many(
            dict.fromkeys(p for n in names if n in patches for p in patches[n].adapter_tensors)
        )
        result = {}
        for name in names:
            dtype = infos[name].torch_dtype
            patch = patches.get(name)
            result[name] = apply_patch(weights.get(name), patch, parts, dtype) if patch else weights[name].to(dtype)
        return result

    @property
    def checksums(self) -> dict[str, str]:
        """The model's verifiable weight files, and the adapter's (prefixed `adapter:`)."""
        return {**self.model.checksums, **{ADAPTER_FILE_PREFIX + f: sha for f, sha in self.adapter.checksums.items()}}

    def files_read(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        """The model's shards and the adapter's file that reading these tensors touches."""
        names = list(names)
        patches = self.patches()
        replaced = [n for n in names if n in patches and patches[n].replacement]
        used = self.model.files_read(n for n in names if n not in replaced)
        parts = {p for n in names if n in patches for p in patches[n].adapter_tensors}
        return {**used, **{ADAPTER_FILE_PREFIX + f: count for f, count in self.adapter.files_read(parts).items()}}

    def verify(self, files: Iterable[str]) -> None:
        """Hash these files as they stream: the model's, and the adapter's (`adapter:` names)."""
        files = list(files)
        self.model.verify(f for f in files if not f.startswith(ADAPTER_FILE_PREFIX))
        self.adapter.verify(f.removeprefix(ADAPTER_FILE_PREFIX) for f in files if f.startswith(ADAPTER_FILE_PREFIX))

    def verified_files(self) -> list[str]:
        """The files verified so far, the adapter's prefixed `adapter:`."""
        return self.model.verified_files() + [ADAPTER_FILE_PREFIX + f for f in self.adapter.verified_files()]

    def close(self) -> None:
        """Close both sources."""
        try:
            self.model.close()
        finally:
            self.adapter.close()
