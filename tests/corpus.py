"""Published mergekit recipes run through mergekit 0.1.5 and mergehub on tiny stand-in models, and compared.

Each file in tests/data/recipes/ is one recipe as published, its first line a comment with the source URL
(and optionally `# shape: vlm` for a vision-language recipe). A recipe is re-pointed: every model it names
becomes a tiny generated model with as many layers as its layer ranges need (the base model, or else the
first one named, is the "pretrained" model; the others are fine-tunes of it; a `model+adapter` reference
becomes that tiny model plus a LoRA adapter made for it by peft), and `dtype`/`out_dtype` become
float32 so that results compare to 1e-5. mergekit runs in-process through the function `mergekit-yaml`
calls; the tiny models are generated once per layer count and reused across recipes.

`python -m tests.corpus` prints, for every recipe, what each tool did and the warnings mergehub gave.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from tests.helpers import load_tensors, make_tokenizer

CORPUS = Path(__file__).parent / "data" / "recipes"
RANDOM_METHODS = frozenset({"dare_ties", "dare_linear", "della", "della_linear"})
VOCAB = [f"t{i}" for i in range(60)] + ["<unk>", "<s>", "</s>", "<pad>"]  # 64 tokens, one embedding row each
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, HEAD_DIM = 16, 32, 2, 1, 8
DEFAULT_LAYERS = 4
_SOURCE = re.compile(r"^#\s*(?:source:\s*)?(https?://\S+)")
_SPECIAL_SOURCES = ("union", "base")


@dataclass(frozen=True)
class Entry:
    """One corpus file: its text, where it was published, and the model shape it is re-pointed to."""

    path: Path
    text: str
    source: str
    shape: str = "llama"

    @property
    def name(self) -> str:
        return self.path.stem


def load_corpus() -> list[Entry]:
    """Every recipe under tests/data/recipes/, sorted by name."""
    entries = []
    for path in sorted(CORPUS.glob("*.yml")):
        text = path.read_text(encoding="utf-8")
        match = _SOURCE.match(text.splitlines()[0] if text else "")
        shape = re.search(r"^#\s*shape:\s*(\w+)", text, re.M)
        entries.append(Entry(path, text, match[1] if match else "", shape[1] if shape else "llama"))
    return entries


# -- re-pointing ---------------------------------------------------------------------------------------


def _references(data: dict) -> tuple[list[str], int]:
    """Every model the recipe names, base first, and the layer count its layer ranges need."""
    refs: list[str] = []
    layers = DEFAULT_LAYERS

    def add(value: Any) -> None:
        if (
            isinstance(value, str)
            and value.strip()
            and value.strip() not in _SPECIAL_SOURCES
            and value.strip() not in refs
        ):
            refs.append(value.strip())

    add(data.get("base_model"))
    blocks = [data] + [m for m in (data.get("modules") or {}).values() if isinstance(m, dict)]
    for block in blocks:
        for entry in block.get("models") or []:
            if isinstance(entry, dict):
                add(entry.get("model"))
        for out_slice in block.get("slices") or []:
            if not isinstance(out_slice, dict):
                continue
            add(out_slice.get("base_model"))
            for source in out_slice.get("sources") or []:
                if isinstance(source, dict):
                    add(source.get("model"))
                    ends = source.get("layer_range") or [0, 0]
                    layers = max(layers, int(ends[1]) if len(ends) > 1 and str(ends[1]).isdigit() else 0)
    add(data.get("tokenizer_source"))
    tokenizer = data.get("tokenizer")
    if isinstance(tokenizer, dict):
        add(tokenizer.get("source"))
        for token in (tokenizer.get("tokens") or {}).values():
            source = token.get("source") if isinstance(token, dict) else None
            add(source.get("model") if isinstance(source, dict) else source)
    return refs, layers


def _replace(node: Any, mapping: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _replace(v, mapping) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(v, mapping) for v in node]
    if isinstance(node, str) and node.strip() in mapping:
        return mapping[node.strip()]
    return node


def uses_lora(data: Any) -> bool:
    """Whether the recipe names a `model+adapter` reference."""
    refs, _ = _references(data) if isinstance(data, dict) else ([], 0)
    return any("+" in ref for ref in refs)


def repoint(data: dict, models: TinyModels, shape: str) -> dict:
    """The recipe with every model reference replaced by a tiny model, and dtypes set to float32."""
    refs, layers = _references(data)
    # a `model+adapter` is that model with an adapter
    plain = list(dict.fromkeys(ref.split("+")[0].strip() for ref in refs))
    adapters = list(dict.fromkeys(ref.partition("+")[2].strip() for ref in refs if "+" in ref))
    mapping = {}
    for ref in refs:
        model, _, adapter = ref.partition("+")
        index = plain.index(model.strip())
        path = str(models.get(shape, layers, index))
        mapping[ref] = (
            f"{path}+{models.adapter(shape, layers, index, adapters.index(adapter.strip()))}" if adapter else path
        )
    out = _replace(copy.deepcopy(data), mapping)
    for key in ("dtype", "out_dtype"):
        if key in out:
            out[key] = "float32"
    return out


# -- tiny models ---------------------------------------------------------------------------------------


class TinyModels:
    """Tiny models generated on demand and reused: index 0 of a layer count is the base, the others its fine-tunes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tokenizer = make_tokenizer(VOCAB, template="{% for m in messages %}{{ m['content'] }}{% endfor %}")

    def get(self, shape: str, layers: int, index: int) -> Path:
        directory = self.root / f"{shape}-{layers}" / f"m{index}"
        if not directory.is_dir():
            base = None if index == 0 else load_tensors(self.get(shape, layers, 0))
            tensors = self._tensors(shape, layers, seed=index) if base is None else self._finetune(base, seed=index)
            directory.mkdir(parents=True)
            save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
            (directory / "config.json").write_text(json.dumps(self._config(shape, layers), indent=1))
            for name, data in self.tokenizer.items():
                (directory / name).write_bytes(data)
        return directory

    def adapter(self, shape: str, layers: int, index: int, adapter: int = 0) -> Path:
        """LoRA adapter number `adapter` (made by peft) for model `index` of a layer count."""
        from tests.helpers import make_lora

        directory = self.root / f"{shape}-{layers}" / f"m{index}-lora{adapter}"
        if not directory.is_dir():
            targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
            make_lora(
                self.get(shape, layers, index),
                directory,
                seed=100 + 10 * index + adapter,
                r=4,
                lora_alpha=8,
                target_modules=targets,
            )
        return directory

    @staticmethod
    def _finetune(base: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return {name: t + 0.05 * t.abs().mean() * torch.randn(t.shape, generator=generator) for name, t in base.items()}

    @staticmethod
    def _text_layers(prefix: str, layers: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        shapes = {
            "input_layernorm.weight": (HIDDEN,),
            "post_attention_layernorm.weight": (HIDDEN,),
            "self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
            "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            "self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
            "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN),
            "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
            "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
        }
        tensors = {f"{prefix}model.embed_tokens.weight": torch.randn(len(VOCAB), HIDDEN, generator=generator) * 0.1}
        for i in range(layers):
            for name, shape in shapes.items():
                norm = name.endswith("layernorm.weight")
                tensors[f"{prefix}model.layers.{i}.{name}"] = (
                    (1 + 0.1 * torch.randn(shape, generator=generator))
                    if norm
                    else (torch.randn(shape, generator=generator) * 0.1)
                )
        tensors[f"{prefix}model.norm.weight"] = 1 + 0.1 * torch.randn(HIDDEN, generator=generator)
        tensors[f"{prefix}lm_head.weight"] = torch.randn(len(VOCAB), HIDDEN, generator=generator) * 0.1
        return tensors

    def _tensors(self, shape: str, layers: int, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(1000 + layers)
        if shape == "llama":
            return self._text_layers("", layers, generator)
        tensors = self._text_layers("language_model.", layers, generator)  # a Mistral 3 (Pixtral tower)
        vision = {
            "attention_norm.weight": (HIDDEN,),
            "ffn_norm.weight": (HIDDEN,),
            "attention.q_proj.weight": (HIDDEN, HIDDEN),
            "attention.k_proj.weight": (HIDDEN, HIDDEN),
            "attention.v_proj.weight": (HIDDEN, HIDDEN),
            "attention.o_proj.weight": (HIDDEN, HIDDEN),
            "feed_forward.gate_proj.weight": (INTERMEDIATE, HIDDEN),
            "feed_forward.up_proj.weight": (INTERMEDIATE, HIDDEN),
            "feed_forward.down_proj.weight": (HIDDEN, INTERMEDIATE),
        }
        for i in range(VISION_LAYERS):
            for name, dims in vision.items():
                tensors[f"vision_tower.transformer.layers.{i}.{name}"] = torch.randn(dims, generator=generator) * 0.1
        tensors["vision_tower.patch_conv.weight"] = torch.randn(HIDDEN, 3, 14, 14, generator=generator) * 0.1
        tensors["vision_tower.ln_pre.weight"] = 1 + 0.1 * torch.randn(HIDDEN, generator=generator)
        for name, dims in {
            "linear_1.weight": (HIDDEN, HIDDEN),
            "linear_2.weight": (HIDDEN, HIDDEN),
            "norm.weight": (HIDDEN,),
            "patch_merger.merging_layer.weight": (HIDDEN, HIDDEN),
        }.items():
            tensors[f"multi_modal_projector.{name}"] = torch.randn(dims, generator=generator) * 0.1
        return tensors

    @staticmethod
    def _config(shape: str, layers: int) -> dict:
        text = {
            "vocab_size": len(VOCAB),
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": layers,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS,
            "head_dim": HEAD_DIM,
            "max_position_embeddings": 128,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "bos_token_id": 61,
            "eos_token_id": 62,
            "pad_token_id": 63,
        }
        if shape == "llama":
            return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32", **text}
        return {
            "architectures": ["Mistral3ForConditionalGeneration"],
            "model_type": "mistral3",
            "torch_dtype": "float32",
            "text_config": {"model_type": "mistral", **text},
            "vision_config": {
                "model_type": "pixtral",
                "hidden_size": HIDDEN,
                "intermediate_size": INTERMEDIATE,
                "num_hidden_layers": VISION_LAYERS,
                "num_attention_heads": HEADS,
                "head_dim": HEAD_DIM,
                "image_size": 28,
                "patch_size": 14,
            },
            "spatial_merge_size": 1,
            "image_token_index": 10,
            "multimodal_projector_bias": False,
            "tie_word_embeddings": False,
        }


VISION_LAYERS = 2


# -- running both tools --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one tool did with a re-pointed recipe: the merged tensors, or why it refused."""

    tensors: dict[str, torch.Tensor] | None
    error: str = ""
    warnings: tuple[str, ...] = field(default=())

    @property
    def accepted(self) -> bool:
        return self.tensors is not None


def run_mergekit(recipe: Path, out: Path) -> Outcome:
    """mergekit 0.1.5 in-process, as `mergekit-yaml recipe out --lora-merge-cache DIR` runs it."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    text = recipe.read_text(encoding="utf-8")
    try:
        config = MergeConfiguration.model_validate(yaml.safe_load(text))
        options = MergeOptions(
            random_seed=0, quiet=True, write_model_card=False, lora_merge_cache=str(out.parent / "lora-cache")
        )
        run_merge(config, str(out), options=options, config_source=text)
    except Exception as e:  # noqa: BLE001 - any refusal, of any type, is recorded
        return Outcome(None, f"{type(e).__name__}: {e}".splitlines()[0])
    return Outcome(load_tensors(out))


def run_mergehub(recipe: Path, out: Path) -> Outcome:
    """mergehub's `run_merge`; a `MergehubError` is a refusal, anything else propagates (a traceback is a bug)."""
    from mergehub import MergehubError, run_merge

    try:
        result = run_merge(recipe, out, seed=0)
    except MergehubError as e:
        return Outcome(None, str(e))
    return Outcome(load_tensors(out), warnings=tuple(str(w) for w in result.plan.warnings))


def assert_mergekit_yaml_agrees(recipe: Path, work: Path, *flags: str) -> None:
    """The `mergekit-yaml` command (a subprocess, not run_mergekit's in-process call) and mergehub merge `recipe` into
    the same tensors (1e-5); skips the test when the command is not installed."""
    import shutil
    import subprocess

    import pytest

    command = Path(sys.executable).parent / "mergekit-yaml"
    if not command.is_file() and shutil.which("mergekit-yaml") is None:
        pytest.skip("mergekit-yaml is not installed")
    subprocess.run(
        [str(command if command.is_file() else "mergekit-yaml"), str(recipe), str(work / "mergekit"), *flags],
        check=True,
        capture_output=True,
        timeout=300,
    )
    ours, theirs = run_mergehub(recipe, work / "mergehub"), load_tensors(work / "mergekit")
    assert ours.tensors is not None and set(ours.tensors) == set(theirs), ours.error
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours.tensors[name], tensor, rtol=0, atol=1e-5, msg=name)


def kept_fraction(tensors: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> float:
    """The fraction of elements that differ from the base model's: what a random method kept of the task vectors."""
    changed = total = 0
    for name, tensor in tensors.items():
        if name in base and base[name].shape == tensor.shape:
            changed += int((tensor.float() - base[name].float()).abs().gt(1e-7).sum())
            total += tensor.numel()
    return changed / max(total, 1)


def compare(method: str, mergekit: Outcome, mergehub: Outcome, base: dict[str, torch.Tensor]) -> list[str]:
    """Differences between two accepted merges: names and shapes always, values for deterministic methods."""
    assert mergekit.tensors is not None and mergehub.tensors is not None
    problems = []
    if set(mergekit.tensors) != set(mergehub.tensors):
        only_k = sorted(set(mergekit.tensors) - set(mergehub.tensors))[:5]
        only_h = sorted(set(mergehub.tensors) - set(mergekit.tensors))[:5]
        problems.append(f"tensor names differ: only mergekit {only_k}, only mergehub {only_h}")
    for name in sorted(set(mergekit.tensors) & set(mergehub.tensors)):
        a, b = mergekit.tensors[name], mergehub.tensors[name]
        if a.shape != b.shape:
            problems.append(f"{name}: shape {list(a.shape)} vs {list(b.shape)}")
        elif method not in RANDOM_METHODS and a.is_floating_point():
            diff = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
            if diff > 1e-5:
                problems.append(f"{name}: max |difference| {diff:.3g}")
    if method in RANDOM_METHODS:
        k, h = kept_fraction(mergekit.tensors, base), kept_fraction(mergehub.tensors, base)
        if abs(k - h) > 0.05:
            problems.append(f"kept fraction {k:.3f} (mergekit) vs {h:.3f} (mergehub)")
    return problems


@dataclass
class Result:
    """Both tools' outcomes for one corpus entry, or why it was not run."""

    entry: Entry
    method: str = ""
    skipped: str = ""
    mergekit: Outcome | None = None
    mergehub: Outcome | None = None
    problems: list[str] = field(default_factory=list)


def run_entry(entry: Entry, models: TinyModels, work: Path) -> Result:
    """Re-point one recipe, run it through both tools, and compare."""
    try:
        data = yaml.safe_load(entry.text)
    except yaml.YAMLError:
        data = None
    result = Result(entry, method=str(data.get("merge_method", "")) if isinstance(data, dict) else "")
    work.mkdir(parents=True, exist_ok=True)
    recipe = work / "recipe.yml"
    if isinstance(data, dict):
        recipe.write_text(yaml.safe_dump(repoint(data, models, entry.shape), sort_keys=False), encoding="utf-8")
    else:
        recipe.write_text(entry.text, encoding="utf-8")  # not a mapping, or not YAML: both must refuse it as written
    result.mergekit = run_mergekit(recipe, work / "mergekit")
    result.mergehub = run_mergehub(recipe, work / "mergehub")
    if result.mergekit.accepted and not result.mergehub.accepted:
        result.problems.append(f"mergekit merges it, mergehub refuses: {result.mergehub.error}")
    elif result.mergehub.accepted and not result.mergekit.accepted:
        result.problems.append(f"mergekit refuses it ({result.mergekit.error}), mergehub merges it")
    elif result.mergekit.accepted:
        base = load_tensors(models.get(entry.shape, _references(data)[1], 0))
        result.problems += compare(result.method, result.mergekit, result.mergehub, base)
    return result


_WARNING_KINDS = [
    (r"is not a \w+ parameter", "a parameter the method does not take"),
    (r"is not a (recipe key|key of)", "a key outside the schema"),
    (r"not used for the base model", "a per-model parameter on the base model"),
    (r"one value for all models", "a shared parameter set per model"),
    (r"residual_weight", "residual_weight (no effect in mergekit)"),
    (r"is not listed: its", "a module left out of `modules:`"),
    (r"copied unmerged", "`slices:` on a model with several modules"),
]


def _numbers_as_text(node: Any) -> bool:
    """Whether a recipe writes a number as text (`1e-5`, which YAML 1.1 reads as a string)."""
    if isinstance(node, dict):
        return any(
            _numbers_as_text(v) for k, v in node.items() if k not in ("model", "base_model", "merge_method", "name")
        )
    if isinstance(node, list):
        return any(_numbers_as_text(v) for v in node)
    return isinstance(node, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", node.strip()) is not None


def main() -> int:
    """Run the whole corpus and print one line per recipe, then the totals and the warnings seen."""
    import tempfile

    entries = load_corpus()
    counts: dict[str, int] = {}
    warnings: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = TinyModels(Path(tmp) / "models")
        for i, entry in enumerate(entries):
            r = run_entry(entry, models, Path(tmp) / f"run{i}")
            if r.skipped:
                state = "skipped"
            else:
                assert r.mergekit is not None and r.mergehub is not None
                state = (
                    f"mergekit {'merges' if r.mergekit.accepted else 'refuses'}, mergehub "
                    f"{'merges' if r.mergehub.accepted else 'refuses'}"
                )
                for w in r.mergehub.warnings:
                    kind = next((k for pattern, k in _WARNING_KINDS if re.search(pattern, w)), w)
                    warnings[kind] = warnings.get(kind, 0) + 1
                if r.mergehub.accepted and _numbers_as_text(yaml.safe_load(entry.text)):
                    counts["with numbers written as text"] = counts.get("with numbers written as text", 0) + 1
            counts[state] = counts.get(state, 0) + 1
            print(f"{entry.name:60} {r.method:16} {state}{'  PROBLEM: ' + '; '.join(r.problems) if r.problems else ''}")
            if r.mergehub and not r.mergehub.accepted:
                print(f"{'':60}   mergehub: {r.mergehub.error.splitlines()[0]}")
            if r.mergekit and not r.mergekit.accepted:
                print(f"{'':60}   mergekit: {r.mergekit.error[:160]}")
    print(f"\n{len(entries)} recipes: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    print("Warnings seen (kind: count):")
    for kind, n in sorted(warnings.items(), key=lambda kv: -kv[1]):
        print(f"  {n:3}  {kind}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
