"""Runs on disk: versioned Parquet shards, manifests, and DuckDB views over them.

The store is the ground floor: it imports nothing of the project above it. Its parts,
each used by the others through public names only:

- :mod:`~alma_data.store.files`: where a runs folder lives (a local folder or an object
  store URI), file names, hashing, whole-file writes;
- :mod:`~alma_data.store.layout`: one run's folder and what lies in it (:class:`RunFiles`):
  paths, run.json and other JSON files, manifests, file listings; the parts below stand on it;
- :mod:`~alma_data.store.run`: the run as the project uses it (:class:`Store`, a
  :class:`RunFiles`): checked reads, writers, checkpoints, DuckDB views; it imports the parts
  below and none of them imports it;
- :mod:`~alma_data.store.shards`: writing a table shard by shard (:class:`TableWriter`);
- :mod:`~alma_data.store.cache`: this machine's copies of a remote run's checkpoints;
- :mod:`~alma_data.store.integrity`: does the store still hold what its manifests recorded;
- :mod:`~alma_data.store.lock`: one build at a time in a run.

This module only gathers the names the rest of the project imports.
"""

from alma_data.errors import StoreError
from alma_data.store.cache import local_model_path
from alma_data.store.files import (MANIFEST, SHARD_RE, Location, ManifestError, arrow_filesystem, cache_home,
                                   file_sha256, fsspec_filesystem, parse_location, write_json_atomic)
from alma_data.store.layout import TableRef
from alma_data.store.run import Store, list_runs
from alma_data.store.shards import ShardSink, TableWriter, write_table

__all__ = ["MANIFEST", "SHARD_RE", "Location", "ManifestError", "ShardSink", "Store", "StoreError", "TableRef",
           "TableWriter", "arrow_filesystem", "cache_home", "file_sha256", "fsspec_filesystem", "list_runs",
           "local_model_path", "parse_location", "write_json_atomic", "write_table"]
