"""Tensors streamed from a Hugging Face Hub repo by HTTP range reads, pinned to one commit.

The repo reference resolves once to a commit sha, and every read uses that sha. Headers
come from ranged reads of each shard's first bytes; tensors come from ranged reads of
exactly their bytes, adjacent tensors coalesced into one request. Every response is
checked (206, matching Content-Range, full length): a server that ignores the Range
header or answers for other bytes produces an error, never wrong weights.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from huggingface_hub import HfApi, constants, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, hf_raise_for_status, http_backoff

from mergehub.errors import MissingTensorError, SourceError
from mergehub.recipe import ModelRef
from mergehub.sources.base import TensorInfo, header_length, parse_safetensors_header, weight_files
from mergehub.sources.local import INDEX_NAME

__all__ = ["HubSource", "HEADER_PROBE_BYTES", "MAX_COALESCED_BYTES"]

HEADER_PROBE_BYTES = 100_000
MAX_COALESCED_BYTES = 64 * 1024**2
_COALESCE_GAP_BYTES = 64 * 1024
_RANGE_ATTEMPTS = 4
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

try:  # huggingface_hub's HTTP client: httpx2 in 2.x, httpx before
    import httpx2 as _httpx
except ImportError:  # pragma: no cover
    import httpx as _httpx

_TRANSIENT = (_httpx.TimeoutException, _httpx.NetworkError, _httpx.RemoteProtocolError)


def _endpoint(endpoint: str | None) -> str:
    return (endpoint or constants.ENDPOINT).rstrip("/")


class HubSource:
    """A model repo on the Hub (or a Hub-compatible server), read by byte ranges at a pinned commit."""

    def __init__(
        self,
        ref: ModelRef,
        *,
        token: str | bool | None = None,
        endpoint: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.label = str(ref)
        self.repo_id = ref.path
        self.token = token
        self.endpoint = _endpoint(endpoint)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        info = self._call(
            lambda: HfApi(endpoint=self.endpoint, token=token).model_info(ref.path, revision=ref.revision, files_metadata=True)
        )
        self.revision: str = info.sha
        self.gated = bool(info.gated)
        self.file_sizes = {s.rfilename: s.size for s in info.siblings or []}
        self._tensors: dict[str, TensorInfo] | None = None
        self._lock = threading.Lock()
        self.bytes_fetched = 0

    def _call(self, fn):
        """Run a huggingface_hub call, turning its HTTP errors into SourceErrors that say what to do."""
        try:
            return fn()
        except GatedRepoError as e:
            raise SourceError(
                f"{self.label} is a gated repo and this token has not been granted access.",
                hint=f"Accept its conditions at {self.endpoint}/{self.repo_id}, then use a token of that account (HF_TOKEN).",
            ) from e
        except RevisionNotFoundError as e:
            raise SourceError(f"{self.label}: revision not found in {self.repo_id}.", hint="Check the branch, tag or commit after `@`.") from e
        except RepositoryNotFoundError as e:
            raise SourceError(
                f"{self.label}: repo {self.repo_id!r} not found, or it is private and the token cannot read it.",
                hint="Check the repo ID; for a private repo log in (`hf auth login`) or set HF_TOKEN.",
            ) from e
        except EntryNotFoundError as e:
            raise SourceError(f"{self.label}: a file listed by the repo is missing: {e}.") from e
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            hint = "Check HF_TOKEN: the server refused it." if status in (401, 403) else "Try again later."
            raise SourceError(f"{self.label}: the Hub answered {status}: {e}.", hint=hint) from e
        except _TRANSIENT as e:
            raise SourceError(
                f"{self.label}: cannot reach {self.endpoint}: {e}.",
                hint="Check the network connection, or HF_ENDPOINT if you use a mirror.",
            ) from e

    def _weight_files(self) -> list[str]:
        index = json.loads(self.read_file(INDEX_NAME) or b"null") if INDEX_NAME in self.file_sizes else None
        return weight_files(list(self.file_sizes), index, self.label)

    def tensors(self) -> Mapping[str, TensorInfo]:
        """Every tensor of the model, from ranged reads of each shard's header."""
        if self._tensors is None:
            tensors: dict[str, TensorInfo] = {}
            for file in self._weight_files():
                tensors.update(parse_safetensors_header(self._header(file), file))
            self._tensors = tensors
        return self._tensors

    def _header(self, file: str) -> bytes:
        """A shard's JSON header: a ranged read of its first bytes, a second one if the header is longer."""
        cached = self._cache_root() / f"{file}.header" if self.cache_dir else None
        if cached is not None and cached.is_file():
            return cached.read_bytes()
        size = self.file_sizes.get(file) or HEADER_PROBE_BYTES
        probe = self._range(file, 0, min(HEADER_PROBE_BYTES, size))
        length = header_length(probe, f"{self.label}/{file}")
        header = probe[8 : 8 + length]
        if len(header) < length:
            header += self._range(file, len(probe), 8 + length)
        if cached is not None:
            _write_atomically(cached, header)
        return header

    def config(self) -> dict:
        """The model's config.json."""
        raw = self.read_file("config.json")
        if raw is None:
            raise SourceError(f"{self.label} has no config.json.", hint="mergehub merges transformers models with a config.json.")
        return json.loads(raw)

    def read_file(self, filename: str) -> bytes | None:
        """A small file of the repo at the pinned commit (through the Hub cache), or None when absent."""
        if filename not in self.file_sizes:
            return None
        path = self._call(
            lambda: hf_hub_download(self.repo_id, filename, revision=self.revision, endpoint=self.endpoint, token=self.token)
        )
        return Path(path).read_bytes()

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
            data = self._cached(group) or self._range(first.file, first.start, max(i.end for i in group))
            for info in group:
                chunk = data[info.start - first.start : info.end - first.start]
                self._store(info, chunk)
                result[info.name] = _to_tensor(chunk, info)
        return result

    def _cache_root(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / self.repo_id.replace("/", "--") / self.revision

    def _cache_path(self, info: TensorInfo) -> Path | None:
        return self._cache_root() / f"{info.file}.{info.start}-{info.end}" if self.cache_dir else None

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

    def _range(self, file: str, start: int, end: int) -> bytes:
        """Bytes `[start, end)` of a repo file, retried on transient failures and checked."""
        if end <= start:
            return b""
        url = hf_hub_url(self.repo_id, file, revision=self.revision, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token, headers={"Range": f"bytes={start}-{end - 1}"})
        problem = ""
        for attempt in range(_RANGE_ATTEMPTS):
            response = self._call(lambda: http_backoff("GET", url, headers=headers, follow_redirects=True, base_wait_time=0.25, max_retries=4))
            self._call(lambda: hf_raise_for_status(response))
            problem = _range_problem(response.status_code, response.headers.get("Content-Range"), len(response.content), start, end)
            if not problem:
                with self._lock:
                    self.bytes_fetched += len(response.content)
                return response.content
            time.sleep(0.1 * 2**attempt)
        raise SourceError(
            f"{self.label}: reading bytes {start}-{end - 1} of {file} failed {_RANGE_ATTEMPTS} times: {problem}.",
            hint="The server or a proxy does not honour HTTP Range requests; mergehub refuses to guess the weights.",
        )

    def close(self) -> None:
        """Nothing to release: huggingface_hub owns the HTTP client."""


def _range_problem(status: int, content_range: str | None, length: int, start: int, end: int) -> str:
    """Why a response does not hold exactly bytes `[start, end)`, or "" when it does."""
    if status != 206:
        return f"the server answered {status} instead of 206 Partial Content (it ignored the Range header)"
    match = _CONTENT_RANGE.fullmatch(content_range or "")
    if not match or (int(match[1]), int(match[2]) + 1) != (start, end):
        return f"the server sent Content-Range {content_range!r} for bytes {start}-{end - 1}"
    if length != end - start:
        return f"the body has {length} bytes, not {end - start}"
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
