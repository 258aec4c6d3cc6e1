"""The TIES family: task_arithmetic, ties, dare, breadcrumbs, della and sce.

Hand-computed values, exact pruning counts under ties, errors, the random methods'
reproducibility and statistics, and where we deliberately differ from mergekit 0.1.5.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mergehub.errors import MergeMethodError
from mergehub.methods import _primitives, get_method
from mergehub.methods._ties_pipeline import KEEP_ALL, MAGNITUDE, EnergyWeights, RecipeWeights, task_vector_method
from mergehub.methods.ties_family import SPECS

FAMILY = tuple(spec.name for spec in SPECS)
GTA = tuple(name for name in FAMILY if name != "sce")  # mergekit's generalized task arithmetic
LARGE = (600, 501)
task_arithmetic, ties, breadcrumbs = (get_method(name).merge for name in ("task_arithmetic", "ties", "breadcrumbs"))
della, della_linear, sce = (
    get_method(name).merge for name in ("della", "della_linear", "sce")
)  # more positions than a sample and than one CPU chunk


def per_model(base_index: int, *values: float) -> tuple[float | None, ...]:
    """Per-model values for the non-base models, with None at the base index."""
    aligned: list[float | None] = list(values)
    aligned.insert(base_index, None)
    return tuple(aligned)


def call(name: str, tensors: list[torch.Tensor], seed: int = 0, **params: Any) -> torch.Tensor:
    """Our kernel with the base first, defaults filled and per-model scalars broadcast."""
    spec = get_method(name)
    kwargs: dict[str, Any] = {"generator": torch.Generator().manual_seed(seed)} if spec.random else {}
    for param in spec.params:
        value = params.get(param.name, param.default)
        if param.scope == "non_base":
            value = per_model(0, *(value if isinstance(value, list) else [value] * (len(tensors) - 1)))
        kwargs[param.argument] = value
    if "out_dtype" in params:
        kwargs["out_dtype"] = params["out_dtype"]
    return spec.kernel(tensors, base_index=0, **kwargs)


def models(count: int, shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    """A standard normal base and `count` models near it."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return [base] + [base + torch.randn(shape, generator=g) for _ in range(count)]


# Hand-computed values


def test_ties_trims_elects_signs_and_averages_agreeing_weights() -> None:
    base = torch.zeros(4)
    first = torch.tensor([3.0, -1.0, 2.0, 0.5])
    second = torch.tensor([-2.0, -2.0, 1.0, 4.0])
    merged = ties([base, first, second], base_index=0, weight=(None, 1.0, 0.5), density=(None, 0.75, 0.75))
    # Kept: [3, -1, 2, 0] and [-2, -2, 0, 4]; weighted [3, -1, 2, 0] and [-1, -1, 0, 2];
    # elected signs + - + +; position 1 averages -1 and -1 over weights 1.5.
    torch.testing.assert_close(merged, torch.tensor([3.0, -4 / 3, 2.0, 4.0]))


def test_task_arithmetic_adds_weighted_task_vectors_times_lambda() -> None:
    base, a, b = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 2.0]), torch.tensor([1.0, 4.0])
    merged = task_arithmetic([base, a, b], base_index=0, weight=(None, 0.5, 0.25), lambda_=2.0)
    torch.testing.assert_close(merged, torch.tensor([2.0, 3.0]))
    normalized = task_arithmetic([base, a, b], base_index=0, weight=(None, 0.5, 0.25), normalize=True)
    torch.testing.assert_close(normalized, torch.tensor([1 + 0.5 / 0.75, 2 + 0.5 / 0.75]))


def test_breadcrumbs_drops_outliers_then_the_smallest() -> None:
    base, model = torch.zeros(10), torch.arange(1.0, 11.0)
    kept = breadcrumbs([base, model], base_index=0, weight=(None, 1.0), density=(None, 0.5), gamma=(None, 0.1))
    torch.testing.assert_close(kept, torch.tensor([0, 0, 0, 0, 5, 6, 7, 8, 9, 0.0]))


def test_breadcrumbs_with_no_outliers_to_cut_keeps_the_largest_as_mergekit_0_1_5() -> None:
    base, model = torch.zeros(10), torch.arange(1.0, 11.0)
    kept = breadcrumbs([base, model], base_index=0, weight=(None, 1.0), density=(None, 0.5), gamma=(None, 0.01))
    torch.testing.assert_close(kept, torch.tensor([0, 0, 0, 0, 0, 6, 7, 8, 9, 10.0]))


def test_breadcrumbs_keeping_no_entry_zeroes_the_task_vector_as_mergekit_0_1_5() -> None:
    base, model = torch.zeros(10), torch.arange(1.0, 11.0)
    kept = breadcrumbs([base, model], base_index=0, weight=(None, 1.0), density=(None, 0.05), gamma=(None, 0.01))
    torch.testing.assert_close(kept, torch.zeros(10))


def test_sce_weights_task_vectors_by_mean_square() -> None:
    base, a, b = torch.zeros(2), torch.tensor([1.0, 1.0]), torch.tensor([3.0, -3.0])
    # Mean squares 1 and 9 give weights 0.1 and 0.9; position 1 elects -, erasing a there.
    merged = sce([base, a, b], base_index=0)
    torch.testing.assert_close(merged, torch.tensor([(0.1 * 1 + 0.9 * 3) / 1.0, -3.0]))


def test_steps_compose_beyond_the_registered_members() -> None:
    base, a, b = torch.zeros(2), torch.tensor([1.0, 1.0]), torch.tensor([3.0, -3.0])
    energy_sum = task_vector_method(
        "energy_sum", sparsify=KEEP_ALL, consensus=False, weighting=EnergyWeights(), summary="", paper=""
    )
    # Weights 0.1 and 0.9 (mean squares 1 and 9), summing to 1; no sign election.
    torch.testing.assert_close(energy_sum.merge([base, a, b], base_index=0), torch.tensor([2.8, -2.6]))
    trimmed_sum = task_vector_method(
        "trimmed_sum", sparsify=MAGNITUDE, consensus=False, weighting=RecipeWeights(False, False), summary="", paper=""
    )
    tensors = [base, torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 1.0])]
    merged = trimmed_sum.merge(tensors, base_index=0, weight=(None, 1.0, 1.0), density=(None, 0.5, 0.5))
    torch.testing.assert_close(merged, torch.tensor([-3.0, 2.0]))  # each keeps its larger entry; no sign election


def test_members_take_randomness_and_elementwise_from_their_steps() -> None:
    assert {n for n in FAMILY if get_method(n).random} == {"dare_ties", "dare_linear", "della", "della_linear"}
    assert {n for n in FAMILY if get_method(n).elementwise} == {"task_arithmetic"}


# Exact pruning counts


@pytest.mark.parametrize("density", [0.1, 0.37, 0.5, 0.93])
def test_magnitude_pruning_keeps_exactly_k_when_magnitudes_tie(density: float) -> None:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(LARGE, generator=g)
    steps = torch.tensor([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0])
    model = base + steps[torch.randint(0, 6, LARGE, generator=g)]
    merged = ties([base, model], base_index=0, weight=(None, 1.0), density=(None, density))
    assert int(torch.count_nonzero(merged - base)) == int(density * base.numel())


def test_equal_magnitudes_rank_by_position() -> None:
    merged = ties([torch.zeros(10), torch.ones(10)], base_index=0, weight=(None, 1.0), density=(None, 0.3))
    torch.testing.assert_close(merged, torch.tensor([0.0] * 7 + [1.0] * 3))


def test_equal_magnitudes_rank_by_position_across_chunks() -> None:
    base, model = torch.zeros(LARGE), -torch.ones(LARGE)
    top = ties([base, model], base_index=0, weight=(None, 1.0), density=(None, 0.3)).view(-1)
    kept = int(0.3 * base.numel())
    assert torch.equal(top.nonzero().view(-1), torch.arange(base.numel() - kept, base.numel()))
    band = breadcrumbs([base, model], base_index=0, weight=(None, 1.0), density=(None, 0.3), gamma=(None, 0.2))
    smallest = base.numel() - kept - int(0.2 * base.numel())
    assert torch.equal(band.view(-1).nonzero().view(-1), torch.arange(smallest, smallest + kept))


@pytest.mark.parametrize("name", ["ties", "breadcrumbs_ties"])
def test_a_model_equal_to_the_base_in_most_entries_prunes_exactly(name: str) -> None:
    g = torch.Generator().manual_seed(8)
    base = torch.randn(LARGE, generator=g)
    changed = torch.rand(LARGE, generator=g) < 0.3
    models = [base, torch.where(changed, base + 1, base), base.clone()]
    fewer = call(name, models, weight=[1.0, 1.0], density=0.2, gamma=0.0)
    assert int(torch.count_nonzero(fewer - base)) == int(0.2 * base.numel())
    every = call(name, models, weight=[1.0, 1.0], density=0.5, gamma=0.0)
    torch.testing.assert_close(every, models[1])


@pytest.mark.parametrize("density, gamma", [(0.5, 0.01), (0.3, 0.2), (0.9, 0.2)])
def test_breadcrumbs_keeps_exactly_its_band_when_magnitudes_tie(density: float, gamma: float) -> None:
    g = torch.Generator().manual_seed(2)
    base = torch.randn(LARGE, generator=g)
    model = base + torch.randint(1, 5, LARGE, generator=g).float()
    merged = breadcrumbs([base, model], base_index=0, weight=(None, 1.0), density=(None, density), gamma=(None, gamma))
    assert int(torch.count_nonzero(merged - base)) == int(density * base.numel())


@pytest.mark.parametrize("distinct", [1, 3, 4, 10_000])
@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5, 0.99, 1.0])
def test_selection_among_few_distinct_scores_finds_the_stable_sorts_element(
    distinct: int, fraction: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scores of bfloat16 task vectors take few values, many times each: counting per value finds the same
    element (value, and position among equals) as a stable sort."""
    counted = []
    count_at_values = _primitives._count_at_values
    monkeypatch.setattr(
        _primitives, "_count_at_values", lambda *args: counted.append(found := count_at_values(*args)) or found
    )
    g = torch.Generator().manual_seed(distinct)
    values = torch.randint(1, distinct + 1, (300_000,), generator=g).float().div_(64)
    rank = min(int(fraction * values.numel()), values.numel() - 1)

    def score(positions: slice | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return values[positions].clone() if out is None else out.copy_(values[positions])

    ordered, order = values.sort(stable=True)
    expected = _primitives.Bound(ordered[rank].item(), int(order[rank]))
    assert _primitives.order_statistic(score, values, rank) == expected
    if distinct <= _primitives.FEW_VALUES:
        assert counted == [expected]  # counted, not gathered
    elif 0 < fraction < 0.99:
        assert not counted  # a bracket holding many values is gathered


def test_selection_falls_back_to_every_score_when_the_sample_misleads(monkeypatch: pytest.MonkeyPatch) -> None:
    values = torch.randn(300_000, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(_primitives, "_sample_bracket", lambda *args: _primitives.Bracket(5.0, 6.0, (5.0, 6.0)))

    def score(positions: slice | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return values[positions].clone() if out is None else out.copy_(values[positions])

    assert _primitives.order_statistic(score, values, 1234) == _primitives.Bound(values.sort().values[1234].item())


# Errors


@pytest.mark.parametrize("name", FAMILY)
def test_a_missing_base_is_a_clear_error(name: str) -> None:
    spec = get_method(name)
    tensors = models(2, (3,))
    kwargs = {p.argument: (1.0, 1.0, 1.0) if p.scope != "shared" else p.default for p in spec.params}
    kwargs |= {"generator": torch.Generator()} if spec.random else {}
    with pytest.raises(MergeMethodError, match="needs a base model") as error:
        spec.kernel(tensors, base_index=None, **kwargs)
    assert "base_model" in error.value.hint


def test_per_model_values_must_match_the_models() -> None:
    with pytest.raises(MergeMethodError, match="`density` has 2 values for 3") as error:
        ties(models(2, (3,)), base_index=0, weight=(None, 1.0, 1.0), density=(None, 0.5))
    assert error.value.hint


def test_shapes_must_match() -> None:
    with pytest.raises(MergeMethodError, match="different shapes"):
        task_arithmetic([torch.zeros(3), torch.zeros(4)], base_index=0, weight=(None, 1.0))


@pytest.mark.parametrize("density, epsilon", [(0.5, 0.5), (0.2, 0.25), (0.9, 0.1)])
def test_della_epsilon_must_keep_probabilities_inside_0_1(density: float, epsilon: float) -> None:
    with pytest.raises(MergeMethodError, match="epsilon") as error:
        della(
            models(1, (4, 4)),
            base_index=0,
            weight=(None, 1.0),
            density=(None, density),
            epsilon=(None, epsilon),
            generator=torch.Generator(),
        )
    assert "Choose epsilon below" in error.value.hint


@pytest.mark.parametrize("name", FAMILY)
def test_specs_require_a_base_and_accept_any_number_of_models(name: str) -> None:
    spec = get_method(name)
    assert (spec.base, spec.min_inputs, spec.max_inputs) == ("required", 1, None)


# Deliberate differences from mergekit 0.1.5


def test_weights_cancelling_in_decimal_are_not_divided_by_their_float32_residue() -> None:
    # mergekit 0.1.5 sums 1.1, -0.7, -0.4 in float32 to 3e-8 and divides by it (7e7 here).
    base = torch.zeros(4)
    tensors = [base, base + 1, base - 1, base - 1]
    weights = (None, 1.1, -0.7, -0.4)
    merged = ties(tensors, base_index=0, weight=weights, density=(None, 1.0, 1.0, 1.0))
    torch.testing.assert_close(merged, torch.full((4,), 2.2))
    summed = task_arithmetic(tensors, base_index=0, weight=weights, normalize=True)
    torch.testing.assert_close(summed, torch.full((4,), 2.2))


def test_della_keeps_one_entry_rows_with_probability_density() -> None:
    # mergekit 0.1.5 computes 0/0 for rows of one entry and torch.bernoulli rejects the NaN.
    base = torch.zeros(40_000, 1)
    merged = della(
        [base, base + 1],
        base_index=0,
        weight=(None, 1.0),
        density=(None, 0.3),
        epsilon=(None, 0.1),
        rescale=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert abs(merged.mean().item() - 0.3) < 0.01


# Random methods


@pytest.mark.parametrize(
    "random_name, exact_name, params",
    [
        ("dare_ties", "ties", {"weight": [0.3, -0.7], "normalize": True, "lambda": 1.5}),
        ("dare_linear", "task_arithmetic", {"weight": [0.3, 0.7], "normalize": True}),
        ("della", "ties", {"weight": [1.0, 0.5], "normalize": True}),
        ("della_linear", "task_arithmetic", {"weight": [1.0, 2.0], "lambda": 0.5}),
    ],
)
def test_random_methods_at_density_1_equal_their_deterministic_counterpart(
    random_name: str, exact_name: str, params: dict[str, Any]
) -> None:
    tensors = models(2, (37, 29))
    expected = call(exact_name, tensors, **params, density=1.0)
    assert torch.equal(call(random_name, tensors, **params, density=1.0), expected)


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_random_methods_depend_only_on_the_seed(name: str) -> None:
    tensors = models(2, LARGE)
    copies = [t.clone() for t in tensors]
    first = call(name, tensors, seed=7, weight=[0.6, 0.4], density=0.5)
    assert torch.equal(first, call(name, tensors, seed=7, weight=[0.6, 0.4], density=0.5))
    assert not torch.equal(first, call(name, tensors, seed=8, weight=[0.6, 0.4], density=0.5))
    assert all(torch.equal(t, c) for t, c in zip(tensors, copies))


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_random_methods_do_not_depend_on_the_thread_count(name: str) -> None:
    tensors = models(3, LARGE)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(call(name, tensors, seed=3, weight=[0.6, 0.4, -0.2], density=0.4))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("name", ["dare_linear", "della_linear"])
@pytest.mark.parametrize("density", [0.2, 0.5, 0.8])
def test_kept_fraction_is_density_as_in_mergekit(name: str, density: float) -> None:
    api = pytest.importorskip("mergekit.merge_methods.api")
    base = torch.zeros(500, 400)
    model = torch.randn(500, 400, generator=torch.Generator().manual_seed(4)).add_(5)
    params = {"weight": [1.0], "density": density, "rescale": False}
    kept = torch.count_nonzero(call(name, [base, model], **params)).item() / base.numel()
    torch.manual_seed(0)
    theirs = torch.count_nonzero(api.merge_tensors([base, model], name, parameters=params, base_index=0)).item()
    assert abs(kept - density) < 0.005
    assert abs(kept - theirs / base.numel()) < 0.007


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_rescale_restores_the_l1_norm_as_in_mergekit(name: str) -> None:
    api = pytest.importorskip("mergekit.merge_methods.api")
    tensors = models(1, (300, 200), seed=5)
    params = {"weight": [1.0], "density": 0.4}
    l1 = (tensors[1] - tensors[0]).abs().sum()
    ours_l1 = (call(name, tensors, **params) - tensors[0]).abs().sum()
    torch.manual_seed(0)
    theirs_l1 = (api.merge_tensors(tensors, name, parameters=params, base_index=0) - tensors[0]).abs().sum()
    torch.testing.assert_close(ours_l1, l1, rtol=1e-4, atol=0)
    torch.testing.assert_close(theirs_l1, l1, rtol=1e-4, atol=0)


def test_della_keeps_larger_magnitudes_more_often_as_mergekit() -> None:
    api = pytest.importorskip("mergekit.merge_methods.api")
    base = torch.zeros(400, 1000)
    model = torch.randn(400, 1000, generator=torch.Generator().manual_seed(6))
    params = {"weight": [1.0], "density": 0.5, "epsilon": 0.3, "rescale": False}
    ours_kept = call("della_linear", [base, model], **params) != 0
    torch.manual_seed(0)
    theirs_kept = api.merge_tensors([base, model], "della_linear", parameters=params, base_index=0) != 0
    rank = model.abs().argsort(dim=1).argsort(dim=1)
    for decile in range(10):
        in_decile = (rank >= decile * 100) & (rank < (decile + 1) * 100)
        expected = 0.2 + 0.6 * (decile * 100 + 49.5) / 999
        ours_rate = ours_kept[in_decile].float().mean().item()
        theirs_rate = theirs_kept[in_decile].float().mean().item()
        assert abs(ours_rate - expected) < 0.01
        assert abs(ours_rate - theirs_rate) < 0.015


def test_della_ranks_along_dim_1_of_higher_dimensional_tensors() -> None:
    base = torch.zeros(30, 400, 3)
    model = torch.arange(400.0).view(1, 400, 1).expand(30, 400, 3).contiguous()
    kept = (
        della_linear(
            [base, model],
            base_index=0,
            weight=(None, 1.0),
            density=(None, 0.5),
            epsilon=(None, 0.45),
            rescale=False,
            generator=torch.Generator().manual_seed(0),
        )
        != 0
    )
    low, high = kept[:, :100].float().mean().item(), kept[:, 300:].float().mean().item()
    assert low < 0.25 and high > 0.75


# Shapes, dtypes and devices


@pytest.mark.parametrize("shape", [(0,), (3, 0), (), (1,), (2, 1, 3)], ids=str)
@pytest.mark.parametrize("name", FAMILY)
def test_empty_scalar_and_single_entry_tensors_merge(name: str, shape: tuple[int, ...]) -> None:
    tensors = models(2, shape)
    params = {"weight": [0.5, 0.5], "density": 0.5} if name != "sce" else {"select_topk": 0.5}
    merged = call(name, tensors, **params)
    assert merged.shape == shape and torch.isfinite(merged).all()


@pytest.mark.parametrize("name", FAMILY)
def test_float64_inputs_give_float64_results(name: str) -> None:
    tensors = [t.double() for t in models(2, (9, 7))]
    merged = call(name, tensors, weight=[0.5, 0.5], density=0.5) if name != "sce" else call(name, tensors)
    assert merged.dtype == torch.float64 and merged.shape == (9, 7) and torch.isfinite(merged).all()


@pytest.mark.parametrize("name", FAMILY)
def test_stored_bfloat16_inputs_merge_as_their_float32_widening(name: str) -> None:
    """The kernels widen chunk by chunk what the executor hands them as stored: the same bits as widening first."""
    stored = [t.to(torch.bfloat16) for t in models(2, LARGE)]
    params = {"weight": [0.5, -0.3], "density": 0.4} if name != "sce" else {"select_topk": 0.4}
    widened = call(name, [t.float() for t in stored], **params)
    merged = call(name, stored, **params)
    assert merged.dtype == torch.float32 and torch.equal(merged, widened)


@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_results_written_in_the_output_dtype_equal_casting_the_float32_result(
    name: str, out_dtype: torch.dtype
) -> None:
    """The executor asks for its output dtype, which the kernel writes chunk by chunk: the same bits as casting."""
    stored = [t.to(torch.bfloat16) for t in models(2, LARGE)]
    params = {"weight": [0.5, -0.3], "density": 0.4} if name != "sce" else {"select_topk": 0.4}
    cast = call(name, stored, **params).to(out_dtype)
    written = call(name, stored, **params, out_dtype=out_dtype)
    assert written.dtype == out_dtype and written.shape == LARGE and torch.equal(written, cast)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", FAMILY)
def test_cuda_matches_cpu(name: str) -> None:
    tensors = models(3, (1000, 700))
    params = {"weight": [0.5, 0.3, -0.2], "density": 0.4} if name != "sce" else {"select_topk": 0.4}
    on_cpu = call(name, tensors, **params)
    cuda = [t.cuda() for t in tensors]
    spec = get_method(name)
    kwargs: dict[str, Any] = {"generator": torch.Generator(device="cuda").manual_seed(0)} if spec.random else {}
    for param in spec.params:
        value = params.get(param.name, param.default)
        if param.scope == "non_base":
            value = per_model(0, *(value if isinstance(value, list) else [value] * 3))
        kwargs[param.argument] = value
    on_gpu = spec.kernel(cuda, base_index=0, **kwargs)
    assert on_gpu.device.type == "cuda" and all(torch.equal(t, c.cpu()) for t, c in zip(tensors, cuda))
    if spec.random:
        assert torch.isfinite(on_gpu).all()
    else:
        torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-5, atol=1e-5)
