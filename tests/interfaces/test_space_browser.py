"""The Space in a real browser: the page loads, a preset fills the YAML, the YAML fills the form, Merge asks to sign in.

Needs chromium (`apt-get install -y chromium`) and playwright (`pip install playwright`); slow.
"""

from __future__ import annotations

import re
import shutil
import socket
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = Path("/tmp/mergehub-space.png")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def page_url(hub, family, monkeypatch):
    """The app served on 127.0.0.1, its models on the local Hub; signing in (mocked by gradio) gives alice's token."""
    pytest.importorskip("gradio")
    import gradio.oauth

    from mergehub.interfaces import space

    for name, directory in zip(("base", "ft1", "ft2"), family[:3], strict=True):
        hub.add_repo(f"org/{name}", {p.name: p for p in directory.iterdir()})
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


def test_presets_yaml_and_merge_button_in_a_browser(page_url):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(page_url)
            editor = page.locator(".cm-content").first
            sync_api.expect(editor).to_contain_text("merge_method: slerp", timeout=30_000)

            page.get_by_role("button", name="TIES of three models").click()
            sync_api.expect(editor).to_contain_text("merge_method: ties", timeout=15_000)
            sync_api.expect(editor).to_contain_text("density: 0.5")
            sync_api.expect(page.get_by_label("Merge method")).to_have_value("ties — " + _summary("ties"))
            sync_api.expect(page.get_by_label("Output repo", exact=False)).to_have_value(
                "Qwen2.5-0.5B-Qwen2.5-0.5B-Instruct-Qwen2.5-Coder-0.5B-Qwen2.5-Coder-0.5B-Instruct-ties"
            )

            editor.click()
            page.keyboard.press("Control+A")
            page.keyboard.insert_text(
                "merge_method: dare_ties\nbase_model: org/base\nmodels:\n"
                "- model: org/ft1\n  parameters: {weight: 0.7, density: 0.4}\n"
            )
            sync_api.expect(page.get_by_label("Merge method")).to_have_value(
                "dare_ties — " + _summary("dare_ties"), timeout=15_000
            )
            sync_api.expect(page.get_by_label("Model 1", exact=True)).to_have_value("org/ft1")
            sync_api.expect(page.get_by_text("Valid recipe.")).to_be_visible()

            page.get_by_role("button", name="Check models").click()
            sync_api.expect(page.get_by_text("can be merged tensor by tensor")).to_be_visible(timeout=30_000)

            page.get_by_role("button", name="Merge and push").click()
            sync_api.expect(page.get_by_text("Sign in with Hugging Face to merge")).to_be_visible(timeout=30_000)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()


def test_signed_in_merge_then_cancel_in_a_browser(page_url, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    from huggingface_hub import HfApi

    from mergehub import executor

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(page_url)
            editor = page.locator(".cm-content").first
            sync_api.expect(editor).to_contain_text("merge_method: slerp", timeout=30_000)
            page.get_by_role("button", name="Sign in with Hugging Face").click()
            sync_api.expect(page.get_by_text("Signed in as")).to_be_visible(timeout=30_000)

            editor.click()
            page.keyboard.press("Control+A")
            page.keyboard.insert_text(
                "merge_method: linear\nmodels:\n"
                "- {model: org/base, parameters: {weight: 1}}\n- {model: org/ft1, parameters: {weight: 1}}\n"
            )
            repo = page.get_by_label("Output repo", exact=False)
            sync_api.expect(repo).to_have_value("base-ft1-linear", timeout=15_000)
            page.get_by_role("button", name="Merge and push").click()
            sync_api.expect(page.get_by_role("link", name="alice/base-ft1-linear")).to_be_visible(timeout=60_000)
            assert page.get_by_label("Log").input_value().splitlines()[-1].endswith("/alice/base-ft1-linear")
            sync_api.expect(page.get_by_text("merge of the models below", exact=False)).to_be_visible()
            assert HfApi().repo_exists("alice/base-ft1-linear")
            page.screenshot(path=str(SCREENSHOT.with_name("mergehub-space-pushed.png")), full_page=True)

            slow = executor.merge_job

            def slowly(*args, **kwargs):
                import time

                time.sleep(0.3)
                return slow(*args, **kwargs)

            monkeypatch.setattr(executor, "merge_job", slowly)
            repo.fill("slow-one")
            page.get_by_role("button", name="Merge and push").click()
            sync_api.expect(page.get_by_label("Log")).to_have_value(
                re.compile(r"slow-one[\s\S]*tensors [1-9]\d*/39"), timeout=60_000
            )
            page.get_by_role("button", name="Cancel").click()
            sync_api.expect(page.get_by_text("Cancelled: nothing was pushed")).to_be_visible(timeout=60_000)
            assert "tensors 39/39" not in page.get_by_label("Log").input_value()
            assert not HfApi().repo_exists("alice/slow-one")
            page.screenshot(path=str(SCREENSHOT.with_name("mergehub-space-cancelled.png")), full_page=True)
        finally:
            browser.close()


def _summary(method: str) -> str:
    from mergehub.methods import get_method

    return get_method(method).summary
