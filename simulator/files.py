"""Writing output files so that no reader ever sees half of one, and nothing is lost.

Every file parasim writes (traces, plans, measurements, pictures, profiles, reports) goes
through this module:

- a file is written to a temporary file in the same folder, flushed to disk, then renamed
  over its name (`os.replace`, atomic on POSIX): on a full disk, a read-only folder or Ctrl-C
  the old file (if any) is intact and no truncated file is left;
- an existing file is kept unless the caller passes `force` (the command's `--force`);
- an `OSError` (read-only folder, no space left, a path that is a folder) becomes a
  `SpecError` naming the flag that chose the path, so the command line prints one line.

A folder of several files is written one file at a time, each atomically, with its marker
file (the one that says the folder is complete, e.g. a profile's meta.json or a report's
README.md) last; or staged whole in a hidden folder inside it and moved into place when every
file is written (`staged_folder`: a full disk or Ctrl-C while writing leaves nothing).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from parasim.simulator.errors import SpecError

WRITABLE_FILE = "a writable file path"
WRITABLE_FOLDER = "a writable folder"


def cannot_write(field: str, path: str | Path, err: OSError, valid: str = WRITABLE_FILE
                 ) -> SpecError:
    """The one-line error of a failed write: `--out='x': cannot write: No space left ...`."""
    why = err.strerror or str(err)
    return SpecError(field, str(path), f"cannot write: {why}", valid)


def check_new_file(path: str | Path, *, force: bool, field: str) -> Path:
    """`path` as a Path, after refusing one that is a folder, an existing file without
    `force`, or one in a folder that is missing or read-only (SpecError naming `field`). Call
    it before the work that produces the file."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(field, str(path), "cannot write: it is a folder", WRITABLE_FILE)
    if path.exists() and not force:
        raise SpecError(field, str(path), "exists; refusing to overwrite it",
                        f"another path, or {_force_flag(field)}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SpecError(field, str(path), f"cannot write: no folder {folder}", WRITABLE_FILE)
    _check_writable(folder, field, path, WRITABLE_FILE)
    return path


def _check_writable(folder: Path, field: str, path: Path, valid: str) -> None:
    """SpecError unless `folder` (or, where it does not exist yet, the nearest folder above
    it, in which it would be created) can be written: a read-only file system or folder is
    said before any work, not after it."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SpecError(field, str(path), f"cannot create the folder: {existing} is a file",
                        valid)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SpecError(field, str(path), f"cannot write: {existing} is read-only", valid)


def _force_flag(field: str) -> str:
    return "--force" if field.startswith("--") else "force=True"


def _umask() -> int:
    """The process's umask (read by setting it, then set back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _file_mode() -> int:
    """The permissions a plain `open(path, "w")` would give a new file (0o666 less umask)."""
    return 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | Path, *, force: bool, field: str) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed over `path` when the block ends
    without an exception, removed otherwise. SpecError (naming `field`) if `path` exists and
    not `force`, or if the folder cannot be written."""
    path = check_new_file(path, force=force, field=field)
    try:
        handle, name = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".",
                                        prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise cannot_write(field, path, err) from None
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        _sync(temporary)
        os.chmod(temporary, _file_mode())
        check_new_file(path, force=force, field=field)  # appeared meanwhile
        os.replace(temporary, path)
    except OSError as err:
        raise cannot_write(field, path, err) from None
    finally:
        temporary.unlink(missing_ok=True)


def _sync(path: Path) -> None:
    """Flush a written file's data to the disk before it is renamed into place."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_open(path: str | Path, *, force: bool, field: str, newline: str | None = None
                ) -> Iterator[IO[str]]:
    """A text file (UTF-8) opened for writing whose content replaces `path` atomically when
    the block ends without an exception (`atomic_path`'s rules)."""
    with atomic_path(path, force=force, field=field) as temporary:
        try:
            with temporary.open("w", encoding="utf-8", newline=newline) as f:
                yield f
        except OSError as err:
            raise cannot_write(field, path, err) from None


def write_text_atomic(path: str | Path, text: str, *, force: bool, field: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; the path written."""
    with atomic_open(path, force=force, field=field) as f:
        f.write(text)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes, *, force: bool, field: str) -> Path:
    """Write `data` to `path` atomically; the path written."""
    with atomic_path(path, force=force, field=field) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def save_figure(figure, path: str | Path, *, force: bool, field: str, dpi: int = 110) -> Path:
    """A matplotlib figure as a PNG at `path`, atomically."""
    with atomic_path(path, force=force, field=field) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi)
    return Path(path)


# Folders -------------------------------------------------------------------------------------


def check_new_folder(path: str | Path, *, force: bool, field: str) -> Path:
    """`path` as a Path, after refusing a file, or a folder with files in it without `force`
    (SpecError naming `field`). Call it before the work that fills the folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SpecError(field, str(path), "exists and is not a folder", "a new or empty folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise SpecError(field, str(path), "exists and is not empty; refusing to overwrite it",
                        f"a new or empty folder, or {_force_flag(field)}")
    _check_writable(path, field, path, WRITABLE_FOLDER)
    return path


def make_folder(path: str | Path, *, field: str) -> Path:
    """Create `path` and its parents (SpecError naming `field` if it cannot be)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SpecError(field, str(path), f"cannot create the folder: {err.strerror or err}",
                        WRITABLE_FOLDER) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SpecError(field, str(path), "cannot write: the folder is read-only",
                        WRITABLE_FOLDER)
    return path


@contextmanager
def staged_folder(path: str | Path, *, force: bool, field: str, marker: str | None = None
                  ) -> Iterator[Path]:
    """A hidden staging folder inside the folder `path` (created) to write the folder's files
    into (plainly: an OSError there is reported as one writing `path`); when the block ends
    without an exception they are moved into `path` one by one
    (renames: no space needed), `marker`, the file that says the folder is complete, last
    (and an earlier one removed first). Otherwise the staging folder is removed, and `path`
    too if this call created it: nothing is left. Files of `path` that the block did not
    write are kept. SpecError (naming `field`) for a folder with files in it without `force`,
    or one that cannot be written (read-only, no space left)."""
    path = check_new_folder(path, force=force, field=field)
    created = not path.exists()
    make_folder(path, field=field)
    committed = False
    try:
        staging = Path(tempfile.mkdtemp(dir=path, prefix=".staging-", suffix=".tmp"))
    except OSError as err:
        _remove_if_empty(path, created)
        raise cannot_write(field, path, err, WRITABLE_FOLDER) from None
    try:
        yield staging
        _commit(staging, path, marker)
        committed = True
    except OSError as err:
        raise cannot_write(field, path, err, WRITABLE_FOLDER) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not committed:
            _remove_if_empty(path, created)


def _commit(staging: Path, path: Path, marker: str | None) -> None:
    """Move the staged files into `path`, the marker last (an earlier marker removed first)."""
    files = sorted(staging.iterdir(), key=lambda f: (f.name == marker, f.name))
    assert all(f.is_file() for f in files), files  # staged folders hold files only
    if marker is not None:
        (path / marker).unlink(missing_ok=True)
    for staged in files:
        os.replace(staged, path / staged.name)


def _remove_if_empty(path: Path, created: bool) -> None:
    """Remove a folder this module created, when nothing was put in it."""
    if created:
        try:
            path.rmdir()
        except OSError:
            pass
