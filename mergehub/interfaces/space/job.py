"""The merge job: check, plan, merge and push in a worker, with live progress, Cancel and ZeroGPU."""

from __future__ import annotations

import logging
import math
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from mergehub import api
from mergehub.errors import Cancelled, MergehubError, RecipeError
from mergehub.interfaces.space.safety import (
    MAX_MERGE_BYTES,
    check_recipe_text,
    check_repo_name,
    read_token,
    refuse_local_shadows,
    scrub,
    user_message,
)
from mergehub.units import format_duration, format_size

logger = logging.getLogger(__name__)


@dataclass
class Session:
    """One browser session's jobs (kept in a `gr.State`): job numbers, cancellations, the running job's marker.

    A job runs while its marker file exists; Cancel deletes it, and the merge stops before its next
    tensor. A file rather than an Event, so that the stop also reaches a ZeroGPU worker process.
    """

    job: int = 0
    started: int = 0
    cancelled: int = 0
    alive: str | None = None

    def arm(self) -> int:
        """Number the next job (when Merge is clicked, before the job waits in the queue)."""
        self.job += 1
        return self.job

    def begin(self) -> int:
        """Start the armed job (arming one if none is waiting); returns its number."""
        if self.job <= self.started:
            self.arm()
        self.started = self.job
        return self.job

    def cancel(self) -> bool:
        """Cancel the running or waiting job; returns whether one was running."""
        self.cancelled = self.job
        alive, self.alive = self.alive, None
        if alive is None:
            return False
        Path(alive).unlink(missing_ok=True)
        return True

    def is_cancelled(self, job: int) -> bool:
        """Whether job number `job` was cancelled."""
        return self.cancelled >= job


def estimate_gpu_seconds(nbytes: int) -> int:
    """GPU seconds to ask ZeroGPU for a merge that reads and writes `nbytes` (at ~100 MB/s, with margin)."""
    return int(min(3600, max(60, 30 + 1.5 * nbytes / 100e6)))


def _merge_stream(
    plan_json: str, repo_id: str, private: bool, token: str, device: str, alive_path: str, nbytes: int
) -> Iterator[tuple[str, Any]]:
    """Run `push_merge` on the plan the page showed, in a thread, yielding ("progress", Progress) and ("tick", None)
    every 0.25 s until ("done", info) or ("error", info).

    Arguments are plain values (the plan as JSON) so that ZeroGPU can run this in its GPU worker; the models
    are read at the commits the plan pinned. The merge stops when `alive_path` disappears (Cancel) or when
    this generator is closed.
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    closed = threading.Event()

    def should_stop() -> bool:
        return closed.is_set() or not Path(alive_path).exists()

    def work() -> None:
        try:
            result, pushed = api.push_merge(
                api.Plan.from_json(plan_json),
                repo_id,
                token=token,
                private=private,
                device=device,
                on_progress=lambda p: events.put(("progress", p)),
                should_stop=should_stop,
            )
            events.put(
                (
                    "done",
                    {
                        "repo_id": pushed.repo_id,
                        "commit_sha": pushed.commit_sha,
                        "commit_url": pushed.commit_url,
                        "created": pushed.created,
                        "figures": result.figures(),
                    },
                )
            )
        except BaseException as e:  # noqa: BLE001 - every failure becomes a scrubbed message
            cancelled = should_stop() and isinstance(e, Cancelled)
            if not isinstance(e, MergehubError):
                logger.error("merge job failed: %s: %s", type(e).__name__, scrub(str(e), [token]))
            events.put(("error", {"message": user_message(e, [token]), "cancelled": cancelled}))

    thread = threading.Thread(target=work, name="mergehub-space-job", daemon=True)
    thread.start()
    try:
        while True:
            try:
                kind, payload = events.get(timeout=0.25)
            except queue.Empty:
                yield "tick", None
                continue
            yield kind, payload
            if kind in ("done", "error"):
                return
    finally:
        closed.set()  # the page went away: stop merging (the repo this job created is deleted)


def job_runner() -> Callable[..., Iterator[tuple[str, Any]]]:
    """`_merge_stream`, wrapped for ZeroGPU when the `spaces` package is there (effect-free elsewhere)."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return _merge_stream

    def duration(
        plan_json: str, repo_id: str, private: bool, token: str, device: str, alive_path: str, nbytes: int
    ) -> int:
        return estimate_gpu_seconds(nbytes)

    return spaces.GPU(duration=duration)(_merge_stream)


def _progress_line(p: Any, elapsed: float) -> str:
    """The live log line of a merge: tensors done, bytes read, rate and time left."""
    rate = p.bytes_read / max(elapsed, 1e-6)
    eta = (p.bytes_total - p.bytes_read) / rate if rate > 0 else float("inf")
    return (
        f"tensors {p.tensors_done}/{p.tensors_total} · "
        f"read {format_size(p.bytes_read)} of {format_size(p.bytes_total)} · "
        f"{format_size(rate)}/s · ETA {format_duration(eta) if math.isfinite(eta) else '?'}"
    )


def _repo_url(repo_id: str) -> str:
    """The repo's page on the Hub this process talks to."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/{repo_id}"


def _read_card(repo_id: str, revision: str, token: str, directory: Path) -> str:
    """The README.md of the pushed commit, or a note when there is none."""
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo_id, "README.md", revision=revision, token=token, local_dir=directory / "card")
        return Path(path).read_text(encoding="utf-8")
    except Exception:  # noqa: BLE001 - the card is a bonus; the merge is done
        return "*This merge has no model card yet.*"


def _render_card(text: str) -> str:
    """Show a card's YAML metadata as a code block, then its body."""
    card = ModelCard(text, ignore_metadata_errors=True)  # a card mergehub has just pushed
    if not card.data.to_dict():
        return text
    return f"```yaml\n{card.data.to_yaml()}\n```\n\n{card.text.lstrip(chr(10))}"


def merge(
    recipe_text: str,
    repo_name: str,
    private: bool,
    session: Session | None,
    oauth_token: Any,
    progress: Any = None,
    *,
    runner: Callable[..., Iterator[tuple[str, Any]]] = _merge_stream,
    device: str = "auto",
    refresh_seconds: float = 0.3,
    strict: bool = False,
) -> Iterator[tuple[str, str, str]]:
    """The Merge button: check, plan, merge and push, yielding (status, log, model card) as it goes.

    With `strict`, a recipe whose plan has warnings (keys or parameters that would be ignored) is refused.

    The last log line of a successful merge is the link to the new repo. Errors show mergehub's
    message and hint, scrubbed of tokens and server paths.
    """
    token = read_token(oauth_token)
    if not isinstance(token, str):
        yield (
            "🔒 **Sign in with Hugging Face to merge**: the model is pushed to your account. "
            "Checks and the dry run work without signing in.",
            "",
            "",
        )
        return
    session = session if session is not None else Session()
    job = session.begin()
    log: list[str] = []

    def out(status: str, card: str = "", live: str = "") -> tuple[str, str, str]:
        return scrub(status, [token]), scrub("\n".join(log + ([live] if live else [])), [token]), card

    def failed(message: str) -> tuple[str, str, str]:
        log.append("Failed: " + message)
        return out("❌ " + message.replace("\n", "  \n"))

    if session.is_cancelled(job):
        log.append("Cancelled before it started.")
        yield out("⏹️ Cancelled: nothing was pushed.")
        return
    scratch = Path(tempfile.mkdtemp(prefix="mergehub-space-"))
    alive = scratch / "alive"
    alive.touch()
    session.alive = str(alive)
    try:
        recipe = check_recipe_text(recipe_text)
        refuse_local_shadows(recipe)
        repo_id = check_repo_name(repo_name)
        log.append(f"Checking {len(recipe.referenced_models())} model(s) from their configs and headers...")
        yield out("⏳ Planning...")
        plan = api.plan_merge(recipe, token=token, strict=strict)
        log.append(
            f"Plan: {plan.method} merge into {len(plan.jobs)} tensors; "
            f"read {format_size(plan.read_bytes)}, write {format_size(plan.write_bytes)}."
        )
        log += [f"Warning: {w}" for w in plan.warnings]
        if plan.read_bytes + plan.write_bytes > MAX_MERGE_BYTES:
            raise RecipeError(
                f"This merge reads and writes {format_size(plan.read_bytes + plan.write_bytes)}; "
                f"this Space merges at most {format_size(MAX_MERGE_BYTES)} at a time.",
                hint="Run `mergehub merge --push` on your own machine for merges this large.",
            )
        log.append(f"Merging into {repo_id} ({'private' if private else 'public'}); shards upload as they are written.")
        yield out("⏳ Merging...")
        started = last = time.monotonic()
        live = ""
        for kind, payload in runner(
            plan.to_json(), repo_id, bool(private), token, device, str(alive), plan.read_bytes + plan.write_bytes
        ):
            if kind == "progress":
                live = _progress_line(payload, time.monotonic() - started)
                if progress is not None:
                    progress((payload.tensors_done, payload.tensors_total), desc="merging", unit="tensors")
                if payload.tensors_done == payload.tensors_total:
                    log.append(live)
                    live = "Committing to the Hub..."
            elif kind == "error":
                if payload["cancelled"]:
                    if live:
                        log.append(live)
                    log.append("Cancelled: nothing was pushed, and a repo created for this merge was deleted.")
                    yield out("⏹️ Cancelled: nothing was pushed.")
                else:
                    yield failed(payload["message"])
                return
            elif kind == "done":
                url = _repo_url(payload["repo_id"])
                log.append(payload["figures"])
                log.append(f"Pushed commit {payload['commit_sha'][:10]}: {url}")
                card = _render_card(_read_card(payload["repo_id"], payload["commit_sha"], token, scratch)).replace(
                    token, "***"
                )
                yield out(f"✅ Pushed to [{payload['repo_id']}]({url})", card)
                return
            now = time.monotonic()
            if now - last >= refresh_seconds:
                last = now
                if session.is_cancelled(job):
                    alive.unlink(missing_ok=True)
                yield out("⏳ Merging...", live=live)
    except Exception as e:  # noqa: BLE001 - mergehub's message and hint; anything else only in the server log
        if not isinstance(e, MergehubError):
            logger.error("merge failed: %s: %s", type(e).__name__, scrub(str(e), [token]))
        yield failed(user_message(e, [token]))
    finally:
        if session.alive == str(alive):
            session.alive = None
        shutil.rmtree(scratch, ignore_errors=True)
