"""mergehub.evaluation: lm-eval runs on a tiny random model, reports, comparisons and model cards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

import mergehub
from mergehub.demo import DEMO_RECIPE
from mergehub.errors import EvaluationError, UnknownTaskError
from mergehub.eval_tasks import SHIPPED_TASKS, TASKS_DIR
from mergehub.evaluation import (
    INSTALL_HINT,
    EvalReport,
    MetricScore,
    _report,
    add_scores_to_card,
    compare,
    evaluate,
    report_from_card,
    scores_from_card,
)
from tests.helpers import WORDS, make_tokenizer

LIMIT = 6


@pytest.fixture(scope="module")
def tiny_model(family: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random base model of the session's family, with a WordLevel tokenizer beside it."""
    directory = tmp_path_factory.mktemp("tiny-eval") / "model"
    directory.mkdir()
    for path in family[0].iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    for name, data in make_tokenizer(WORDS).items():
        (directory / name).write_bytes(data)
    return directory


@pytest.fixture(scope="module")
def report(tiny_model: Path) -> EvalReport:
    """The tiny model scored on both shipped tasks (the `mergehub` tag), a few documents each."""
    pytest.importorskip("lm_eval")
    return evaluate(tiny_model, ["mergehub"], limit=LIMIT, device="cpu", batch_size=4)


def _score(task: str, metric: str, value: float, **kwargs) -> MetricScore:
    return MetricScore(
        task,
        metric,
        value,
        num_fewshot=kwargs.pop("num_fewshot", 0),
        limit=kwargs.pop("limit", 10.0),
        lm_eval_version="0.4.13",
        **kwargs,
    )


def _report_of(model: str, *scores: MetricScore) -> EvalReport:
    return EvalReport(model, scores, "0.4.13", seed=0)


# --------------------------------------------------------------------------- shipped tasks


def test_shipped_tasks_are_packaged_with_their_data():
    for task, stem in (("mergehub_facts", "facts"), ("mergehub_arithmetic", "arithmetic")):
        assert task in SHIPPED_TASKS
        assert (TASKS_DIR / f"{task}.yaml").is_file()
        for split, at_least in (("test", 40), ("train", 5)):
            rows = [json.loads(line) for line in (TASKS_DIR / f"{stem}.{split}.jsonl").read_text().splitlines()]
            assert len(rows) >= at_least
    facts = [json.loads(line) for line in (TASKS_DIR / "facts.test.jsonl").read_text().splitlines()]
    assert all(len(row["choices"]) == 4 and 0 <= row["answer"] < 4 for row in facts)
    arithmetic = [json.loads(line) for line in (TASKS_DIR / "arithmetic.test.jsonl").read_text().splitlines()]
    for row in arithmetic:  # "What is 17 + 3?" -> "20"
        a, op, b = row["question"].removeprefix("What is ").removesuffix("?").split()
        assert int(row["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))


# --------------------------------------------------------------------------- evaluate


def test_evaluate_scores_the_shipped_tasks(report: EvalReport, tiny_model: Path):
    import lm_eval

    assert report.model == str(tiny_model)
    assert report.tasks() == ("mergehub_arithmetic", "mergehub_facts")
    assert {(r.task, r.metric) for r in report.results} == {
        ("mergehub_arithmetic", "exact_match"),
        ("mergehub_facts", "acc"),
        ("mergehub_facts", "acc_norm"),
    }
    for score in report.results:
        assert 0.0 <= score.value <= 1.0
        assert score.stderr is not None and score.stderr >= 0
        assert score.samples == LIMIT and score.limit == LIMIT
        assert score.higher_is_better is True
        assert score.lm_eval_version == lm_eval.__version__
        assert score.dataset_split == "test"
    assert report.get("mergehub_arithmetic", "exact_match").num_fewshot == 3  # the task's default
    assert report.get("mergehub_facts", "acc").num_fewshot == 0
    assert (report.seed, report.device, report.dtype, report.revision) == (0, "cpu", "float32", None)
    table = report.table()
    assert table.splitlines()[0].split("|")[1].strip() == "Task"
    assert len(table.splitlines()) == 2 + len(report.results)
    assert json.loads(json.dumps(report.to_dict()))["results"][0]["task"] == "mergehub_arithmetic"


def test_evaluate_is_reproducible(report: EvalReport, tiny_model: Path):
    again = evaluate(tiny_model, ["mergehub_arithmetic", "mergehub_facts"], limit=LIMIT, device="cpu", batch_size=4)
    assert [(r.task, r.metric, r.value, r.stderr) for r in again.results] == [
        (r.task, r.metric, r.value, r.stderr) for r in report.results
    ]


def test_evaluate_a_task_yaml_with_data_beside_it(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("lm_eval")
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    rows = [{"text": f"w{i} w{i + 1}", "choices": ["w1", "w2"], "label": i % 2} for i in range(8)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "pairs.yaml").write_text(
        "task: my_pairs\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files: {{test: pairs.jsonl}}\n  cache_dir: {tmp_path / 'datasets-cache'}\n"
        "output_type: multiple_choice\ntest_split: test\n"
        "doc_to_text: '{{text}}'\ndoc_to_choice: choices\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )
    monkeypatch.chdir(tmp_path.parent)  # data_files resolve beside the YAML, not in the working directory
    result = evaluate(tiny_model, [str(folder / "pairs.yaml")], device="cpu")
    assert [(r.task, r.metric, r.samples) for r in result.results] == [("my_pairs", "acc", 8)]
    assert result.results[0].dataset_type is None  # read from local files, not a Hub dataset


def test_evaluate_a_hub_model_pinned_to_its_commit(report: EvalReport, tiny_model: Path, hub):
    sha = hub.add_repo("alice/tiny", tiny_model)
    result = evaluate("alice/tiny@main", ["mergehub_facts"], limit=LIMIT, device="cpu", batch_size=4, token="tok-alice")
    assert result.model == "alice/tiny@main" and result.revision == sha
    assert [(r.metric, r.value) for r in result.results] == [
        (r.metric, r.value) for r in report.results if r.task == "mergehub_facts"
    ]
    with pytest.raises(EvaluationError, match="Could not download alice/missing"):
        evaluate("alice/missing", ["mergehub_facts"], limit=LIMIT, device="cpu", token="tok-alice")


def test_evaluate_a_model_with_its_lora_adapter(tiny_model: Path, hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("lm_eval")
    import lm_eval.api.registry
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.helpers import make_lora

    seen: list[dict] = []
    real = lm_eval.api.registry.get_model
    monkeypatch.setattr(
        lm_eval.api.registry, "get_model", lambda name: lambda **kw: (seen.append(kw), real(name)(**kw))[1]
    )
    adapter = make_lora(
        tiny_model, tmp_path / "lora", seed=3, r=4, lora_alpha=64, target_modules=["q_proj", "down_proj"]
    )
    merged = tmp_path / "merged"
    PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model), adapter
    ).merge_and_unload().save_pretrained(merged)
    for name, data in make_tokenizer(WORDS).items():
        (merged / name).write_bytes(data)
    hub.add_repo("alice/tiny", tiny_model)
    hub.add_repo("alice/lora", adapter)
    result = evaluate(
        "alice/tiny+alice/lora", ["mergehub_facts"], limit=LIMIT, device="cpu", batch_size=4, token="tok-alice"
    )
    expected = evaluate(merged, ["mergehub_facts"], limit=LIMIT, device="cpu", batch_size=4)
    assert [r.metric for r in result.results] == [r.metric for r in expected.results]
    assert [r.value for r in result.results] == pytest.approx([r.value for r in expected.results])
    assert seen[0]["peft"] and Path(seen[0]["peft"], "adapter_model.safetensors").is_file() and seen[1]["peft"] is None


def test_unknown_task_lists_where_it_looked(tiny_model: Path):
    lm_eval = pytest.importorskip("lm_eval")
    with pytest.raises(UnknownTaskError) as caught:
        evaluate(tiny_model, ["mergehub_fact", "no/such/task.yaml"], limit=2, device="cpu")
    message = str(caught.value)
    assert "mergehub_fact," in message and "no/such/task.yaml" in message
    assert str(Path(lm_eval.__file__).parent / "tasks") in message  # lm-eval's registry
    assert str(TASKS_DIR) in message  # mergehub's shipped tasks
    assert "Did you mean mergehub_facts" in message
    assert caught.value.hint and "lm-eval ls tasks" in caught.value.hint


def test_missing_lm_eval_says_how_to_install(tiny_model: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    with pytest.raises(EvaluationError) as caught:
        evaluate(tiny_model, ["mergehub_facts"], limit=2)
    assert isinstance(caught.value, mergehub.MergehubError)
    assert INSTALL_HINT in str(caught.value)


def test_report_from_lm_eval_results_keeps_filters_and_skips_missing_stderr():
    results = {
        "results": {
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.05,
                "exact_match,flexible-extract": 0.3,
                "exact_match_stderr,flexible-extract": "N/A",
            },
            "wikitext": {"alias": "wikitext", "word_perplexity,none": 21.5, "word_perplexity_stderr,none": "N/A"},
        },
        "configs": {
            "gsm8k": {"dataset_path": "openai/gsm8k", "dataset_name": "main", "test_split": "test"},
            "wikitext": {"dataset_path": "EleutherAI/wikitext_document_level", "test_split": "test"},
        },
        "n-shot": {"gsm8k": 5, "wikitext": 0},
        "higher_is_better": {"gsm8k": {"exact_match": True}, "wikitext": {"word_perplexity": False}},
        "n-samples": {"gsm8k": {"original": 1319, "effective": 50}},
    }
    report = _report(results, model="m", lm_eval_version="0.4.13", limit=50)
    strict = report.get("gsm8k", "exact_match,strict-match")
    assert (strict.value, strict.stderr, strict.num_fewshot, strict.samples) == (0.25, 0.05, 5, 50)
    assert (strict.dataset_type, strict.dataset_config, strict.dataset_split) == ("openai/gsm8k", "main", "test")
    assert report.get("gsm8k", "exact_match,flexible-extract").stderr is None
    perplexity = report.get("wikitext", "word_perplexity")
    assert perplexity.higher_is_better is False and perplexity.samples is None
    assert report.scores()[0].source_name == "lm-eval 0.4.13, 5-shot, limit 50"


# --------------------------------------------------------------------------- compare


def test_compare_shows_each_parent_and_the_deltas():
    merged = _report_of(
        "merged",
        _score("facts", "acc", 0.6),
        _score("facts", "acc_norm", 0.5),
        _score("wiki", "word_perplexity", 20.0, higher_is_better=False),
    )
    base = _report_of("org/base", _score("facts", "acc", 0.5), _score("facts", "acc_norm", 0.55))
    other = _report_of("org/other", _score("facts", "acc", 0.65))
    table = compare(merged, {"org/base": base, "org/other": other})
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "Task",
        "Metric",
        "Merged",
        "org/base",
        "Δ",
        "org/other",
        "Δ",
    ]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert rows[0] == ["facts", "acc", "0.6000", "0.5000", "+0.1000", "0.6500", "-0.0500"]
    assert rows[1] == ["facts", "acc_norm", "0.5000", "0.5500", "-0.0500", "—", "—"]
    assert rows[2][1] == "word_perplexity (lower is better)"


# --------------------------------------------------------------------------- cards

CARD = """---
license: apache-2.0
tags:
- merge
base_model:
- org/base
model-index:
- name: merged
  results:
  - task:
      type: text-generation
    dataset:
      name: hellaswag
      type: Rowan/hellaswag
    metrics:
    - type: acc_norm
      value: 0.61
    source:
      name: Open LLM Leaderboard
      url: https://huggingface.co/spaces/open-llm-leaderboard/open_llm_leaderboard
---

# merged

Made by hand.

## Parents

| Model |
|---|
| org/base |

## Recipe

```yaml
## a comment that looks like a heading
merge_method: linear
```

## Usage

Load it.
"""


def _eval_results(text: str) -> dict[tuple[str, str], float]:
    return {(r.dataset_name, r.metric_type): r.metric_value for r in ModelCard(text).data.eval_results}


def test_scores_go_into_the_card_and_parse_back():
    report = _report_of(
        "merged", _score("mergehub_facts", "acc", 0.5, stderr=0.1), _score("mergehub_facts", "acc_norm", 0.25)
    )
    text = add_scores_to_card(
        CARD, report, compare(report, {"org/base": _report_of("org/base", _score("mergehub_facts", "acc", 0.4))})
    )
    card = ModelCard(text)
    assert card.data.license == "apache-2.0" and card.data.base_model == ["org/base"] and card.data.tags == ["merge"]
    assert _eval_results(text) == {
        ("hellaswag", "acc_norm"): 0.61,
        ("mergehub_facts", "acc"): 0.5,
        ("mergehub_facts", "acc_norm"): 0.25,
    }
    ours = next(r for r in card.data.eval_results if r.dataset_name == "mergehub_facts")
    assert ours.task_type == "text-generation" and ours.source_name == "lm-eval 0.4.13, 0-shot, limit 10"
    assert ours.dataset_args == {"num_few_shot": 0}
    body = card.text
    for kept in ("Made by hand.", "## Parents", "## a comment that looks like a heading", "## Usage\n\nLoad it."):
        assert kept in body
    assert body.index("## Parents") < body.index("## Evaluation") < body.index("## Recipe")
    assert "+0.1000" in body and "| mergehub_facts | acc " in body


def test_scores_are_replaced_not_repeated():
    first = add_scores_to_card(CARD, _report_of("merged", _score("mergehub_facts", "acc", 0.5)))
    second = add_scores_to_card(first, _report_of("merged", _score("mergehub_facts", "acc", 0.75)))
    assert second.count("## Evaluation") == 1
    assert _eval_results(second) == {("hellaswag", "acc_norm"): 0.61, ("mergehub_facts", "acc"): 0.75}
    assert ModelCard(second).text.count("## Usage") == 1


def test_a_card_without_metadata_or_sections_gets_both():
    text = add_scores_to_card(
        "# Just a title\n\nSome words.", _report_of("org/m", _score("mergehub_facts", "acc", 0.5))
    )
    card = ModelCard(text)
    assert card.data.model_name == "Just a title"
    assert _eval_results(text) == {("mergehub_facts", "acc"): 0.5}
    assert card.text.index("Some words.") < card.text.index("## Evaluation")


def test_a_card_with_broken_metadata_is_refused():
    with pytest.raises(EvaluationError):
        add_scores_to_card("---\nlicense: [unclosed\n---\n\n# m\n", _report_of("m", _score("t", "acc", 0.5)))


def test_parent_scores_are_reused_from_its_card():
    merged = _report_of(
        "merged", _score("mergehub_facts", "acc", 0.5), _score("mergehub_arithmetic", "exact_match", 0.1, num_fewshot=3)
    )
    parent = _report_of(
        "org/base",
        _score("mergehub_facts", "acc", 0.45),
        _score("mergehub_arithmetic", "exact_match", 0.2, num_fewshot=3),
    )
    card = add_scores_to_card(CARD, parent).encode()
    scores = scores_from_card(card)
    assert scores[("mergehub_facts", "acc")].value == 0.45
    assert scores[("mergehub_arithmetic", "exact_match")].num_fewshot == 3
    assert scores[("mergehub_arithmetic", "exact_match")].limit == 10
    assert scores[("hellaswag", "acc_norm")].lm_eval_version is None  # a score mergehub did not write
    reused = report_from_card(card, merged, model="org/base")
    assert reused is not None and reused.model == "org/base" and reused.lm_eval_version == "0.4.13"
    assert [(r.task, r.value) for r in reused.results] == [("mergehub_facts", 0.45), ("mergehub_arithmetic", 0.2)]
    assert report_from_card(card, _report_of("m", _score("mergehub_facts", "acc", 0.5, limit=None)), model="p") is None
    assert (
        report_from_card(card, _report_of("m", _score("mergehub_facts", "acc", 0.5, num_fewshot=5)), model="p") is None
    )
    assert report_from_card(None, merged, model="p") is None
    assert scores_from_card(None) == {} and scores_from_card(b"no card") == {}


def test_a_mergehub_card_gets_the_evaluated_scores(report: EvalReport, family: list[Path], tmp_path: Path):
    recipe = tmp_path / "recipe.yml"
    recipe.write_text(DEMO_RECIPE.format(base=family[0], other=family[1]))
    merged = mergehub.run_merge(recipe, tmp_path / "merged")
    original = (merged.out_dir / "README.md").read_text()
    text = add_scores_to_card(original, report, compare(report, {"base": report}))
    card = ModelCard(text)
    assert _eval_results(text) == {(r.task, r.metric): r.value for r in report.results}
    before = ModelCard(original).data.to_dict()
    assert before and {key: card.data.to_dict().get(key) for key in before} == before  # license, tags, library kept
    for heading in ("## Parents", "## Recipe", "## Reproducibility", "## Usage"):
        assert card.text.count(heading) == 1
    assert card.text.index("## Evaluation") < card.text.index("## Recipe")


def test_cli_merge_with_eval_parents_writes_scores_and_comparison(
    tiny_model: Path, family: list[Path], tmp_path: Path, capsys
):
    pytest.importorskip("lm_eval")
    import yaml

    from mergehub.interfaces.cli import main

    other = tmp_path / "other"
    other.mkdir()
    for path in family[1].iterdir():
        (other / path.name).write_bytes(path.read_bytes())
    for name, data in make_tokenizer(WORDS).items():
        (other / name).write_bytes(data)
    recipe = tmp_path / "recipe.yml"
    models = [{"model": str(m), "parameters": {"weight": 1}} for m in (tiny_model, other)]
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "base_model": str(tiny_model), "models": models}))
    args = [
        "merge",
        str(recipe),
        str(tmp_path / "out"),
        "--no-progress",
        "--eval",
        "mergehub_facts",
        "--eval-limit",
        "4",
        "--eval-parents",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    card = ModelCard((tmp_path / "out" / "README.md").read_text())
    assert {r.dataset_name for r in card.data.eval_results} == {"mergehub_facts"}
    assert "## Evaluation" in card.text and "Δ" in card.text and str(tiny_model) in card.text
    assert "Δ" in capsys.readouterr().out


def test_cli_eval_writes_the_card(tiny_model: Path, tmp_path: Path, capsys):
    pytest.importorskip("lm_eval")
    from mergehub.interfaces.cli import main

    model = tmp_path / "model"
    model.mkdir()
    for path in tiny_model.iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    assert (
        main(["eval", str(model), "--tasks", "mergehub_arithmetic", "--limit", "3", "--device", "cpu", "--write-card"])
        == 0
    )
    assert "mergehub_arithmetic" in capsys.readouterr().out
    assert [r.dataset_name for r in ModelCard((model / "README.md").read_text()).data.eval_results] == [
        "mergehub_arithmetic"
    ]


def test_cli_unknown_task_is_one_message(tiny_model: Path, capsys):
    pytest.importorskip("lm_eval")
    from mergehub.interfaces.cli import main

    assert main(["eval", str(tiny_model), "--tasks", "mergehub_factz", "--limit", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "mergehub_facts" in err and "Traceback" not in err
