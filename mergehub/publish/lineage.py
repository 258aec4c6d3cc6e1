"""A model's ancestry on the Hub: parents from each card's `base_model`, else from its `mergekit_config.yml`."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import GatedRepoError, RemoteEntryNotFoundError, RepositoryNotFoundError

from mergehub import safe_yaml
from mergehub.errors import RecipeError
from mergehub.moe.config import looks_like_moe_config
from mergehub.moe.layout import MOE_RECIPE_FILE
from mergehub.plan import Plan
from mergehub.publish.card_data import card_license, mergehub_record, read_card_data
from mergehub.recipe import RECIPE_FILE, ModelRef, parse_recipe
from mergehub.sources.hub import HTTPError

__all__ = [
    "LINEAGE_DEPTH",
    "RECIPE_FILES",
    "LineageNode",
    "LineageEdge",
    "LineageGraph",
    "walk_lineage",
    "merge_lineage",
    "hub_reader",
    "hub_readers",
]

LINEAGE_DEPTH = 4
"""Generations a merge's card shows above it."""

Reader = Callable[[str], str | None]


@dataclass(frozen=True)
class LineageNode:
    """A model of the lineage: its license, and why it could not be read, if so; `stage` for a stage's output
    (a multi-stage recipe's intermediate merge)."""

    id: str
    depth: int
    license: str | None = None
    unavailable: str | None = None
    truncated: bool = False  # it has parents beyond the depth limit
    stage: bool = False


@dataclass(frozen=True)
class LineageEdge:
    """`child` was made from `parent`; relation from the child's card, method from its recipe."""

    child: str
    parent: str
    relation: str | None = None
    method: str | None = None


@dataclass(frozen=True)
class LineageGraph:
    """The ancestry of `root` as a DAG: each model once, nodes in breadth-first order, edges child → parent."""

    root: str
    nodes: tuple[LineageNode, ...]
    edges: tuple[LineageEdge, ...]

    def node(self, model: str) -> LineageNode:
        """The node of `model`."""
        return next(n for n in self.nodes if n.id == model)

    def parents(self, model: str) -> tuple[LineageEdge, ...]:
        """The edges from `model` to its parents, in its card's order."""
        return tuple(e for e in self.edges if e.child == model)

    def with_license(self, model: str, license_id: str) -> LineageGraph:
        """The graph with `model`'s license set (a new merge's license is its card's, not read from the Hub)."""
        nodes = tuple(replace(n, license=license_id) if n.id == model else n for n in self.nodes)
        return replace(self, nodes=nodes)

    def to_json(self) -> str:
        """The graph as JSON, nodes sorted by id and edges by (child, parent)."""
        return json.dumps(
            {
                "root": self.root,
                "nodes": [
                    {k: v for k, v in asdict(n).items() if k != "stage" or v}
                    for n in sorted(self.nodes, key=lambda n: n.id)
                ],
                "edges": [asdict(e) for e in sorted(self.edges, key=lambda e: (e.child, e.parent))],
            },
            indent=2,
        )

    def to_mermaid(self) -> str:
        """A Mermaid flowchart (without the code fence): ancestors on top, arrows from parent to child."""
        ids = {n.id: f"n{i}" for i, n in enumerate(self.nodes)}
        lines = ["graph TD"]
        for n in self.nodes:
            detail = (
                "stage output"
                if n.stage
                else f"unavailable: {n.unavailable}"
                if n.unavailable
                else n.license or "license unknown"
            )
            lines.append(f'  {ids[n.id]}["{_escape(n.id)}<br/>{_escape(detail)}"]')
        for e in self.edges:
            text = e.method or e.relation
            lines.append(f"  {ids[e.parent]} -->{f'|{_escape(text)}|' if text else ''} {ids[e.child]}")
        if unavailable := [ids[n.id] for n in self.nodes if n.unavailable]:
            lines += ["  classDef unavailable stroke-dasharray: 4 4", f"  class {','.join(unavailable)} unavailable"]
        return "\n".join(lines)

    def to_tree(self) -> str:
        """The ancestry as a terminal tree; a model seen before is printed as `(see above)`."""
        lines = [self._describe(self.root)]
        printed = {self.root}

        def walk(model: str, prefix: str) -> None:
            edges = self.parents(model)
            for i, edge in enumerate(edges):
                branch, indent = ("└── ", "    ") if i == len(edges) - 1 else ("├── ", "│   ")
                if edge.parent in printed:
                    lines.append(f"{prefix}{branch}{edge.parent} (see above)")
                    continue
                printed.add(edge.parent)
                lines.append(prefix + branch + self._describe(edge.parent))
                walk(edge.parent, prefix + indent)

        walk(self.root, "")
        return "\n".join(lines)

    def _describe(self, model: str) -> str:
        node = self.node(model)
        if node.stage:
            return f"{model} (stage output)"
        if node.unavailable:
            return f"{model} (unavailable: {node.unavailable})"
        details = [node.license or "license unknown"]
        if edges := self.parents(model):
            details.append(" ".join(filter(None, [edges[0].relation, edges[0].method and f"({edges[0].method})"])))
        if node.truncated:
            details.append("more ancestors beyond the depth limit")
        return f"{model} ({', '.join(d for d in details if d)})"


def _escape(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;").replace("|", "#124;")


RECIPE_FILES = (RECIPE_FILE, MOE_RECIPE_FILE)
"""The files a model's recipe may be in: a merge's, or an MoE assembly's config (as mergekit-moe names it)."""


def hub_reader(filename: str | tuple[str, ...], token: str | bool | None) -> Reader:
    """A reader of a file of a Hub repo: the first of the names it has (None when it has none)."""
    names = (filename,) if isinstance(filename, str) else filename

    def read(repo_id: str) -> str | None:
        for name in names:
            try:
                path = hf_hub_download(repo_id, name, token=token)
            except RemoteEntryNotFoundError:
                continue
            return Path(path).read_text(encoding="utf-8", errors="replace")
        return None

    return read


def _unavailable_reason(error: Exception) -> str:
    if isinstance(error, GatedRepoError):
        return "gated, access not granted"
    if isinstance(error, RepositoryNotFoundError):
        return "not found, or private"
    return f"unreadable ({type(error).__name__})"


def _ref_paths(value: Any) -> list[str]:
    """The repos of a mergekit model reference: `org/name@rev`, `org/name+lora` (both) or `{model: {path: ...}}`."""
    if isinstance(value, dict):
        return _ref_paths(value.get("model", value.get("path")))
    if not isinstance(value, str):
        return []
    return [path for part in value.split("+") if (path := part.split("@")[0].strip())]


def _recipe_models(data: dict) -> tuple[list[str], set[str]]:
    """Every model a recipe names, tolerant of recipes mergehub cannot run, and which of them are LoRA adapters."""
    refs = [data.get("base_model")]
    refs += [m.get("model") for m in data.get("models") or [] if isinstance(m, dict)]
    refs += [
        e.get("source_model")
        for e in [*(data.get("experts") or []), *(data.get("shared_experts") or [])]
        if isinstance(e, dict)
    ]
    for out_slice in data.get("slices") or []:
        if isinstance(out_slice, dict):
            refs.append(out_slice.get("base_model"))
            refs += [s.get("model") for s in out_slice.get("sources") or [] if isinstance(s, dict)]
    paths = [_ref_paths(ref) for ref in refs]
    return [p for group in paths for p in group], {group[1] for group in paths if len(group) == 2}


def _parse_recipe(text: str | None) -> tuple[str | None, list[str], set[str]]:
    """A recipe's merge method, parent repos (LoRA adapters after their models) and which parents are adapters;
    nothing when it is absent or not a YAML mapping."""
    try:
        data = safe_yaml.load(text, what="A parent's recipe") if text else None
    except (RecipeError, yaml.YAMLError):
        return None, [], set()
    if not isinstance(data, dict):
        return None, [], set()
    if looks_like_moe_config(data):
        return ("moe", *_recipe_models(data))
    method = data.get("merge_method") if isinstance(data.get("merge_method"), str) else None
    try:
        refs = parse_recipe(text).referenced_models()
    except RecipeError:
        return (method, *_recipe_models(data))
    parents = [path for ref in refs for path in (ref.path, ref.adapter.path if ref.adapter else None) if path]
    return method, parents, {ref.adapter.path for ref in refs if ref.adapter}


def _card_relations(data: Any) -> dict[str, str]:
    """Parents that a mergehub card records apart, with their relation: LoRA adapters merged in (`adapters:`), and
    for an extracted adapter its base (`adapter_for:`) and the fine-tune it was extracted from (`extracted_from:`)."""
    record = mergehub_record(data)
    adapters = record.get("adapters")
    relations = {a: "adapter" for a in adapters if isinstance(a, str)} if isinstance(adapters, dict) else {}
    if isinstance(record.get("adapter_for"), str):
        relations[record["adapter_for"]] = "adapter"
    if isinstance(record.get("extracted_from"), str):
        relations[record["extracted_from"]] = "extracted"
    return relations


def _inspect(
    card: str | None, recipe: Callable[[], str | None]
) -> tuple[str | None, str | None, str | None, list[str], dict[str, str]]:
    """A model's license, relation to its parents, merge method, parents, and the parents of another relation
    (LoRA adapters merged in, a fine-tune an adapter was extracted from)."""
    data = read_card_data(card)
    bases = data.base_model if data else None
    parents = [b for b in ([bases] if isinstance(bases, str) else bases or []) if isinstance(b, str)]
    relation = data.get("base_model_relation") if data else None
    relation = relation if isinstance(relation, str) else None
    method, recipe_parents, adapters = _parse_recipe(recipe()) if relation in (None, "merge") else (None, [], set())
    if not parents:
        parents = recipe_parents
    relations = {a: "adapter" for a in adapters} | _card_relations(data)
    parents += [p for p in relations if p not in parents]
    return card_license(data) if data else None, relation or ("merge" if method else None), method, parents, relations


def walk_lineage(
    repo_id: str,
    *,
    max_depth: int = 5,
    read_card: Reader | None = None,
    read_recipe: Reader | None = None,
    token: str | bool | None = None,
    root_card: str | None = None,
    root_recipe: str | None = None,
) -> LineageGraph:
    """Walk `repo_id`'s ancestry breadth first, `max_depth` generations up; unreadable repos become unavailable nodes.

    Args:
        read_card, read_recipe: return a repo's README.md or mergekit_config.yml text, or None when it has none;
            they may raise huggingface_hub's RepositoryNotFoundError or GatedRepoError. Default: read from the Hub.
        root_card, root_recipe: when either is given, the root's texts (a merge not pushed yet), not read.
    """
    read_card = read_card or hub_reader("README.md", token)
    read_recipe = read_recipe or hub_reader(RECIPE_FILES, token)
    given_root = root_card is not None or root_recipe is not None
    nodes: list[LineageNode] = []
    edges: list[LineageEdge] = []
    queue, seen = deque([(repo_id, 0)]), {repo_id}
    while queue:
        model, depth = queue.popleft()
        if not (ModelRef(model).looks_like_hub_id and not model.startswith((".", "~"))):
            nodes.append(LineageNode(model, depth, unavailable="not a Hub repo id (a local path?)"))
            continue
        try:
            if given_root and model == repo_id:
                license_id, relation, method, parents, relations = _inspect(root_card, lambda: root_recipe)
            else:
                license_id, relation, method, parents, relations = _inspect(
                    read_card(model), lambda model=model: read_recipe(model)
                )
        except (OSError, HTTPError) as e:  # huggingface_hub's HTTP errors are OSErrors; network errors are not
            nodes.append(LineageNode(model, depth, unavailable=_unavailable_reason(e)))
            continue
        parents = [p for p in dict.fromkeys(parents) if p != model]
        nodes.append(LineageNode(model, depth, license_id, truncated=bool(parents) and depth >= max_depth))
        if depth >= max_depth:
            continue
        for parent in parents:
            special = relations.get(parent)
            edges.append(
                LineageEdge(model, parent, special, None) if special else LineageEdge(model, parent, relation, method)
            )
            if parent not in seen:
                seen.add(parent)
                queue.append((parent, depth + 1))
    return LineageGraph(repo_id, tuple(nodes), tuple(edges))


def hub_readers(local: set[str], token: str | bool | None) -> dict[str, Reader]:
    """`walk_lineage`'s card and recipe readers, reading Hub models and leaving the `local` ones as leaves."""

    def hub_only(read: Reader) -> Reader:
        return lambda model: None if model in local else read(model)

    return {
        "read_card": hub_only(hub_reader("README.md", token)),
        "read_recipe": hub_only(hub_reader(RECIPE_FILES, token)),
    }


def merge_lineage(repo_id: str, plan: Plan, token: str | bool | None) -> LineageGraph:
    """A merge's family tree for its card: its parents' Hub cards and recipes (LoRA adapters' too), walked up; local
    parents are leaves. For a multi-stage recipe, each stage's output is a node between the final model and the
    models it merged."""
    if plan.stages:
        return _stage_lineage(repo_id, plan, token)
    local = {m.path for m in plan.models if m.revision is None}
    local |= {m.adapter.path for m in plan.models if m.adapter and m.adapter.revision is None}
    return walk_lineage(
        repo_id, max_depth=LINEAGE_DEPTH, root_recipe=plan.recipe_text, token=token, **hub_readers(local, token)
    )


def _stage_lineage(root: str, plan: Plan, token: str | bool | None) -> LineageGraph:
    """The lineage of a multi-stage merge.

    `root` (the final stage), each stage's output as a node, then each Hub model's own ancestry, walked up.
    """
    names = {stage.name for stage in plan.stages if stage.name}
    by_name = {stage.name or root: stage for stage in plan.stages}
    nodes: dict[str, LineageNode] = {root: LineageNode(root, 0)}
    edges: list[LineageEdge] = []
    queue = deque([(root, 0)])
    while queue:
        child, depth = queue.popleft()
        stage = by_name[child]
        for model in stage.models:
            parent = model.ref if model.ref in names else model.pinned.path
            edges.append(LineageEdge(child, parent, "merge", stage.method))
            if parent in nodes:
                continue
            if model.ref in names:
                nodes[parent] = LineageNode(parent, depth + 1, stage=True)
                queue.append((parent, depth + 1))
            elif model.revision is None:
                nodes[parent] = LineageNode(parent, depth + 1, unavailable="not a Hub repo id (a local path?)")
            else:
                walked = walk_lineage(parent, max_depth=max(LINEAGE_DEPTH - depth - 1, 0), token=token)
                for node in walked.nodes:
                    nodes.setdefault(
                        node.id,
                        LineageNode(node.id, node.depth + depth + 1, node.license, node.unavailable, node.truncated),
                    )
                edges += [e for e in walked.edges if e not in edges]
    return LineageGraph(root, tuple(nodes.values()), tuple(edges))
