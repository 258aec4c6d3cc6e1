"""Our model_stock, nuslerp, multislerp, karcher, nearswap, arcee_fusion, ram and ramplus_tl against mergekit 0.1.5.

Every kernel matches `mergekit.merge_methods.api.merge_tensors` within 1e-6 (most bit for bit;
karcher and float64 differ by a few ulps from the order of operations in the spherical step).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

mergekit_api = pytest.importorskip("mergekit.merge_methods.api")
mergekit_registry = pytest.importorskip("mergekit.merge_methods.registry")

from mergehub.errors import MergeMethodError  # noqa: E402
from mergehub.methods import get_method  # noqa: E402
from mergehub.methods.arcee_fusion import QUANTILE_SAMPLE_SIZE  # noqa: E402

ATOL = 1e-6
NAMES = ("model_stock", "nuslerp", "multislerp", "karcher", "nearswap", "arcee_fusion", "ram", "ramplus_tl")
SHAPES = [(1,), (7,), (64,), (16, 33), (31, 17), (5, 4, 3)]
CASES = [
    ("model_stock", 3, 0, {}),
    ("model_stock", 4, 2, {"filter_wise": True}),
    ("model_stock", 6, 0, {"filter_wise": False}),
    ("nuslerp", 2, None, {"weight": [0.3, 0.7]}),
    ("nuslerp", 3, 0, {"weight": [1.0, 2.0]}),
    ("nuslerp", 3, 2, {"weight": [2.0, -0.5], "nuslerp_flatten": False}),
    ("nuslerp", 3, 1, {"weight": [1.0, 2.0], "nuslerp_flatten": False, "nuslerp_row_wise": True}),
    ("nuslerp", 2, None, {"weight": [1.0, 1.0], "nuslerp_flatten": True, "nuslerp_row_wise": True}),
    ("nuslerp", 2, None, {"weight": [1.0, -1.0]}),
    ("multislerp", 3, None, {"weight": [0.2, 0.3, 0.5]}),
    ("multislerp", 4, 0, {"weight": [1.0, 2.0, 3.0], "normalize_weights": False}),
    ("multislerp", 5, 3, {"weight": [1.0, 1.0, 1.0, 1.0], "eps": 1e-6}),
    ("multislerp", 2, 1, {"weight": [1.0]}),
    ("karcher", 2, None, {}),
    ("karcher", 3, None, {}),
    ("karcher", 5, 0, {"max_iter": 50, "tol": 1e-7}),
    ("karcher", 4, None, {"max_iter": 0}),
    ("karcher", 4, None, {"max_iter": 1, "tol": 1e-3}),
    ("nearswap", 2, 0, {"t": 0.5}),
    ("nearswap", 2, 1, {"t": 0.01}),
    ("nearswap", 2, 0, {"t": 0.0}),
    ("arcee_fusion", 2, 0, {}),
    ("arcee_fusion", 2, 1, {}),
    ("ram", 4, 0, {}),
    ("ram", 3, 2, {"epsilon": 0.3}),
    ("ramplus_tl", 4, 0, {}),
    ("ramplus_tl", 5, 1, {"r": 0.5, "alpha": 0.7, "epsilon": 0.1}),
]


def ours(name: str, tensors: list[torch.Tensor], base_index: int | None, params: dict[str, Any]) -> torch.Tensor:
    """Our kernel, called as the engine would: defaults filled, per-model values aligned with `tensors`."""
    spec = get_method(name)
    kwargs: dict[str, Any] = {"generator": torch.Generator().manual_seed(0)} if spec.random else {}
    for param in spec.params:
        value = params.get(param.name, param.default)
        if param.scope == "non_base" and base_index is not None:
            value = list(value)
            value.insert(base_index, None)
        kwargs[param.argument] = tuple(value) if param.scope != "shared" else value
    return spec.kernel(tensors, base_index=base_index, **kwargs)


def theirs(name: str, tensors: list[torch.Tensor], base_index: int | None, params: dict[str, Any]) -> torch.Tensor:
    """mergekit's result, its global RNG seeded as our generator is."""
    torch.manual_seed(0)
    return mergekit_api.merge_tensors(tensors, name, parameters=params, base_index=base_index)


def assert_conforms(name: str, tensors: list[torch.Tensor], base_index: int | None, params: dict[str, Any]) -> None:
    """Both results agree within ATOL (NaNs included) and inputs are left unchanged."""
    copies = [t.clone() for t in tensors]
    expected = theirs(name, tensors, base_index, params)
    actual = ours(name, tensors, base_index, params)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL, equal_nan=True)
    assert all(torch.equal(t, c) for t, c in zip(tensors, copies, strict=True))


def random_inputs(name: str, count: int, shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Random tensors; for RAM, models that copy the first tensor (the base) in about half their entries."""
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=g, dtype=dtype) for _ in range(count)]
    if name.startswith("ram"):
        tensors = [torch.where(torch.rand(shape, generator=g) < 0.5, tensors[0], t) for t in tensors]
    return tensors


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name, count, base_index, params", CASES, ids=lambda v: str(v))
def test_matches_mergekit_on_random_tensors(
    name: str, count: int, base_index: int | None, params: dict[str, Any], shape: tuple[int, ...]
) -> None:
    for seed in range(3):
        assert_conforms(name, random_inputs(name, count, shape, seed, torch.float32), base_index, params)


@pytest.mark.parametrize("name, count, base_index, params", CASES[::3], ids=lambda v: str(v))
def test_matches_mergekit_in_float64(name: str, count: int, base_index: int | None, params: dict[str, Any]) -> None:
    assert_conforms(name, random_inputs(name, count, (12, 9), 7, torch.float64), base_index, params)


def _edge_inputs(kind: str, count: int) -> list[torch.Tensor]:
    """Inputs of shape (6, 5) that probe degenerate geometry."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    rest = [torch.randn(6, 5, generator=g) for _ in range(count)]
    return {
        "identical": [a.clone() for _ in range(count)],
        "zeros": [torch.zeros(6, 5) for _ in range(count)],
        "one_zero": [a, torch.zeros(6, 5), *rest][:count],
        "same_models_other_base": [b] + [a.clone() for _ in range(count - 1)],
        "opposite": [a, -a, *rest][:count],
        "nearly_colinear": [a + 1e-4 * r for r in [b, *rest]][:count],
        "tiny": [1e-7 * r for r in [a, b, *rest]][:count],
        "huge": [1e4 * r for r in [a, b, *rest]][:count],
    }[kind]


EDGE_CASES = [
    ("model_stock", 3, 0, {}),
    ("model_stock", 3, 0, {"filter_wise": True}),
    ("nuslerp", 2, None, {"weight": [1.0, 1.0]}),
    ("nuslerp", 3, 0, {"weight": [1.0, 3.0], "nuslerp_flatten": False}),
    ("multislerp", 2, None, {"weight": [1.0, 1.0]}),
    ("multislerp", 3, 0, {"weight": [1.0, 2.0]}),
    ("karcher", 3, None, {}),
    ("nearswap", 2, 0, {"t": 0.1}),
    ("arcee_fusion", 2, 0, {}),
    ("ram", 3, 0, {}),
    ("ramplus_tl", 3, 0, {}),
]


@pytest.mark.parametrize(
    "kind", ["identical", "zeros", "one_zero", "same_models_other_base", "opposite", "nearly_colinear", "tiny"]
)
@pytest.mark.parametrize("name, count, base_index, params", EDGE_CASES, ids=lambda v: str(v))
def test_matches_mergekit_on_degenerate_inputs(
    kind: str, name: str, count: int, base_index: int | None, params: dict[str, Any]
) -> None:
    assert_conforms(name, _edge_inputs(kind, count), base_index, params)


@pytest.mark.parametrize("name, count, base_index, params", EDGE_CASES, ids=lambda v: str(v))
def test_matches_mergekit_on_large_values_relatively(
    name: str, count: int, base_index: int | None, params: dict[str, Any]
) -> None:
    """Values of magnitude 1e4 agree to float32 precision (an absolute 1e-6 is below one ulp there)."""
    tensors = _edge_inputs("huge", count)
    torch.testing.assert_close(ours(name, tensors, base_index, params), theirs(name, tensors, base_index, params))


def test_arcee_fusion_sampled_quantiles_match_mergekit_with_the_same_seed() -> None:
    g = torch.Generator().manual_seed(11)
    base = torch.randn(QUANTILE_SAMPLE_SIZE // 500 + 7, 501, generator=g)
    other = base + 0.1 * torch.randn(base.shape, generator=g)
    assert base.numel() > QUANTILE_SAMPLE_SIZE
    assert_conforms("arcee_fusion", [base, other], 0, {})


def test_multislerp_cancelling_directions_raise_like_mergekit() -> None:
    a = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    tensors, params = [a, -a, a, -a], {"weight": [1.0, 1.0, 1.0, 1.0]}
    with pytest.raises(ValueError, match="zero"):
        theirs("multislerp", tensors, None, params)
    with pytest.raises(MergeMethodError):
        ours("multislerp", tensors, None, params)


def test_multislerp_zero_weight_sum_is_an_error_not_nan() -> None:
    """Deliberate difference: mergekit 0.1.5 normalises by a zero sum and returns NaNs; we raise with a hint."""
    g = torch.Generator().manual_seed(0)
    tensors, params = [torch.randn(4, 3, generator=g) for _ in range(2)], {"weight": [1.0, -1.0]}
    assert torch.isnan(theirs("multislerp", tensors, None, params)).all()
    with pytest.raises(MergeMethodError):
        ours("multislerp", tensors, None, params)


@pytest.mark.parametrize("name", NAMES)
def test_parameters_match_mergekit(name: str) -> None:
    theirs_ = {
        p.name: (p.scope.value, None if p.required else p.default) for p in mergekit_registry.get(name).spec.parameters
    }
    ours_ = {p.name: (p.scope, None if p.required else p.default) for p in get_method(name).params}
    assert ours_ == theirs_


@pytest.mark.parametrize("name", NAMES)
def test_paper_links_match_mergekit(name: str) -> None:
    assert get_method(name).paper == mergekit_registry.get(name).spec.reference_url


def _spec_accepts(name: str, count: int, base_index: int | None) -> bool:
    """Whether our plan-time checks (base policy and input counts) accept these inputs."""
    spec = get_method(name)
    if spec.base == "required" and base_index is None:
        return False
    return spec.min_inputs <= count and (spec.max_inputs is None or count <= spec.max_inputs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("base_index", [None, 0])
def test_input_counts_accepted_exactly_where_mergekit_accepts_them(
    name: str, count: int, base_index: int | None
) -> None:
    """mergekit's contract either passes our plan-time checks and the kernel, or is refused by one of them."""
    contract = mergekit_registry.get(name).spec.contract
    params = {"weight": [1.0] * (count - (base_index is not None)), "t": 0.5}
    params = {k: v for k, v in params.items() if get_method(name).param(k)}
    tensors = random_inputs(name, count, (4, 3), 0, torch.float32)
    try:
        contract.validate_ids(list(range(count)), base_index)
    except ValueError:
        if _spec_accepts(name, count, base_index):
            with pytest.raises(MergeMethodError):
                ours(name, tensors, base_index, params)
        return
    assert _spec_accepts(name, count, base_index)
    assert_conforms(name, tensors, base_index, params)
