"""Our generalized task arithmetic family and SCE against mergekit 0.1.5.

Deterministic results match `mergekit.merge_methods.api.merge_tensors` within 1e-6 (most bit
for bit). Where mergekit sums a whole tensor in float32 (the L1 norms of `rescale`, SCE's
mean squares), its own result moves by a float32 ulp or two between thread counts; there we
allow 1e-6 relative as well. Random methods are compared at density 1 here and by their
statistics in `test_ties_family.py`.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mergehub.methods import get_method
from mergehub.methods.ties_family import SPECS

mergekit_api = pytest.importorskip("mergekit.merge_methods.api")
mergekit_methods = pytest.importorskip("mergekit.merge_methods")

ATOL = 1e-6
NAMES = tuple(spec.name for spec in SPECS)
SHAPES = [(1,), (7,), (64,), (16, 33), (31, 17), (5, 4, 3)]
W = [0.3, 0.7]
CASES = [
    ("task_arithmetic", 3, 0, {"weight": W}),
    ("task_arithmetic", 3, 2, {"weight": [1.0, 2.0], "normalize": True, "lambda": 0.5}),
    ("task_arithmetic", 4, 1, {"weight": [0.5, -0.5, 1.0], "density": 0.3, "rescale": True}),
    ("task_arithmetic", 3, 0, {"weight": [0.5, -0.5], "normalize": True}),
    ("ties", 3, 0, {"weight": W, "density": 0.5}),
    ("ties", 3, 1, {"weight": W, "density": [0.3, 0.8], "normalize": False, "lambda": 2.0}),
    ("ties", 4, 3, {"weight": [1.0, -0.5, 0.25], "density": 0.7, "int8_mask": True}),
    ("ties", 3, 0, {"weight": [0.5, -0.5], "density": 0.6}),
    ("ties", 3, 0, {"weight": W, "density": 0.0}),
    ("ties", 3, 0, {"weight": W, "density": 1.0}),
    ("ties", 3, 0, {"weight": W, "density": 0.01}),
    ("ties", 3, 0, {"weight": [0.0, 0.0], "density": 0.5}),
    ("breadcrumbs", 3, 0, {"weight": W, "density": 0.5}),
    ("breadcrumbs", 3, 2, {"weight": W, "density": 0.5, "gamma": 0.1, "lambda": 0.5}),
    ("breadcrumbs", 3, 0, {"weight": W, "density": 0.9, "gamma": 0.2, "normalize": True}),
    ("breadcrumbs", 4, 1, {"weight": [1.0, -1.0, 0.5], "density": [0.4, 0.6, 0.8], "gamma": [0.0, 0.05, 0.3]}),
    ("breadcrumbs", 3, 0, {"weight": W, "density": 0.0}),
    ("breadcrumbs", 3, 0, {"weight": W, "density": 1.0, "gamma": 0.5}),
    ("breadcrumbs_ties", 3, 0, {"weight": W, "density": 0.5, "gamma": 0.1}),
    ("breadcrumbs_ties", 3, 1, {"weight": [0.5, -0.5], "density": 0.8, "normalize": True, "int8_mask": True}),
    ("breadcrumbs_ties", 4, 0, {"weight": [1.0, 1.0, 1.0], "density": 0.3, "gamma": 0.01, "lambda": 1.5}),
    ("dare_ties", 3, 0, {"weight": W, "density": 1.0}),
    ("dare_ties", 4, 2, {"weight": [1.0, -0.5, 0.5], "normalize": True, "lambda": 0.7}),
    ("dare_linear", 3, 0, {"weight": W}),
    ("dare_linear", 3, 1, {"weight": [0.5, -0.5], "normalize": True}),
    ("della", 3, 0, {"weight": W, "density": 1.0}),
    ("della", 4, 3, {"weight": [1.0, 2.0, -1.0], "normalize": False, "lambda": 2.0, "epsilon": 0.4}),
    ("della_linear", 3, 0, {"weight": W}),
    ("della_linear", 3, 2, {"weight": [1.0, 2.0], "normalize": True}),
    ("sce", 3, 0, {}),
    ("sce", 3, 0, {"select_topk": 0.5}),
    ("sce", 4, 2, {"select_topk": 0.1, "int8_mask": True}),
    ("sce", 3, 1, {"select_topk": 0.0}),
    ("sce", 2, 0, {"select_topk": 0.3}),
]
RESCALE_CASES = [
    ("ties", 3, 0, {"weight": W, "density": 0.5, "rescale": True}),
    ("breadcrumbs", 3, 1, {"weight": W, "density": 0.4, "gamma": 0.05, "rescale": True}),
    ("breadcrumbs_ties", 4, 0, {"weight": [1.0, 0.5, -0.5], "density": 0.6, "rescale": True, "normalize": True}),
]


def ours(name: str, tensors: list[torch.Tensor], base_index: int | None, params: dict[str, Any]) -> torch.Tensor:
    """Our kernel, called as the engine calls it: defaults filled, per-model values aligned with `tensors`."""
    spec = get_method(name)
    kwargs: dict[str, Any] = {"generator": torch.Generator().manual_seed(0)} if spec.random else {}
    for param in spec.params:
        value = params.get(param.name, param.default)
        if param.scope == "non_base":
            values = list(value) if isinstance(value, list) else [value] * (len(tensors) - 1)
            values.insert(base_index, None)
            value = tuple(values)
        kwargs[param.argument] = value
    return spec.kernel(tensors, base_index=base_index, **kwargs)


def theirs(name: str, tensors: list[torch.Tensor], base_index: int | None, params: dict[str, Any]) -> torch.Tensor:
    """mergekit's result."""
    return mergekit_api.merge_tensors(tensors, name, parameters=params, base_index=base_index)


def assert_conforms(
    name: str, tensors: list[torch.Tensor], base_index: int, params: dict[str, Any], rtol: float = 0.0
) -> None:
    """Both results agree within ATOL (and `rtol`), and our kernel leaves its inputs unchanged."""
    copies = [t.clone() for t in tensors]
    expected = theirs(name, tensors, base_index, params)
    actual = ours(name, tensors, base_index, params)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=ATOL)
    assert all(torch.equal(t, c) for t, c in zip(tensors, copies, strict=True))


def random_inputs(
    count: int, shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32
) -> list[torch.Tensor]:
    """Independent standard normal tensors (distinct magnitudes, so pruning has no ties)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(count)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name, count, base_index, params", CASES, ids=str)
def test_matches_mergekit_on_random_tensors(
    name: str, count: int, base_index: int, params: dict[str, Any], shape: tuple[int, ...]
) -> None:
    for seed in range(3):
        assert_conforms(name, random_inputs(count, shape, seed), base_index, params)


@pytest.mark.parametrize("shape", [(1,), (7,), (31, 17), (257, 513)], ids=str)
@pytest.mark.parametrize("name, count, base_index, params", RESCALE_CASES, ids=str)
def test_rescale_matches_mergekit_up_to_its_float32_norms(
    name: str, count: int, base_index: int, params: dict[str, Any], shape: tuple[int, ...]
) -> None:
    assert_conforms(name, random_inputs(count, shape, 5), base_index, params, rtol=1e-6)


@pytest.mark.parametrize(
    "name, params",
    [
        ("ties", {"weight": W, "density": 0.37}),
        ("ties", {"weight": W, "density": 0.9}),
        ("breadcrumbs", {"weight": W, "density": 0.5, "gamma": 0.02}),
        ("breadcrumbs_ties", {"weight": [1.0, -0.4], "density": 0.2, "gamma": 0.3, "normalize": True}),
        ("sce", {"select_topk": 0.4}),
        ("task_arithmetic", {"weight": W, "lambda": 0.8}),
    ],
    ids=str,
)
def test_matches_mergekit_on_tensors_larger_than_a_sample_and_a_chunk(name: str, params: dict[str, Any]) -> None:
    assert_conforms(name, random_inputs(3, (600, 501), 11), 0, params, rtol=1e-6 if name == "sce" else 0.0)


@pytest.mark.parametrize("name, count, base_index, params", CASES[::4], ids=str)
def test_matches_mergekit_in_float64(name: str, count: int, base_index: int, params: dict[str, Any]) -> None:
    assert_conforms(name, random_inputs(count, (12, 9), 7, torch.float64), base_index, params, rtol=1e-12)


def test_sce_with_only_the_base_returns_the_base() -> None:
    (base,) = random_inputs(1, (4, 5), 0)
    assert_conforms("sce", [base], 0, {})


@pytest.mark.parametrize("name", [n for n in NAMES if n != "sce"])
def test_only_the_base_returns_the_base(name: str) -> None:
    (base,) = random_inputs(1, (4, 5), 0)
    params = {"weight": []} | ({"density": []} if name != "task_arithmetic" else {})
    assert_conforms(name, [base], 0, params)


@pytest.mark.parametrize("name", NAMES)
def test_parameters_and_defaults_match_mergekit(name: str) -> None:
    theirs_spec = mergekit_methods.get(name).spec
    expected = {(p.name, p.scope.value, None if p.required else p.default) for p in theirs_spec.parameters}
    actual = {(p.name, p.scope, None if p.required else p.default) for p in get_method(name).params}
    assert actual == expected
    assert get_method(name).base == theirs_spec.contract.base.value == "required"
    assert get_method(name).random == name.startswith(("dare", "della"))
