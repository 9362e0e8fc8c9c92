"""Local paths and fsspec URLs (``s3://bucket/prefix``, ``gs://...``) behind one small interface.

Credentials and endpoints come from fsspec's own configuration (``FSSPEC_S3_ENDPOINT_URL``,
``~/.config/fsspec/*.json``) and each filesystem's usual chain (``AWS_*`` variables, instance
roles), so a location is just a string that works the same in every process of a run.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass

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
