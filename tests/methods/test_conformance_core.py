"""linear, slerp and passthrough against mergekit 0.1.5's own kernels (merge_tensors), in float32."""

from __future__ import annotations

import pytest
import torch

from mergehub.methods import get_method

mergekit_api = pytest.importorskip("mergekit.merge_methods.api")

SHAPES = [(7,), (64,), (16, 33), (31, 17), (5, 4, 3), (256, 1024)]


def _inputs(shape: tuple[int, ...], count: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return [base] + [base + 0.3 * torch.randn(shape, generator=g) for _ in range(count - 1)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_linear(shape, normalize):
    tensors = _inputs(shape, 3, 1)
    weights = (0.5, 0.3, 0.4)
    ours = get_method("linear").merge(tensors, weight=weights, normalize=normalize)
    theirs = mergekit_api.merge_tensors(tensors, "linear", parameters={"weight": list(weights), "normalize": normalize})
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("base_index", [0, 1])
def test_slerp(shape, t, base_index):
    tensors = _inputs(shape, 2, 2)
    ours = get_method("slerp").merge(tensors, base_index=base_index, t=t)
    theirs = mergekit_api.merge_tensors(tensors, "slerp", parameters={"t": t}, base_index=base_index)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_slerp_of_a_large_tensor_is_nearer_the_exact_result_than_mergekits():
    """The angle's sums run in float32 chunks with a float64 total: nearer the float64 result than mergekit's
    whole-tensor float32 sums, and within their rounding (1e-5 relative) of mergekit."""
    tensors = _inputs((2048, 4096), 2, 5)
    ours = get_method("slerp").merge(tensors, base_index=0, t=0.3)
    theirs = mergekit_api.merge_tensors(tensors, "slerp", parameters={"t": 0.3}, base_index=0)
    exact = get_method("slerp").merge([t.double() for t in tensors], base_index=0, t=0.3)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours.double() - exact).abs().max() < (theirs.double() - exact).abs().max() / 4


@pytest.mark.parametrize("case", ["identical", "opposite", "zero"])
def test_slerp_degenerate_pairs(case):
    a = torch.randn(40, 9, generator=torch.Generator().manual_seed(3))
    b = {"identical": a.clone(), "opposite": -a, "zero": torch.zeros_like(a)}[case]
    ours = get_method("slerp").merge([a, b], base_index=0, t=0.4)
    theirs = mergekit_api.merge_tensors([a, b], "slerp", parameters={"t": 0.4}, base_index=0)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [None, 0.5])
def test_passthrough(scale):
    (tensor,) = _inputs((12, 5), 1, 4)
    ours = get_method("passthrough").merge([tensor], scale=(scale,))
    theirs = mergekit_api.merge_tensors(
        [tensor], "passthrough", parameters={"scale": scale} if scale is not None else None
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
