"""NaN and Inf: counted in inputs and outputs, reported by name (an error with --strict), recorded in the card; no
method crashes on them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergehub import MergehubError, MergeMethodError, run_merge
from mergehub.interfaces.cli import main
from mergehub.methods import all_methods


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory, family) -> Path:
    """A copy of a fine-tune with 3 NaN in one tensor and 1 Inf in another."""
    model = tmp_path_factory.mktemp("poisoned") / "m"
    shutil.copytree(family[1], model)
    tensors = load_file(model / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"].view(-1)[:3] = float("nan")
    tensors["model.layers.2.self_attn.q_proj.weight"].view(-1)[7] = float("inf")
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})
    return model


def _linear(models) -> dict:
    return {"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": 1}} for m in models]}


def test_non_finite_inputs_and_outputs_are_named_in_a_warning_and_in_the_card(family, poisoned, write_recipe, tmp_path):
    result = run_merge(write_recipe(_linear([family[0], poisoned])), tmp_path / "out")
    found = {(n.model, n.tensor): n.count for n in result.stats.non_finite}
    assert found == {
        (str(poisoned), "model.layers.1.mlp.up_proj.weight"): 3,
        (str(poisoned), "model.layers.2.self_attn.q_proj.weight"): 1,
        (None, "model.layers.1.mlp.up_proj.weight"): 3,
        (None, "model.layers.2.self_attn.q_proj.weight"): 1,
    }
    summary = result.summary()
    assert (
        "Warning: 2 input tensor(s) hold NaN or Inf values" in summary
        and "Warning: 2 output tensor(s) hold NaN or Inf values" in summary
    )
    card = (tmp_path / "out" / "README.md").read_text()
    assert "non_finite:" in card and f"{poisoned}: model.layers.1.mlp.up_proj.weight (3 NaN/Inf)" in card
    assert "> These tensors hold NaN or Inf values:" in card


def test_clean_merges_say_nothing(family, write_recipe, tmp_path):
    result = run_merge(write_recipe(_linear(family[:2])), tmp_path / "out")
    assert result.stats.non_finite == () and result.stats.warnings() == []
    assert "NaN" not in (tmp_path / "out" / "README.md").read_text()


def test_strict_makes_them_an_error_and_keeps_nothing(family, poisoned, write_recipe, tmp_path, capsys):
    recipe = write_recipe(_linear([family[0], poisoned]))
    assert main(["merge", str(recipe), str(tmp_path / "lenient"), "--no-progress"]) == 0
    assert "Warning: 2 output tensor(s) hold NaN or Inf values" in capsys.readouterr().out
    assert main(["merge", str(recipe), str(tmp_path / "strict"), "--no-progress", "--strict"]) == 1
    err = capsys.readouterr().err
    assert (
        f"error: Input model.layers.1.mlp.up_proj.weight of {poisoned} holds 3 NaN or Inf values." in err
        and "--strict" in err
    )
    assert not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict.partial-*"))


def test_slerp_with_nan_or_zero_inputs_does_not_crash(family, poisoned, write_recipe, tmp_path):
    recipe = {
        "merge_method": "slerp",
        "base_model": str(family[0]),
        "parameters": {"t": 0.3},
        "models": [{"model": str(family[0])}, {"model": str(poisoned)}],
    }
    result = run_merge(write_recipe(recipe), tmp_path / "out")
    outputs = {n.tensor for n in result.stats.non_finite if n.model is None}
    assert outputs == {"model.layers.1.mlp.up_proj.weight", "model.layers.2.self_attn.q_proj.weight"}


def _params(spec, n: int, base_index: int | None) -> dict:
    values = {float: 0.5, int: 1, bool: False}
    params = {}
    for p in spec.params:
        value = values[p.type] if p.required else p.default
        if p.scope != "shared":
            value = tuple(None if (p.scope == "non_base" and i == base_index) else value for i in range(n))
        params[p.argument] = value
    return params


@pytest.mark.parametrize("name", sorted(all_methods()))
@pytest.mark.parametrize("kind", ["nan", "inf", "zeros"])
def test_no_method_crashes_on_nan_inf_or_zero_inputs(name, kind):
    spec = all_methods()[name]
    n = max(spec.min_inputs, 3 if spec.max_inputs is None else min(3, spec.max_inputs))
    base_index = 0 if spec.base in ("required", "optional") else None
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(8, 16, generator=generator) for _ in range(n)]
    if kind == "zeros":
        tensors[0].zero_()
        tensors[-1].zero_()
    else:
        tensors[-1][2, 3] = float(kind)
    extra = {"generator": torch.Generator().manual_seed(0)} if spec.random else {}
    try:
        out = spec.kernel(tensors, base_index=base_index, **_params(spec, n, base_index), **extra)
    except MergehubError:
        return  # a clear refusal is fine (e.g. weights that sum to 0); a traceback is not
    assert out.shape == tensors[0].shape
    if kind == "zeros":
        assert torch.isfinite(out).all()


def test_count_non_finite_in_chunks():
    from mergehub.executor import count_non_finite

    t = torch.zeros(10, 10, dtype=torch.bfloat16)
    t[0, 0], t[9, 9], t[5, 5] = float("nan"), float("inf"), float("-inf")
    assert count_non_finite(t, chunk_elements=7) == 3 and count_non_finite(torch.arange(5)) == 0
    assert isinstance(MergeMethodError("x"), MergehubError)
