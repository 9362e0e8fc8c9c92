"""Local paths and fsspec URLs (``s3://bucket/prefix``, ``gs://...``) behind one small interface.

Credentials and endpoints come from fsspec's own configuration (``FSSPEC_S3_ENDPOINT_URL``,
``~/.config/fsspec/*.json``) and each filesystem's usual chain (``AWS_*`` variables, instance
roles), so a location is just a string that works the same in every process of a run.

Parquet files (indexes, manifests) are read through one handle pyarrow owns (``read_parquet``):
never a Python file object, which pyarrow can abort the interpreter on at exit
(apache/arrow#34314, "terminate called without an active exception"), and never by path, which
pyarrow opens more than once, so a file replaced in between reads as a mix of two files.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem


@dataclass(frozen=True)
class Location:
    """A folder or file on some filesystem: ``fs`` and its protocol-less ``path``."""

    fs: AbstractFileSystem
    path: str

    @classmethod
    def of(cls, location: str | os.PathLike[str]) -> Location:
        """The location of a local path (made absolute) or an fsspec URL."""
        # No listings cache: a long-lived process (the sensor, the schedule) must see what other
        # processes published since it last looked.
        fs, path = url_to_fs(os.fspath(location), use_listings_cache=False)
        return cls(fs, path.rstrip("/") or "/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    def child(self, *parts: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, *parts))

    def parent(self) -> Location:
        return Location(self.fs, posixpath.dirname(self.path))

    def __str__(self) -> str:
        """A plain path for local files, the full URL otherwise: what ``Location.of`` takes back."""
        return self.path if self.is_local else self.fs.unstrip_protocol(self.path)


def read_parquet(file: Location) -> pa.Table:
    """The Parquet file at ``file``, read through one native handle (see the module's docstring);
    FileNotFoundError if there is none."""
    with _native_file(file) as source:
        return pq.read_table(source)


def read_parquet_schema(file: Location) -> pa.Schema:
    """The schema (with its metadata) of the Parquet file at ``file``, read the same way."""
    with _native_file(file) as source:
        return pq.read_schema(source)


def _native_file(file: Location) -> pa.NativeFile:
    if file.is_local:
        return pa.OSFile(file.path)  # one open: a rename over the path afterwards changes nothing read here
    return pa.BufferReader(file.fs.cat_file(file.path))  # one GET: one version of the object
