"""The traefik file projector: the fold of the log as one traefik file-provider TOML file.

Each write replaces the whole file atomically -- a temporary file in the same directory,
fsync, rename over the target, fsync of the directory -- so traefik (and any reader) sees the
old file or the new one, never half of one, and a crash leaves one of them on disk. The file
records its applied seq (the marker router and a header comment, see :mod:`.traefik_config`);
its content is a pure function of the table, so a restarted projector compares and rewrites
only if something differs.

traefik's file provider notices a new file through an inotify event on the directory. A write
that traefik has not picked up within a moment is retried by :meth:`nudge` (the confirmer calls
it), which renames a fresh copy over the file: a lost event costs a second, never a hang.
The temporary file's name does not end in ``.toml``/``.yaml``, so a file provider watching the
whole directory ignores it, and traefik's single-file provider only reacts to the file's name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anyio.to_thread

from .._gc import paused_gc
from ..events import Record
from ..table import RouteTable, fold_all
from ._port import ProjectionError
from .traefik_config import parse_toml_document, toml_document

__all__ = ["TraefikFileProjector", "atomic_write"]


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync of the directory.
    ``mode`` is set before any byte is written (0o600 for a file holding a secret)."""
    directory = path.parent
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask, and if a stale temp file existed
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class TraefikFileProjector:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".toml":
            raise ValueError(
                f"traefik file projection {self.path}: the file name must end in .toml"
            )
        self.table = RouteTable()
        self._text: str | None = None  # what we last wrote
        self.writes = 0

    @property
    def seq(self) -> int:
        return self.table.seq

    def _read_text(self) -> str | None:
        try:
            return self.path.read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ProjectionError(
                f"traefik file projection {self.path}: cannot read: {exc}"
            ) from None

    async def read_text(self) -> str | None:
        """The file's current content (``None`` if it does not exist)."""
        return await anyio.to_thread.run_sync(self._read_text)

    async def applied_seq(self) -> int:
        text = await self.read_text()
        if text is None:
            return 0
        try:
            return parse_toml_document(text)[1] or 0
        except ValueError:
            return 0

    async def _write(self, text: str) -> None:
        data = text.encode("utf-8")
        try:
            await anyio.to_thread.run_sync(atomic_write, self.path, data)
        except OSError as exc:
            raise ProjectionError(
                f"traefik file projection {self.path}: cannot write: {exc.strerror or exc}"
            ) from None
        self._text = text
        self.writes += 1

    async def reset(self, table: RouteTable) -> None:
        table = RouteTable(table, table.seq)  # our own copy: a caller's table may be live
        text = toml_document(table)
        if await self.read_text() != text:
            await self._write(text)
        else:
            self._text = text
        self.table = table

    async def apply(self, records: Sequence[Record]) -> None:
        if not records:
            return
        with paused_gc():
            after = fold_all(self.table, records)
        await self._write(toml_document(after))
        self.table = after

    async def nudge(self) -> None:
        """Write the current projection again (a new inode), for a watcher that missed it."""
        await self._write(self._text if self._text is not None else toml_document(self.table))
