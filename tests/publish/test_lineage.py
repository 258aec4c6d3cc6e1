"""Walking a model's ancestry on the test Hub, and printing it as a tree, Mermaid and JSON."""

from __future__ import annotations

import json

import pytest
import yaml

from mergehub.publish.lineage import LineageEdge, LineageNode, walk_lineage


def _readme(license_id: str | None = None, base_model=None, relation: str | None = None) -> bytes:
    meta = {"license": license_id, "base_model": base_model, "base_model_relation": relation}
    return ("---\n" + yaml.safe_dump({k: v for k, v in meta.items() if v is not None}) + "---\n# model\n").encode()


def _recipe(method: str, base: str, *models: str) -> bytes:
    recipe = {"merge_method": method, "base_model": base, "models": [{"model": m} for m in models]}
    return yaml.safe_dump(recipe).encode()


@pytest.fixture
def family(hub):
    """A, B → P (slerp, its card lists its bases); A → C (finetune); P, C → X (ties, from its recipe)."""
    sha_a = hub.add_repo("org/A", {"README.md": _readme("mit")})
    hub.add_repo("org/B", {"README.md": _readme("apache-2.0")})
    hub.add_repo(
        "org/P",
        {
            "README.md": _readme("mit", ["org/A", "org/B"], "merge"),
            "mergekit_config.yml": _recipe("slerp", f"org/A@{sha_a}", f"org/A@{sha_a}", "org/B"),
        },
    )
    hub.add_repo("org/C", {"README.md": _readme("mit", "org/A", "finetune")})
    x_recipe = _recipe("ties", "org/P", "org/P", "org/C@main")
    hub.add_repo("org/X", {"README.md": _readme("apache-2.0"), "mergekit_config.yml": x_recipe})
    return hub


def test_three_generations_form_a_dag_with_shared_ancestors_once(family):
    graph = walk_lineage("org/X")
    assert [n.id for n in graph.nodes] == ["org/X", "org/P", "org/C", "org/A", "org/B"]
    assert graph.node("org/A") == LineageNode("org/A", 2, "mit")
    assert graph.edges == (
        LineageEdge("org/X", "org/P", "merge", "ties"),
        LineageEdge("org/X", "org/C", "merge", "ties"),
        LineageEdge("org/P", "org/A", "merge", "slerp"),
        LineageEdge("org/P", "org/B", "merge", "slerp"),
        LineageEdge("org/C", "org/A", "finetune", None),
    )
    assert graph.to_tree() == (
        "org/X (apache-2.0, merge (ties))\n"
        "├── org/P (mit, merge (slerp))\n"
        "│   ├── org/A (mit)\n"
        "│   └── org/B (apache-2.0)\n"
        "└── org/C (mit, finetune)\n"
        "    └── org/A (see above)"
    )
    assert graph.to_mermaid() == "\n".join(
        [
            "graph TD",
            '  n0["org/X<br/>apache-2.0"]',
            '  n1["org/P<br/>mit"]',
            '  n2["org/C<br/>mit"]',
            '  n3["org/A<br/>mit"]',
            '  n4["org/B<br/>apache-2.0"]',
            "  n1 -->|ties| n0",
            "  n2 -->|ties| n0",
            "  n3 -->|slerp| n1",
            "  n4 -->|slerp| n1",
            "  n3 -->|finetune| n2",
        ]
    )
    data = json.loads(graph.to_json())
    assert data["root"] == "org/X"
    assert [n["id"] for n in data["nodes"]] == ["org/A", "org/B", "org/C", "org/P", "org/X"]
    assert [(e["child"], e["parent"]) for e in data["edges"]] == [
        ("org/C", "org/A"),
        ("org/P", "org/A"),
        ("org/P", "org/B"),
        ("org/X", "org/C"),
        ("org/X", "org/P"),
    ]
    assert data["nodes"][0] == {"id": "org/A", "depth": 2, "license": "mit", "unavailable": None, "truncated": False}


def test_unpushed_root_takes_its_recipe_from_the_caller(family):
    graph = walk_lineage("alice/new", root_recipe=_recipe("linear", "org/C", "org/C", "org/B").decode())
    assert [e.parent for e in graph.parents("alice/new")] == ["org/C", "org/B"]
    assert [n.id for n in graph.nodes] == ["alice/new", "org/C", "org/B", "org/A"]


def test_private_gated_missing_and_local_parents_become_unavailable_nodes(hub):
    hub.add_repo("bob/secret", {"README.md": _readme("mit")}, private=True)
    hub.add_repo("meta/gated", {"README.md": _readme("llama3")}, gated=True)
    parents = ["bob/secret", "meta/gated", "org/gone", "./local/model"]
    hub.add_repo("org/X", {"README.md": _readme("mit", parents, "merge")})
    graph = walk_lineage("org/X")
    assert [(n.id, n.unavailable) for n in graph.nodes[1:]] == [
        ("bob/secret", "not found, or private"),
        ("meta/gated", "gated, access not granted"),
        ("org/gone", "not found, or private"),
        ("./local/model", "not a Hub repo id (a local path?)"),
    ]
    assert "├── bob/secret (unavailable: not found, or private)" in graph.to_tree()
    assert "classDef unavailable" in graph.to_mermaid() and "class n1,n2,n3,n4 unavailable" in graph.to_mermaid()


def test_missing_or_malformed_cards_do_not_break_the_walk(hub):
    hub.add_repo("org/nocard", {"config.json": b"{}"})
    hub.add_repo("org/badcard", {"README.md": b"---\nlicense: [unclosed\n---\n", "mergekit_config.yml": b": no ["})
    recipe = b"merge_method: weird\nslices:\n- sources:\n  - model: org/nocard+lora/x\n  - model: org/badcard\n"
    hub.add_repo("org/X", {"README.md": b"---\n- a list\n---\n", "mergekit_config.yml": recipe})
    graph = walk_lineage("org/X")
    assert graph.to_tree() == (
        "org/X (license unknown, merge (weird))\n"
        "├── org/nocard (license unknown)\n"
        "├── lora/x (unavailable: not found, or private)\n"
        "└── org/badcard (license unknown)"
    )
    assert [(e.parent, e.relation, e.method) for e in graph.parents("org/X")] == [
        ("org/nocard", "merge", "weird"),
        ("lora/x", "adapter", None),
        ("org/badcard", "merge", "weird"),
    ]
    assert "|adapter|" in graph.to_mermaid()


def _readers(cards: dict[str, str]):
    return {"read_card": cards.get, "read_recipe": lambda repo: None}


def test_a_cycle_terminates():
    cards = {"org/a": _readme("mit", "org/b").decode(), "org/b": _readme("mit", ["org/a", "org/b"]).decode()}
    graph = walk_lineage("org/a", **_readers(cards))
    assert graph.edges == (LineageEdge("org/a", "org/b"), LineageEdge("org/b", "org/a"))
    assert graph.to_tree() == "org/a (mit)\n└── org/b (mit)\n    └── org/a (see above)"


def test_depth_limit_is_respected():
    cards = {f"org/m{i}": _readme("mit", f"org/m{i + 1}").decode() for i in range(10)}
    graph = walk_lineage("org/m0", max_depth=3, **_readers(cards))
    assert [n.id for n in graph.nodes] == ["org/m0", "org/m1", "org/m2", "org/m3"]
    assert graph.node("org/m3").truncated and not graph.node("org/m2").truncated
    assert graph.to_tree().endswith("org/m3 (mit, more ancestors beyond the depth limit)")


def test_mermaid_escapes_labels():
    graph = walk_lineage("org/a", **_readers({"org/a": '---\nlicense: other\nlicense_name: "a<b>|\\"c\\""\n---\n'}))
    assert graph.to_mermaid() == 'graph TD\n  n0["org/a<br/>other (a#lt;b#gt;#124;#quot;c#quot;)"]'
