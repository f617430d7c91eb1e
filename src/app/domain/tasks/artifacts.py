"""Where task artifacts live: a local folder (ARTIFACT_DIR) by default.

`ArtifactStore` is the seam for object storage later (advanced-alchemy's file-object
storage was considered: it adds obstore/fsspec for a need a folder meets today).
Keys are `<user id>/<task id>/<file name>`; a file appears under its key only once it
is complete (written beside it, then renamed).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


@runtime_checkable
class ArtifactStore(Protocol):
    def key(self, user_id: object, task_id: object, filename: str) -> str: ...
    def writer(self, key: str) -> _Writer: ...
    def path(self, key: str) -> Path | None: ...
    async def delete(self, key: str) -> None: ...
    async def delete_owner(self, user_id: object) -> None: ...


class _Writer:
    def __init__(self, final: Path) -> None:
        self.final = final
        self.partial = final.with_name(final.name + ".part")
        self._file: anyio.AsyncFile[bytes] | None = None

    async def write(self, data: bytes) -> None:
        assert self._file is not None
        await self._file.write(data)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[_Writer]:
        await anyio.to_thread.run_sync(lambda: self.final.parent.mkdir(parents=True, exist_ok=True))
        self._file = await anyio.open_file(self.partial, "wb")
        try:
            yield self
            await self._file.aclose()
            await anyio.to_thread.run_sync(os.replace, self.partial, self.final)
        except BaseException:
            await self._file.aclose()
            await anyio.to_thread.run_sync(lambda: self.partial.unlink(missing_ok=True))
            raise


class LocalArtifacts:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def key(self, user_id: object, task_id: object, filename: str) -> str:
        return f"{user_id}/{task_id}/{_SAFE.sub('_', filename)}"

    def _resolve(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"artifact key outside the store: {key!r}")
        return path

    def writer(self, key: str) -> _Writer:
        return _Writer(self._resolve(key))

    def path(self, key: str) -> Path | None:
        path = self._resolve(key)
        return path if path.is_file() else None

    async def delete(self, key: str) -> None:
        """Remove the artifact and its task folder."""
        folder = self._resolve(key).parent
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))

    async def delete_owner(self, user_id: object) -> None:
        """Remove every artifact of a user (their folder), finished or half-written."""
        folder = self._resolve(f"{user_id}/_").parent
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))
