"""Tensors streamed from a Hugging Face Hub repo by HTTP range reads, pinned to one commit.

The repo reference resolves once to a commit sha, and every read uses that sha. Headers
come from ranged reads of each shard's first bytes; tensors come from ranged reads of
exactly their bytes, adjacent tensors coalesced into one request. Every response is
checked (206, matching Content-Range, full length; a header probe clamped at the end of a
small file, as RFC 7233 allows): a server that ignores the Range header or answers for
other bytes produces an error, never wrong weights.

Every request has a connect timeout (`HF_HUB_ETAG_TIMEOUT`) and a read timeout
(`HF_HUB_DOWNLOAD_TIMEOUT`: the longest silence while waiting for bytes), huggingface_hub's
own variables and defaults (10 s each). Failed and stalled requests are retried a few times
with backoff; a `Retry-After` longer than `MERGEHUB_MAX_RETRY_AFTER` (default 300 s) is an
error at once rather than a long sleep. Every file name the server gives is checked to be a
plain path inside the repo, and small files (config, tokenizer) are checked against the git
or LFS id the repo listing gives. A weight file read whole is hashed as its bytes arrive
and compared with the LFS sha256 of the listing (`verify`).
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import re
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import torch
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from mergehub.errors import MissingTensorError, SourceError
from mergehub.recipe import ModelRef
from mergehub.sources.base import (
    INDEX_NAME,
    TensorInfo,
    adapter_weight_files,
    check_repo_file,
    files_read,
    header_length,
    parse_config,
    parse_json,
    parse_safetensors_header,
    weight_files,
)
from mergehub.sources.stream_hash import OrderedHash

__all__ = [
    "HubSource",
    "HTTPError",
    "HEADER_PROBE_BYTES",
    "MAX_COALESCED_BYTES",
    "DEFAULT_MAX_RETRY_AFTER",
    "hub_timeout",
    "max_retry_after",
]

HEADER_PROBE_BYTES = 100_000
MAX_COALESCED_BYTES = 64 * 1024**2
DEFAULT_MAX_RETRY_AFTER = 300.0
"""The longest `Retry-After` mergehub waits, in seconds (the Hub's rate-limit window is 5 minutes)."""
_COALESCE_GAP_BYTES = 64 * 1024
_ATTEMPTS = 5
_BACKOFF_SECONDS = 0.25
_MAX_BACKOFF_SECONDS = 8.0
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")

try:  # huggingface_hub's HTTP client: httpx2 in 2.x, httpx before
    import httpx2 as _httpx
except ImportError:  # pragma: no cover
    import httpx as _httpx

_TRANSIENT = (_httpx.TimeoutException, _httpx.NetworkError, _httpx.RemoteProtocolError)
HTTPError = _httpx.HTTPError
"""The base of every error of huggingface_hub's HTTP client (its own `HfHubHTTPError` too): network, timeout, status."""


def _endpoint(endpoint: str | None) -> str:
    return (endpoint or constants.ENDPOINT).rstrip("/")


def hub_timeout() -> _httpx.Timeout:
    """Connect within `HF_HUB_ETAG_TIMEOUT` seconds; wait at most `HF_HUB_DOWNLOAD_TIMEOUT` for each read (as
    huggingface_hub)."""
    return _httpx.Timeout(float(constants.HF_HUB_DOWNLOAD_TIMEOUT), connect=float(constants.HF_HUB_ETAG_TIMEOUT))


def max_retry_after() -> float:
    """The longest `Retry-After` honoured, in seconds: `MERGEHUB_MAX_RETRY_AFTER`, else 300.

    Raises:
        SourceError: the variable is set but is not a number of seconds.
    """
    value = os.environ.get("MERGEHUB_MAX_RETRY_AFTER", "").strip()
    try:
        return float(value) if value else DEFAULT_MAX_RETRY_AFTER
    except ValueError:
        raise SourceError(
            f"MERGEHUB_MAX_RETRY_AFTER={value[:20]!r} is not a number of seconds.",
            hint="Unset it, or give seconds, e.g. 60.",
        ) from None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delay-seconds or an HTTP date), or None."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds()) if when.tzinfo else None


def _verification_enabled() -> bool:
    """Whether streamed weight files are hashed (`MERGEHUB_VERIFY=0` turns it off, for benchmarks)."""
    return os.environ.get("MERGEHUB_VERIFY", "1").strip() != "0"


class HubSource:
    """A model repo on the Hub (or a Hub-compatible server), read by byte ranges at a pinned commit.

    With `adapter`, the repo is a PEFT adapter: its weights are `adapter_model.safetensors`.
    """

    def __init__(
        self,
        ref: ModelRef,
        *,
        token: str | bool | None = None,
        endpoint: str | None = None,
        cache_dir: str | Path | None = None,
        label: str | None = None,
        adapter: bool = False,
    ) -> None:
        self.label = label or str(ref)
        self.adapter = adapter
        self.repo_id = ref.path
        self.token = token
        self.endpoint = _endpoint(endpoint)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        info = self._call(
            lambda: HfApi(endpoint=self.endpoint, token=token).model_info(
                ref.path, revision=ref.revision, files_metadata=True, timeout=hub_timeout()
            )
        )
        if not isinstance(info.sha, str) or not _COMMIT_SHA.fullmatch(info.sha):
            raise SourceError(
                f"{self.label}: the server gave {str(info.sha)[:50]!r} as the commit, which is not a commit sha.",
                hint="The server is not a Hugging Face Hub, or is broken: check HF_ENDPOINT.",
            )
        self.revision: str = info.sha
        self.gated = bool(info.gated)
        siblings = info.siblings or []
        self.file_sizes = {s.rfilename: s.size for s in siblings}
        self.lfs_sha256 = {s.rfilename: s.lfs.sha256 for s in siblings if s.lfs and s.lfs.sha256}
        """The sha256 the Hub lists for each LFS file of the commit."""
        """The sha256 the Hub lists for each LFS file of the commit."""
        self._blob_ids = {s.rfilename: s.blob_id for s in siblings if s.blob_id and not s.lfs}
        self.verify_enabled = _verification_enabled()
        self.checksums: dict[str, str] = (
            {
                f: sha
                for f, sha in self.lfs_sha256.items()
                if f.endswith(".safetensors") and self.file_sizes.get(f) is not None
            }
            if self.verify_enabled
            else {}
        )
        """The LFS sha256 of each weight file whose size is listed too: those can be verified as they stream."""
        self._tensors: dict[str, TensorInfo] | None = None
        self._headers: dict[str, bytes] = {}
        self._hashes: dict[str, OrderedHash] = {}
        self._lock = threading.Lock()
        self.bytes_fetched = 0

    def _call(self, fn):
        """Run a huggingface_hub call, turning its HTTP errors into SourceErrors that say what to do."""
        try:
            return fn()
        except GatedRepoError as e:
            raise SourceError(
                f"{self.label} is a gated repo and this token has not been granted access.",
                hint=f"Accept its conditions at {self.endpoint}/{self.repo_id}, then use a token of that "
                "account (HF_TOKEN).",
                remedy="sign-in",
            ) from e
        except RevisionNotFoundError as e:
            raise SourceError(
                f"{self.label}: revision not found in {self.repo_id}.",
                hint="Check the branch, tag or commit after `@`.",
            ) from e
        except RepositoryNotFoundError as e:
            raise SourceError(
                f"{self.label}: repo {self.repo_id!r} not found, or it is private and the token cannot read it.",
                hint="Check the repo ID; for a private repo log in (`hf auth login`) or set HF_TOKEN.",
                remedy="sign-in",
            ) from e
        except EntryNotFoundError as e:
            raise SourceError(f"{self.label}: a file listed by the repo is missing: {e}.") from e
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            refused = status in (401, 403)
            hint = "Check HF_TOKEN: the server refused it." if refused else "Try again later."
            raise SourceError(
                f"{self.label}: the Hub answered {status}: {e}.", hint=hint, remedy="sign-in" if refused else None
            ) from e
        except _TRANSIENT as e:
            raise SourceError(
                f"{self.label}: cannot reach {self.endpoint}: {e}.",
                hint="Check the network connection, or HF_ENDPOINT if you use a mirror.",
            ) from e

    def _weight_files(self) -> list[str]:
        if self.adapter:
            return adapter_weight_files(list(self.file_sizes), self.label)
        raw = self.read_file(INDEX_NAME)
        return weight_files(
            list(self.file_sizes), parse_json(raw, INDEX_NAME, self.label) if raw is not None else None, self.label
        )

    def tensors(self) -> Mapping[str, TensorInfo]:
        """Every tensor of the model, from ranged reads of each shard's header, checked against the listed sizes."""
        if self._tensors is None:
            tensors: dict[str, TensorInfo] = {}
            for file in self._weight_files():
                header = self._header(file)
                tensors.update(parse_safetensors_header(header, file, self.file_sizes.get(file), label=self.label))
                self._headers[file] = header
            self._tensors = tensors
        return self._tensors

    def _header(self, file: str) -> bytes:
        """A shard's JSON header: a ranged read of its first bytes, a second one if the header is longer."""
        cached = self._cache_file(f"{file}.header")
        if cached is not None and cached.is_file():
            return cached.read_bytes()
        size = self.file_sizes.get(file) or HEADER_PROBE_BYTES
        probe = self._fetch(file, 0, min(HEADER_PROBE_BYTES, size), may_end_early=True)
        length = header_length(probe, f"{self.label}/{file}", self.file_sizes.get(file))
        header = probe[8 : 8 + length]
        if len(header) < length:
            header += self._fetch(file, len(probe), 8 + length)
        if cached is not None:
            _write_atomically(cached, header)
        return header

    def config(self) -> dict:
        """The model's config.json."""
        return parse_config(
            self.read_file("config.json"),
            self.label,
            missing_hint="mergehub merges transformers models with a config.json.",
        )

    def read_file(self, filename: str) -> bytes | None:
        """A small file of the repo at the pinned commit, or None when absent; checked against the listing's id.

        Raises:
            SourceError: it cannot be read, or its bytes differ from what the repo lists (git blob id or LFS sha256).
        """
        if filename not in self.file_sizes:
            return None
        data = self._fetch(filename)
        if filename in self.lfs_sha256:
            actual, expected = hashlib.sha256(data).hexdigest(), self.lfs_sha256[filename]
        elif filename in self._blob_ids:
            actual, expected = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(), self._blob_ids[filename]
        else:
            return data
        if actual != expected:
            raise SourceError(
                f"{self.label}: {filename} arrived with content {actual[:12]}…, but the repo lists "
                f"{expected[:12]}…: it was changed in transit.",
                hint="Try again; if it persists, a proxy or the network corrupts downloads.",
            )
        return data

    def files_read(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        """The shards that reading these tensors touches: (tensors read, tensors held) for each."""
        return files_read(self.tensors(), names)

    def verify(self, files: Iterable[str]) -> None:
        """Hash these weight files as their bytes arrive, and compare each with the listing's sha256 once complete.

        Call it before the reads; only for files the merge reads whole (else a gap stays open).
        """
        self.tensors()  # the headers, which are the first bytes hashed
        for file in files:
            if file not in self.checksums:
                continue
            spill = str(self.cache_dir) if self.cache_dir is not None and self.cache_dir.is_dir() else None
            hasher = OrderedHash(self.file_sizes[file], spill_dir=spill)
            self._hashes[file] = hasher
            header = self._headers[file]
            self._feed(file, 0, struct.pack("<Q", len(header)) + header)

    def verified_files(self) -> list[str]:
        """The files verified so far (hashed whole, sha256 equal to the listing's)."""
        return sorted(file for file, hasher in self._hashes.items() if hasher.done)

    def _feed(self, file: str, start: int, data: bytes) -> None:
        hasher = self._hashes.get(file)
        try:
            if hasher is None or not hasher.add(start, data):
                return
        except OSError as e:  # the temporary file that holds early ranges
            raise SourceError(
                f"{self.label}: cannot hold the early parts of {file} while verifying it: {e.strerror or e}.",
                hint="Free space in the temporary directory (TMPDIR), or set MERGEHUB_VERIFY=0 to skip the check.",
            ) from e
        expected = self.checksums[file]
        if hasher.hexdigest() != expected:
            self._forget_cache(file)
            raise SourceError(
                f"{self.label}: {file} was changed in transit: its bytes hash to {hasher.hexdigest()}, "
                f"but the repo lists sha256 {expected}.",
                hint="Nothing was written. Try again; if it persists, a proxy or the network corrupts downloads.",
            )
        hasher.close()

    def read(self, name: str) -> torch.Tensor:
        """One tensor, by a ranged read of its bytes."""
        return self.read_many([name])[name]

    def read_many(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """Several tensors, adjacent ones fetched together in one ranged request."""
        tensors = self.tensors()
        infos = []
        for name in names:
            if name not in tensors:
                raise MissingTensorError(f"{self.label} has no tensor {name!r}.")
            infos.append(tensors[name])
        result: dict[str, torch.Tensor] = {}
        for group in _coalesce(infos):
            first = group[0]
            data = self._cached(group) or self._fetch(first.file, first.start, max(i.end for i in group))
            self._feed(first.file, first.start, data)
            for info in group:
                chunk = data[info.start - first.start : info.end - first.start]
                self._store(info, chunk)
                result[info.name] = _to_tensor(chunk, info)
        return result

    def _cache_file(self, name: str) -> Path | None:
        """A path in this revision's cache folder (None without a cache); `name` starts with a checked repo path."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / self.repo_id.replace("/", "--") / self.revision / check_repo_file(name, self.label)

    def _cache_path(self, info: TensorInfo) -> Path | None:
        return self._cache_file(f"{info.file}.{info.start}-{info.end}")

    def _forget_cache(self, file: str) -> None:
        """Delete a file's cached header and tensors (after its bytes failed verification)."""
        folder = self._cache_file(file)
        if folder is not None and folder.parent.is_dir():
            for path in folder.parent.glob(f"{folder.name}.*"):
                path.unlink(missing_ok=True)

    def _cached(self, group: list[TensorInfo]) -> bytes | None:
        paths = [self._cache_path(info) for info in group]
        if not paths or any(p is None or not p.is_file() for p in paths):
            return None
        parts = b"".join(p.read_bytes() for p in paths)  # type: ignore[union-attr]
        gaps_free = all(a.end == b.start for a, b in zip(group, group[1:]))
        return parts if gaps_free else None

    def _store(self, info: TensorInfo, chunk: bytes) -> None:
        path = self._cache_path(info)
        if path is not None and not path.exists():
            _write_atomically(path, chunk)

    def _fetch(
        self, file: str, start: int | None = None, end: int | None = None, *, may_end_early: bool = False
    ) -> bytes:
        """Bytes `[start, end)` of a repo file (the whole file without a range), with timeouts, retries and checks.

        `may_end_early`: the file may be shorter than `end` (a header probe of a small shard whose size
        the repo info did not give), so a range the server clamped at the end of the file is accepted.

        Raises:
            SourceError: the server refused, kept failing or stalling, asked to wait too long, or sent other bytes.
        """
        ranged = start is not None and end is not None
        if ranged and end <= start:
            return b""
        url = hf_hub_url(
            self.repo_id, check_repo_file(file, self.label), revision=self.revision, endpoint=self.endpoint
        )
        headers = build_hf_headers(token=self.token, headers={"Range": f"bytes={start}-{end - 1}"} if ranged else None)
        what = f"bytes {start}-{end - 1} of {file}" if ranged else file
        problem, hint = "", ""
        for attempt in range(_ATTEMPTS):
            wait = min(_MAX_BACKOFF_SECONDS, _BACKOFF_SECONDS * 2**attempt)
            timeout = hub_timeout()
            try:
                response = get_session().get(url, headers=headers, timeout=timeout, follow_redirects=True)
            except _httpx.TimeoutException as e:
                kind = "connecting" if isinstance(e, _httpx.ConnectTimeout) else "waiting for data"
                problem = (
                    f"no progress for {timeout.connect if kind == 'connecting' else timeout.read:.0f} s while {kind}"
                )
                hint = (
                    "The server stopped answering. Try again later; on a slow link raise "
                    "HF_HUB_DOWNLOAD_TIMEOUT (seconds)."
                )
            except (_httpx.NetworkError, _httpx.RemoteProtocolError) as e:
                problem, hint = (
                    f"the connection failed ({e or type(e).__name__})",
                    "Check the network connection, then try again.",
                )
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    problem, hint = f"the server answered {response.status_code}", "Try again later."
                    asked = _retry_after(response.headers)
                    if asked is not None and asked > max_retry_after():
                        raise SourceError(
                            f"{self.label}: reading {what}: the server answered {response.status_code} and asks "
                            "to wait "
                            f"{asked:.0f} s (Retry-After), more than mergehub waits ({max_retry_after():.0f} s).",
                            hint="Try again later, or raise MERGEHUB_MAX_RETRY_AFTER (seconds).",
                        )
                    wait = wait if asked is None else asked
                elif response.status_code >= 400:
                    self._call(lambda answer=response: hf_raise_for_status(answer))
                    problem = f"the server answered {response.status_code}"
                else:
                    content = response.content
                    if ranged:
                        problem = _range_problem(
                            response.status_code,
                            response.headers.get("Content-Range"),
                            len(content),
                            start,
                            end,
                            may_end_early,
                        )
                        hint = (
                            "The server or a proxy does not honour HTTP Range requests; mergehub refuses to "
                            "guess the weights."
                        )
                    elif self.file_sizes.get(file) not in (None, len(content)):
                        problem = f"the body has {len(content)} bytes, but the repo lists {self.file_sizes[file]}"
                        hint = "The download was cut short or altered; try again."
                    else:
                        problem = ""
                    if not problem:
                        with self._lock:
                            self.bytes_fetched += len(content)
                        return content
            if attempt + 1 < _ATTEMPTS:
                time.sleep(wait)
        raise SourceError(f"{self.label}: reading {what} failed {_ATTEMPTS} times; last: {problem}.", hint=hint)

    def close(self) -> None:
        """Release the verification buffers; huggingface_hub owns the HTTP client."""
        for hasher in self._hashes.values():
            hasher.close()


def _range_problem(
    status: int, content_range: str | None, length: int, start: int, end: int, may_end_early: bool = False
) -> str:
    """Why a response does not hold bytes `[start, end)`, or "" when it does.

    With `may_end_early`, a range that runs past the end of the file may be answered up to its
    last byte (RFC 7233 clamps it: `bytes 0-18551/18552` for `bytes=0-99999`); the body must then
    match that Content-Range exactly. Anything else is refused.
    """
    if status != 206:
        return f"the server answered {status} instead of 206 Partial Content (it ignored the Range header)"
    match = _CONTENT_RANGE.fullmatch(content_range or "")
    first, last = (int(match[1]), int(match[2]) + 1) if match else (None, None)
    clamped = may_end_early and match is not None and match[3] != "*" and last == int(match[3]) < end
    if first != start or last is None or (last != end and not clamped) or last <= start:
        return f"the server sent Content-Range {content_range!r} for bytes {start}-{end - 1}"
    if length != last - start:
        return f"the body has {length} bytes, not the {last - start} of its Content-Range"
    return ""


def _coalesce(infos: list[TensorInfo]) -> list[list[TensorInfo]]:
    """Group tensors into runs of nearby byte ranges in one file, each run at most MAX_COALESCED_BYTES."""
    groups: list[list[TensorInfo]] = []
    for info in sorted(infos, key=lambda i: (i.file, i.start)):
        if groups:
            last = groups[-1]
            near = last[-1].file == info.file and 0 <= info.start - max(i.end for i in last) <= _COALESCE_GAP_BYTES
            if near and info.end - last[0].start <= MAX_COALESCED_BYTES:
                last.append(info)
                continue
        groups.append([info])
    return groups


def _write_atomically(path: Path, data: bytes) -> None:
    """Write a cache file so that a reader never sees it half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{threading.get_ident()}.partial")
    partial.write_bytes(data)
    partial.replace(path)


def _to_tensor(chunk: bytes, info: TensorInfo) -> torch.Tensor:
    if not chunk:
        return torch.empty(info.shape, dtype=info.torch_dtype)
    return torch.frombuffer(bytearray(chunk), dtype=info.torch_dtype).reshape(info.shape)
