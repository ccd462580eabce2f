"""Runs on disk: versioned Parquet shards, manifests, and DuckDB views over them.

The store is the ground floor: it imports nothing of the project above it. Its parts,
each used by the others through public names only:

- :mod:`~alma_data.store.files`: where a runs folder lives (a local folder or an object
  store URI), file names, hashing, whole-file writes;
- :mod:`~alma_data.store.run`: one run's folder (:class:`Store`): run.json, manifests,
  checkpoints, DuckDB views;
- :mod:`~alma_data.store.shards`: writing a table shard by shard (:class:`TableWriter`);
- :mod:`~alma_data.store.cache`: this machine's copies of a remote run's checkpoints;
- :mod:`~alma_data.store.integrity`: does the store still hold what its manifests recorded.

This module only gathers the names the rest of the project imports.
"""

from alma_data.errors import StoreError
from alma_data.store.cache import local_model_path
from alma_data.store.files import (MANIFEST, SHARD_RE, Location, ManifestError, arrow_filesystem, cache_home,
                                   file_sha256, fsspec_filesystem, parse_location, write_json_atomic)
from alma_data.store.run import Store, TableRef, list_runs
from alma_data.store.shards import ShardSink, TableWriter, write_table

__all__ = ["MANIFEST", "SHARD_RE", "Location", "ManifestError", "ShardSink", "Store", "StoreError", "TableRef",
           "TableWriter", "arrow_filesystem", "cache_home", "file_sha256", "fsspec_filesystem", "list_runs",
           "local_model_path", "parse_location", "write_json_atomic", "write_table"]
