"""Push a merge to the Hub: each shard uploads as soon as it is written, and one commit adds everything."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, ModelInfo
from huggingface_hub.errors import LocalTokenNotFoundError, RepositoryNotFoundError

from mergehub.errors import MergehubError, PublishError, Remedy
from mergehub.output import remove_stale_directories
from mergehub.sources.base import INDEX_NAME
from mergehub.sources.hub import HTTPError
from mergehub.workers import DaemonPool
from mergehub.writer import ShardResult

__all__ = [
    "ShardUploader",
    "PushResult",
    "full_repo_id",
    "prepare_repo",
    "made_by_mergehub",
    "commit_merge",
    "delete_created_repo",
    "push_card",
    "staging_directory",
    "hub_errors",
    "MERGEHUB_TAG",
]

MERGEHUB_TAG = "mergehub"
_SCRATCH_PREFIX = "mergehub-push-"
logger = logging.getLogger(__name__)


@contextmanager
def hub_errors(
    action: str, hint: str = "Check the network and your token, then rerun.", remedy: Remedy | None = None
) -> Iterator[None]:
    """The one place where a failed Hub call while publishing (HTTP status, network, a local file) becomes a
    `PublishError`; `action` says what failed (`Uploading model-00001-of-00002.safetensors to alice/m`)."""
    try:
        yield
    except MergehubError:
        raise
    except LocalTokenNotFoundError as e:
        raise PublishError(
            "No Hugging Face token found.", hint="Log in with `hf auth login` or set HF_TOKEN.", remedy="sign-in"
        ) from e
    except (HTTPError, OSError) as e:
        raise PublishError(f"{action} failed: {e}.", hint=hint, remedy=remedy) from e


@dataclass(frozen=True)
class PushResult:
    """Where a merge (or GGUF files) was pushed: the repo, its commit, and whether mergehub created the repo."""

    repo_id: str
    commit_sha: str
    commit_url: str
    created: bool
    gguf: PushResult | None = None
    """Where the merge's GGUF files were pushed, when it had some."""


class ShardUploader:
    """A `ShardSink` that pre-uploads each finished shard (LFS) in the background, then deletes the local file.

    At most `max_pending` shards wait for upload; the writer blocks beyond that, so local disk
    holds about two shards at a time.
    """

    def __init__(self, api: HfApi, repo_id: str, *, keep_local: bool = False, max_pending: int = 2) -> None:
        self.api = api
        self.repo_id = repo_id
        self.keep_local = keep_local
        self._slots = threading.Semaphore(max_pending)
        self._pool = DaemonPool(1, "mergehub-upload")
        self._uploads: list[Future[CommitOperationAdd]] = []

    def shard_done(self, path: Path, result: ShardResult) -> None:
        """Queue a finished shard for upload (blocks while too many are queued)."""
        self._slots.acquire()
        self._uploads.append(self._pool.submit(self._upload, path))

    def _upload(self, path: Path) -> CommitOperationAdd:
        try:
            with hub_errors(f"Uploading {path.name} to {self.repo_id}"):
                operation = CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path))
                self.api.preupload_lfs_files(self.repo_id, [operation])
                if not self.keep_local:
                    path.unlink()
                return operation
        finally:
            self._slots.release()

    def flush(self) -> None:
        """Wait for every queued upload; raise the first failure (a `PublishError`)."""
        for upload in self._uploads:
            upload.result()

    def operations(self) -> list[CommitOperationAdd]:
        """The uploaded shards, as commit operations."""
        self.flush()
        return [upload.result() for upload in self._uploads]

    def close(self) -> None:
        """Stop uploading (after a failure): queued uploads are dropped, one in flight is not waited for."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _username(api: HfApi) -> str:
    with hub_errors(
        "Reading the token's account", hint="Check HF_TOKEN (it needs write access) and the network.", remedy="sign-in"
    ):
        return api.whoami()["name"]


def full_repo_id(api: HfApi, repo_id: str) -> str:
    """`name` → `user/name` in the token's user namespace; `org/name` unchanged.

    Raises:
        PublishError: `name` alone and no usable token.
    """
    return repo_id if "/" in repo_id else f"{_username(api)}/{repo_id}"


def prepare_repo(api: HfApi, repo_id: str, *, private: bool, force: bool) -> tuple[str, bool, bool]:
    """Resolve `name` to `user/name`, then create the repo, or check that mergehub made the existing one.

    Returns the full repo ID, whether this call created the repo, and whether mergehub made it (then a
    new merge replaces its weight files).

    Raises:
        PublishError: no token, or the repo exists, was not made by mergehub, and `force` is off.
    """
    user = _username(api)  # checks the token even for `org/name`
    repo_id = repo_id if "/" in repo_id else f"{user}/{repo_id}"
    with hub_errors(f"Reading {repo_id}"):
        try:
            info = api.model_info(repo_id)
        except RepositoryNotFoundError:
            info = None
    if info is None:
        with hub_errors(f"Creating {repo_id}", hint="Check the namespace: your token must be allowed to write there."):
            api.create_repo(repo_id, private=private, repo_type="model")
        return repo_id, True, True
    ours = made_by_mergehub(info)
    if not ours and not force:
        raise PublishError(
            f"{repo_id} already exists and was not made by mergehub.",
            hint="Choose another name, or pass --force to add this merge to it anyway.",
            remedy="replace-repo",
        )
    return repo_id, False, ours


def made_by_mergehub(info: ModelInfo) -> bool:
    """Whether a repo is mergehub's to replace: empty (only `.gitattributes`), or its card carries the mergehub tag."""
    tags = (info.card_data.tags if info.card_data else None) or []
    files = {s.rfilename for s in info.siblings or []} - {".gitattributes"}
    return not files or MERGEHUB_TAG in tags


def _is_weight_file(path: str) -> bool:
    """A top-level weight file a merge writes: `*.safetensors` or the index."""
    return "/" not in path and (path.endswith(".safetensors") or path == INDEX_NAME)


def commit_merge(
    api: HfApi,
    repo_id: str,
    directory: Path,
    shard_operations: list[CommitOperationAdd],
    method: str,
    *,
    replace_weights: bool = True,
    message: str | None = None,
) -> Any:
    """One commit adding the pre-uploaded shards and every other file of the merged model.

    With `replace_weights` (a repo mergehub made), the same commit deletes the weight files of an
    earlier merge that this one does not have (`*.safetensors`, the index); otherwise they are
    kept, and a warning names them.
    """
    shards = {op.path_in_repo for op in shard_operations}
    others = [
        CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p))
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name not in shards
    ]
    written = shards | {op.path_in_repo for op in others}
    with hub_errors(f"The commit to {repo_id}", hint="Nothing was committed; rerun to try again."):
        stale = sorted(f for f in api.list_repo_files(repo_id) if _is_weight_file(f) and f not in written)
        deletes = [CommitOperationDelete(path_in_repo=f) for f in stale] if replace_weights else []
        if stale and not replace_weights:
            logger.warning(
                "%s keeps weight files this merge does not have (the repo was not made by mergehub): %s",
                repo_id,
                ", ".join(stale),
            )
        message = message or f"Add {method} merge made with mergehub"
        return api.create_commit(repo_id, shard_operations + others + deletes, commit_message=message)


def delete_created_repo(api: HfApi, repo_id: str, error: BaseException | None = None) -> bool:
    """Delete a repo this run created, after a failure; returns whether it is gone. The failure `error` (re-raised
    by the caller) gets a note saying which: that the repo was deleted, or where the empty repo that remains is."""
    try:
        api.delete_repo(repo_id, missing_ok=True)
    except Exception as cleanup:  # noqa: BLE001 - the caller re-raises the real error
        logger.warning("Could not delete %s after the failed push: %s", repo_id, cleanup)
        if error is not None:
            error.add_note(f"An empty repo remains: delete it at {api.endpoint.rstrip('/')}/{repo_id}/settings.")
        return False
    if error is not None:
        error.add_note(f"The repo {repo_id} created for this merge was deleted.")
    return True


def staging_directory(out_dir: str | os.PathLike | None) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """Where a pushed merge is assembled: `out_dir` when the user keeps a copy, else a temporary directory.

    The temporary directory's name carries the process id, so that one left by a killed run is removed
    by the next push (when that process is gone, or the directory is over a day old).
    """
    if out_dir is not None:
        return Path(out_dir), None
    remove_stale_directories(Path(tempfile.gettempdir()), _SCRATCH_PREFIX, "push directories")
    scratch = tempfile.TemporaryDirectory(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-")
    return Path(scratch.name) / "model", scratch


def push_card(repo_id: str, card: Any, *, token: str | bool | None = None) -> str:
    """Commit a card as README.md: to main when the token may write there, else as a pull request; returns its URL.

    Raises:
        PublishError: no token, no such repo, or the Hub refused the commit.
    """
    api = HfApi(token=token)
    with hub_errors(
        f"Pushing the card to {repo_id}",
        hint="Nothing was committed; check the repo ID and the token's rights, then rerun.",
    ):
        who = api.whoami()
        owners = {who["name"], *(org["name"] for org in who.get("orgs", []))}
        commit = api.create_commit(
            repo_id,
            [CommitOperationAdd("README.md", str(card).encode())],
            commit_message="Model card by mergehub",
            create_pr=repo_id.split("/")[0] not in owners,
        )
    return commit.pr_url or commit.commit_url
