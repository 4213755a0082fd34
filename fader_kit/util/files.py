"""Atomic writes: a file is either the old one or the complete new one, never half written.

Every writer goes through :func:`atomic_path`: the payload is written to a fresh temporary file
beside the target (``tempfile.mkstemp`` in the target's folder: an unpredictable name, created
exclusively, so it is never an existing file or a symlink planted there), flushed to disk
(``fsync``) and renamed over the target (``os.replace``, which replaces a symlink at the target
rather than writing through it); the folder is synced so the rename survives a power cut.  A
process killed mid-write leaves at most a hidden ``.NAME.*.tmp`` file, which
:func:`remove_stale_temps` clears (only where no other writer can be at work).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

TEMP_SUFFIX = ".tmp"


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file (mkstemp's own is 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


FILE_MODE = _file_mode()  # read once, at import: os.umask can only be read by setting it
FOLDER_MODE = FILE_MODE | ((FILE_MODE & 0o444) >> 2)  # the search bit wherever reading is allowed


def fsync_folder(folder: str | Path) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed.

    The writer opens the path by name (libraries such as safetensors and PIL need a name, and some
    replace the file): before the rename it must still be a regular file, never a symlink, which is
    synced through a descriptor opened without following links."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    tmp = Path(name)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, FILE_MODE)
        yield tmp
        os.close(fd)  # some writers (safetensors) replace the file at the name: sync what is there now
        fd = -1
        if not stat.S_ISREG(os.lstat(tmp).st_mode):
            raise OSError(f"temporary file {tmp} is no longer a regular file; {path} was not written")
        sync = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.fsync(sync)
        finally:
            os.close(sync)
        os.replace(tmp, path)
        fsync_folder(path.parent)
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp):
            tmp.unlink()


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` and move ``tmp`` onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """``payload`` as indented JSON (keys in their given order)."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False))


def torch_save_atomic(obj: Any, path: str | Path) -> Path:
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


@contextmanager
def file_lock(path: str | Path, *, wait: bool = True) -> Iterator[int]:
    """Hold an exclusive OS lock on ``path`` (created when missing, never followed through a symlink)
    for the block; yields its file descriptor.  ``wait``: wait for another holder to let go, else raise
    :class:`BlockingIOError` at once.  Closing the file releases the lock, also when the process dies;
    the file stays (removing it would race the next holder).  Where the OS has no POSIX locks
    (Windows) the block runs unlocked."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield fd
            return
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        yield fd
    finally:
        os.close(fd)


def remove_stale_temps(folder: str | Path) -> int:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` when its process was killed
    (hidden, ending in ``.tmp``; regular files only).  Call it only while holding the folder's lock.
    Returns how many were removed."""
    folder = Path(folder)
    removed = 0
    if not folder.is_dir():
        return 0
    for entry in os.scandir(folder):
        if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed += 1
    return removed


def writable_folder(out: str | Path, argument: str = "--out") -> Path:
    """``out`` as a folder to write into: an existing file there (or on the way there) is a UserError
    naming the argument, raised before any work."""
    from fader_kit.errors import ConfigError

    out = Path(out)
    for p in (out, *out.parents):
        if (p.exists() or p.is_symlink()) and not p.is_dir():
            raise ConfigError(f"argument {argument} {out}: {p} is a file, not a folder; name a folder to write into")
    return out


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a fresh hidden folder beside ``path`` to fill; on success it takes ``path``'s place (an
    existing folder there is moved aside and then deleted), on error it is deleted and ``path`` is left
    as it was.  A process killed mid-way leaves ``path`` untouched and a hidden ``.NAME.*.partial``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    os.chmod(tmp, FOLDER_MODE)
    try:
        yield tmp
        fsync_folder(tmp)
        old = None
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.{secrets.token_hex(8)}.old")
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
        fsync_folder(path.parent)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
