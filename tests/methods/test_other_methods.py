"""Hand-computed checks of model_stock, nuslerp, multislerp, karcher, nearswap, arcee_fusion, ram and ramplus_tl;
slerp's result written in the output dtype."""

from __future__ import annotations

import math

import pytest
import torch

from mergehub.errors import MergeMethodError
from mergehub.methods import get_method
from mergehub.methods.arcee_fusion import QUANTILE_SAMPLE_SIZE

R = 1 / math.sqrt(2)
NAMES = ("model_stock", "nuslerp", "multislerp", "karcher", "nearswap", "arcee_fusion", "ram", "ramplus_tl")
model_stock, nuslerp, multislerp, karcher, nearswap, arcee_fusion, ram, ramplus_tl = (
    get_method(name).merge for name in NAMES
)


def tensor(*values: float) -> torch.Tensor:
    """A float32 vector."""
    return torch.tensor(values, dtype=torch.float32)


def close(actual: torch.Tensor, expected: torch.Tensor | list, atol: float = 1e-6) -> None:
    """Assert equal to `expected` within `atol`."""
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=0, atol=atol)


def generator() -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(0)


def run(name: str, tensors: list[torch.Tensor], base_index: int | None = 0) -> torch.Tensor:
    """Call a method's kernel with its defaults, weight 1 per model and t = 0.5."""
    spec = get_method(name)
    kwargs: dict = {"generator": generator()} if spec.random else {}
    for param in spec.params:
        if param.scope == "non_base":
            kwargs[param.argument] = tuple(None if i == base_index else 1.0 for i in range(len(tensors)))
        else:
            kwargs[param.argument] = 0.5 if param.required else param.default
    return spec.kernel(tensors, base_index=base_index, **kwargs)


# model_stock


def test_model_stock_interpolates_by_the_angle_ratio() -> None:
    cos = R  # angle between task vectors (1, 0) and (1, 1)
    t = 2 * cos / (1 + cos)
    result = model_stock([tensor(0, 0), tensor(1, 0), tensor(1, 1)], base_index=0)
    close(result, [t * 1.0, t * 0.5])


def test_model_stock_keeps_base_for_orthogonal_and_returns_average_for_identical_task_vectors() -> None:
    base = tensor(1, 1)
    close(model_stock([base, tensor(2, 1), tensor(1, 2)], base_index=0), [1, 1])
    close(model_stock([tensor(3, 4), base, tensor(3, 4), tensor(3, 4)], base_index=1), [3, 4])


def test_model_stock_filter_wise_measures_each_row() -> None:
    base = torch.zeros(2, 2)
    m1 = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    m2 = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    close(model_stock([base, m1, m2], base_index=0, filter_wise=True), [[0, 0], [2, 2]])
    whole = model_stock([base, m1, m2], base_index=0, filter_wise=False)
    cos = 8 / math.sqrt(9 * 9)
    close(whole, (2 * cos / (1 + cos)) * (m1 + m2) / 2)


def test_model_stock_keeps_base_where_the_ratio_is_singular() -> None:
    # two opposite task vectors: cos = -1, so 1 + (k - 1) cos = 0
    close(model_stock([tensor(1, 1), tensor(2, 1), tensor(0, 1)], base_index=0), [1, 1])


def test_model_stock_of_zero_and_identical_models_is_the_base() -> None:
    z = torch.zeros(5)
    close(model_stock([z, z, z], base_index=0), z)
    a = torch.arange(5.0)
    close(model_stock([a, a.clone(), a.clone()], base_index=0), a)


@pytest.mark.parametrize("count, base_index", [(2, 0), (3, None)])
def test_model_stock_needs_a_base_and_two_models(count: int, base_index: int | None) -> None:
    with pytest.raises(MergeMethodError) as info:
        model_stock([torch.ones(3)] * count, base_index=base_index)
    assert info.value.hint


# nuslerp


def test_nuslerp_weights_set_t_and_zero_sum_means_halfway() -> None:
    e1, e2 = tensor(1, 0), tensor(0, 1)
    close(nuslerp([e1, e2], base_index=None, weight=(1.0, 1.0)), [R, R])
    close(nuslerp([e1, e2], base_index=None, weight=(1.0, 3.0)), [math.cos(3 * math.pi / 8), math.sin(3 * math.pi / 8)])
    close(nuslerp([e1, e2], base_index=None, weight=(1.0, -1.0)), [R, R])


def test_nuslerp_with_base_interpolates_task_vectors() -> None:
    base = tensor(1, 1)
    result = nuslerp([tensor(2, 1), base, tensor(1, 2)], base_index=1, weight=(1.0, None, 1.0))
    close(result, [1 + R, 1 + R])


def test_nuslerp_rows_columns_and_flat() -> None:
    v0 = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    v1 = torch.tensor([[0.0, 1.0], [0.0, 5.0]])
    rows = nuslerp([v0, v1], base_index=None, weight=(1.0, 1.0), nuslerp_flatten=False)
    close(rows, [[R, R], [0, 4]])  # second row colinear: linear interpolation
    columns = nuslerp([v0, v1], base_index=None, weight=(1.0, 1.0), nuslerp_flatten=False, nuslerp_row_wise=True)
    close(columns, nuslerp([v0.T, v1.T], base_index=None, weight=(1.0, 1.0), nuslerp_flatten=False).T)
    flat = nuslerp([v0, v1], base_index=None, weight=(1.0, 1.0))
    close(flat, nuslerp([v0.reshape(-1), v1.reshape(-1)], base_index=None, weight=(1.0, 1.0)).reshape(2, 2))


def test_nuslerp_colinear_and_zero_inputs_fall_back_to_linear() -> None:
    a = tensor(1, 2)
    close(nuslerp([a, 3 * a], base_index=None, weight=(1.0, 1.0)), 2 * a)
    close(nuslerp([a, -a], base_index=None, weight=(1.0, 1.0)), [0, 0])
    z = torch.zeros(2)
    close(nuslerp([a, z], base_index=None, weight=(1.0, 1.0)), R * a)  # zero has no direction: angle 90°


def test_nuslerp_needs_exactly_two_non_base_models() -> None:
    with pytest.raises(MergeMethodError):
        nuslerp([torch.ones(2)] * 3, base_index=None, weight=(1.0, 1.0, 1.0))
    with pytest.raises(MergeMethodError):
        nuslerp([torch.ones(2)] * 2, base_index=0, weight=(None, 1.0))


# multislerp


def test_multislerp_of_symmetric_directions_is_their_centre_times_mean_norm() -> None:
    e1, e2, e3 = torch.eye(3)
    close(multislerp([e1, 3 * e2], base_index=None, weight=(1.0, 1.0)), [2 * R, 2 * R, 0])
    c = 1 / math.sqrt(3)
    close(multislerp([e1, e2, e3], base_index=None, weight=(2.0, 2.0, 2.0)), [c, c, c])


def test_multislerp_unnormalized_weights_scale_the_norm() -> None:
    e1, e2 = tensor(1, 0), tensor(0, 1)
    close(multislerp([e1, e2], base_index=None, weight=(0.5, 0.5), normalize_weights=False), [R, R])
    close(multislerp([e1, e2], base_index=None, weight=(1.0, 1.0), normalize_weights=False), [2 * R, 2 * R])


def test_multislerp_with_base_interpolates_task_vectors() -> None:
    base = tensor(5, 5)
    result = multislerp([base, tensor(6, 5), tensor(5, 6)], base_index=0, weight=(None, 1.0, 1.0))
    close(result, [5 + R, 5 + R])


def test_multislerp_single_model_is_a_copy() -> None:
    a = tensor(1, 2)
    result = multislerp([tensor(0, 0), a], base_index=0, weight=(None, 1.0))
    close(result, a)
    assert result.data_ptr() != a.data_ptr()


def test_multislerp_two_balanced_opposite_models_are_averaged_linearly() -> None:
    a = tensor(1, 2)
    close(multislerp([a, -a], base_index=None, weight=(1.0, 1.0)), [0, 0])
    close(multislerp([a, -2 * a], base_index=None, weight=(1.0, 1.0)), -0.5 * a)
    # unbalanced weights keep the heavier direction, at the weighted mean norm
    close(multislerp([a, -a], base_index=None, weight=(3.0, 1.0)), a)


def test_multislerp_three_cancelling_directions_raise() -> None:
    a = tensor(1, 2)
    with pytest.raises(MergeMethodError, match="cancel"):
        multislerp([a, -a, a, -a], base_index=None, weight=(1.0, 1.0, 1.0, 1.0))


def test_multislerp_zero_weight_sum_raises_instead_of_nan() -> None:
    """Deliberate difference: mergekit 0.1.5 divides by the zero sum and returns all-NaN tensors."""
    with pytest.raises(MergeMethodError) as info:
        multislerp([tensor(1, 0), tensor(0, 1)], base_index=None, weight=(1.0, -1.0))
    assert "normalize_weights" in (info.value.hint or "")
    result = multislerp([tensor(1, 0), tensor(0, 1)], base_index=None, weight=(1.0, -1.0), normalize_weights=False)
    assert torch.isfinite(result).all()


def test_multislerp_needs_a_non_base_model() -> None:
    with pytest.raises(MergeMethodError):
        multislerp([tensor(1, 2)], base_index=0, weight=(None,))


# karcher


def test_karcher_of_two_directions_is_the_geodesic_midpoint_times_mean_norm() -> None:
    close(karcher([tensor(1, 0), tensor(0, 3)]), [2 * R, 2 * R])


def test_karcher_on_a_circle_averages_angles() -> None:
    # angles 0°, 0°, 90°: the Karcher mean is at 30°, unlike the normalised Euclidean mean (26.6°)
    e1, e2 = tensor(1, 0), tensor(0, 1)
    close(karcher([e1, e1.clone(), e2]), [math.cos(math.pi / 6), math.sin(math.pi / 6)])


def test_karcher_leaves_directionless_inputs_out_of_the_direction_only() -> None:
    close(karcher([tensor(2, 0), torch.zeros(2)]), [1, 0])
    close(karcher([torch.zeros(3), torch.zeros(3)]), torch.zeros(3))
    close(karcher([tensor(1e-7, 0), tensor(0, 1e-7)]), [0, 0], atol=0)  # norms below tol


def test_karcher_of_identical_inputs_and_of_one_input() -> None:
    a = torch.arange(1.0, 7.0).reshape(2, 3)
    close(karcher([a, a.clone(), a.clone()]), a)
    single = karcher([a])
    close(single, a)
    assert single.data_ptr() != a.data_ptr()


def test_karcher_max_iter_zero_returns_the_normalised_euclidean_mean() -> None:
    e1, e2 = tensor(1, 0), tensor(0, 1)
    direction = tensor(2, 1) / math.sqrt(5)
    close(karcher([e1, e1.clone(), e2], max_iter=0), direction)


# nearswap


def test_nearswap_swaps_where_models_are_within_t() -> None:
    base = torch.zeros(3)
    other = tensor(0.05, 0.5, 2.0)
    # weights min(1, t / |diff|) = 1, 0.2, 0.05
    close(nearswap([base, other], base_index=0, t=0.1), [0.05, 0.1, 0.1])
    close(nearswap([other, base], base_index=1, t=0.1), [0.05, 0.1, 0.1])


def test_nearswap_of_identical_models_and_t_zero_is_the_base() -> None:
    a = tensor(1, 2, 3)
    close(nearswap([a, a.clone()], base_index=0, t=0.5), a)
    close(nearswap([a, -a], base_index=0, t=0.0), a)


# arcee_fusion


def test_arcee_fusion_takes_only_outlying_importance() -> None:
    base = torch.zeros(8)
    other = tensor(1, 2, 3, 4, 5, 6, 7, 20)
    # |diff| quartiles (lower order statistics): q1 = 2, median = 4, q3 = 6 -> threshold 10
    result = arcee_fusion([base, other], base_index=0, generator=generator())
    close(result, [0, 0, 0, 0, 0, 0, 0, 20])


def test_arcee_fusion_of_identical_models_is_the_base() -> None:
    a = torch.randn(4, 6, generator=generator())
    close(arcee_fusion([a, a.clone()], base_index=0, generator=generator()), a)


def test_arcee_fusion_samples_large_tensors_reproducibly() -> None:
    base = torch.randn(QUANTILE_SAMPLE_SIZE + 1000, generator=generator())
    other = base + torch.randn(base.shape, generator=torch.Generator().manual_seed(1))
    first = arcee_fusion([base, other], base_index=0, generator=generator())
    second = arcee_fusion([base, other], base_index=0, generator=generator())
    assert torch.equal(first, second)
    taken = (first == other).float().mean().item()
    assert 0.0 < taken < 0.2


# ram, ramplus_tl


def test_ram_averages_only_over_models_that_changed_a_parameter() -> None:
    base = torch.zeros(4)
    m1 = tensor(1, 0, 2, 1e-6)
    m2 = tensor(3, 0, 0, 1e-6)
    close(ram([base, m1, m2], base_index=0), [2, 0, 2, 0])
    close(ram([base, m1, m2], base_index=0, epsilon=1e-7), [2, 0, 2, 1e-6])


def test_ramplus_tl_boosts_unique_entries_by_the_overlap_ratio() -> None:
    base = torch.zeros(4)
    m1 = tensor(1, 0, 2, 0)  # one shared, one unique entry: ratio 1
    m2 = tensor(3, 0, 0, 0)  # only shared entries: ratio clamped to alpha
    close(ramplus_tl([base, m1, m2], base_index=0, r=0.5, alpha=1.0), [2, 0, 3, 0])
    close(ramplus_tl([base, m1, m2], base_index=0), [2, 0, 2 * (1 + 0.1 * 0.2), 0])


@pytest.mark.parametrize("kernel", [ram, ramplus_tl])
def test_ram_with_only_the_base_copies_it(kernel) -> None:
    a = tensor(1, 2)
    result = kernel([a], base_index=0)
    close(result, a)
    assert result.data_ptr() != a.data_ptr()


# every method


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 4)])
def test_methods_keep_shape_and_dtype_and_leave_inputs_alone(name: str, shape: tuple[int, ...]) -> None:
    g = generator()
    count = get_method(name).max_inputs or 3
    tensors = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(count)]
    copies = [t.clone() for t in tensors]
    result = run(name, tensors)
    assert result.shape == shape and result.dtype == torch.float64
    assert torch.isfinite(result).all()
    for tensor_, copy in zip(tensors, copies, strict=True):
        assert torch.equal(tensor_, copy)


@pytest.mark.parametrize("name", NAMES)
def test_methods_of_zero_tensors_are_zero(name: str) -> None:
    count = get_method(name).max_inputs or 3
    close(run(name, [torch.zeros(3, 4) for _ in range(count)]), torch.zeros(3, 4))


@pytest.mark.parametrize("name", NAMES)
def test_methods_of_identical_models_return_that_model(name: str) -> None:
    a = torch.randn(3, 4, generator=generator())
    count = get_method(name).max_inputs or 3
    close(run(name, [a.clone() for _ in range(count)]), a)


@pytest.mark.parametrize(
    "name, base, min_inputs, max_inputs",
    [
        ("slerp", "required", 2, 2),
        ("nearswap", "required", 2, 2),
        ("arcee_fusion", "required", 2, 2),
        ("model_stock", "required", 3, None),
        ("nuslerp", "optional", 2, 3),
        ("multislerp", "optional", 1, None),
        ("karcher", "ignored", 1, None),
        ("ram", "required", 1, None),
        ("ramplus_tl", "required", 1, None),
    ],
)
def test_input_contracts(name: str, base: str, min_inputs: int, max_inputs: int | None) -> None:
    spec = get_method(name)
    assert (spec.base, spec.min_inputs, spec.max_inputs) == (base, min_inputs, max_inputs)
    assert spec.summary and spec.kernel.__doc__


@pytest.mark.parametrize("name", ["nearswap", "arcee_fusion"])
@pytest.mark.parametrize("count, base_index", [(1, 0), (3, 0), (2, None)])
def test_two_model_methods_reject_other_counts(name: str, count: int, base_index: int | None) -> None:
    with pytest.raises(MergeMethodError) as info:
        run(name, [torch.ones(2) for _ in range(count)], base_index)
    assert "exactly one other model" in str(info.value) and info.value.hint


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_methods_run_on_cuda(name: str) -> None:
    g = generator()
    count = get_method(name).max_inputs or 3
    tensors = [torch.randn(64, 48, generator=g) for _ in range(count)]
    on_cpu = run(name, tensors)
    on_gpu = run(name, [t.cuda() for t in tensors])
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_slerp_writes_the_output_dtype_as_casting_its_float32_result(out_dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(4)
    stored = [torch.randn(700, 600, generator=g).to(torch.bfloat16) for _ in range(2)]
    kernel = get_method("slerp").kernel
    cast = kernel(stored, base_index=0, t=0.3, out_dtype=None).to(out_dtype)
    written = kernel(stored, base_index=0, t=0.3, out_dtype=out_dtype)
    assert written.dtype == out_dtype and torch.equal(written, cast)
