"""A Hub-compatible HTTP server that lets huggingface_hub's real client run offline in tests.

It serves what model repos use: whoami, repo create/delete, model info, tree and paths-info
listings, commit history, file resolve (HEAD/GET, byte ranges) and the upload flow
(preupload, LFS batch, PUT, verify, ndjson commit, pull requests), plus validate-yaml; the model
listing (`list_models`: author, tags, search, sort, limit, `full`/`cardData`, private repos only
for their owners); and Space repos (create with an SDK, info with its runtime, the same file and
upload endpoints under `spaces/`, a hardware request).
Each repo keeps its history; a revision is a branch, `refs/pr/N` or a (short) commit sha.
Tests can count served bytes, read the request log, inject failures and throttle bandwidth.
Failures are switched on per test with `fail_next`: errors (500, 429 with any Retry-After),
dropped or stalled bodies, requests never answered, Range ignored or misreported, flipped bytes.

Pointing huggingface_hub at it: the client reads HF_ENDPOINT, HF_HOME and HF_HUB_DISABLE_XET
once, when `huggingface_hub` is first imported, and `upload_file`, `model_info`, ... are bound
to a module-level `HfApi` built at that import. Setting env vars therefore only works before
that first import, which transformers (or a pytest plugin) may already have done. The robust
recipe is `hub_client_env`, which patches the imported modules:

    with start_hub_server(tmp_path / "hub", tokens={"tok": "alice"}) as hub, \\
            hub_client_env(hub.endpoint, tmp_path / "hf_home", token="tok"):
        HfApi().whoami()  # built after the patch: uses hub.endpoint

Without the patch, pass `endpoint=hub.endpoint` to `HfApi(...)` and `hf_hub_download(...)`, set
HF_HUB_DISABLE_XET=1 before import (else uploads go to Xet) and pass `token=`/`cache_dir=`;
`ModelCard.load`/`push_to_hub` take no endpoint and need the patch. Either way, build
`HfFileSystem(endpoint=hub.endpoint)`: fsspec caches instances, with the endpoint they were born with.
A token the server does not know gets 401 on every endpoint, as on the Hub: mind a stray HF_TOKEN.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from unittest import mock
from urllib.parse import parse_qs, unquote, urlsplit

import yaml  # PyYAML ships with huggingface_hub; used only to read model card metadata

__all__ = ["Blob", "FailKind", "HubServer", "RequestRecord", "hub_client_env", "start_hub_server"]

FailKind = Literal["500", "429", "drop", "ignore_range", "bad_content_range", "hang", "stall", "flip"]
Gated = Literal[False, "auto", "manual"]
LFS_THRESHOLD = 10 * 1024 * 1024
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.gguf", "*.h5", "*.onnx", "*.npy", "*.model")
_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
_CHUNK = 64 * 1024
_REPO = r"(?P<repo>[^/]+/[^/]+?)"
_REV = r"(?P<rev>refs(?:/|%2F)pr(?:/|%2F)\d+|[^/]+)"
_API = r"/api/(?P<kind>models|spaces)"  # model and Space repos share the endpoints below
_FILES = r"/(?:(?P<kind>spaces)/)?"  # file URLs of a Space start with /spaces/
_ROUTES = [
    ("GET", r"/api/whoami-v2", "_whoami"),
    ("POST", r"/api/repos/create", "_create_repo"),
    ("DELETE", r"/api/repos/delete", "_delete_repo"),
    ("POST", r"/api/validate-yaml", "_validate_yaml"),
    ("GET", r"/api/models", "_list_models"),
    ("GET", rf"{_API}/{_REPO}(?:/revision/{_REV})?", "_model_info"),
    ("GET", rf"{_API}/{_REPO}/tree/{_REV}(?:/(?P<path>.*))?", "_tree"),
    ("POST", rf"{_API}/{_REPO}/paths-info/{_REV}", "_paths_info"),
    ("GET", rf"{_API}/{_REPO}/commits/{_REV}", "_commits"),
    ("POST", rf"{_API}/{_REPO}/preupload/{_REV}", "_preupload"),
    ("POST", rf"{_API}/{_REPO}/commit/{_REV}", "_commit"),
    ("POST", rf"{_API}/{_REPO}/hardware", "_space_hardware"),
    ("POST", rf"{_FILES}{_REPO}\.git/info/lfs/objects/batch", "_lfs_batch"),
    ("PUT", r"/lfs-objects/(?P<oid>[0-9a-f]{64})", "_lfs_put"),
    ("POST", r"/lfs-objects/verify", "_lfs_verify"),
    ("GET|HEAD", rf"{_FILES}{_REPO}/resolve/{_REV}/(?P<path>.+)", "_resolve"),
]
_COMPILED = [(methods.split("|"), re.compile(pattern), name) for methods, pattern, name in _ROUTES]


@dataclass(frozen=True)
class Blob:
    """One file version: its content (bytes, or a file read at serve time) and git/LFS ids."""

    size: int
    sha256: str
    git_oid: str
    lfs: bool
    data: bytes | Path

    def chunks(self, start: int, length: int) -> Iterator[bytes]:
        """Yield `length` bytes from offset `start`, in chunks."""
        if isinstance(self.data, bytes):
            end = min(start + length, len(self.data))
            for i in range(start, end, _CHUNK):
                yield self.data[i : min(i + _CHUNK, end)]
            return
        with self.data.open("rb") as f:
            f.seek(start)
            while length > 0 and (chunk := f.read(min(_CHUNK, length))):
                length -= len(chunk)
                yield chunk

    def read(self) -> bytes:
        """Return the whole content."""
        return self.data if isinstance(self.data, bytes) else self.data.read_bytes()

    def lfs_info(self) -> dict[str, Any]:
        """Return the `lfs` object of tree listings."""
        return {"oid": self.sha256, "size": self.size, "pointerSize": len(_lfs_pointer(self.sha256, self.size))}


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server saw it (path is URL-decoded, without the query)."""

    method: str
    path: str
    range: str | None
    status: int


@dataclass(frozen=True)
class _Commit:
    sha: str
    parent: str | None
    files: Mapping[str, Blob]
    title: str
    message: str
    author: str
    date: str


@dataclass
class _Repo:
    repo_id: str  # `org/name`, or `spaces/org/name` for a Space
    private: bool
    gated: Gated
    created: str
    accepted: set[str] = field(default_factory=set)
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    prs: int = 0
    sdk: str | None = None  # a Space's SDK
    hardware: str | None = None  # a Space's requested hardware

    @property
    def name(self) -> str:
        """The repo ID as the Hub writes it (`org/name`, also for a Space)."""
        return self.repo_id.removeprefix("spaces/")

    def commit(self, rev: str) -> _Commit:
        """Resolve a branch, `refs/pr/N` or (short) sha; raise RevisionNotFound otherwise."""
        sha = self.refs.get(rev)
        if sha is None and re.fullmatch(r"[0-9a-f]{7,40}", rev):
            shas = [s for s in self.commits if s.startswith(rev)]
            sha = shas[0] if len(shas) == 1 else None
        if sha is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return self.commits[sha]


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    user: str | None

    def flag(self, name: str) -> bool:
        """Whether a boolean query or form parameter is set."""
        return self.query.get(name, ["0"])[0].lower() in ("1", "true")

    def json(self) -> Any:
        """Decode the JSON body."""
        return json.loads(self.body or b"{}")


@dataclass
class _Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    blob: Blob | None = None
    start: int = 0
    length: int = 0
    drop: bool = False
    stall: bool = False
    flip: bool = False
    key: tuple[str, str] = ("", "")


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: Mapping[str, str] = (), **extra: Any):
        super().__init__(message)
        self.status, self.code, self.headers, self.extra = status, code, dict(headers), extra

    def reply(self) -> _Reply:
        headers = {**self.headers, "X-Error-Message": str(self)}
        if self.code:
            headers["X-Error-Code"] = self.code
        return _json_reply({"error": str(self), **self.extra}, self.status, headers)


class HubServer:
    """In-memory Hub for model repos, served on 127.0.0.1 from a daemon thread.

    Args:
        root: folder for uploaded LFS objects.
        tokens: token -> username; a request with an unknown token gets 401, as on the Hub.
        orgs: org name -> member usernames; members may write to the org's repos.
        lfs_threshold: files this large (or matching LFS_PATTERNS, or binary) are LFS files.
        throttle_bps: if set, file bodies are paced to this many bytes per second, over all connections.

    Attributes:
        bytes_served: file body bytes actually sent, per (repo_id, path in repo).
        bytes_received: LFS bytes uploaded by PUT (regular files travel inside the commit call).
        requests: every request, in arrival order.
        sizes_in_info: whether repo info with `?blobs=true` gives file sizes, as the Hub does; False plays a
            server or mirror that lists file names only.
    """

    def __init__(
        self,
        root: Path,
        tokens: Mapping[str, str] | None = None,
        orgs: Mapping[str, Iterable[str]] | None = None,
        *,
        lfs_threshold: int = LFS_THRESHOLD,
        throttle_bps: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.tokens = dict(tokens or {})
        self.orgs = {org: set(members) for org, members in (orgs or {}).items()}
        self.lfs_threshold = lfs_threshold
        self.throttle_bps = throttle_bps
        self.bytes_served: Counter[tuple[str, str]] = Counter()
        self.bytes_received = 0
        self.requests: list[RequestRecord] = []
        self.sizes_in_info = True
        self._repos: dict[str, _Repo] = {}
        self._lfs: dict[str, Blob] = {}
        self._faults: list[list[Any]] = []
        self._closing = threading.Event()
        self.held = 0
        """Requests being held by "hang" or "stall" right now."""
        self._lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self._next_send = 0.0
        self._counter = 0
        self._conns: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:54321`."""
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> HubServer:
        """Bind an ephemeral port and serve from a daemon thread."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self  # type: ignore[attr-defined]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hubserver", daemon=True).start()
        return self

    def close(self) -> None:
        """Stop serving and cut open keep-alive connections."""
        if self._httpd is None:
            return
        self._closing.set()  # releases requests held by "hang" and "stall"
        self._httpd.shutdown()
        self._httpd.server_close()
        for conn in list(self._conns):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path] | Path | None = None,
        *,
        private: bool = False,
        gated: Gated | bool = False,
        accepted: Iterable[str] = (),
    ) -> str:
        """Create `repo_id` with one commit holding exactly `files` (a mapping or a folder); return its sha."""
        with self._lock:
            if repo_id in self._repos:
                raise ValueError(f"repo {repo_id} exists; use commit_files to add a commit")
            repo = _Repo(repo_id, private, "auto" if gated is True else gated, _now(), set(accepted))
            self._repos[repo_id] = repo
            return self._new_commit(repo, None, "main", self._blobs(files), "Initial commit", repo_id.split("/")[0])

    def commit_files(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path] | Path | None = None,
        *,
        delete: Iterable[str] = (),
        revision: str = "main",
        message: str = "Update files",
    ) -> str:
        """Add a commit on branch `revision` that writes `files` and removes `delete`; return its sha."""
        with self._lock:
            repo = self._repos[repo_id]
            base = repo.commit(revision)
            tree = {p: b for p, b in base.files.items() if p not in set(delete)}
            tree.update(self._blobs(files))
            return self._new_commit(repo, base.sha, revision, tree, message, repo_id.split("/")[0])

    def grant_access(self, repo_id: str, username: str) -> None:
        """Record that `username` accepted the conditions of gated `repo_id`."""
        with self._lock:
            self._repos[repo_id].accepted.add(username)

    def revision_sha(self, repo_id: str, revision: str = "main") -> str:
        """Return the commit sha `revision` points to."""
        with self._lock:
            return self._repos[repo_id].commit(revision).sha

    def fail_next(
        self, path_substring: str, kind: FailKind, *, times: int = 1, retry_after: int | str = 0, after: int = 0
    ) -> None:
        """Make the next `times` matching requests fail.

        Any request whose path contains `path_substring`: "500" and "429" (with `Retry-After: retry_after`)
        answer an error; "hang" accepts the request and never answers. File GETs: "drop" (headers, half
        the body, then close), "stall" (headers, half the body, then silence), "flip" (status and headers
        right, one body byte inverted); ranged file GETs only: "ignore_range" (200 + full body) and
        "bad_content_range" (206 whose Content-Range start is off by one). "hang" and "stall" hold
        their connection until the server closes. The first `after` matching requests are served normally.
        """
        with self._stats_lock:
            self._faults.append([path_substring, kind, times, retry_after, after])

    def reset_stats(self) -> None:
        """Clear byte counters, the request log and pending faults."""
        with self._stats_lock:
            self.bytes_served.clear()
            self.bytes_received = 0
            self.requests.clear()
            self._faults.clear()

    # -- state ------------------------------------------------------------------------------------

    def _blobs(self, files: Mapping[str, bytes | Path] | Path | None) -> dict[str, Blob]:
        if isinstance(files, Path):
            files = {p.relative_to(files).as_posix(): p for p in sorted(files.rglob("*")) if p.is_file()}
        return {path: self._blob(path, data) for path, data in (files or {}).items()}

    def _blob(self, path: str, data: bytes | Path, lfs: bool | None = None) -> Blob:
        digest, size, sample = _digest(data)
        if lfs is None:
            lfs = self._is_lfs(path, size, sample)
        content = _lfs_pointer(digest, size) if lfs else data if isinstance(data, bytes) else data.read_bytes()
        blob = Blob(size, digest, _git_oid(content), lfs, data)
        if lfs:
            self._lfs.setdefault(digest, blob)
        return blob

    def _is_lfs(self, path: str, size: int, sample: bytes) -> bool:
        name = PurePosixPath(path).name
        return size >= self.lfs_threshold or b"\0" in sample or any(fnmatch(name, p) for p in LFS_PATTERNS)

    def _new_commit(
        self,
        repo: _Repo,
        parent: str | None,
        ref: str,
        files: Mapping[str, Blob],
        title: str,
        author: str,
        message: str = "",
    ) -> str:
        self._counter += 1
        seed = f"{repo.repo_id}\n{parent}\n{title}\n{self._counter}\n{time.time_ns()}"
        sha = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[sha] = _Commit(sha, parent, dict(files), title, message, author, _now())
        repo.refs[ref] = sha
        return sha

    def _can_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (user == namespace or user in self.orgs.get(namespace, ()))

    def _readable(self, repo_id: str, user: str | None) -> _Repo:
        repo = self._repos.get(repo_id)
        if repo is None or (repo.private and not self._can_write(user, _namespace(repo_id))):
            raise _HubError(401 if user is None else 404, "RepoNotFound", "Repository not found")
        return repo

    def _writable(self, repo_id: str, user: str | None, *, pull_request: bool = False) -> _Repo:
        """The repo, if `user` may write to it (anyone signed in may open a pull request, as on the Hub)."""
        repo = self._readable(repo_id, user)
        if not self._can_write(user, _namespace(repo_id)) and not (pull_request and user is not None):
            raise _HubError(401 if user is None else 403, None, f"You don't have the rights to write to {repo_id}")
        return repo

    # -- transport --------------------------------------------------------------------------------

    def _handle(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        path = unquote(url.path)
        reply = _Reply(500)
        try:
            body = _read_body(h)
            with self._stats_lock:
                self.bytes_received += len(body) if h.command == "PUT" else 0
            req = _Request(h.command, path, parse_qs(url.query), h.headers, body, self._user(h.headers))
            if fault := self._take_fault(path, ("500", "429", "hang")):
                if fault[0] == "hang":
                    self._hold()
                    h.close_connection = True
                    return
                raise _HubError(int(fault[0]), None, "Injected failure", {"Retry-After": str(fault[1])})
            for methods, pattern, name in _COMPILED:
                if h.command in methods and (match := pattern.fullmatch(url.path)):
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    if args.pop("kind", "models") == "spaces":
                        args["repo"] = f"spaces/{args['repo']}"
                    with self._lock:
                        reply = getattr(self, name)(req, **args)
                    break
            else:
                raise _HubError(404, None, f"Not found: {h.command} {path}")
        except _HubError as e:
            reply = e.reply()
        except Exception as e:  # noqa: BLE001 - a server bug: answer 500 with its cause, not a dropped connection
            reply = _HubError(500, None, f"{type(e).__name__}: {e}").reply()
        finally:
            with self._stats_lock:
                self.requests.append(RequestRecord(h.command, path, h.headers.get("Range"), reply.status))
        try:
            self._send(h, reply)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True

    def _send(self, h: _Handler, reply: _Reply) -> None:
        h.send_response(reply.status)
        for name, value in reply.headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(reply.body) if reply.blob is None else reply.length))
        h.end_headers()
        if h.command == "HEAD":
            return
        if reply.blob is None:
            h.wfile.write(reply.body)
            return
        sent, flip_at = 0, reply.length // 2
        for chunk in reply.blob.chunks(reply.start, reply.length // 2 if reply.drop or reply.stall else reply.length):
            self._pace(len(chunk))
            if reply.flip and sent <= flip_at < sent + len(chunk):
                chunk = chunk[: flip_at - sent] + bytes([chunk[flip_at - sent] ^ 0xFF]) + chunk[flip_at - sent + 1 :]
            h.wfile.write(chunk)
            sent += len(chunk)
            with self._stats_lock:
                self.bytes_served[reply.key] += len(chunk)
        if reply.drop or reply.stall:
            h.wfile.flush()
            if reply.stall:
                self._hold()
            h.close_connection = True

    def _pace(self, n: int) -> None:
        if not self.throttle_bps:
            return
        with self._stats_lock:
            done = max(self._next_send, time.monotonic()) + n / self.throttle_bps
            self._next_send = done
        time.sleep(max(0.0, done - time.monotonic()))

    def _hold(self) -> None:
        """Keep the request open, answering nothing, until the server closes."""
        with self._stats_lock:
            self.held += 1
        try:
            self._closing.wait()
        finally:
            with self._stats_lock:
                self.held -= 1

    def _take_fault(self, path: str, kinds: Iterable[str]) -> tuple[str, int | str] | None:
        """The kind and Retry-After of the first pending fault of one of `kinds` matching `path`, used up by one."""
        with self._stats_lock:
            for fault in self._faults:
                if fault[1] in kinds and fault[0] in path:
                    if fault[4] > 0:
                        fault[4] -= 1
                        return None
                    fault[2] -= 1
                    if fault[2] <= 0:
                        self._faults.remove(fault)
                    return fault[1], fault[3]
        return None

    def _user(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("Authorization")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.tokens:
            raise _HubError(401, None, "Invalid credentials in Authorization header")
        return self.tokens[token]

    # -- endpoints ----------------------------------------------------------------------------------

    def _whoami(self, req: _Request) -> _Reply:
        if req.user is None:
            raise _HubError(401, None, "Unauthorized")
        orgs = [
            {"type": "org", "name": o, "fullname": o, "roleInOrg": "write"}
            for o, members in sorted(self.orgs.items())
            if req.user in members
        ]
        auth = {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}
        avatar = f"{self.endpoint}/avatars/{req.user}.png"
        return _json_reply(
            {"type": "user", "name": req.user, "fullname": req.user, "avatarUrl": avatar, "orgs": orgs, "auth": auth}
        )

    def _create_repo(self, req: _Request) -> _Reply:
        payload = req.json()
        kind = payload.get("type") or "model"
        if kind not in ("model", "space"):
            raise _HubError(400, None, "This test server hosts model and Space repos only")
        if kind == "space" and payload.get("sdk") not in ("gradio", "docker", "static"):
            raise _HubError(400, None, "A Space needs an sdk: gradio, docker or static")
        if req.user is None:
            raise _HubError(401, None, "You must be authenticated to create a repo")
        namespace = payload.get("organization") or req.user
        if not self._can_write(req.user, namespace):
            raise _HubError(403, None, f"You don't have the rights to create a repo under {namespace}")
        repo_id = f"{namespace}/{payload['name']}"
        key = f"spaces/{repo_id}" if kind == "space" else repo_id
        url = f"{self.endpoint}/{key}"
        if key in self._repos:
            raise _HubError(409, None, f"You already created this {kind} repo", url=url)
        private = payload["private"] if "private" in payload else payload.get("visibility") == "private"
        repo = self._repos[key] = _Repo(key, bool(private), False, _now(), sdk=payload.get("sdk"))
        repo.hardware = payload.get("hardware") if kind == "space" else None
        files = {".gitattributes": self._blob(".gitattributes", _GITATTRIBUTES, lfs=False)}
        self._new_commit(repo, None, "main", files, "initial commit", req.user)
        return _json_reply({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, req: _Request) -> _Reply:
        payload = req.json()
        repo_id = f"{payload.get('organization') or req.user}/{payload['name']}"
        key = f"spaces/{repo_id}" if payload.get("type") == "space" else repo_id
        self._writable(key, req.user)
        del self._repos[key]
        return _json_reply({})

    def _space_hardware(self, req: _Request, repo: str) -> _Reply:
        r = self._writable(repo, req.user)
        if r.sdk is None:
            raise _HubError(404, None, f"{repo} is not a Space")
        flavor = req.json().get("flavor")
        if not isinstance(flavor, str) or not flavor:
            raise _HubError(400, None, "A hardware flavor is required")
        r.hardware = flavor
        return _json_reply(self._runtime(r))

    def _runtime(self, r: _Repo) -> dict[str, Any]:
        """A Space's runtime as the Hub reports it (this server never builds or runs one)."""
        return {"stage": "BUILDING", "hardware": {"current": None, "requested": r.hardware}, "storage": None}

    def _list_models(self, req: _Request) -> _Reply:
        q = {k: v[-1] for k, v in req.query.items()}
        wanted_tags = set(req.query.get("filter", []))
        found = []
        for key, r in self._repos.items():
            if key.startswith("spaces/") or (r.private and not self._can_write(req.user, _namespace(key))):
                continue
            if "author" in q and _namespace(key) != q["author"]:
                continue
            if "search" in q and q["search"].lower() not in key.lower():
                continue
            info = self._info(r, r.commit("main"))
            if not wanted_tags <= set(info["tags"]):
                continue
            found.append(info)
        sort = {"lastModified": "lastModified", "createdAt": "createdAt", "likes": "likes"}.get(q.get("sort", ""))
        found.sort(key=lambda i: (i[sort or "downloads"], i["id"]), reverse=q.get("direction", "-1") == "-1")
        if "limit" in q:
            found = found[: int(q["limit"])]
        listed = ("_id", "id", "modelId", "likes", "private", "downloads", "tags", "createdAt", "library_name")
        items = []
        for info in found:
            item = dict(info) if req.flag("full") else {k: v for k, v in info.items() if k in listed}
            if req.flag("cardData") and "cardData" in info:
                item["cardData"] = info["cardData"]
            elif not req.flag("cardData"):
                item.pop("cardData", None)
            items.append(item)
        return _json_reply(items)

    def _validate_yaml(self, req: _Request) -> _Reply:
        try:
            _card_data(req.json().get("content", "").encode())
        except yaml.YAMLError as e:
            raise _HubError(400, None, "Invalid YAML", errors=[{"message": str(e)}]) from e
        return _json_reply({"errors": [], "warnings": []})

    def _model_info(self, req: _Request, repo: str, rev: str = "main") -> _Reply:
        r = self._readable(repo, req.user)
        return _json_reply(self._info(r, r.commit(rev), blobs=req.flag("blobs")))

    def _info(self, r: _Repo, c: _Commit, *, blobs: bool = False) -> dict[str, Any]:
        """What the Hub says about a repo at a commit (with file sizes when `blobs`)."""
        siblings = [{"rfilename": p} for p in sorted(c.files)]
        if blobs and self.sizes_in_info:
            for s in siblings:
                blob = c.files[s["rfilename"]]
                s.update(size=blob.size, blobId=blob.git_oid)
                if blob.lfs:
                    s["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": blob.lfs_info()["pointerSize"]}
        card = _card_data(c.files["README.md"].read()) if "README.md" in c.files else {}
        tags = card.get("tags") or []
        info = {
            "_id": r.repo_id,
            "id": r.name,
            "modelId": r.name,
            "author": _namespace(r.repo_id),
            "sha": c.sha,
            "lastModified": c.date,
            "createdAt": r.created,
            "private": r.private,
            "gated": r.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [tags] if isinstance(tags, str) else tags,
            "siblings": siblings,
            "usedStorage": sum(b.size for b in c.files.values()),
        }
        if card:
            info["cardData"] = card
            info.update({k: card[k] for k in ("library_name", "pipeline_tag") if k in card})
        if r.sdk is not None:  # a Space
            info.update(sdk=r.sdk, runtime=self._runtime(r), subdomain=r.name.replace("/", "-"))
            del info["modelId"]
        return info

    def _tree(self, req: _Request, repo: str, rev: str, path: str = "") -> _Reply:
        r = self._readable(repo, req.user)
        c = r.commit(rev)
        prefix = path.strip("/")
        if prefix and not _is_dir(c, prefix):
            raise _HubError(404, "EntryNotFound", f"{prefix} does not exist on {rev}", {"X-Repo-Commit": c.sha})
        paths: set[str] = set()
        for file in c.files:
            if prefix and not file.startswith(prefix + "/"):
                continue
            parts = file.split("/")
            depth = len(prefix.split("/")) if prefix else 0
            last = len(parts) if req.flag("recursive") else depth + 1
            paths.update("/".join(parts[:i]) for i in range(depth + 1, last + 1))
        return _json_reply([self._entry(r, c, p, req.flag("expand")) for p in sorted(paths)])

    def _paths_info(self, req: _Request, repo: str, rev: str) -> _Reply:
        r = self._readable(repo, req.user)
        c = r.commit(rev)
        form = parse_qs(req.body.decode())  # the client posts a form: paths=a&paths=b&expand=false
        paths, expand = form.get("paths", []), form.get("expand", [""])[0].lower() in ("1", "true")
        found = [p.strip("/") for p in paths if p.strip("/") in c.files or _is_dir(c, p.strip("/"))]
        return _json_reply([self._entry(r, c, p, expand) for p in found])

    def _commits(self, req: _Request, repo: str, rev: str) -> _Reply:
        r = self._readable(repo, req.user)
        c: _Commit | None = r.commit(rev)
        items = []
        while c is not None:
            items.append(
                {
                    "id": c.sha,
                    "title": c.title,
                    "message": c.message,
                    "date": c.date,
                    "authors": [{"user": c.author, "avatar": ""}],
                }
            )
            c = r.commits[c.parent] if c.parent else None
        return _json_reply(items)

    def _preupload(self, req: _Request, repo: str, rev: str) -> _Reply:
        r = self._writable(repo, req.user, pull_request=req.flag("create_pr"))
        files = r.commit(rev).files
        out: list[dict[str, Any]] = []
        for f in req.json().get("files", []):
            lfs = self._is_lfs(f["path"], f["size"], base64.b64decode(f.get("sample", "")))
            entry = {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            if (old := files.get(f["path"])) is not None and (lfs or not old.lfs):
                entry["oid"] = old.sha256 if lfs else old.git_oid
            out.append(entry)
        return _json_reply({"files": out})

    def _lfs_batch(self, req: _Request, repo: str) -> _Reply:
        self._writable(repo, req.user, pull_request=True)
        objects = []
        for o in req.json().get("objects", []):
            obj = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if o["oid"] not in self._lfs:
                obj["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs-objects/{o['oid']}", "header": {}},
                    "verify": {"href": f"{self.endpoint}/lfs-objects/verify", "header": {}},
                }
            objects.append(obj)
        return _json_reply({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, req: _Request, oid: str) -> _Reply:
        if hashlib.sha256(req.body).hexdigest() != oid:
            raise _HubError(400, None, "Uploaded content does not match its sha256")
        target = self.root / "lfs" / oid
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_bytes(req.body)
        tmp.replace(target)
        self._lfs[oid] = Blob(len(req.body), oid, _git_oid(_lfs_pointer(oid, len(req.body))), True, target)
        return _json_reply({})

    def _lfs_verify(self, req: _Request) -> _Reply:
        o = req.json()
        if o.get("oid") not in self._lfs or self._lfs[o["oid"]].size != o.get("size"):
            raise _HubError(404, None, f"LFS object {o.get('oid')} not found")
        return _json_reply({})

    def _commit(self, req: _Request, repo: str, rev: str) -> _Reply:
        r = self._writable(repo, req.user, pull_request=req.flag("create_pr"))
        lines = [json.loads(line) for line in req.body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        parent = header.get("parentCommit")
        create_pr = req.flag("create_pr")
        base = r.commit(parent if create_pr and parent else rev)
        if not create_pr and rev not in r.refs:
            raise _HubError(400, None, f"Can only commit to a branch, not to {rev}")
        if not create_pr and parent and not base.sha.startswith(parent):
            raise _HubError(412, None, f"A commit has happened since {parent}: head is {base.sha}")
        files = dict(base.files)
        for line in lines:
            op, value = line["key"], line["value"]
            if op == "file":
                files[value["path"]] = self._blob(value["path"], base64.b64decode(value["content"]), lfs=False)
            elif op == "lfsFile":
                if value["oid"] not in self._lfs:
                    raise _HubError(400, None, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                files[value["path"]] = self._lfs[value["oid"]]
            elif op == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise _HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {value['path']}")
            elif op == "deletedFolder":
                files = {p: b for p, b in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
        ref = rev
        if create_pr:
            r.prs += 1
            ref = f"refs/pr/{r.prs}"
        sha = self._new_commit(
            r, base.sha, ref, files, header.get("summary", ""), req.user or "", header.get("description", "")
        )
        pr_url = f"{self.endpoint}/{repo}/discussions/{r.prs}" if create_pr else None  # repo: spaces/... for a Space
        return _json_reply(
            {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.endpoint}/{repo}/commit/{sha}",
                "hookOutput": "",
                "pullRequestUrl": pr_url,
            }
        )

    def _resolve(self, req: _Request, repo: str, rev: str, path: str) -> _Reply:
        r = self._readable(repo, req.user)
        if r.gated and not (req.user in r.accepted or self._can_write(req.user, _namespace(repo))):
            raise _HubError(401 if req.user is None else 403, "GatedRepo", f"Access to model {repo} is restricted")
        c = r.commit(rev)
        headers = {"X-Repo-Commit": c.sha}
        blob = c.files.get(path)
        if blob is None:
            raise _HubError(404, "EntryNotFound", f"{path} does not exist on {rev}", headers)
        etag = f'"{blob.sha256 if blob.lfs else blob.git_oid}"'
        headers.update({"ETag": etag, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"})
        if blob.lfs:
            headers.update({"X-Linked-Etag": etag, "X-Linked-Size": str(blob.size)})
        span = _parse_range(req.headers.get("Range"), blob.size, headers)
        fault = None
        if req.method == "GET":
            taken = self._take_fault(
                req.path,
                ("drop", "stall", "flip", "ignore_range", "bad_content_range") if span else ("drop", "stall", "flip"),
            )
            fault = taken[0] if taken else None
        reply = _Reply(
            200,
            headers=headers,
            blob=blob,
            length=blob.size,
            drop=fault == "drop",
            stall=fault == "stall",
            flip=fault == "flip",
            key=(repo, path),
        )
        if span and fault != "ignore_range":
            start, end = span
            shown = start + 1 if fault == "bad_content_range" else start
            headers["Content-Range"] = f"bytes {shown}-{end}/{blob.size}"
            reply.status, reply.start, reply.length = 206, start, end - start + 1
        return reply

    def _entry(self, r: _Repo, c: _Commit, path: str, expand: bool) -> dict[str, Any]:
        blob = c.files.get(path)
        if blob is None:
            entry: dict[str, Any] = {"type": "directory", "oid": _tree_oid(c, path), "size": 0, "path": path}
        else:
            entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
            if blob.lfs:
                entry["lfs"] = blob.lfs_info()
        if expand:
            last = _last_commit(r, c, path)
            entry["lastCommit"] = {"id": last.sha, "title": last.title, "date": last.date}
        return entry


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120

    def setup(self) -> None:
        super().setup()
        self.server.hub._conns.add(self.connection)  # type: ignore[attr-defined]

    def finish(self) -> None:
        self.server.hub._conns.discard(self.connection)  # type: ignore[attr-defined]
        super().finish()

    def do_GET(self) -> None:
        self.server.hub._handle(self)  # type: ignore[attr-defined]

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def start_hub_server(
    root: Path, tokens: Mapping[str, str] | None = None, orgs: Mapping[str, Iterable[str]] | None = None, **kwargs: Any
) -> Iterator[HubServer]:
    """Run a `HubServer` for the duration of the block."""
    server = HubServer(root, tokens, orgs, **kwargs).start()
    try:
        yield server
    finally:
        server.close()


@contextmanager
def hub_client_env(endpoint: str, home: Path, token: str | None = None) -> Iterator[None]:
    """Point the already imported huggingface_hub at `endpoint`, with HF_HOME `home` and `token`."""
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _detect_agent

    home = Path(home)
    patched = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
    }
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    with ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, env))
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ.pop(name, None)
        if token is not None:
            os.environ["HF_TOKEN"] = token
        for name, value in patched.items():
            stack.enter_context(mock.patch.object(constants, name, value))
        stack.enter_context(mock.patch.object(hf_api.api, "endpoint", endpoint))
        stack.enter_context(mock.patch.object(_detect_agent, "_registry", _detect_agent._EMPTY_REGISTRY))
        yield


def _namespace(key: str) -> str:
    """The owner of a repo key (`org/name` or `spaces/org/name`)."""
    return key.removeprefix("spaces/").split("/")[0]


def _json_reply(data: Any, status: int = 200, headers: Mapping[str, str] = ()) -> _Reply:
    return _Reply(status, json.dumps(data).encode(), {**dict(headers), "Content-Type": "application/json"})


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))
    parts = []
    while size := int(h.rfile.readline().split(b";")[0], 16):
        parts.append(h.rfile.read(size))
        h.rfile.readline()
    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
        pass
    return b"".join(parts)


def _parse_range(value: str | None, size: int, headers: Mapping[str, str]) -> tuple[int, int] | None:
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", value or "")
    if match is None or match[1] == match[2] == "":
        return None
    if match[1] == "":
        start, end = max(size - int(match[2]), 0), size - 1
    else:
        start, end = int(match[1]), min(int(match[2]) if match[2] else size - 1, size - 1)
    if start >= size or start > end:
        raise _HubError(416, None, "Range Not Satisfiable", {**headers, "Content-Range": f"bytes */{size}"})
    return start, end


def _card_data(readme: bytes) -> dict[str, Any]:
    match = re.match(r"---\s*\n(.*?)\n---\s*(\n|$)", readme.decode("utf-8-sig"), re.DOTALL)
    data = yaml.safe_load(match[1]) if match else None
    return data if isinstance(data, dict) else {}


def _is_dir(c: _Commit, path: str) -> bool:
    return not path or any(p.startswith(path + "/") for p in c.files)


def _tree_oid(c: _Commit, path: str) -> str:
    items = sorted(f"{p} {b.git_oid}" for p, b in c.files.items() if p.startswith(path + "/"))
    return hashlib.sha1("\n".join(items).encode()).hexdigest()


def _last_commit(r: _Repo, c: _Commit, path: str) -> _Commit:
    def state(commit: _Commit) -> str | None:
        blob = commit.files.get(path)
        return blob.git_oid if blob else _tree_oid(commit, path) if _is_dir(commit, path) else None

    while c.parent and state(r.commits[c.parent]) == state(c):
        c = r.commits[c.parent]
    return c


def _digest(data: bytes | Path) -> tuple[str, int, bytes]:
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest(), len(data), data[:512]
    with data.open("rb") as f:
        sample = f.read(512)
        f.seek(0)
        return hashlib.file_digest(f, "sha256").hexdigest(), data.stat().st_size, sample


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
