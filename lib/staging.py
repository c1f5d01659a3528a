"""Outputs appear whole or not at all: staging directories, and what a
killed run left in them.

Everything we write holds guest data, so it is written inside a staging
directory of mode 0700 beside its destination (same file system, so the
last step is a rename or link, never a copy), named
``.ganeti-ovf-DEST.XXXXXXXX`` (hidden: Ganeti lists only visible exports).
The directory is locked with flock(2) for as long as its run lives;
the kernel drops the lock when the process dies, however it dies.

* On an error or a signal (SIGINT, SIGTERM, SIGHUP) the staging directory
  is removed before the command ends, so "nothing was left behind" is true.
* After a SIGKILL (or a power cut) it stays.  The next run writing into
  the same directory removes it, and says so, if and only if it is surely
  a dead run's: named by our prefix, a real directory (not a link) owned by
  our user with mode 0700, whose lock nobody holds.  A directory is created
  and locked under a shared lock of the parent directory, and stale ones
  are picked under an exclusive one, so a run's directory cannot be taken
  for stale between its creation and its locking.
* Once the output is in place the command has succeeded; :func:`published`
  lets the CLI keep a late signal from turning it into a failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from .errors import ExportDirError, OvfError

__all__ = [
    "STAGING_PREFIX",
    "staging",
    "staging_file",
    "work_dir",
    "clear_stale",
    "published",
    "reset_published",
    "signals_held",
    "deferring",
    "mount_point",
    "no_space",
]

log = logging.getLogger(__name__)

STAGING_PREFIX = ".ganeti-ovf-"
_OLD_STAGING = re.compile(r"^\..+\.new-[a-z0-9_]{8}$")  # before 0.10: unlocked, not removed
_published: list[str] = []
_LOCK_WAIT = 5.0  # seconds to wait for the parent directory's lock
_held = 0  # signals_held() depth
_pending: list[int] = []  # signals that arrived while held


def published() -> tuple[str, ...]:
    """Outputs this process has put in place since :func:`reset_published`."""
    return tuple(_published)


def reset_published() -> None:
    _published.clear()
    _pending.clear()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends, so a temporary
    cannot be created and then lost to a Ctrl-C before its cleanup is in
    place, nor an output be published and then undone.

    The signal mask holds them for this thread; a signal another thread
    receives still runs the Python handler here, so the CLI's handler asks
    :func:`deferring` and the interrupt is raised when the block ends.
    """
    global _held
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if not _held and _pending:
            _pending.clear()
            if not _published:
                raise KeyboardInterrupt


def deferring(signum: int) -> bool:
    """For a signal handler: whether ``signum`` is held (and now pending)."""
    if _held:
        _pending.append(signum)
        return True
    return False


# ------------------------------------------------------------ stale staging

def _lock_dir(path: str, how: int, wait: float = _LOCK_WAIT) -> int | None:
    """``path`` opened and flock()ed with ``how``; None where that cannot be
    done within ``wait`` seconds (no permission, no flock on this file
    system, another program holding the directory locked): then no cleanup,
    and a new staging directory is made unguarded (ours hold the parent's
    lock only for a moment, so a cleaner of ours is not what waits)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.01)
                continue
        except OSError:
            pass
        os.close(fd)
        return None


def _take_if_stale(parent_fd: int, name: str) -> int | None:
    """A locked descriptor of ``name`` if it is a dead run's staging dir."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        return None
    if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
            or stat.S_IMODE(st.st_mode) != 0o700):
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=parent_fd)
    except OSError:
        return None
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise BlockingIOError  # replaced meanwhile: not ours to judge
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None  # a live run holds it (or it cannot be locked): left alone
    return fd


def clear_stale(parent: str) -> list[str]:
    """Remove the staging directories killed runs left in ``parent``,
    warning with each one's path; returns them.  Staging directories of
    live runs, and anything not surely ours, are left alone."""
    try:
        names = sorted(os.listdir(parent))
    except OSError:
        return []
    for name in names:
        if _OLD_STAGING.match(name):
            log.warning("%s: may be left by an interrupted run of an older version; "
                        "remove it if no conversion is running", os.path.join(parent, name))
    names = [n for n in names if n.startswith(STAGING_PREFIX)]
    if not names:
        return []
    guard = _lock_dir(parent, fcntl.LOCK_EX)
    if guard is None:
        return []
    removed: list[str] = []
    try:
        stale = [(n, fd) for n in names if (fd := _take_if_stale(guard, n)) is not None]
        fcntl.flock(guard, fcntl.LOCK_UN)  # ours now; new runs need not wait for rmtree
        for name, fd in stale:
            path = os.path.join(parent, name)
            try:
                shutil.rmtree(name, dir_fd=guard)  # never follows links
            except OSError as e:
                log.warning("%s: left by a run that was killed; cannot remove it: %s",
                            path, e.strerror)
            else:
                removed.append(path)
                log.warning("%s: removed, left by a run that was killed", path)
            finally:
                os.close(fd)
    finally:
        os.close(guard)
    return removed


# ------------------------------------------------------------ staging

def _parent(dest: str) -> str:
    parent = os.path.dirname(os.path.abspath(dest)) or "."
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as e:
        raise ExportDirError(f"cannot create the directory: {e.strerror}", parent) from e
    return parent


def _new_stage(dest: str, parent: str) -> tuple[str, int]:
    """(path, locked descriptor) of a new staging directory for ``dest``.
    Call with signals held."""
    guard = _lock_dir(parent, fcntl.LOCK_SH)
    tmp: str | None = None
    try:
        tmp = tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.path.basename(dest)[:64]}.",
                               dir=parent)
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        return tmp, fd
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise ExportDirError(f"cannot create a staging directory: {e.strerror}",
                                 parent) from e
        raise
    finally:
        if guard is not None:
            os.close(guard)


def work_dir(parent: str, label: str) -> tuple[str, int]:
    """(path, locked descriptor) of a new 0700 working directory in
    ``parent`` that is never published (gnt-backup's staging export, a
    node's export before it is sent).  The caller removes it and closes the
    descriptor; whoever holds the descriptor (a watcher it is passed to)
    keeps the directory from being taken for stale.  What killed runs left
    in ``parent`` is cleared first."""
    clear_stale(parent)
    with signals_held():
        return _new_stage(os.path.join(parent, label), parent)


def _refuse_existing(dest: str) -> None:
    if os.path.lexists(dest):
        raise ExportDirError("already exists; remove it or choose another name", dest)


@contextlib.contextmanager
def _locked_stage(dest: str) -> Iterator[list[str | None]]:
    """What :func:`staging` and :func:`staging_file` share: refuse an
    existing ``dest``, clear stale staging, then a new locked staging
    directory, held as ``[path]``; it is removed on the way out unless the
    caller set the path to None (published)."""
    _refuse_existing(dest)
    parent = _parent(dest)
    clear_stale(parent)
    held: list[str | None] = [None]
    fd = -1
    try:
        with signals_held():
            held[0], fd = _new_stage(dest, parent)
        yield held
    finally:
        if held[0] is not None:
            shutil.rmtree(held[0], ignore_errors=True)
        if fd >= 0:
            os.close(fd)


@contextlib.contextmanager
def _publishing(dest: str) -> Iterator[None]:
    """Count ``dest`` as published before it is: a signal from here on is
    too late to undo it, unless publishing itself fails."""
    _published.append(dest)
    try:
        yield
    except BaseException:
        _published.remove(dest)
        raise


@contextlib.contextmanager
def staging(dest: str) -> Iterator[str]:
    """A new staging directory renamed to ``dest`` on success.

    On any exception (KeyboardInterrupt included) it is removed, so
    ``dest`` appears complete or not at all.  ``dest`` keeps the staging
    directory's mode 0700: its files hold guest data (Ganeti's own export
    directories are 0750 with root-only dumps; root reads either).
    """
    with _locked_stage(dest) as held:
        tmp = held[0]
        assert tmp is not None
        yield tmp
        with signals_held():
            if os.path.lexists(dest):
                raise ExportDirError("appeared while we worked; not replaced", dest)
            with _publishing(dest):
                _rename_noreplace(tmp, dest)
            held[0] = None


@contextlib.contextmanager
def staging_file(dest: str) -> Iterator[str]:
    """A new empty file (mode 0600) in a staging directory, put in place as
    ``dest`` on success: the file variant of :func:`staging` (for an OVA).

    The file is fsynced, then hard-linked to ``dest``: link(2) fails if
    ``dest`` appeared meanwhile, where rename(2) would silently replace it
    (rename is the fallback on file systems without hard links).  On any
    exception, KeyboardInterrupt included, the staging directory goes.
    """
    with _locked_stage(dest) as held:
        stage = held[0]
        assert stage is not None
        tmp = os.path.join(stage, os.path.basename(dest))
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600))
        yield tmp
        out = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(out)
        finally:
            os.close(out)
        with signals_held():
            with _publishing(dest):
                _publish_file(tmp, dest)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
                os.rmdir(stage)
                held[0] = None


_RENAME_NOREPLACE = 1
_libc: Any = None


def _rename_noreplace(tmp: str, dest: str) -> None:
    """rename(2) that fails if ``dest`` exists: plain rename replaces an
    empty directory that appeared meanwhile (renameat2, Linux >= 3.15;
    plain rename after the check where the file system lacks it)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(_libc, "renameat2", None)
    if fn is not None:
        at_fdcwd = -100
        if fn(at_fdcwd, os.fsencode(tmp), at_fdcwd, os.fsencode(dest),
              _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            raise ExportDirError("appeared while we worked; not replaced", dest)
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), dest)
    os.rename(tmp, dest)


def _publish_file(tmp: str, dest: str) -> None:
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise ExportDirError("appeared while we worked; not replaced", dest) from None
    except OSError:
        if os.path.lexists(dest):
            raise ExportDirError("appeared while we worked; not replaced", dest) from None
        os.rename(tmp, dest)


# ------------------------------------------------------------ a full disk

def mount_point(path: str) -> str:
    """The mount point of the file system ``path`` (or its nearest existing
    parent) is on."""
    cur = os.path.abspath(path)
    while not os.path.exists(cur) and os.path.dirname(cur) != cur:
        cur = os.path.dirname(cur)
    try:
        dev = os.stat(cur).st_dev
        while cur != "/":
            up = os.path.dirname(cur)
            if os.stat(up).st_dev != dev:
                break
            cur = up
    except OSError:
        pass
    return cur


def no_space(e: OSError, path: str, error: type[OvfError]) -> OvfError | None:
    """For ENOSPC/EDQUOT while writing ``path``: one line naming the file
    system and the file; None for any other error."""
    if e.errno == errno.ENOSPC:
        why = "no space left"
    elif e.errno == errno.EDQUOT:
        why = "disk quota exceeded"
    else:
        return None
    return error(f"cannot write: {why} on the file system mounted at {mount_point(path)}",
                 path)
