"""Method specs: each default is written once, in the spec, and kernels take exactly the spec's parameters."""

from __future__ import annotations

import inspect

import pytest
import torch

from mergehub.errors import MergeMethodError
from mergehub.methods import REQUIRED, ParamSpec, all_methods, get_method

NAMES = sorted(all_methods())


@pytest.mark.parametrize("name", NAMES)
def test_kernels_declare_no_defaults_and_take_exactly_the_spec_parameters(name: str) -> None:
    spec = get_method(name)
    signature = inspect.signature(spec.kernel)
    keywords = [p for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    expected = ["base_index", *(p.argument for p in spec.params)] + (["generator"] if spec.random else [])
    expected += ["out_dtype"] if spec.widens else []  # not a recipe parameter: where the executor wants the result
    assert sorted(p.name for p in keywords) == sorted(expected)
    recipe_parameters = [p for p in signature.parameters.values() if p.name != "out_dtype"]
    assert all(p.default is inspect.Parameter.empty for p in recipe_parameters)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())


@pytest.mark.parametrize("name", NAMES)
def test_parameter_names_are_unique(name: str) -> None:
    names = [p.name for p in get_method(name).params]
    assert len(names) == len(set(names))


def test_defaults_take_the_kernel_shape() -> None:
    shared, per_input, per_other = (
        ParamSpec("lambda", float, "shared", 1.0),
        ParamSpec("scale", float, "input", None),
        ParamSpec("density", float, "non_base", 1.0),
    )
    assert shared.default_for(3, 1) == 1.0 and shared.argument == "lambda_"
    assert per_input.default_for(2, None) == (None, None)
    assert per_other.default_for(3, 1) == (1.0, None, 1.0) and per_other.default_for(2, None) == (1.0, 1.0)
    assert ParamSpec("weight", float).required and ParamSpec("weight", float).default is REQUIRED


def test_merge_fills_the_spec_defaults_as_the_planner_does() -> None:
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(40, 30, generator=g) for _ in range(3)]
    spec = get_method("ties")
    explicit = spec.kernel(
        tensors,
        base_index=1,
        weight=(0.5, None, 0.7),
        density=(0.4, None, 0.4),
        lambda_=1.0,
        normalize=True,
        rescale=False,
        int8_mask=False,
    )
    merged = spec.merge(tensors, base_index=1, weight=(0.5, None, 0.7), density=(0.4, None, 0.4))
    assert torch.equal(merged, explicit)
    assert torch.equal(
        get_method("karcher").merge(tensors),
        get_method("karcher").kernel(tensors, base_index=None, max_iter=10, tol=1e-5),
    )


def test_merge_names_a_missing_required_parameter_and_a_missing_generator() -> None:
    tensors = [torch.zeros(3), torch.ones(3)]
    with pytest.raises(MergeMethodError, match="slerp needs `t`"):
        get_method("slerp").merge(tensors, base_index=0)
    with pytest.raises(TypeError, match="generator"):
        get_method("dare_ties").merge(tensors, base_index=0, weight=(None, 1.0))


@pytest.mark.parametrize("name", ["ties", "sce"])
def test_pipeline_kernels_reject_missing_and_unexpected_arguments_as_functions_do(name: str) -> None:
    spec = get_method(name)
    tensors = [torch.zeros(3), torch.ones(3)]
    arguments = {p.argument: (None, 1.0) if p.required else p.default_for(2, 0) for p in spec.params}
    assert torch.equal(spec.kernel(tensors, base_index=0, **arguments), torch.ones(3))
    with pytest.raises(TypeError, match="missing a required argument: 'base_index'"):
        spec.kernel(tensors, **arguments)
    with pytest.raises(TypeError, match="unexpected keyword argument 'gamma'"):
        spec.kernel(tensors, base_index=0, gamma=(None, 0.1), **arguments)
