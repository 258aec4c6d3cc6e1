"""The Space: what visitors may ask for and see, the form <-> YAML mapping, the page, merges on the local Hub."""

from __future__ import annotations

import re
import tempfile
import time
import types
import warnings
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi

from mergehub.errors import ModelReferenceError, PublishError, RecipeError, SourceError
from mergehub.interfaces import space
from mergehub.interfaces.space import (
    MAX_MODELS,
    MAX_RECIPE_BYTES,
    PRESETS,
    Form,
    ModelSummary,
    Session,
    SharedValue,
    check_hub_reference,
    check_recipe_text,
    check_repo_name,
    compatibility_markdown,
    default_repo_name,
    form_to_yaml,
    parse_value,
    preset_form,
    scrub,
    summarize_model,
    user_message,
    yaml_to_form,
)
from mergehub.interfaces.space import job as space_job
from mergehub.recipe import parse_recipe

ALICE = types.SimpleNamespace(token="tok-alice", scope="openid profile contribute-repos", expires_at=2**31)
"""What gradio injects as `gr.OAuthToken` for a signed-in visitor (only `.token` is used)."""


# -- safety -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref", ["org/name", "org/name@main", "org/name@refs/pr/1", "Org-1/na.me_2@v1.0", "org/name@0123abcd"]
)
def test_hub_references_are_accepted(ref):
    assert check_hub_reference(f"  {ref} ") == ref


@pytest.mark.parametrize(
    "ref",
    [
        "/etc/passwd",
        "/tmp/mergehub-space-x/model",
        "../other/model",
        "org/../name",
        "./org/name",
        "~/models/x",
        "file:///etc/passwd",
        "file:org/name",
        "https://huggingface.co/org/name",
        "hf://org/name",
        "C:\\models\\x",
        "org\\name",
        "org/name@../../x",
        "org/name@/abs",
        "name-only",
        "a/b/c",
        "",
        "   ",
        "org/name lora",
        "org/na\0me",
        "org/name+lora/x",
        "-org/name",
    ],
)
def test_anything_but_a_hub_reference_is_refused(ref):
    with pytest.raises(ModelReferenceError) as info:
        check_hub_reference(ref)
    assert info.value.hint


def _recipe(models: list[str], **extra) -> str:
    return yaml.safe_dump(
        {"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": 1}} for m in models], **extra},
        sort_keys=False,
    )


def test_recipe_check_accepts_hub_models_and_returns_the_recipe():
    recipe = check_recipe_text(_recipe(["org/a", "org/b@v2"]))
    assert [str(r) for r in recipe.referenced_models()] == ["org/a", "org/b@v2"]


@pytest.mark.parametrize(
    "text, match",
    [
        (_recipe(["org/a", "/srv/models/b"]), "not allowed here"),
        (_recipe(["org/a", "../b/c"]), "not allowed here"),
        (_recipe(["org/a", "https://huggingface.co/org/b"]), "not allowed here"),
        (_recipe(["org/a", "org/b"], base_model="~/base"), "not allowed here"),
        (_recipe(["org/a", "org/b"], tokenizer_source="/etc/tokenizer"), "not allowed here"),
        (
            _recipe(
                ["org/a", "org/b"],
                tokenizer={"source": "union", "tokens": {"x": {"source": {"kind": "model_token", "model": "../x/y"}}}},
            ),
            "not allowed here",
        ),
        (_recipe([f"org/m{i}" for i in range(MAX_MODELS + 1)]), f"at most {MAX_MODELS}"),
        (_recipe(["org/a"]) + "# " + "x" * MAX_RECIPE_BYTES + "\n", "at most"),
        (
            "merge_method: linear\nmodels:\n"
            "  - {model: org/a, parameters: &w {weight: 1}}\n  - {model: org/b, parameters: *w}\n",
            "anchors",
        ),
        ("merge_method: [", "not valid YAML"),
    ],
)
def test_recipe_check_refuses_what_the_space_must_not_run(text, match):
    with pytest.raises((RecipeError, ModelReferenceError), match=match) as info:
        check_recipe_text(text)
    assert info.value.hint


def test_a_key_outside_the_schema_is_ignored_with_a_warning():
    recipe = check_recipe_text(_recipe(["org/a"], trust_remote_code=True))
    (warning,) = recipe.warnings
    assert warning.location == "trust_remote_code" and "ignored" in warning.message and warning.line


def test_too_many_slices_are_refused():
    slices = [{"sources": [{"model": "org/a", "layer_range": [0, 1]}]} for _ in range(space.MAX_SLICES + 1)]
    with pytest.raises(RecipeError, match="slices"):
        check_recipe_text(yaml.safe_dump({"merge_method": "passthrough", "slices": slices}))


@pytest.mark.parametrize("name", ["merged", "alice/merged", "Qwen2.5-0.5B-slerp", "a_b.c"])
def test_repo_names_are_accepted(name):
    assert check_repo_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "a/b/c", "../x", "x--y", "x..y", "-x", "x-", "/abs", "a" * 97, "has space", "https://hf.co/x"]
)
def test_bad_repo_names_are_refused(name):
    with pytest.raises(PublishError):
        check_repo_name(name)


def test_merging_never_reads_a_folder_of_the_server(tmp_path, monkeypatch):
    (tmp_path / "org" / "local").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    outputs = list(space.merge(_recipe(["org/local", "org/b"]), "x", False, Session(), ALICE))
    assert "not allowed here" in outputs[-1][0]


# -- what visitors see ----------------------------------------------------------------------------------


def test_scrub_removes_tokens_and_server_paths_but_keeps_hub_ids_and_urls():
    token = "hf_" + "a1B2" * 9
    text = (
        f"401 for {token} and hf_oauth_{'x' * 30}; Authorization: Bearer abcdefghijklmnopqrstuv; session tok-alice; "
        "wrote /tmp/mergehub-push-1/model/README.md and ~/.cache/huggingface/x and file:///etc/passwd; "
        "see https://huggingface.co/org/name and org/name@refs/pr/1; 12 MB/s; use hf_hub_download"
    )
    clean = scrub(text, ["tok-alice"])
    for secret in (
        token,
        "hf_oauth_x",
        "abcdefghijklmnopqrstuv",
        "tok-alice",
        "/tmp/",
        "mergehub-push",
        ".cache",
        "/etc/passwd",
    ):
        assert secret not in clean
    for kept in (
        "https://huggingface.co/org/name",
        "org/name@refs/pr/1",
        "12 MB/s",
        "hf_hub_download",
        "<server path>",
    ):
        assert kept in clean


def test_user_message_is_message_and_hint_only():
    error = SourceError("org/a: cannot read /home/user/app/cache/x with tok-alice.", hint="Check the token tok-alice.")
    assert (
        user_message(error, ["tok-alice"]) == "org/a: cannot read <server path> with ***.\nHint: Check the token ***."
    )
    unexpected = user_message(RuntimeError("boom at /srv/secret with hf_" + "z" * 34))
    assert "RuntimeError" in unexpected and "/srv" not in unexpected and "boom" not in unexpected


# -- the form and its YAML ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_presets_round_trip_between_form_and_yaml(name):
    form = preset_form(name, ["me/base", "me/one", "me/two", "me/three"])
    text, problems = form_to_yaml(form)
    assert not problems
    parse_recipe(text)  # a valid mergekit recipe
    again, hidden = yaml_to_form(text)
    assert not hidden
    assert again == form
    assert form_to_yaml(again)[0] == text


@pytest.mark.parametrize("name", PRESETS)
def test_presets_use_the_visitors_models(name):
    form = preset_form(name, ["me/base", "me/one", "me/two", "me/three"], layers=32)
    recipe = parse_recipe(form_to_yaml(form)[0])
    names = {str(r) for r in recipe.referenced_models()}
    assert names <= {"me/base", "me/one", "me/two", "me/three"}
    if name.startswith("Passthrough"):
        assert [s.sources[0].layer_range for s in recipe.slices] == [(0, 22), (10, 32)]


def test_presets_add_no_models_and_ask_for_the_missing_ones():
    from mergehub.interfaces.space.presets import missing_models

    form = preset_form("TIES of three models", ["me/base", "me/one"])
    assert (form.base, form.models) == ("me/base", ["me/one", "", ""])
    assert missing_models("TIES of three models", ["me/base", "me/one"]) == (
        "Choose 2 more models for this preset (the empty model fields)."
    )
    assert missing_models("SLERP of two models", ["me/base", "me/one"]) == ""
    assert preset_form("Passthrough frankenmerge").layer_ranges == ""


def test_slerp_preset_sets_t_gradients_per_filter():
    recipe = parse_recipe(form_to_yaml(preset_form("SLERP of two models", ["org/a", "org/b"]))[0])
    t = recipe.parameters["t"]
    assert [(e.filter, e.value) for e in t] == [
        ("self_attn", [0, 0.5, 0.3, 0.7, 1]),
        ("mlp", [1, 0.5, 0.7, 0.3, 0]),
        (None, 0.5),
    ]
    assert str(recipe.base_model) == "org/a" and [str(m.model) for m in recipe.models] == ["org/b"]


MERGEKIT_STYLE = """\
# a TIES recipe as mergekit's README writes it
models:
  - model: org/base
  - model: org/math
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: org/code
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
merge_method: ties
base_model: org/base
parameters:
  normalize: true
  int8_mask: true
dtype: float16
out_dtype: bfloat16
tokenizer_source: base
chat_template: |
  {% for m in messages %}{{ m.content }}{% endfor %}
"""


def test_yaml_to_form_to_yaml_keeps_the_recipe():
    form, hidden = yaml_to_form(MERGEKIT_STYLE)
    assert not hidden
    assert form.base == "org/base" and form.models == ["org/math", "org/code"] and form.base_position == 0
    assert form.model_params == [
        {"density": "1, 0.7, 0.1", "weight": "1.0"},
        {"density": "0.5", "weight": "0, 0.3, 0.7, 1"},
    ]
    assert form.shared == {"normalize": SharedValue("true"), "int8_mask": SharedValue("true")}
    text, problems = form_to_yaml(form, MERGEKIT_STYLE)
    assert not problems
    assert parse_recipe(text) == parse_recipe(MERGEKIT_STYLE)


def test_editing_a_field_changes_only_that_field():
    form, _ = yaml_to_form(MERGEKIT_STYLE)
    form.model_params[1]["weight"] = "0.25"
    edited = parse_recipe(form_to_yaml(form, MERGEKIT_STYLE)[0])
    assert edited.models[2].parameters["weight"] == 0.25
    assert edited.out_dtype == "bfloat16" and edited.chat_template and edited.models[0].parameters is None


@pytest.mark.parametrize(
    "text, hidden",
    [
        (
            "merge_method: ties\nbase_model: org/b\nslices:\n  - sources:\n"
            "      - {model: org/b, layer_range: [0, 4]}\n      - {model: org/a, layer_range: [0, 4]}\n",
            "slices",
        ),
        (
            "merge_method: linear\nmodels:\n  - model: org/a\n    parameters: {weight: [{filter: mlp, value: 1}]}\n",
            "weight",
        ),
        (
            "merge_method: slerp\nbase_model: org/a\nmodels: [{model: org/b}]\n"
            "parameters: {t: [{filter: lm_head, value: 1}]}\n",
            "parameters.t",
        ),
        ("merge_method: linear\nmodels: [{model: org/a}]\nparameters: {weight: 1}\n", "parameters.weight"),
    ],
)
def test_the_form_says_what_it_cannot_show(text, hidden):
    _, problems = yaml_to_form(text)
    assert any(hidden in p for p in problems)


def test_invalid_fields_are_left_out_and_named():
    form = Form(
        "linear",
        models=["org/a", "org/b"],
        model_params=[{"weight": "abc"}, {"weight": "0.5"}],
        shared={"normalize": SharedValue("maybe")},
    )
    text, problems = form_to_yaml(form)
    assert any("Model 1" in p and "weight" in p for p in problems) and any("normalize" in p for p in problems)
    recipe = parse_recipe(text)
    assert recipe.models[0].parameters is None and recipe.models[1].parameters == {"weight": 0.5}


def test_field_values():
    assert parse_value("0.5") == 0.5 and parse_value("2", int) == 2 and parse_value("true", bool) is True
    assert parse_value("0, 0.5, 1") == [0, 0.5, 1]
    for bad, kind in (("abc", float), ("1,,2", float), ("nan", float), ("1.5", int), ("maybe", bool), ("", float)):
        with pytest.raises(ValueError):
            parse_value(bad, kind)


def test_switching_method_keeps_models_and_shared_parameter_names():
    form = preset_form("TIES of three models", ["org/base", "org/a", "org/b", "org/c"])
    dare = space.form_with_method(form, "dare_ties")
    assert dare.models == form.models and dare.model_params == form.model_params and "normalize" in dare.shared
    linear = space.form_with_method(form, "linear")
    assert linear.model_params == [{"weight": p["weight"]} for p in form.model_params] and "normalize" in linear.shared


def test_default_repo_name():
    assert default_repo_name("slerp", ["org/a", "org/b@v1"]) == "a-b-slerp"
    assert default_repo_name("dare_ties", []) == "merged-dare-ties"
    long = default_repo_name("ties", [f"org/{'x' * 40}{i}" for i in range(5)])
    assert len(long) <= 96 and check_repo_name(long) == long
    assert check_repo_name(default_repo_name("linear", ["org/..weird--name.."]))


# -- the compatibility table ----------------------------------------------------------------------------------


def _summary(ref: str, **changes) -> ModelSummary:
    fields = dict(
        architecture="LlamaForCausalLM",
        layers=32,
        hidden=4096,
        vocab=32000,
        dtype="BF16",
        parameters=7_000_000_000,
        nbytes=14_000_000_000,
        license="apache-2.0",
    )
    return ModelSummary(ref, **{**fields, **changes})


def test_summary_from_config_headers_and_card():
    info = types.SimpleNamespace
    tensors = {"a": info(shape=(4, 8), dtype="BF16", nbytes=64), "b": info(shape=(8,), dtype="F32", nbytes=32)}
    config = {"architectures": ["MistralForCausalLM"], "num_hidden_layers": 2, "hidden_size": 8, "vocab_size": 4}
    summary = summarize_model("org/m", config, tensors, b"---\nlicense: other\nlicense_name: my-license\n---\n# card")
    assert summary == ModelSummary("org/m", "MistralForCausalLM", 2, 8, 4, "BF16", 40, 96, "other (my-license)")
    assert summarize_model("org/m", {"model_type": "gpt2", "n_layer": 3}, {}, None).layers == 3


def test_compatibility_table_marks_what_differs():
    same = compatibility_markdown([_summary("org/a"), _summary("org/b")])
    assert "✅" in same and "⚠️" not in same and "7.00B" in same and "14.00 GB" in same
    different = compatibility_markdown([_summary("org/a"), _summary("org/b", hidden=5120, license="mit")])
    assert "⚠️ 5120" in different and "hidden" in different.splitlines()[-1] and "licenses differ" in different
    failed = compatibility_markdown([_summary("org/a")], {"org/gone": "org/gone: repo not found.\nHint: ..."})
    assert "❌" in failed and "Hint" not in failed


def test_gpu_seconds_grow_with_size_within_bounds():
    assert space.estimate_gpu_seconds(0) == 60
    assert (
        space.estimate_gpu_seconds(10**9)
        < space.estimate_gpu_seconds(10**10)
        < space.estimate_gpu_seconds(10**13)
        == 3600
    )


@pytest.fixture
def zerogpu(monkeypatch) -> dict:
    """A stand-in for the `spaces` package: what `spaces.GPU` was asked to wrap, and with which duration."""
    asked = {}

    def gpu(duration):
        def wrap(fn):
            asked["fn"], asked["duration"] = fn, duration
            return fn

        return wrap

    monkeypatch.setitem(__import__("sys").modules, "spaces", types.SimpleNamespace(GPU=gpu))
    return asked


def test_zerogpu_wraps_the_merge_with_a_duration_from_the_plan(zerogpu, monkeypatch):
    asked = zerogpu
    assert space_job.job_runner() is space_job._merge_stream
    assert asked["fn"] is space_job._merge_stream
    assert asked["duration"]("r.yml", "x", False, "tok", "auto", "alive", 50 * 10**9) == space.estimate_gpu_seconds(
        50 * 10**9
    )
    scored = asked["duration"]("r.yml", "x", False, "tok", "auto", "alive", 50 * 10**9, eval_tasks=("mergehub_facts",))
    assert scored == 4 * space.estimate_gpu_seconds(50 * 10**9)  # scoring the merge and its parents takes longer
    monkeypatch.setitem(__import__("sys").modules, "spaces", None)  # not installed: run as is
    assert space_job.job_runner() is space_job._merge_stream


def test_model_search_is_anonymous_unless_signed_in(monkeypatch):
    from huggingface_hub import HfApi as Api

    calls = []

    def list_models(self, **kwargs):
        calls.append((self.token, kwargs))
        return [types.SimpleNamespace(id="org/llama-a"), types.SimpleNamespace(id="org/llama-b")]

    monkeypatch.setattr(Api, "list_models", list_models)
    assert space.search_models("llama") == (["org/llama-a", "org/llama-b"], "")
    assert calls[-1][0] is False and calls[-1][1]["search"] == "llama" and calls[-1][1]["limit"] == 20
    assert space.search_models("l") == ([], "") and len(calls) == 1
    monkeypatch.setattr(Api, "list_models", lambda self, **kwargs: [])
    assert space.search_models("zzqx") == ([], "No models found for “zzqx”. Check the spelling, or type the full ID.")
    monkeypatch.setattr(Api, "list_models", lambda self, **kwargs: (_ for _ in ()).throw(OSError("offline")))
    assert space.search_models("llama", "tok-alice") == ([], "Search failed: offline. You can still type a model ID.")


# -- against the local Hub ----------------------------------------------------------------------------------


@pytest.fixture
def seeded(hub, family):
    """org/base, org/ft1 and org/ft2 on the local Hub: a tiny Llama and two fine-tunes."""
    for name, directory in zip(("base", "ft1", "ft2"), family[:3], strict=True):
        hub.add_repo(f"org/{name}", {p.name: p for p in directory.iterdir()})
    return hub


def _slerp() -> str:
    return form_to_yaml(preset_form("SLERP of two models", ["org/base", "org/ft1"]))[0]


def _scratch_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("mergehub-space-*"))


def test_merge_pushes_and_ends_with_the_repo_link(seeded, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # only this job's scratch dirs are counted
    before = _scratch_dirs()
    outputs = list(space.merge(_slerp(), "merged", False, Session(), ALICE))
    status, log, card = outputs[-1]
    url = f"{seeded.endpoint}/alice/merged"
    assert HfApi().repo_exists("alice/merged")
    assert "model-00001-of-00001.safetensors" in HfApi().list_repo_files("alice/merged")
    assert log.splitlines()[-1].endswith(url) and url in status
    assert "tensors 39/39" in log
    assert "org/base" in card
    assert all("tok-alice" not in part for output in outputs for part in output)
    assert "/tmp" not in log and _scratch_dirs() == before


def test_merge_without_sign_in_asks_to_sign_in(seeded):
    ((status, log, card),) = space.merge(_slerp(), "merged", False, Session(), None)
    assert "Sign in" in status and not HfApi().repo_exists("alice/merged")


def test_merge_errors_are_mergehubs_message_and_hint_without_the_token(seeded):
    recipe = _slerp().replace("org/ft1", "org/missing")
    status, log, _ = list(space.merge(recipe, "merged", False, Session(), ALICE))[-1]
    assert "org/missing" in status and "Hint" in status and "Traceback" not in log
    token = "hf_" + "Q" * 34  # a token the Hub does not know: it answers 401
    outputs = list(space.merge(_slerp(), "merged", False, Session(), types.SimpleNamespace(token=token)))
    assert outputs[-1][0].startswith("❌")
    assert all(token not in part for output in outputs for part in output)


def _cancel_mid_merge(name: str, monkeypatch) -> list[tuple[str, str, str]]:
    from mergehub import executor

    slow = executor.merge_job

    def slowly(*args, **kwargs):
        time.sleep(0.05)
        return slow(*args, **kwargs)

    monkeypatch.setattr(executor, "merge_job", slowly)
    session = Session()
    session.arm()
    outputs = []
    for output in space.merge(_slerp(), name, False, session, ALICE, refresh_seconds=0):
        outputs.append(output)
        if "tensors " in output[1] and not session.is_cancelled(session.job):
            assert HfApi().repo_exists(f"alice/{name}")  # created before the first tensor
            session.cancel()
    assert "tensors 39/39" not in outputs[-1][1]
    return outputs


def test_cancel_says_the_created_repo_was_deleted(seeded, monkeypatch):
    status, log, _ = _cancel_mid_merge("gone", monkeypatch)[-1]
    assert shown_text(status) == (
        "⏹️ Cancelled: nothing was pushed. The repo alice/gone created for this merge was deleted."
    )
    assert not HfApi().repo_exists("alice/gone")


def test_cancel_says_where_the_empty_repo_is_when_the_delete_is_refused(seeded, monkeypatch):
    seeded.fail_next("/api/repos/delete", "500", times=20)
    status, log, _ = _cancel_mid_merge("stuck", monkeypatch)[-1]
    url = f"{seeded.endpoint}/alice/stuck/settings"
    assert shown_text(status) == f"⏹️ Cancelled: nothing was pushed. An empty repo remains: delete it at [{url}]({url})."
    assert log.splitlines()[-1] == f"Cancelled: nothing was pushed. An empty repo remains: delete it at {url}."
    assert HfApi().repo_exists("alice/stuck")


def test_replace_lets_a_merge_into_a_repo_mergehub_did_not_make(seeded):
    seeded.add_repo("alice/mine", {"README.md": b"# My own model\n", "model.safetensors": b"not mergehub's"})
    status, _, _ = list(space.merge(_slerp(), "mine", False, Session(), ALICE))[-1]
    assert "Hint: Choose another name, or tick “Replace an existing repo I own” to add this merge to it." in (
        shown_text(status)
    )
    status, _, _ = list(space.merge(_slerp(), "mine", False, Session(), ALICE, replace=True))[-1]
    assert shown_text(status).startswith("✅ Pushed to [alice/mine](")


def test_cancel_while_queued_never_starts(seeded):
    session = Session()
    session.arm()
    assert not session.cancel()  # nothing running yet
    ((status, log, _),) = space.merge(_slerp(), "queued", False, session, ALICE)
    assert "Cancelled" in status and not HfApi().repo_exists("alice/queued")
    assert "Pushed" in list(space.merge(_slerp(), "queued", False, session, ALICE))[-1][0]  # the next job runs


def test_closing_the_page_mid_merge_stops_it(seeded, monkeypatch):
    from mergehub import executor

    slow = executor.merge_job
    monkeypatch.setattr(executor, "merge_job", lambda *a, **k: (time.sleep(0.05), slow(*a, **k))[1])
    job = space.merge(_slerp(), "closed", False, Session(), ALICE, refresh_seconds=0)
    for output in job:
        if "tensors " in output[1]:
            break
    job.close()
    deadline = time.monotonic() + 20
    while HfApi().repo_exists("alice/closed") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not HfApi().repo_exists("alice/closed")


def test_checks_work_anonymously_and_never_borrow_the_space_token(seeded, family):
    seeded.add_repo("alice/secret", {p.name: p for p in family[2].iterdir()}, private=True)
    text = _recipe(["org/base", "alice/secret"])
    anonymous = space.check_models(text, False)  # HF_TOKEN=tok-alice is set in this process, as a Space secret would be
    assert "| `org/base` | LlamaForCausalLM | 4 | 64 | 256 | F32 |" in anonymous
    assert "❌" in anonymous and "alice/secret" in anonymous
    assert "✅" in space.check_models(text, "tok-alice")
    assert "Plan OK" in space.dry_run(_slerp(), False)
    assert "Plan failed" in space.dry_run(text, False)


def shown_text(markdown: str) -> str:
    """What a browser shows for the page's escaped Markdown (`text.plain` undone)."""
    text = re.sub(r"\\(.)", r"\1", markdown.replace("  \n", "\n").replace("&nbsp;", " "))
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def test_status_text_is_escaped_and_whole():
    from mergehub.interfaces.space.text import plain, status

    raw = "Model '<server path>' is *not* allowed: [x](y) `z`\n  indented # 1. line_2 | a"
    assert shown_text(plain(raw)) == raw
    assert "<" not in plain(raw) and "*not*" not in plain(raw)
    assert status("⏹️", "An empty repo remains: delete it at http://h:1/alice/x/settings.") == (
        "⏹️ An empty repo remains: delete it at [http://h:1/alice/x/settings](http://h:1/alice/x/settings)\\."
    )


def test_warnings_show_next_to_the_plan_and_strict_refuses_them(seeded):
    text = _slerp() + "int8_mask: true\n"
    plan = space.dry_run(text, False)
    assert plan.index("Warning: int8_mask (line ") < plan.index("Tensors:") and "1 warning(s)" in plan
    assert "Plan failed" in space.dry_run(text, False, strict=True)
    status, log, _ = list(space.merge(text, "strict", False, Session(), ALICE, strict=True))[-1]
    status = shown_text(status)
    assert (
        status.startswith("❌")
        and "strict" in status
        and "int8_mask" in status
        and not HfApi().repo_exists("alice/strict")
    )


def test_valid_recipe_only_after_the_plan_check_merge_would_run(seeded):
    from mergehub.interfaces.space.lookups import plan_check

    three = "merge_method: slerp\nbase_model: org/base\nmodels:\n- model: org/base\n- model: org/ft1\n"
    three += "- model: org/ft2\nparameters: {t: 0.5}\n"
    check_recipe_text(three)  # the schema alone accepts it
    shown = shown_text(plan_check(three, False))
    assert shown.startswith("❌ ") and "Valid recipe" not in shown
    ties = "merge_method: ties\nbase_model: org/base\nmodels:\n- model: org/ft1\n  parameters: {density: 0.5}\n"
    assert shown_text(plan_check(ties, False)).startswith("❌ ")
    assert shown_text(plan_check(_slerp(), False)) == (
        "✅ Valid recipe: the plan check passed (slerp, 2 models, 39 tensors, reads 1.45 MB)."
    )


def test_lineage_of_a_pushed_merge(seeded):
    list(space.merge(_slerp(), "merged", False, Session(), ALICE))
    shown = space.lineage_markdown("alice/merged", False)
    assert "```mermaid" in shown and "org/base" in shown and "org/ft1" in shown
    assert "not allowed here" in space.lineage_markdown("../etc", False)


# -- the page -----------------------------------------------------------------------------------------------


@pytest.fixture
def app(seeded, monkeypatch):
    """The Blocks app, built as on a laptop: gradio mocks the login with the local account (alice)."""
    return _build_app(monkeypatch)


def _build_app(monkeypatch):
    gr = pytest.importorskip("gradio")
    import gradio.oauth

    monkeypatch.setattr(
        gradio.oauth,
        "_get_mocked_oauth_info",
        lambda: {
            "access_token": "mock",
            "token_type": "bearer",
            "expires_in": 3600,
            "scope": "openid profile",
            "expires_at": 2**31,
            "userinfo": {"preferred_username": "alice", "name": "Alice", "profile": "", "picture": ""},
        },
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "OAuth is mocked outside a Space"
        demo = space.build_app()
    assert isinstance(demo, gr.Blocks)
    return demo


def _handler(demo, name: str):
    return next(fn for fn in demo.fns.values() if fn.name == name)


def _values(fn) -> dict:
    return {component: getattr(component, "value", None) for component in fn.inputs}


def test_build_app_wires_login_and_handlers(app):
    import gradio as gr
    from gradio.utils import get_type_hints

    hints = get_type_hints(_handler(app, "on_merge").fn)
    assert hints["oauth_token"] == gr.OAuthToken | None
    assert get_type_hints(_handler(app, "on_user").fn)["profile"] == gr.OAuthProfile | None
    merge_fn = _handler(app, "on_merge")
    assert merge_fn.concurrency_limit == 1 and merge_fn.types_generator
    assert _handler(app, "on_cancel").concurrency_limit is None
    assert any(isinstance(block, gr.LoginButton) for block in app.blocks.values())


def test_page_handlers_turn_presets_and_yaml_into_each_other(app):
    preset = _handler(app, "on_preset")  # the first preset button: SLERP
    updates = preset.fn(_values(preset), None)
    by_label = {getattr(c, "label", None): u for c, u in updates.items()}
    text = next(u for c, u in updates.items() if getattr(c, "language", None) == "yaml")
    assert "merge_method: slerp" in text and "self_attn" in text
    assert by_label["Merge method"]["value"] == "slerp"
    yaml_fn = _handler(app, "on_yaml_input")
    updates = yaml_fn.fn(MERGEKIT_STYLE)
    assert updates[next(c for c in updates if getattr(c, "label", None) == "Merge method")]["value"] == "ties"
    assert any(u.get("value") == "org/code" for u in updates.values() if isinstance(u, dict))
    assert list(yaml_fn.fn("merge_method: [").values()) == [""]  # the plan note says what is wrong
    changed = _handler(app, "on_recipe_changed").fn("merge_method: [", "❌ Merging failed before.")
    assert [shown_text(v) for v in changed.values()] == [
        "❌ The recipe is not valid YAML at line 1, column 16: expected the node content, but found the end of the "
        "text (in the flow node).\n    merge_method: [\n" + " " * 19 + "^\nAt line 1 of the recipe.\n"
        "Hint: Check indentation and quoting.",
        "",  # the previous merge's error goes when the recipe changes
    ]


def test_frankenmerge_preset_reads_the_layer_count_of_the_visitors_model(app):
    frankenmerge = [fn for fn in app.fns.values() if fn.name == "on_preset"][3]
    values = _values(frankenmerge)
    model_1 = next(c for c in values if getattr(c, "label", None) == "Model 1")
    values[model_1] = "org/base"
    updates = frankenmerge.fn(values, None)
    text = next(u for c, u in updates.items() if getattr(c, "language", None) == "yaml")
    assert [s.sources[0].layer_range for s in parse_recipe(text).slices] == [(0, 3), (1, 4)]  # org/base has 4 layers


def test_form_edits_keep_a_header_comment_and_say_when_they_would_lose_others(app):
    form_input = next(fn for fn in app.fns.values() if fn.name == "on_form_input")
    values = _values(form_input)
    recipe_box = next(c for c in values if getattr(c, "language", None) == "yaml")
    model_1 = next(c for c in values if getattr(c, "label", None) == "Model 1")
    values[recipe_box] = "# my favourite merge\n" + _slerp()
    values[model_1] = "org/ft2"
    updates = form_input.fn(values)
    assert updates[recipe_box].startswith("# my favourite merge\nmerge_method: slerp\n")
    values[recipe_box] = _slerp().replace("dtype: bfloat16", "dtype: bfloat16  # smaller")
    (note,) = form_input.fn(values).values()
    assert shown_text(note) == (
        "⚠️ The form cannot keep the comments on line(s) 10 of this recipe, so it does not rewrite it. Edit the YAML "
        "(or remove what the form cannot keep), or pick a preset or a method to start over from the form."
    )


def test_a_failed_plan_says_where_in_the_recipe_from_the_error_fields(seeded):
    text = "merge_method: linear\nmodels:\n  - model: org/base\n    parameters: {weight: heavy}\n  - model: org/ft1\n"
    shown = space.dry_run(text, False)
    assert "models[0].parameters.weight: 'heavy' is not a float." in shown
    assert (
        "At line 4 (models[0].parameters.weight) of the recipe." in shown and "Hint: Write `weight` as a float" in shown
    )


def test_lora_references_are_checked_part_by_part():
    recipe = "merge_method: linear\nmodels:\n  - model: org/a+org/lora@v1\n    parameters: {weight: 1.0}\n"
    assert space.check_recipe_text(recipe).models[0].model.adapter.path == "org/lora"
    with pytest.raises(ModelReferenceError, match="looks like a path on the server"):
        space.check_recipe_text(recipe.replace("org/lora@v1", "/etc/lora"))
    assert space.check_model_reference(" org/a+org/lora ") == "org/a+org/lora"
    with pytest.raises(ModelReferenceError, match="not of the form"):
        space.check_model_reference("org/a+org/b+org/c")


def test_compatibility_table_reads_a_model_with_its_adapter(seeded, family, tmp_path):
    from tests.helpers import make_lora

    seeded.add_repo("org/lora", make_lora(family[0], tmp_path / "lora", r=2, lora_alpha=4, target_modules=["q_proj"]))
    recipe = (
        "merge_method: linear\nmodels:\n  - model: org/base+org/lora\n    parameters: {weight: 0.5}\n"
        "  - model: org/ft1\n    parameters: {weight: 0.5}\n"
    )
    table = space.check_models(recipe, "tok-alice")
    assert "| `org/base+org/lora` | LlamaForCausalLM |" in table and "✅" in table


def test_extract_lora_tab_checks_dry_runs_and_pushes_an_adapter(seeded, app):
    with pytest.raises(ModelReferenceError):
        space.extraction_spec("org/base", "../secret", 8, None, False)
    with pytest.raises(RecipeError, match="whole number from 1 to 1024"):
        space.extraction_spec("org/base", "org/ft1", 0, None, False)
    assert space.extraction_spec("org/base", "org/ft1", 8, 0.9, True).options.rank_energy == 0.9
    plan = space.extraction_dry_run("org/base", "org/ft1", 4, None, False, "tok-alice")
    assert "Plan: LoRA extraction from 2 models" in plan and plan.endswith("Plan OK: no problems found.")
    assert "Plan failed" in space.extraction_dry_run("org/base", "org/missing", 4, None, False, "tok-alice")
    outputs = list(space.extract("org/base", "org/ft1", 4, None, False, "ft1-lora", False, Session(), ALICE))
    status, log, card = outputs[-1]
    assert shown_text(status).startswith("✅ Pushed to [alice/ft1-lora]("), status
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(HfApi().list_repo_files("alice/ft1-lora"))
    assert (
        "Plan: 28 modules as LoRA of rank up to 4" in log
        and "Reconstruction" in card
        and "base_model_relation: adapter" in card
    )
    assert all("tok-alice" not in part for output in outputs for part in output)
    ((status, _, _),) = space.extract("org/base", "org/ft1", 4, None, False, "x", False, Session(), None)
    assert "Sign in with Hugging Face to extract" in status
    handler = _handler(app, "on_extract")
    assert handler.concurrency_limit == 1 and handler.types_generator and handler.api_name == "extract_lora"


def _shown(text: str) -> str:
    try:
        check_recipe_text(text)
    except (RecipeError, ModelReferenceError) as e:
        return user_message(e)
    raise AssertionError("the recipe was accepted")


def test_yaml_errors_say_line_and_column_in_words():
    assert _shown("merge_method: linear\nmodels: {a: 1, b: 2: 3}\n") == (
        "The recipe is not valid YAML at line 2, column 20: expected ',' or '}', but got ':' "
        "(in the flow mapping that starts at line 2, column 9).\n    models: {a: 1, b: 2: 3}\n"
        + " " * 23
        + "^\nAt line 2 of the recipe.\nHint: Check indentation and quoting."
    )


def test_a_server_path_is_named_with_its_place_in_the_recipe():
    assert _shown("merge_method: linear\nmodels:\n- model: /data/x\n") == (
        "Model '<server path>' is not allowed here: it looks like a path on the server.\n"
        "At line 3 (models[0].model) of the recipe.\n"
        "Hint: Use a Hub model ID like `org/name`, or `org/name@revision` for a branch, tag or commit."
    )


@pytest.mark.parametrize(
    ("remedy", "words"),
    [
        ("sign-in", "Sign in with Hugging Face (top right)"),
        ("replace-repo", "tick “Replace an existing repo I own”"),
        ("strict", "Untick “Strict”"),
    ],
)
def test_hints_are_worded_for_the_page(remedy, words):
    error = PublishError("It failed.", hint="Pass --force or run `hf auth login`.", remedy=remedy)
    shown = user_message(error)
    assert words in shown and "--force" not in shown and "hf auth" not in shown


@pytest.fixture
def talking(hub, family):
    """org/base and org/ft1 on the local Hub with a WordLevel tokenizer and a chat template: models that can talk."""
    from tests.helpers import WORDS, make_tokenizer

    words = WORDS + [f"x{i}" for i in range(256 - len(WORDS))]  # one word per row of the tiny models' embeddings
    tokenizer = make_tokenizer(words, template="{% for m in messages %}{{ m['content'] }} {% endfor %}")
    for name, directory in zip(("base", "ft1"), family[:2], strict=True):
        hub.add_repo(f"org/{name}", {**{p.name: p for p in directory.iterdir()}, **tokenizer})
    return hub


def test_evaluation_scores_land_in_the_card_with_deltas(talking):
    pytest.importorskip("lm_eval")
    outputs = list(
        space.merge(_slerp(), "scored", False, Session(), ALICE, eval_tasks=("mergehub_arithmetic",), eval_limit=500)
    )
    status, log, card = outputs[-1]
    assert shown_text(status).startswith("✅ Pushed to [alice/scored](")
    assert "Then scoring the merge and its parents on mergehub_arithmetic (100 documents per task)." in log
    assert "Scores are in the card's Evaluation section and model-index." in log
    assert "## Evaluation" in card and "Compared with the parents (Δ = merged − parent):" in card
    assert re.search(r"\| mergehub_arithmetic \| exact_match \| +\d\.\d{4} \| +\d\.\d{4} \| +[+-]\d\.\d{4} \|", card)
    assert "model-index" in card
    from mergehub.interfaces.space.lookups import my_merges

    (merge,) = my_merges("alice", "tok-alice")  # My merges shows the scores from the card
    assert len(merge.scores) == 1 and re.fullmatch(r"\S+ exact_match \d\.\d{4}", merge.scores[0])


def test_try_it_streams_the_reply_token_by_token(talking):
    from mergehub.interfaces.space.chat import reply_stream

    list(space.merge(_slerp(), "chatty", False, Session(), ALICE))
    replies = list(reply_stream("alice/chatty", [], "hello world", token="tok-alice", max_new_tokens=6, temperature=0))
    assert len(replies) >= 2 and all(later.startswith(earlier) for earlier, later in zip(replies, replies[1:]))
    assert replies[-1].strip() and not replies[-1].startswith("❌")
    again = list(reply_stream("alice/chatty", [], "hello world", token="tok-alice", max_new_tokens=6, temperature=0))
    assert again[-1] == replies[-1]  # greedy at temperature 0


def test_try_it_says_why_it_will_not_talk(talking, monkeypatch):
    from mergehub.interfaces.space import chat

    assert list(chat.reply_stream("org/base", [], "  ")) == [
        "❌ Write a message first.\nHint: Type a prompt, then press Send."
    ]
    monkeypatch.setattr(chat, "MAX_CPU_BYTES", 1000)
    (shown,) = chat.reply_stream("org/base", [], "hi")
    assert shown == (
        "❌ org/base has 727.21 KB of weights; the chat runs models up to 1.00 KB on this Space's CPU (it has no GPU)."
        "\nHint: Try a smaller model, or run it on your own machine with transformers."
    )
    (shown,) = chat.reply_stream("org/nothing", [], "hi")
    assert (
        shown.startswith("❌ Cannot read org/nothing on the Hub:") and "Sign in with Hugging Face (top right)" in shown
    )


def test_my_merges_lists_the_users_mergehub_repos_with_their_recipe(seeded):
    from mergehub.interfaces.space.lookups import merge_recipe, my_merges, my_merges_markdown

    assert my_merges("alice", "tok-alice") == []
    assert my_merges_markdown([], seeded.endpoint).startswith("No merges yet")
    list(space.merge(_slerp(), "first", False, Session(), ALICE))
    seeded.add_repo("alice/not-a-merge", {"README.md": b"# mine\n"})
    (merge,) = my_merges("alice", "tok-alice")
    assert (merge.repo_id, merge.method, merge.parents, merge.scores) == (
        "alice/first",
        "slerp",
        ("org/base", "org/ft1"),
        (),
    )
    shown = my_merges_markdown([merge], seeded.endpoint)
    assert shown.splitlines()[0] == "| Merge | Date | Method | Parents | Scores |"
    assert shown.splitlines()[2].startswith(f"| [alice/first]({seeded.endpoint}/alice/first) | ")
    assert shown.splitlines()[2].endswith(" | slerp | org/base, org/ft1 | not evaluated |")
    assert parse_recipe(merge_recipe("alice/first", "tok-alice")).merge_method == "slerp"


def test_the_cards_lineage_gives_the_new_model_its_cards_license(seeded):
    from huggingface_hub import ModelCard

    list(space.merge(_slerp(), "licensed", False, Session(), ALICE))
    card = ModelCard.load("alice/licensed")
    mermaid = card.text.split("```mermaid\n", 1)[1].split("```", 1)[0]
    root = next(line for line in mermaid.splitlines() if '["alice/licensed' in line)
    assert card.data.license and root.endswith(f'["alice/licensed<br/>{card.data.license}"]')
    assert "license unknown" not in root


def test_zerogpu_wraps_the_chat_with_a_duration_from_the_model_size(talking, zerogpu):
    from mergehub.interfaces.space import chat

    asked = zerogpu
    assert chat.generator() is chat._generate
    assert asked["duration"]("org/base", [], "hi", 128, 0.7, False) == chat.gpu_seconds(744664, 128) == 26
    assert chat.gpu_seconds(16 * 10**9, 512) == 125


def test_compare_sends_the_prompt_to_each_parent(talking, monkeypatch):
    list(space.merge(_slerp(), "compared", False, Session(), ALICE))
    send = _handler(_build_app(monkeypatch), "on_send")
    outputs = list(send.fn("alice/compared", "hello", [], 8, 0, True, ALICE))
    history, cleared, _ = outputs[0]
    assert [m["role"] for m in history] == ["user", "assistant"] and cleared == ""
    parents = shown_text(outputs[-1][2]).split("\n\n")
    assert parents[0] == "The same prompt to each parent:"
    assert [p.split("**: ")[0] for p in parents[1:]] == ["**org/base", "**org/ft1"]
    assert all(len(p.split("**: ")[1]) > 1 for p in parents[1:])
    (_, _, said) = list(send.fn("org/base", "hello", [], 8, 0, True, ALICE))[-1]
    assert shown_text(said) == "⚠️ The model's card names no parents to compare with."
