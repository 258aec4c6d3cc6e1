"""The Space's jobs (a merge, an extraction): check, plan, run and push in a worker, with live progress, Cancel and
ZeroGPU."""

from __future__ import annotations

import inspect
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
    check_document_text,
    check_repo_name,
    read_token,
    refuse_local_shadows,
    scrub,
    user_message,
)
from mergehub.interfaces.space.text import DONE, FAILED, LOCKED, STOPPED, WORKING, link
from mergehub.interfaces.space.text import status as status_line
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
    pushed: str | None = None  # the repo of the last merge pushed

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


EVAL_TASKS = ("mergehub_arithmetic", "mergehub_facts", "arc_easy", "hellaswag")
"""The tasks the page offers: mergehub's offline tasks, then standard lm-eval tasks (their data is downloaded)."""


def capped_eval_limit(nbytes: int, asked: int) -> int:
    """Documents per task for a merge of `nbytes` of weights: what the visitor asked, capped by model size."""
    cap = 100 if nbytes <= 1e9 else 50 if nbytes <= 4e9 else 20
    return max(1, min(int(asked), cap))


def estimate_gpu_seconds(nbytes: int) -> int:
    """GPU seconds to ask ZeroGPU for a merge that reads and writes `nbytes` (at ~100 MB/s, with margin)."""
    return int(min(3600, max(60, 30 + 1.5 * nbytes / 100e6)))


def _stream(
    work: Callable[[Callable[[], bool], Callable[[Any], None]], dict], alive_path: str, token: str
) -> Iterator[tuple[str, Any]]:
    """Run `work(should_stop, on_progress)` in a thread, yielding ("progress", Progress) and ("tick", None) every
    0.25 s until ("done", what work returned) or ("error", info).

    The job stops when `alive_path` disappears (Cancel) or when this generator is closed.
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    closed = threading.Event()

    def should_stop() -> bool:
        return closed.is_set() or not Path(alive_path).exists()

    def run() -> None:
        try:
            events.put(("done", work(should_stop, lambda p: events.put(("progress", p)))))
        except BaseException as e:  # noqa: BLE001 - every failure becomes a scrubbed message
            cancelled = should_stop() and isinstance(e, Cancelled)
            if not isinstance(e, MergehubError):
                logger.error("job failed: %s: %s", type(e).__name__, scrub(str(e), [token]))
            notes = [scrub(n, [token]) for n in getattr(e, "__notes__", ())]  # what happened to the repo
            events.put(("error", {"message": user_message(e, [token]), "cancelled": cancelled, "notes": notes}))

    thread = threading.Thread(target=run, name="mergehub-space-job", daemon=True)
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
        closed.set()  # the page went away: stop (the repo this job created is deleted)


def _pushed(result: Any, pushed: api.PushResult) -> dict:
    return {
        "repo_id": pushed.repo_id,
        "commit_sha": pushed.commit_sha,
        "commit_url": pushed.commit_url,
        "created": pushed.created,
        "figures": result.figures(),
    }


def _merge_stream(
    plan_json: str,
    repo_id: str,
    private: bool,
    token: str,
    device: str,
    alive_path: str,
    nbytes: int,
    replace: bool = False,
    eval_tasks: tuple[str, ...] = (),
    eval_limit: int = 20,
) -> Iterator[tuple[str, Any]]:
    """`push_merge` of the plan the page showed, as a `_stream` of events.

    Arguments are plain values (the plan as JSON) so that ZeroGPU can run this in its GPU worker; the models
    are read at the commits the plan pinned. `replace` lets the merge go into an existing repo mergehub did not
    make (`--force`); `eval_tasks` are scored on the merge and its parents (`eval_limit` documents each) before
    the commit, into the card.
    """

    def work(should_stop: Callable[[], bool], on_progress: Callable[[Any], None]) -> dict:
        result, pushed = api.push_merge(
            api.Plan.from_json(plan_json),
            repo_id,
            token=token,
            private=private,
            force=replace,
            eval_tasks=eval_tasks,
            eval_options={"parents": True, "limit": eval_limit, "device": device},
            device=device,
            on_progress=on_progress,
            should_stop=should_stop,
        )
        return _pushed(result, pushed)

    yield from _stream(work, alive_path, token)


def extract_stream(
    spec_text: str, repo_id: str, private: bool, token: str, device: str, alive_path: str, nbytes: int
) -> Iterator[tuple[str, Any]]:
    """`push_extraction` of an extraction file's text as a `_stream` of events (plain arguments, for ZeroGPU)."""

    def work(should_stop: Callable[[], bool], on_progress: Callable[[Any], None]) -> dict:
        spec = api.parse_extraction(spec_text)
        result, pushed = api.push_extraction(
            str(spec.base),
            str(spec.model),
            repo_id,
            spec.options,
            token=token,
            private=private,
            device=device,
            on_progress=on_progress,
            should_stop=should_stop,
            spec_text=spec_text,
        )
        return _pushed(result, pushed)

    yield from _stream(work, alive_path, token)


def job_runner(
    stream: Callable[..., Iterator[tuple[str, Any]]] = _merge_stream,
) -> Callable[..., Iterator[tuple[str, Any]]]:
    """`stream` (a merge's or an extraction's), wrapped for ZeroGPU when the `spaces` package is there (effect-free
    elsewhere)."""
    try:
        import spaces  # type: ignore[import-not-found]
    except ImportError:
        return stream

    def duration(*args: Any, **kwargs: Any) -> int:  # called with `stream`'s arguments
        bound = inspect.signature(stream).bind(*args, **kwargs)
        bound.apply_defaults()
        scoring = bool(bound.arguments.get("eval_tasks"))
        return estimate_gpu_seconds(bound.arguments["nbytes"]) * (1 + 3 * scoring)

    return spaces.GPU(duration=duration)(stream)


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


Out = Callable[..., tuple[str, str, str]]


def follow(
    events: Iterator[tuple[str, Any]],
    log: list[str],
    out: Out,
    progress: Any,
    cancelled: Callable[[], bool],
    alive: Path,
    token: str,
    scratch: Path,
    *,
    verb: str,
    refresh_seconds: float = 0.3,
    scored: bool = False,
    on_pushed: Callable[[str], None] = lambda repo_id: None,
) -> Iterator[tuple[str, str, str]]:
    """Follow a job's events, yielding (status, log, card): progress, then the pushed repo and its card, or why not.

    `verb` names the job in its status (`Merging`, `Extracting`); `cancelled` says whether Cancel was clicked;
    `scored` says whether evaluation tasks were asked for (the log then says whether the card has the scores).
    Cancel says what the push reported about the repo (its notes), never more.
    """
    started = last = time.monotonic()
    live = ""
    for kind, payload in events:
        if kind == "progress":
            live = _progress_line(payload, time.monotonic() - started)
            if progress is not None:
                progress((payload.tensors_done, payload.tensors_total), desc=verb.lower(), unit="tensors")
            if payload.tensors_done == payload.tensors_total:
                log.append(live)
                live = "Committing to the Hub..."
        elif kind == "error":
            notes = payload.get("notes", [])
            if payload["cancelled"]:
                if live:
                    log.append(live)
                said = " ".join(["Cancelled: nothing was pushed.", *notes])
                log.append(said)
                yield out(status_line(STOPPED, said))
            else:
                message = "\n".join([payload["message"], *notes])
                log.append("Failed: " + message)
                yield out(status_line(FAILED, message))
            return
        elif kind == "done":
            url = _repo_url(payload["repo_id"])
            on_pushed(payload["repo_id"])
            log.append(payload["figures"])
            text = _read_card(payload["repo_id"], payload["commit_sha"], token, scratch)
            if scored:
                log.append(
                    "Scores are in the card's Evaluation section and model-index."
                    if "## Evaluation" in text
                    else "The evaluation failed, so the card has no scores (the merge itself was pushed)."
                )
            log.append(f"Pushed commit {payload['commit_sha'][:10]}: {url}")  # the last line: the Action reads it
            card = _render_card(text).replace(token, "***")
            yield out(status_line(DONE, "Pushed to ", trusted=link(payload["repo_id"], url)), card)
            return
        now = time.monotonic()
        if now - last >= refresh_seconds:
            last = now
            if cancelled():
                alive.unlink(missing_ok=True)
            yield out(status_line(WORKING, f"{verb}..."), live=live)


Prepare = Callable[[str, list[str], Out], Iterator[tuple[str, str, str]]]
"""A job's checks and plan: `prepare(token, log, out)` yields statuses and returns (the job's first argument for its
runner: a plan's JSON, an extraction's file text; the repo to push to; the bytes it reads and writes; optionally a
tuple of the runner's further arguments); it raises on any problem."""


def run_job(
    prepare: Prepare,
    private: bool,
    session: Session | None,
    oauth_token: Any,
    progress: Any = None,
    *,
    runner: Callable[..., Iterator[tuple[str, Any]]],
    device: str,
    refresh_seconds: float,
    verb: str,
    action: str,
    scored: bool = False,
) -> Iterator[tuple[str, str, str]]:
    """A button's job (Merge, Extract), yielding (status, log, model card): sign-in, `prepare`, then the run in
    `runner`, followed live, with Cancel (`verb` and `action` name the job: `Merging`, `merge`). Errors show
    mergehub's message and hint, scrubbed of tokens and server paths."""
    token = read_token(oauth_token)
    session = session if session is not None else Session()
    job = session.begin()  # the job armed by the click is taken, run or not (Cancel then finds nothing waiting)
    if not isinstance(token, str):
        yield (
            f"{LOCKED} **Sign in with Hugging Face to {action}**: the result is pushed to your account. "
            "Checks and the dry run work without signing in.",
            "",
            "",
        )
        return
    log: list[str] = []

    def out(status: str, card: str = "", live: str = "") -> tuple[str, str, str]:
        return scrub(status, [token]), scrub("\n".join(log + ([live] if live else [])), [token]), card

    if session.is_cancelled(job):
        log.append("Cancelled before it started.")
        yield out(status_line(STOPPED, "Cancelled: nothing was pushed."))
        return
    scratch = Path(tempfile.mkdtemp(prefix="mergehub-space-"))
    alive = scratch / "alive"
    alive.touch()
    session.alive = str(alive)
    try:
        argument, repo_id, nbytes, *extra = yield from prepare(token, log, out)
        yield out(status_line(WORKING, f"{verb}..."))
        events = runner(
            argument, repo_id, bool(private), token, device, str(alive), nbytes, *(extra[0] if extra else ())
        )
        yield from follow(
            events,
            log,
            out,
            progress,
            lambda: session.is_cancelled(job),
            alive,
            token,
            scratch,
            verb=verb,
            refresh_seconds=refresh_seconds,
            scored=scored,
            on_pushed=lambda repo_id: setattr(session, "pushed", repo_id),
        )
    except Exception as e:  # noqa: BLE001 - mergehub's message and hint; anything else only in the server log
        if not isinstance(e, MergehubError):
            logger.error("%s failed: %s: %s", verb.lower(), type(e).__name__, scrub(str(e), [token]))
        message = user_message(e, [token])
        log.append("Failed: " + message)
        yield out(status_line(FAILED, message))
    finally:
        if session.alive == str(alive):
            session.alive = None
        shutil.rmtree(scratch, ignore_errors=True)


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
    replace: bool = False,
    eval_tasks: tuple[str, ...] = (),
    eval_limit: int = 20,
) -> Iterator[tuple[str, str, str]]:
    """The Merge button: check, plan, merge and push, yielding (status, log, model card) as it goes.

    With `strict`, a recipe whose plan has warnings (keys or parameters that would be ignored) is refused; with
    `replace`, the merge may go into an existing repo of the user's that mergehub did not make; `eval_tasks`
    (from `EVAL_TASKS`) score the merge and its parents on at most `eval_limit` documents each (capped by size).
    Every status is plain text (escaped); Cancel reports what happened to a repo created for the merge.

    The last log line of a successful merge is the link to the new repo. Errors show mergehub's
    message and hint, scrubbed of tokens and server paths.
    """

    def prepare(token: str, log: list[str], out: Out) -> Iterator[tuple[str, str, str]]:
        recipe = check_document_text(recipe_text)
        refuse_local_shadows(recipe)
        repo_id = check_repo_name(repo_name)
        log.append(f"Checking {len(recipe.referenced_models())} model(s) from their configs and headers...")
        yield out(status_line(WORKING, "Planning..."))
        plan = api.plan_merge(recipe, token=token, strict=strict)
        log.append(
            f"Plan: {plan.method} merge into {len(plan.jobs)} tensors; "
            f"read {format_size(plan.read_bytes)}, write {format_size(plan.write_bytes)}."
        )
        log += [f"Warning: {w}" for w in plan.warnings]
        check_size(plan, "merge")
        unknown = [t for t in eval_tasks if t not in EVAL_TASKS]
        if unknown:
            raise RecipeError(f"Unknown evaluation task {unknown[0]!r}.", hint=f"Tick among: {', '.join(EVAL_TASKS)}.")
        limit = capped_eval_limit(plan.write_bytes, eval_limit) if eval_tasks else 0
        log.append(f"Merging into {repo_id} ({'private' if private else 'public'}); shards upload as they are written.")
        if eval_tasks:
            log.append(
                f"Then scoring the merge and its parents on {', '.join(eval_tasks)} ({limit} documents per task)."
            )
        return plan.to_json(), repo_id, plan.read_bytes + plan.write_bytes, (bool(replace), tuple(eval_tasks), limit)

    yield from run_job(
        prepare,
        private,
        session,
        oauth_token,
        progress,
        runner=runner,
        device=device,
        refresh_seconds=refresh_seconds,
        verb="Merging",
        action="merge",
        scored=bool(eval_tasks),
    )


def check_size(plan: Any, what: str) -> None:
    """Refuse a job that reads and writes more than this Space handles at a time.

    Raises:
        RecipeError: it does.
    """
    if plan.read_bytes + plan.write_bytes > MAX_MERGE_BYTES:
        command = "mergehub merge --push" if what == "merge" else "mergehub extract-lora --push"
        raise RecipeError(
            f"This {what} reads and writes {format_size(plan.read_bytes + plan.write_bytes)}; "
            f"this Space handles at most {format_size(MAX_MERGE_BYTES)} at a time.",
            hint=f"Run `{command}` on your own machine for jobs this large.",
        )
