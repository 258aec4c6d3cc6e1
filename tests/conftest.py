"""Shared fixtures: tiny random Llama families built once per session, and recipe writing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from mergehub.demo import make_family, make_tiny_llama


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A float32 base model and two fine-tunes of it (4 layers, hidden 64, vocab 256)."""
    return make_family(tmp_path_factory.mktemp("family"), count=3)


@pytest.fixture(scope="session")
def tied_family(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A base and a fine-tune with tied input/output embeddings (no lm_head tensor)."""
    return make_family(tmp_path_factory.mktemp("tied"), count=2, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def sharded_bf16(tmp_path_factory: pytest.TempPathFactory, family: list[Path]) -> Path:
    """A bfloat16 fine-tune saved in several shards."""
    return make_tiny_llama(
        tmp_path_factory.mktemp("sharded") / "m", seed=7, base=family[0], dtype=torch.bfloat16, shard_size="100KB"
    )


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a recipe (dict or YAML text) to a file and return its path."""

    def write(recipe: dict | str, name: str = "recipe.yml") -> Path:
        path = tmp_path / name
        path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write


@pytest.fixture
def hub(tmp_path: Path):
    """A Hub-compatible server on 127.0.0.1 with users alice (`tok-alice`) and bob, and huggingface_hub pointed at it
    as alice."""
    from tests.hubserver import hub_client_env, start_hub_server

    with (
        start_hub_server(tmp_path / "hub", {"tok-alice": "alice", "tok-bob": "bob"}, {"org": ["alice"]}) as server,
        hub_client_env(server.endpoint, tmp_path / "hf_home", token="tok-alice"),
    ):
        yield server
