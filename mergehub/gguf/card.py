"""The model card of a GGUF repo: the quantized model it comes from, its files, how to run them, and the lineage."""

from __future__ import annotations

from dataclasses import dataclass, replace

from huggingface_hub import ModelCard, ModelCardData

from mergehub.gguf.export import GGUFFile
from mergehub.publish.card import HUB_URL, _fence
from mergehub.publish.card_data import card_license, mergehub_record, read_card_data
from mergehub.publish.lineage import LineageEdge, LineageGraph, LineageNode
from mergehub.units import format_size

__all__ = ["GGUFCard", "gguf_card", "quantized_lineage", "render_gguf_card", "GGUF_TAGS"]

GGUF_TAGS = ("gguf", "llama.cpp", "mergehub")


@dataclass(frozen=True)
class GGUFCard:
    """Everything the card of a GGUF repo shows."""

    repo_id: str
    source: str
    source_on_hub: bool
    architecture: str
    files: tuple[GGUFFile, ...]
    command: str
    license: str | None = None
    license_name: str | None = None
    method: str | None = None
    lineage: LineageGraph | None = None


def quantized_lineage(repo_id: str, source: LineageGraph) -> LineageGraph:
    """The source model's lineage with the GGUF repo on top, as its quantized child."""
    nodes = tuple(replace(n, depth=n.depth + 1) for n in source.nodes)
    return LineageGraph(
        repo_id, (LineageNode(repo_id, 0), *nodes), (LineageEdge(repo_id, source.root, "quantized"), *source.edges)
    )


def gguf_card(
    repo_id: str,
    source: str,
    *,
    source_on_hub: bool,
    source_readme: str | bytes | None,
    architecture: str,
    files: tuple[GGUFFile, ...],
    command: str,
    lineage: LineageGraph | None,
) -> GGUFCard:
    """The card data of a GGUF repo made from `source`; license and merge method come from the source's card."""
    data = read_card_data(source_readme)
    license_id = data.license if data and isinstance(data.license, str) else None
    method = mergehub_record(data).get("method")
    method = method if isinstance(method, str) else None
    name = data.license_name if data and isinstance(data.license_name, str) else None
    if data and license_id is None and card_license(data):
        license_id = card_license(data)
    return GGUFCard(
        repo_id,
        source,
        source_on_hub,
        architecture,
        files,
        command,
        license_id,
        name,
        method,
        quantized_lineage(repo_id, lineage) if lineage else None,
    )


def _body(card: GGUFCard) -> str:
    name = card.repo_id.split("/")[-1]
    source = f"[{card.source}]({HUB_URL}/{card.source})" if card.source_on_hub else f"`{card.source}`"
    what = f"a {card.method} merge" if card.method else "a model"
    lines = [
        f"# {name}",
        "",
        f"GGUF files of {source} ({what}, {card.architecture} architecture) for llama.cpp, "
        "Ollama and LM Studio, written by mergehub from the model's tensors as they were produced.",
        "",
    ]
    lines += ["## Files", "", "| File | Type | Size | sha256 |", "|---|---|---|---|"]
    lines += [
        f"| [{f.filename}]({HUB_URL}/{card.repo_id}/blob/main/{f.filename}) | {f.file_type} | "
        f"{format_size(f.size)} | `{f.sha256}` |"
        for f in card.files
    ]
    default = next((f for f in card.files if f.file_type == "Q8_0"), card.files[0])
    lines += [
        "",
        "## Run",
        "",
        "llama.cpp:",
        "",
        _fence(f"llama-cli -hf {card.repo_id}:{default.file_type}", "bash"),
        "",
        "Ollama:",
        "",
        _fence(f"ollama run hf.co/{card.repo_id}:{default.file_type}", "bash"),
        "",
        "Any other file: replace the type after the colon.",
    ]
    if card.lineage is not None:
        lines += [
            "",
            "## Lineage",
            "",
            f"{name} is the quantized form of {source}.",
            "",
            _fence(card.lineage.to_mermaid(), "mermaid"),
        ]
    lines += ["", "## How it was made", "", _fence(card.command, "bash"), ""]
    return "\n".join(lines)


def render_gguf_card(card: GGUFCard) -> ModelCard:
    """The GGUF repo's card: `base_model` is the source, related as `quantized`; `library_name: gguf`."""
    lineage = {"base_model": card.source, "base_model_relation": "quantized"} if card.source_on_hub else {}
    data = ModelCardData(
        **lineage,
        library_name="gguf",
        license=card.license,
        license_name=card.license_name,
        tags=list(GGUF_TAGS) + (["merge"] if card.method else []),
        mergehub={"gguf_of": card.source, "files": {f.filename: f.sha256 for f in card.files}},
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(card)}")
