"""The executor: failures and cancellation mid-merge leave no output that looks complete."""

from __future__ import annotations

import math

import pytest
import torch

from mergehub import MergeMethodError, SourceError, run_merge
from mergehub.errors import Cancelled
from mergehub.executor import tensor_seed
from mergehub.sources.local import LocalSource


def _recipe(family) -> dict:
    return {"merge_method": "linear", "models": [{"model": str(m), "parameters": {"weight": 1}} for m in family]}


def test_read_failure_midway_leaves_nothing(family, write_recipe, tmp_path, monkeypatch):
    original = LocalSource.read

    def flaky(self, name):
        if name == "model.layers.2.mlp.up_proj.weight":
            raise SourceError("disk went away")
        return original(self, name)

    monkeypatch.setattr(LocalSource, "read", flaky)
    with pytest.raises(SourceError, match="disk went away"):
        run_merge(write_recipe(_recipe(family)), tmp_path / "out", out_shard_bytes=50_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yml"]


def test_cancel_stops_cleanly(family, write_recipe, tmp_path):
    seen = []
    with pytest.raises(Cancelled):
        run_merge(
            write_recipe(_recipe(family)), tmp_path / "out", on_progress=seen.append, should_stop=lambda: len(seen) >= 5
        )
    assert len(seen) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yml"]


def test_weights_summing_to_zero_are_refused_with_a_hint(family, write_recipe, tmp_path):
    recipe = {
        "merge_method": "linear",
        "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(family, [1, -1])],
    }
    with pytest.raises(MergeMethodError, match="sum to 0") as info:
        run_merge(write_recipe(recipe), tmp_path / "out")
    assert "normalize: false" in info.value.hint
    assert not (tmp_path / "out").exists()


def test_existing_output_is_not_overwritten_without_asking(family, write_recipe, tmp_path):
    from mergehub import OutputError

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        run_merge(write_recipe(_recipe(family[:2])), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(OutputError, match="does not hold a previous output"):  # --overwrite replaces only a merge
        run_merge(write_recipe(_recipe(family[:2])), tmp_path / "out", overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    run_merge(write_recipe(_recipe(family[:2])), tmp_path / "merged")
    (tmp_path / "merged" / "extra.txt").write_text("old")
    run_merge(write_recipe(_recipe(family[:2])), tmp_path / "merged", overwrite=True)
    assert not (tmp_path / "merged" / "extra.txt").exists() and (tmp_path / "merged" / "mergekit_config.yml").is_file()


def test_progress_reports_every_tensor(family, write_recipe, tmp_path):
    seen = []
    result = run_merge(write_recipe(_recipe(family[:2])), tmp_path / "out", on_progress=seen.append)
    assert [p.tensors_done for p in seen] == list(range(1, len(result.plan.jobs) + 1))
    assert seen[-1].bytes_read == seen[-1].bytes_total == result.plan.read_bytes == result.stats.bytes_read


def test_tensor_seed_is_stable_and_distinct():
    assert tensor_seed(0, "a") == tensor_seed(0, "a")
    assert len({tensor_seed(0, "a"), tensor_seed(0, "b"), tensor_seed(1, "a")}) == 3
    assert 0 <= tensor_seed(123, "x") < 2**63
    torch.Generator().manual_seed(tensor_seed(5, "y"))


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
def test_chunked_elementwise_merge_is_bit_identical(family, write_recipe, method):
    from mergehub.api import open_sources, plan_merge
    from mergehub.executor import merge_job
    from mergehub.methods import get_method
    from mergehub.recipe import load_recipe

    recipe = {
        "merge_method": method,
        "base_model": str(family[0]),
        "dtype": "bfloat16",
        "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(family, [0.5, 0.3, 0.2])],
    }
    parsed = load_recipe(write_recipe(recipe))
    with open_sources(parsed) as sources:
        plan = plan_merge(parsed, sources)
        by_key = sources.by_key()
        assert sum(math.prod(job.shape) > 100 for job in plan.jobs[:6]) >= 2  # these are merged in chunks
        for job in plan.jobs[:6]:
            inputs = [by_key[i.model].read(i.name) for i in job.inputs]
            cpu, method = torch.device("cpu"), get_method(job.method)
            whole = merge_job(job, inputs, plan, method=method, device=cpu)
            chunked = merge_job(job, inputs, plan, method=method, device=cpu, chunk_elements=100)
            assert torch.equal(whole, chunked) and chunked.dtype == whole.dtype


def test_sources_are_matched_to_the_plan_by_key_not_by_position(family, write_recipe, tmp_path):
    from mergehub import PlanError, open_sources, plan_merge
    from mergehub.recipe import load_recipe

    recipe = load_recipe(
        write_recipe(
            {
                "merge_method": "task_arithmetic",
                "base_model": str(family[0]),
                "models": [{"model": str(m), "parameters": {"weight": 0.5}} for m in family[1:]],
            }
        )
    )
    with open_sources(recipe) as sources:
        plan = plan_merge(recipe, sources)
        as_opened = run_merge(plan, tmp_path / "as-opened", sources=sources)
        reordered = run_merge(plan, tmp_path / "reordered", sources=dict(reversed(list(sources.items()))))
        assert [s.sha256 for s in reordered.shards] == [s.sha256 for s in as_opened.shards]
        with pytest.raises(PlanError, match=f"reads {family[0]}, but no source was given"):
            run_merge(
                plan, tmp_path / "missing", sources={ref: s for ref, s in sources.items() if str(ref) != str(family[0])}
            )
    assert not (tmp_path / "missing").exists()


def test_compute_bound_kernels_get_every_core_and_elementwise_ones_one(family, write_recipe, tmp_path, monkeypatch):
    import mergehub.executor as executor

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(executor, "compute_threads", lambda: 3)
    original, seen = executor.run_job, set()

    def recording(job, *args, **kwargs):
        seen.add((job.method, torch.get_num_threads()))
        return original(job, *args, **kwargs)

    monkeypatch.setattr(executor, "run_job", recording)
    slerp = {
        "merge_method": "slerp",
        "base_model": str(family[0]),
        "models": [{"model": str(family[0])}, {"model": str(family[1])}],
        "parameters": {"t": 0.5},
    }
    run_merge(write_recipe(slerp), tmp_path / "slerp")
    run_merge(write_recipe(_recipe(family)), tmp_path / "linear")
    assert seen == {("slerp", 3), ("linear", 1)}


def test_omp_num_threads_sets_the_compute_threads_too(monkeypatch):
    from mergehub.executor import compute_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert compute_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert compute_threads() >= 1
