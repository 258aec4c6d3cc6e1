"""Math shared by several merge methods: weighting, task vectors, pruning, sign election.

Task-vector methods work on flat views of their inputs one chunk of positions at a time,
in a few chunk-sized scratch rows allocated once per call (`scratch`): the only full-size
allocations are the result and, for random pruning, a boolean mask per model. Fresh
allocations page-fault on every use and would cost more than the arithmetic.

A `Score` gives the values that pruning ranks at some flat positions; a `Mask` gives 0/1
multipliers saying which positions of a chunk a task vector keeps. On CPU, comparisons that
write booleans and `torch.where` are several times slower than float arithmetic, so masks
are float 0/1 rows built by in-place comparisons.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mergehub import pages
from mergehub.errors import MergeMethodError

Positions = slice | torch.Tensor
Score = Callable[[Positions, torch.Tensor | None], torch.Tensor]
"""Scores at flat positions (a chunk's slice or a tensor of indices), written into `out` when given."""
Mask = Callable[..., torch.Tensor]
"""0/1 multipliers for a chunk's positions, computed in the given (2, chunk length) scratch rows:
`mask(positions, rows)`, or `mask(positions, rows, scored=True)` when `rows[0]` already holds the chunk's
scores (a mask that ranks no scores ignores it)."""

CPU_CHUNK = 1 << 18
CUDA_CHUNK = 1 << 24
SAMPLE_SIZE = 1 << 16
SAMPLE_BLOCK = 4
"""Sampled positions come in aligned runs of this many, one memory access each (4x fewer than single positions)."""
SAMPLE_STRIDE = 2654435761  # a large odd multiplier: spreads the sample's runs over the tensor
FEW_VALUES = 4
"""Up to this many distinct sampled scores in a bracket, selection counts the scores at each instead of gathering."""
FLOAT32_EPS = 2.0**-23


def check_same_shape(tensors: Sequence[torch.Tensor]) -> None:
    """Raise when the inputs do not all have one shape."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise MergeMethodError(
            f"Input tensors have different shapes: {sorted(shapes)}.",
            hint="Merge only models of one architecture and size.",
        )


def require_base(method: str, tensors: Sequence[torch.Tensor], base_index: int | None) -> int:
    """The base index, checked to name one of `tensors`.

    Raises:
        MergeMethodError: there is no base model.
    """
    if base_index is None or not 0 <= base_index < len(tensors):
        raise MergeMethodError(
            f"{method} needs a base model among its {len(tensors)} inputs.",
            hint="Set `base_model:` in the recipe to the model the others were fine-tuned from.",
        )
    return base_index


def check_per_input(method: str, tensors: Sequence[torch.Tensor], **values: Sequence) -> None:
    """Raise when a per-input parameter does not give one value per input tensor."""
    for name, given in values.items():
        if len(given) != len(tensors):
            raise MergeMethodError(
                f"{method}: `{name}` has {len(given)} values for {len(tensors)} input models.",
                hint=f"Give `{name}` once per model in the recipe.",
            )


def flat_inputs(
    method: str, tensors: Sequence[torch.Tensor], base_index: int | None, **per_input: Sequence
) -> tuple[list[torch.Tensor], int]:
    """The inputs as flat tensors and the base index, after checking shapes, base and per-input parameters."""
    check_same_shape(tensors)
    base_index = require_base(method, tensors, base_index)
    check_per_input(method, tensors, **per_input)
    return [t.reshape(-1) for t in tensors], base_index


class Widened:
    """A flat tensor read in a wider dtype one chunk (or gather) at a time, so no whole widened copy is ever made.

    It answers what chunked code asks of a flat tensor: `t[positions]` (widened), `numel()`, `dtype`
    (the wide one) and `device`; `stored` is the tensor itself.
    """

    def __init__(self, stored: torch.Tensor, dtype: torch.dtype) -> None:
        self.stored, self.dtype, self.device = stored.reshape(-1), dtype, stored.device

    def __getitem__(self, positions: Positions) -> torch.Tensor:
        if isinstance(positions, torch.Tensor):  # index_select gathers several times faster than indexing
            return self.stored.index_select(0, positions).to(self.dtype)
        return self.stored[positions].to(self.dtype)

    def into(self, positions: slice, out: torch.Tensor) -> torch.Tensor:
        """The chunk `positions`, widened into the scratch row `out` (no allocation)."""
        return out.copy_(self.stored[positions])

    def numel(self) -> int:
        """How many elements the tensor holds."""
        return self.stored.numel()


def widen_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """The dtype a merge computes in: float64 if an input is, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Sum of `weights[i] * tensors[i]`, accumulated in the tensors' dtype."""
    result = torch.zeros_like(tensors[0])
    for tensor, weight in zip(tensors, weights):
        result.add_(tensor, alpha=float(weight))
    return result


def task_vectors(tensors: Sequence[torch.Tensor], base_index: int) -> list[torch.Tensor]:
    """The difference of each non-base tensor from the base, in input order."""
    base = tensors[base_index]
    return [t - base for i, t in enumerate(tensors) if i != base_index]


def non_base(values: Sequence, base_index: int) -> list:
    """`values` without the base model's entry."""
    return [v for i, v in enumerate(values) if i != base_index]


def lerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Linear interpolation `(1 - t) * a + t * b`."""
    return (1 - t) * a + t * b


# Chunked evaluation


def chunk_size(device: torch.device) -> int:
    """How many elements one chunk holds: a cache-sized piece on CPU, a large one on GPU."""
    return CUDA_CHUNK if device.type == "cuda" else CPU_CHUNK


def chunk_slices(numel: int, device: torch.device) -> list[slice]:
    """Consecutive ranges of flat positions that cover `numel`, one chunk each."""
    size = chunk_size(device)
    return [slice(start, min(start + size, numel)) for start in range(0, numel, size)]


def scratch(rows: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`rows` reusable buffers, each one chunk of the flat `like` long, on its device and in its dtype (or `dtype`)."""
    size = (rows, min(like.numel(), chunk_size(like.device)))
    return torch.empty(size, dtype=dtype or like.dtype, device=like.device)


def rows_for(work: torch.Tensor, positions: slice) -> torch.Tensor:
    """The scratch rows `work`, cut to the length of `positions`."""
    return work[:, : positions.stop - positions.start]


def delta_magnitude(tensor: Widened, base: Widened) -> Score:
    """The score `|tensor - base|` of flat widened tensors, by position."""

    def score(positions: Positions, out: torch.Tensor | None = None) -> torch.Tensor:
        if out is None or not isinstance(positions, slice):
            return torch.sub(tensor[positions], base[positions], out=out).abs_()
        return tensor.into(positions, out).sub_(base.stored[positions]).abs_()

    return score


# Exact selection by rank


@dataclass(frozen=True)
class Bound:
    """One element of the stable ascending sort of the scores: its value, and its flat position when others tie with it.

    Tied scores sort by position, so a bound cuts a run of ties at `position`.
    """

    value: float
    position: int | None = None


def order_statistic(score: Score, like: torch.Tensor, rank: int) -> Bound:
    """The element at `rank` (from 0) of the stable ascending sort of `score` over the positions of `like`.

    `like` is a flat tensor with the scores' size, dtype and device. A spread sample brackets
    the value. When the sample holds only a few values inside the bracket (scores of bfloat16
    weights come in few distinct values, each many times), one pass counts the scores below
    and at each of them; otherwise one pass counts the scores below the bracket and gathers
    the few inside it, and `kthvalue` picks among those. A bracket that misses falls back to
    every score. The position of a tied element is looked up only when its value is not 0
    (for magnitudes, entries of 0 are the same whether kept or dropped).
    """
    bracket = _sample_bracket(score, like.numel(), rank, like.device)
    found = _count_at_values(score, like, rank, bracket.values) if bracket.values else None
    if found is None:
        found = _select_in_bracket(score, like, rank, bracket.low, bracket.high)
    if found is None:
        found = _select_in_bracket(score, like, rank, -math.inf, math.inf)
    assert found is not None
    return found


@dataclass(frozen=True)
class Bracket:
    """Values that a sample puts below and above the score sought, and the sample's own values between them when
    they are few."""

    low: float
    high: float
    values: tuple[float, ...] = ()


def _sample_bracket(score: Score, numel: int, rank: int, device: torch.device) -> Bracket:
    """Values that a spread sample of scores puts safely below and above the score at `rank`."""
    if numel <= SAMPLE_SIZE:
        return Bracket(-math.inf, math.inf)
    sample = score(_sample_positions(numel, device), None)
    fraction = rank / numel
    # 6 standard deviations of the sample's rank if runs were as good as SAMPLE_BLOCK / 2 independent positions
    margin = 6 * math.sqrt(SAMPLE_SIZE * fraction * (1 - fraction) * SAMPLE_BLOCK / 2) + 16
    below, above = math.floor(fraction * SAMPLE_SIZE - margin), math.ceil(fraction * SAMPLE_SIZE + margin)
    low = torch.kthvalue(sample, below + 1).values.item() if below >= 0 else -math.inf
    high = torch.kthvalue(sample, above + 1).values.item() if above < SAMPLE_SIZE else math.inf
    inside = sample[(sample >= low) & (sample <= high)].unique()
    return Bracket(low, high, tuple(inside.tolist()) if inside.numel() <= FEW_VALUES else ())


def _count_at_values(score: Score, like: torch.Tensor, rank: int, values: Sequence[float]) -> Bound | None:
    """The element at `rank` when its value is one of `values` (ascending), else None: one pass counts, chunk by
    chunk, the scores below and up to each value."""
    work = scratch(2, like)
    comparisons = [(compare, value) for value in values for compare in (torch.lt, torch.le)]
    counts = []  # per chunk: scores < values[0], <= values[0], < values[1], ...
    for positions in chunk_slices(like.numel(), like.device):
        scores, flags = rows_for(work, positions)
        score(positions, scores)
        counts.append([int(compare(scores, value, out=flags).sum().item()) for compare, value in comparisons])
    for index, value in enumerate(values):
        less, at_most = (sum(chunk[2 * index + k] for chunk in counts) for k in (0, 1))
        if less <= rank < at_most:
            equal = [chunk[2 * index + 1] - chunk[2 * index] for chunk in counts]
            return _tied_bound(score, like, value, rank - less, equal)
    return None


@functools.lru_cache(maxsize=32)
def _sample_positions(numel: int, device: torch.device) -> torch.Tensor:
    """`SAMPLE_SIZE` flat positions in aligned runs spread over `numel` (> SAMPLE_SIZE) by a multiplicative hash,
    ascending (they gather 10x faster than unordered ones)."""
    runs = torch.arange(SAMPLE_SIZE // SAMPLE_BLOCK, dtype=torch.int64, device=device)
    starts = runs.mul_(SAMPLE_STRIDE).remainder_(numel // SAMPLE_BLOCK).mul_(SAMPLE_BLOCK).sort().values
    return starts.unsqueeze(1).add(torch.arange(SAMPLE_BLOCK, device=device)).view(-1)


def _select_in_bracket(score: Score, like: torch.Tensor, rank: int, low: float, high: float) -> Bound | None:
    """The element at `rank`, or None when its value is not within [low, high]: one pass counts the scores below
    `low` and gathers those inside, with their positions."""
    everything = low == -math.inf and high == math.inf
    work = scratch(3, like)
    below = 0
    values_inside, positions_inside = [], []
    for positions in chunk_slices(like.numel(), like.device):
        values, keep, upper = rows_for(work, positions)
        score(positions, values)
        if everything:
            values_inside.append(values.clone())
            continue
        torch.ge(values, low, out=keep)
        below += values.numel() - int(keep.sum().item())
        found = keep.mul_(torch.le(values, high, out=upper)).bool().nonzero().view(-1)
        values_inside.append(values[found])
        positions_inside.append(found.add_(positions.start))
    candidates = torch.cat(values_inside)
    if not below <= rank < below + candidates.numel():
        return None
    value = torch.kthvalue(candidates, rank - below + 1).values
    less = below + int(torch.count_nonzero(candidates < value))
    equal = (candidates == value).nonzero().view(-1)
    if equal.numel() == 1 or value.item() == 0:
        return Bound(value.item())
    position = torch.cat(positions_inside)[equal[rank - less]] if positions_inside else equal[rank - less]
    return Bound(value.item(), int(position))


def _tied_bound(score: Score, like: torch.Tensor, value: float, occurrence: int, counts: list[int]) -> Bound:
    """The bound at the `occurrence`-th (from 0) of the scores equal to `value`, of which chunk k holds `counts[k]`.

    Only the chunk holding that occurrence is scored again.
    """
    if sum(counts) == 1 or value == 0:
        return Bound(value)
    for positions, here in zip(chunk_slices(like.numel(), like.device), counts):
        if occurrence < here:
            (values,) = rows_for(scratch(1, like), positions)
            equal = score(positions, values).eq_(value)
            return Bound(value, positions.start + int(equal.nonzero()[occurrence]))
        occurrence -= here
    raise AssertionError("fewer ties than counted")


def _at_least(values: torch.Tensor, bound: Bound, start: int, out: torch.Tensor) -> torch.Tensor:
    """1 in `out` where `values` (at flat positions from `start`) sort at or after `bound`, else 0."""
    split = 0 if bound.position is None else min(max(bound.position - start, 0), values.numel())
    torch.gt(values[:split], bound.value, out=out[:split])
    torch.ge(values[split:], bound.value, out=out[split:])
    return out


def _at_most(values: torch.Tensor, bound: Bound, start: int, out: torch.Tensor) -> torch.Tensor:
    """1 in `out` where `values` (at flat positions from `start`) sort at or before `bound`, else 0."""
    split = values.numel() if bound.position is None else min(max(bound.position + 1 - start, 0), values.numel())
    torch.le(values[:split], bound.value, out=out[:split])
    torch.lt(values[split:], bound.value, out=out[split:])
    return out


def rank_band_mask(score: Score, like: torch.Tensor, start: int, stop: int) -> Mask | None:
    """Keep the positions whose rank in the stable ascending sort of `score` is in [start, stop).

    Returns None when every position is kept. Equal scores rank by position, so exactly
    `stop - start` positions are kept, except that scores of 0 all fall on one side of a
    bound at 0 (as magnitudes, they score entries that are 0 anyway).
    """
    numel = like.numel()
    start, stop = max(start, 0), min(stop, numel)
    if start >= stop:
        return drop_all
    if start == 0 and stop == numel:
        return None
    low = order_statistic(score, like, start) if start > 0 else None
    high = order_statistic(score, like, stop - 1) if stop < numel else None

    def mask(positions: slice, rows: torch.Tensor, scored: bool = False) -> torch.Tensor:
        values, spare = rows
        if not scored:
            score(positions, values)
        if low is None:
            return _at_most(values, high, positions.start, out=values)
        keep = _at_least(values, low, positions.start, out=spare)
        return keep if high is None else keep.mul_(_at_most(values, high, positions.start, out=values))

    return mask


def drop_all(positions: slice, rows: torch.Tensor, scored: bool = False) -> torch.Tensor:
    """The mask that keeps nothing."""
    return rows[0].zero_()


def materialize(mask: Mask, like: torch.Tensor) -> Mask:
    """`mask` evaluated once over the positions of the flat `like` and stored as booleans."""
    keep = pages.empty(like.numel(), dtype=torch.bool, device=like.device)
    work = scratch(2, like)
    for positions in chunk_slices(like.numel(), like.device):
        keep[positions] = mask(positions, rows_for(work, positions))
    return stored_mask(keep)


def stored_mask(keep: torch.Tensor) -> Mask:
    """The mask that reads a precomputed flat boolean tensor, copied as 0/1 bytes (a fast conversion)."""
    return lambda positions, rows, scored=False: rows[0].copy_(keep[positions].view(torch.uint8))


# Sparsification of task vectors (mergekit's `sparsify` methods)


def magnitude_mask(score: Score, like: torch.Tensor, density: float) -> Mask | None:
    """Keep the `max(1, int(density * numel))` largest scores; none at density <= 0, all at >= 1."""
    if density >= 1:
        return None
    kept = max(1, int(density * like.numel())) if density > 0 else 0
    return rank_band_mask(score, like, like.numel() - kept, like.numel())


def outlier_mask(score: Score, like: torch.Tensor, density: float, gamma: float) -> Mask | None:
    """Model Breadcrumbs: drop the `int(gamma * numel)` largest scores, then the smallest, keeping `int(density *
    numel)`.

    The outlier cut shrinks when it and the kept part do not fit together.
    """
    if density >= 1:
        return None
    kept, outliers = int(density * like.numel()), int(gamma * like.numel())
    smallest = max(0, like.numel() - kept - outliers)
    return rank_band_mask(score, like, smallest, smallest + kept)


def random_mask(like: torch.Tensor, density: float, generator: torch.Generator) -> Mask | None:
    """DARE: keep each position independently with probability `density` (to within 2**-32).

    Each position compares one uniform 32-bit word with a threshold (`_random_words`).
    """
    if density >= 1:
        return None
    threshold = int(_word_thresholds(torch.tensor(density, dtype=torch.float64)))
    keep = pages.empty(like.numel(), dtype=torch.bool, device=like.device)
    (flags,) = scratch(1, like, torch.float32)
    words = torch.empty((flags.numel() + 1) // 2, dtype=torch.int64, device=like.device)
    for positions in chunk_slices(like.numel(), like.device):
        length = positions.stop - positions.start
        keep[positions] = torch.lt(_random_words(words, length, generator), threshold, out=flags[:length])
    return stored_mask(keep)


def _random_words(buffer: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` uniform signed 32-bit words, drawn in pairs as 64-bit words into the int64 `buffer` (the cheapest
    random bits torch generates on CPU)."""
    return buffer[: (count + 1) // 2].random_(-(2**63), None, generator=generator).view(torch.int32)[:count]


def _word_thresholds(probability: torch.Tensor) -> torch.Tensor:
    """The int32 thresholds that a uniform signed 32-bit word is below with each `probability` (to within 2**-32)."""
    return (probability.double() * 2**32).round_().clamp_(0, 2**32 - 1).sub_(2**31).to(torch.int32)


def magprune_mask(
    tensor: torch.Tensor,
    base: torch.Tensor,
    density: float,
    epsilon: float,
    generator: torch.Generator,
    dtype: torch.dtype | None = None,
) -> Mask | None:
    """DELLA MagPrune: keep each entry with a probability rising linearly with its magnitude's rank in its row.

    Rows run along dim 1 (a 1-D tensor is one row), magnitudes are computed in `dtype` (default:
    the tensors'). Ranks 0..n-1 map to probabilities `density - epsilon` .. `density + epsilon`
    (equal magnitudes take consecutive ranks in a fixed order); a row of one entry keeps it with
    probability `density` (mergekit 0.1.5 divides 0 by 0 there and fails). Each entry compares a
    uniform 32-bit word with its rank's threshold, as `random_mask` does.

    Raises:
        MergeMethodError: `density - epsilon` or `density + epsilon` is outside (0, 1).
    """
    if density >= 1 or tensor.numel() == 0:
        return None
    if density <= 0:
        return drop_all
    if density - epsilon <= 0 or density + epsilon >= 1:
        raise MergeMethodError(
            f"epsilon {epsilon} puts the keep probability density ± epsilon outside (0, 1) at density {density}.",
            hint=f"Choose epsilon below {min(density, 1 - density):g}, or change density.",
        )
    dtype = dtype or tensor.dtype
    rows, base_rows = _as_rows(tensor), _as_rows(base)
    keep = pages.empty(rows.shape, dtype=torch.bool, device=tensor.device)
    thresholds = _word_thresholds(_rank_probabilities(rows.shape[1], density, epsilon, tensor.device))
    blocks = _row_blocks(rows.shape, tensor.device)
    words = torch.empty((blocks[0].stop * rows.shape[1] + 1) // 2, dtype=torch.int64, device=tensor.device)
    for block in blocks:
        magnitude = (rows[block].to(dtype) - base_rows[block].to(dtype)).abs_()
        order = _sort_key(magnitude).argsort(dim=1)
        draws = _random_words(words, magnitude.numel(), generator).view(magnitude.shape)
        kept = torch.lt(draws, thresholds, out=magnitude)  # in rank order: magnitudes are no longer needed
        keep[block] = torch.empty_like(kept).scatter_(1, order, kept).bool()
    return stored_mask(_from_rows(keep, tensor.shape).reshape(-1))


def variance_mask(others: Sequence[torch.Tensor], base: torch.Tensor, select_topk: float) -> Mask | None:
    """SCE: keep the `int(nonzero * select_topk)` positions whose variance across the task vectors is largest.

    `others` and `base` are flat; None keeps every position.
    """
    if select_topk >= 1:
        return None
    if select_topk <= 0:
        return drop_all

    def variance(positions: Positions, out: torch.Tensor | None = None) -> torch.Tensor:
        return population_variance([t[positions] - base[positions] for t in others], out)

    work = scratch(1, base)
    nonzero = sum(
        int(torch.count_nonzero(variance(p, rows_for(work, p)[0]))) for p in chunk_slices(base.numel(), base.device)
    )
    kept = int(torch.tensor(nonzero) * select_topk)  # a float32 product, as in mergekit
    mask = rank_band_mask(variance, base, base.numel() - kept, base.numel())
    return None if mask is None else materialize(mask, base)


def population_variance(vectors: Sequence[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """Elementwise variance (divided by n) of `vectors`, accumulated in float64 as `torch.var` does.

    `torch.var` across inputs runs a scalar loop per entry; these float64 elementwise passes
    give the same values in the inputs' dtype many times faster.
    """
    wide = [v.double() for v in vectors]
    mean = wide[0].clone()
    for vector in wide[1:]:
        mean.add_(vector)
    mean.div_(len(wide))
    spread = torch.zeros_like(mean)
    for vector in wide:
        spread.add_(vector.sub_(mean).square_())
    spread.div_(len(wide))
    return spread.to(vectors[0].dtype) if out is None else out.copy_(spread)


def _row_blocks(shape: torch.Size, device: torch.device) -> list[slice]:
    """Consecutive ranges of whole rows of a 2-D `shape`, each about one chunk in size."""
    rows = max(1, chunk_size(device) // max(1, shape[1]))
    return [slice(start, min(start + rows, shape[0])) for start in range(0, shape[0], rows)]


def _as_rows(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as a 2-D tensor whose rows run along its dim 1 (a 1-D tensor is one row)."""
    if tensor.dim() < 2:
        return tensor.reshape(1, -1)
    return tensor.movedim(1, -1).reshape(-1, tensor.shape[1])


def _from_rows(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Undo `_as_rows`, giving a contiguous tensor of `shape`."""
    if len(shape) < 2:
        return rows.reshape(shape)
    moved = (*shape[:1], *shape[2:], shape[1])
    return rows.reshape(moved).movedim(-1, 1).contiguous()


def _rank_probabilities(length: int, density: float, epsilon: float, device: torch.device) -> torch.Tensor:
    """The float32 keep probability of each rank 0..length-1, computed as mergekit does."""
    if length == 1:
        return torch.full((1,), density, device=device)
    ranks = torch.arange(length, dtype=torch.float32, device=device)
    return (density - epsilon) + ranks / (length - 1) * 2 * epsilon


def _sort_key(magnitude: torch.Tensor) -> torch.Tensor:
    """Integers ordered as the non-negative floats `magnitude` are (they sort faster)."""
    views = {torch.float32: torch.int32, torch.float64: torch.int64}
    return magnitude.view(views[magnitude.dtype]) if magnitude.dtype in views else magnitude


def l1_rescale(tensor: torch.Tensor, base: torch.Tensor, mask: Mask) -> float:
    """The factor that gives the masked task vector the L1 norm of the whole one (1 when either is below 1e-7).

    The norms are summed in float64, so the factor does not depend on the thread count,
    then divided in the tensors' dtype as mergekit does.
    """
    work, (wide,) = scratch(3, base), scratch(1, base, torch.float64)
    before = after = 0.0
    for positions in chunk_slices(base.numel(), base.device):
        rows = rows_for(work, positions)
        magnitude = torch.sub(tensor[positions], base[positions], out=rows[0]).abs_()
        before += wide[: magnitude.numel()].copy_(magnitude).sum().item()
        after += wide[: magnitude.numel()].copy_(magnitude.mul_(mask(positions, rows[1:]))).sum().item()
    if before < 1e-7 or after < 1e-7:
        return 1.0
    return (torch.tensor(before, dtype=base.dtype) / torch.tensor(after, dtype=base.dtype)).item()


def energy_weights(others: Sequence[torch.Tensor], base: torch.Tensor, masks: Sequence[Mask | None]) -> list[float]:
    """SCE: each masked task vector's mean square, divided by their sum; uniform when that sum is below 1e-6."""
    work = scratch(3, base)
    energies = []
    for tensor, mask in zip(others, masks):
        total = 0.0
        for positions in chunk_slices(base.numel(), base.device):
            rows = rows_for(work, positions)
            vector = torch.sub(tensor[positions], base[positions], out=rows[0])
            if mask is not None:
                vector.mul_(mask(positions, rows[1:]))
            total += vector.square_().sum(dtype=torch.float64).item()
        energies.append(total / base.numel())
    norm = sum(energies)
    if abs(norm) < 1e-6:
        return [1 / len(others)] * len(others)
    return [e / norm for e in energies]


# Sign election and merge (TIES), in place on a chunk's rows


def elect_signs_(votes: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Fill `direction` with the sign (+1 or -1; + for 0) of the sum of the rows of `votes`, in row order."""
    if len(votes) == 1:
        direction.copy_(votes[0])
    else:
        torch.add(votes[0], votes[1], out=direction)
    for vote in votes[2:]:
        direction.add_(vote)
    return direction.ge_(0).mul_(2).sub_(1)


def sum_agreeing_(
    values: torch.Tensor,
    weights: Sequence[float],
    direction: torch.Tensor,
    divisor: torch.Tensor | None,
    spare: torch.Tensor,
) -> torch.Tensor:
    """The elementwise sum of the rows of `values` whose sign is `direction` (zeros never agree), in row order.

    With `divisor`, also fill it with the sum of the weights of the agreeing rows. Works in
    place: summing magnitudes of one sign is exact, so this equals the masked sum.
    """
    total = values[0]
    for index, (row, weight) in enumerate(zip(values, weights)):
        row.mul_(direction).clamp_(min=0)
        if divisor is not None:
            agree = torch.gt(row, 0, out=spare)
            if index == 0:
                torch.mul(agree, weight, out=divisor)
            else:
                divisor.add_(agree, alpha=weight)
        if index > 0:
            total.add_(row)
    return total.mul_(direction)


def sum_rows_(rows: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `rows` in row order, accumulated into the first row."""
    for row in rows[1:]:
        rows[0].add_(row)
    return rows[0]


def nonzero_total(weights: Sequence[float]) -> float:
    """The exact sum of `weights`, or 1 when it is below 1e-8 in magnitude."""
    total = math.fsum(weights)
    return total if abs(total) >= 1e-8 else 1.0


def nonzero_divisor_(divisor: torch.Tensor, weights: Sequence[float], spare: torch.Tensor) -> torch.Tensor:
    """`divisor` with 1 in place where it is 0 up to the rounding error of summing `weights` in float32.

    With weights all above that error in `divisor`'s dtype, a sum of agreeing weights is either exactly 0
    (nothing agrees, and the dividend is 0 too) or above it: raising it to the error (one pass, not four)
    divides the same.
    """
    tolerance = max(1e-8, len(weights) * FLOAT32_EPS * math.fsum(abs(w) for w in weights))
    if torch.tensor(min(weights), dtype=divisor.dtype).item() > tolerance:
        return divisor.clamp_(min=tolerance)
    zero = torch.abs(divisor, out=spare).le_(tolerance)
    return divisor.addcmul_(zero, divisor, value=-1).add_(zero)
