"""The ground floor of the store: where a runs folder lives (a local folder or any filesystem
pyarrow opens from a URI), how its files are named, hashed and written whole.

``runs_dir`` may be a URI (``s3://bucket/runs``, ``gs://...``) with the filesystem's options
in its query; credentials come from each machine's environment, never from the recipe.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from alma_data.errors import StoreError

DEFAULT_RUNS_DIR = "data/runs"
MANIFEST = "_manifest.json"
STATE = "_state.json"
PROGRESS = "_progress.json"
SHARD_RE = re.compile(r"^part-(\d{5})\.parquet$")


class ManifestError(StoreError):
    """A JSON file of the store (a manifest, run.json) that cannot be read as what it should be."""

    def __init__(self, path: str, url: str, problem: str):
        super().__init__(f"{url}: {problem}")
        self.path, self.problem = path, problem


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return stream_sha256(f)


def stream_sha256(f) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cache_home() -> Path:
    """Where this machine keeps local copies of what a remote store holds (checkpoints that
    engines load, the engine request caches, training staging): ``$ALMA_DATA_CACHE`` or
    ``~/.cache/alma-data``."""
    return Path(os.environ.get("ALMA_DATA_CACHE") or Path.home() / ".cache" / "alma-data").expanduser()


@dataclass(frozen=True)
class Location:
    """Where a runs folder lives: a local folder, or a folder on any filesystem pyarrow opens
    from a URI (``s3://bucket/runs``, ``gs://...``, ``hdfs://...``, ``abfs://...``). Options of
    the filesystem travel in the URI's query (``s3://b/runs?endpoint_override=host:9000&scheme=http``);
    credentials come from the usual environment of each machine (``AWS_ACCESS_KEY_ID`` ...),
    never from the recipe."""

    given: str
    scheme: str  # "" for a local folder
    base: str  # the folder's path on its filesystem
    query: str

    @property
    def remote(self) -> bool:
        return bool(self.scheme)

    def url(self, path: str) -> str:
        """How DuckDB and users name ``path`` (a path on this filesystem)."""
        return f"{self.scheme}://{path}" if self.remote else path

    def uri(self, path: str) -> str:
        """``path`` as a URI another machine can open, filesystem options included."""
        return self.url(path) + (f"?{self.query}" if self.remote and self.query else "")


def parse_location(runs_dir: str | Path) -> Location:
    text = str(runs_dir)
    if "://" not in text:
        return Location(text, "", os.path.abspath(os.path.expanduser(text)), "")
    scheme, rest = text.split("://", 1)
    path, _, query = rest.partition("?")
    if scheme == "file":
        return Location(text, "", os.path.abspath(path), "")
    if not path.strip("/"):
        raise StoreError(f"runs_dir={text}: name a bucket and folder, e.g. {scheme}://my-bucket/alma-runs")
    return Location(text, scheme, path.rstrip("/"), query)


@lru_cache(maxsize=16)
def _arrow_fs(scheme: str, query: str, bucket: str):
    import pyarrow.fs as pafs

    uri = f"{scheme}://{bucket}" + (f"?{query}" if query else "")
    try:
        fs, _ = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as e:
        raise StoreError(
            f"runs_dir {scheme}://{bucket}...: pyarrow cannot open this filesystem ({e}). Use a local folder or a URI "
            "pyarrow supports (s3://, gs://, hdfs://, abfs://); put filesystem options in the URI's query, e.g. "
            "s3://bucket/runs?endpoint_override=host:9000&scheme=http") from e
    return fs


def arrow_filesystem(loc: Location):
    import pyarrow.fs as pafs

    if not loc.remote:
        return pafs.LocalFileSystem()
    return _arrow_fs(loc.scheme, loc.query, loc.base.split("/", 1)[0])


@lru_cache(maxsize=16)
def _fsspec_class(scheme: str):
    from fsspec.implementations.arrow import ArrowFSWrapper

    # DuckDB routes a URL to a registered fsspec filesystem by the class's protocol.
    return type(f"Arrow_{scheme}_FS", (ArrowFSWrapper,), {"protocol": scheme})


def fsspec_filesystem(loc: Location):
    """The same filesystem through fsspec's interface (listing, globbing, DuckDB registration)."""
    if not loc.remote:
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem()
    return _fsspec_class(loc.scheme)(arrow_filesystem(loc))


def join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts) if p != "")




def stat_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """Size and modification time (seconds since the epoch, or None) of an fsspec listing entry:
    a float from the local filesystem, a datetime through pyarrow's."""
    mtime = entry.get("mtime")
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return {"size": int(entry["size"]), "mtime": float(mtime) if mtime is not None else None}
