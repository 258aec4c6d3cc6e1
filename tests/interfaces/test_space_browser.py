"""The Space in a real browser: the page loads, a preset fills the YAML, the YAML fills the form, Merge asks to sign in,
messages show whole, a signed-in merge is scored, listed, talked to and cancelled, and the page fits a phone.

Needs chromium (`make test` installs it when missing) and playwright (in the dev extra); part of the default suite.
Screenshots are saved under each test's temporary directory.
"""

from __future__ import annotations

import re
import shutil
import socket
import warnings
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def page_url(hub, family, monkeypatch):
    """The app served on 127.0.0.1, its models (with a tokenizer) on the local Hub; signing in (mocked by gradio) gives
    alice's token."""
    pytest.importorskip("gradio")
    import gradio.oauth

    from mergehub.interfaces import space
    from tests.helpers import WORDS, make_tokenizer

    words = WORDS + [f"x{i}" for i in range(256 - len(WORDS))]
    tokenizer = make_tokenizer(words, template="{% for m in messages %}{{ m['content'] }} {% endfor %}")
    for name, directory in zip(("base", "ft1", "ft2"), family[:3], strict=True):
        hub.add_repo(f"org/{name}", {**{p.name: p for p in directory.iterdir()}, **tokenizer})
    mocked = {
        "access_token": "tok-alice",
        "token_type": "bearer",
        "expires_in": 3600,
        "scope": "openid profile",
        "expires_at": 2**31,
        "userinfo": {"preferred_username": "alice", "name": "Alice", "profile": "", "picture": ""},
    }
    monkeypatch.setattr(gradio.oauth, "_get_mocked_oauth_info", lambda: mocked)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        demo = space.build_app()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield launched
        finally:
            launched.close()


def _open(browser, page_url: str, width: int = 1400, height: int = 1800):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_url)
    expect(page.locator(".cm-content").first).to_contain_text("merge_method: slerp", timeout=30_000)
    expect(page.get_by_label("Model 1", exact=True)).to_have_value("Qwen/Qwen2.5-0.5B-Instruct", timeout=30_000)
    page.errors = errors
    return page


def _type_recipe(page, text: str) -> None:
    editor = page.locator(".cm-content").first
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(text)


def test_presets_yaml_and_merge_button_in_a_browser(page_url, browser, tmp_path):
    from playwright.sync_api import expect

    page = _open(browser, page_url)
    editor = page.locator(".cm-content").first
    page.get_by_role("button", name="TIES of three models").click()
    expect(editor).to_contain_text("merge_method: ties", timeout=15_000)
    expect(editor).to_contain_text("density: 0.5")
    expect(page.get_by_label("Merge method")).to_have_value("ties — " + _summary("ties"))
    # the preset keeps the two models of the page and asks for the others: it adds none
    expect(page.get_by_text("Choose 2 more models for this preset (the empty model fields).")).to_be_visible()
    expect(page.get_by_label("Model 2", exact=True)).to_have_value("")
    expect(page.get_by_label("Output repo", exact=False)).to_have_value("Qwen2.5-0.5B-Qwen2.5-0.5B-Instruct-ties")

    _type_recipe(
        page,
        "merge_method: dare_ties\nbase_model: org/base\nmodels:\n"
        "- model: org/ft1\n  parameters: {weight: 0.7, density: 0.4}\n",
    )
    expect(page.get_by_label("Merge method")).to_have_value("dare_ties — " + _summary("dare_ties"), timeout=15_000)
    expect(page.get_by_label("Model 1", exact=True)).to_have_value("org/ft1")
    expect(page.get_by_text("✅ Valid recipe: the plan check passed (dare_ties, 2 models, 39 tensors")).to_be_visible(
        timeout=30_000
    )

    page.get_by_role("button", name="Check models").click()
    expect(page.get_by_text("can be merged tensor by tensor")).to_be_visible(timeout=30_000)

    page.get_by_role("button", name="Merge and push").click()
    expect(page.get_by_text("Sign in with Hugging Face to merge")).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_text("⏹️ Nothing to cancel: no merge is running.")).to_be_visible(timeout=15_000)
    page.screenshot(path=str(tmp_path / "space-presets.png"), full_page=True)
    assert page.errors == []


def test_messages_show_whole_in_a_browser(page_url, browser, tmp_path):
    from playwright.sync_api import expect

    page = _open(browser, page_url)
    _type_recipe(page, "merge_method: linear\nmodels:\n- model: /data/private/model\n")
    expect(
        page.get_by_text("❌ Model '<server path>' is not allowed here: it looks like a path on the server.")
    ).to_be_visible(timeout=15_000)
    expect(page.get_by_text("At line 3 (models[0].model) of the recipe.")).to_be_visible()
    _type_recipe(page, "merge_method: linear\nmodels: {a: 1, b: 2: 3}\n")
    expect(
        page.get_by_text(
            "❌ The recipe is not valid YAML at line 2, column 20: expected ',' or '}', but got ':' "
            "(in the flow mapping that starts at line 2, column 9)."
        )
    ).to_be_visible(timeout=15_000)
    page.screenshot(path=str(tmp_path / "space-messages.png"), full_page=True)
    assert page.errors == []


def test_the_page_fits_a_phone(page_url, browser, tmp_path):
    page = _open(browser, page_url, width=390, height=844)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(tmp_path / "space-phone.png"), full_page=True)
    overflowing = page.evaluate(
        """() => {
            const inside = r => r.right <= window.innerWidth + 1 && r.left >= -1;
            const scrolls = e => {  // inside a box that scrolls or clips, itself on the screen (the code editor)
                for (let a = e.parentElement; a; a = a.parentElement) {
                    if (getComputedStyle(a).overflowX !== 'visible') return inside(a.getBoundingClientRect());
                }
                return false;
            };
            return [...document.querySelectorAll('body *')].filter(e => {
                const r = e.getBoundingClientRect();
                return r.width > 0 && e.offsetParent !== null && !inside(r) && !scrolls(e);
            }).map(e => e.tagName + '.' + e.className + ' ' + (e.innerText || '').slice(0, 30));
        }"""
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert overflowing == [], overflowing
    title = page.get_by_role("heading", name="mergehub")
    assert title.bounding_box()["height"] < 60  # one line, not "mer/geh/ub"


def test_signed_in_merge_scores_lists_talks_and_cancels_in_a_browser(page_url, browser, monkeypatch, tmp_path):
    from huggingface_hub import HfApi
    from playwright.sync_api import expect

    from mergehub import executor

    pytest.importorskip("lm_eval")
    page = _open(browser, page_url)
    page.get_by_role("button", name="Sign in with Hugging Face").click()
    expect(page.get_by_text("Signed in as")).to_be_visible(timeout=30_000)

    _type_recipe(
        page,
        "merge_method: linear\nmodels:\n"
        "- {model: org/base, parameters: {weight: 1}}\n- {model: org/ft1, parameters: {weight: 1}}\n",
    )
    repo = page.get_by_label("Output repo", exact=False)
    expect(repo).to_have_value("base-ft1-linear", timeout=15_000)
    page.get_by_label("mergehub_arithmetic").check()
    page.get_by_role("button", name="Merge and push").click()
    expect(page.get_by_role("link", name="alice/base-ft1-linear")).to_be_visible(timeout=120_000)
    assert page.get_by_label("Log").input_value().splitlines()[-1].endswith("/alice/base-ft1-linear")
    expect(page.get_by_text("merge of the models below", exact=False)).to_be_visible()
    expect(page.get_by_text("Compared with the parents (Δ = merged − parent):")).to_be_visible()
    assert HfApi().repo_exists("alice/base-ft1-linear")
    page.screenshot(path=str(tmp_path / "space-pushed.png"), full_page=True)

    page.get_by_role("tab", name="My merges").click()
    page.get_by_role("button", name="List my merges").click()
    expect(page.get_by_role("link", name="alice/base-ft1-linear")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("cell", name="org/base, org/ft1")).to_be_visible()
    expect(page.get_by_role("cell", name=re.compile(r"exact_match \d\.\d{4}"))).to_be_visible()
    page.screenshot(path=str(tmp_path / "space-my-merges.png"), full_page=True)

    page.get_by_role("tab", name="Lineage").click()  # pre-filled with the merge; the graph is a picture
    expect(page.get_by_label("Model", exact=True)).to_have_value("alice/base-ft1-linear")
    page.get_by_role("button", name="Show the family tree").click()
    expect(page.locator("svg[id^='mermaid']").filter(has_text="alice/base-ft1-linear").last).to_be_visible(
        timeout=30_000
    )
    page.screenshot(path=str(tmp_path / "space-lineage.png"), full_page=True)

    page.get_by_role("tab", name="Try it").click()
    expect(page.get_by_label("Model to talk to (org/name)")).to_have_value("alice/base-ft1-linear")
    page.get_by_label("Message").fill("hello")
    page.get_by_role("button", name="Send").click()
    reply = page.locator("[data-testid='bot']").last
    expect(reply).to_contain_text(re.compile(r"\w"), timeout=60_000)
    page.screenshot(path=str(tmp_path / "space-chat.png"), full_page=True)

    page.get_by_role("tab", name="Merge", exact=True).click()
    slow = executor.merge_job

    def slowly(*args, **kwargs):
        import time

        time.sleep(0.3)
        return slow(*args, **kwargs)

    monkeypatch.setattr(executor, "merge_job", slowly)
    page.get_by_label("mergehub_arithmetic").uncheck()
    repo.fill("slow-one")
    page.get_by_role("button", name="Merge and push").click()
    expect(page.get_by_label("Log")).to_have_value(re.compile(r"slow-one[\s\S]*tensors [1-9]\d*/39"), timeout=60_000)
    page.get_by_role("button", name="Cancel").click()
    expect(
        page.get_by_text("⏹️ Cancelled: nothing was pushed. The repo alice/slow-one created for this merge was deleted.")
    ).to_be_visible(timeout=60_000)
    assert "tensors 39/39" not in page.get_by_label("Log").input_value()
    assert not HfApi().repo_exists("alice/slow-one")
    page.screenshot(path=str(tmp_path / "space-cancelled.png"), full_page=True)
    assert page.errors == []


def _summary(method: str) -> str:
    from mergehub.methods import get_method

    return get_method(method).summary
