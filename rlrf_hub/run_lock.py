"""One run at a time per `output_dir`: an exclusive `flock` on `<output_dir>/.rlrf-hub.lock`.

The kernel drops the lock when the holder exits, however it exits, so a lock file left behind by a killed run
blocks nobody: the next run takes the lock and writes its own details over the old ones. The file names its
holder (pid, host, start time, command with tokens masked) for the message a second run prints.

The holder removes the file when it is done, still holding the lock; a run that was waiting on the removed file
notices (the path no longer leads to the file it locked) and locks the new one instead.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

from .config import RecipeError
from .errors import RunError

LOCK_FILE = ".rlrf-hub.lock"
SECRET_FLAG = re.compile(r"^--?[\w-]*(token|secret|password|key)[\w-]*$", re.IGNORECASE)
SECRET_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{8,}")


class RunLockedError(RunError):
    """Another live process holds the lock of the output_dir."""


def masked_command(argv: list[str]) -> str:
    """The command line with the values of token-like flags and anything shaped like an HF token masked."""
    words, hide_next = [], False
    for word in argv:
        flag, eq, value = word.partition("=")
        if hide_next:
            word = "***"
        elif eq and SECRET_FLAG.match(flag):
            word = f"{flag}=***"
        hide_next = not eq and bool(SECRET_FLAG.match(word))
        words.append(SECRET_VALUE.sub("hf_***", word))
    return " ".join(words)


def _missing_ancestors(folder: Path) -> list[Path]:
    """`folder` and its parents that do not exist yet, deepest first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        missing.append(path)
    return missing


class RunLock:
    """`with RunLock(output_dir):` holds the folder for this process, creating it if needed.

    A second holder fails at once with `RunLockedError` naming the first one, or with `wait=True` says whom it
    waits for and blocks until the lock is free. A folder this lock created and the run left empty is removed again
    on exit, so a run stopped before its first stage leaves nothing behind.
    """

    def __init__(self, folder: str | Path, wait: bool = False):
        self.folder = Path(folder).absolute()
        self.path = self.folder / LOCK_FILE
        self.wait = wait
        self._fd: int | None = None
        self._created: list[Path] = []

    def __enter__(self) -> RunLock:
        try:
            self._fd = self._lock()
            self._write_holder()
        except BaseException:
            self._remove_created()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
        self._remove_created()

    def _make_folder(self) -> None:
        """Create the folder (again, if the holder this process waited for removed it), noting what it created."""
        missing = _missing_ancestors(self.folder)
        self._created = missing or self._created
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise RecipeError(f"output_dir: {self.folder} is a file, not a folder (choose another one)") from None
        except OSError as error:
            raise RecipeError(
                f"output_dir: cannot create {self.folder}: {error.strerror or error} "
                "(choose a folder you can write to)"
            ) from None

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RecipeError(
                f"output_dir: cannot write in {self.folder}: {error.strerror or error} "
                "(choose a folder you can write to)"
            ) from None

    def _lock(self) -> int:
        announced = False
        while True:
            self._make_folder()
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                holder = self._holder()
                if not self.wait:
                    os.close(fd)
                    raise RunLockedError(
                        f"output_dir: {self.folder} is in use by another run ({holder}) (wait for it to end, pass "
                        "--wait_for_lock to queue behind it, or choose another output_dir)"
                    ) from None
                if not announced:
                    print(f"output_dir {self.folder} is in use by another run ({holder}); waiting", file=sys.stderr)
                    announced = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if self._still_the_lock_file(fd):
                return fd
            os.close(fd)

    def _still_the_lock_file(self, fd: int) -> bool:
        """False when the previous holder removed the file while this process waited on it."""
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def _holder(self) -> str:
        """Who holds the lock, as its file says; the holder may be writing it this very moment, so read twice."""
        for _ in range(20):
            try:
                info = json.loads(self.path.read_text())
                return f"pid {info['pid']} on {info['host']}, since {info['started']}: {info['command']}"
            except (OSError, ValueError, KeyError, TypeError):
                time.sleep(0.05)
        return "a process that has not written its pid yet"

    def _write_holder(self) -> None:
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": masked_command(sys.argv),
        }
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(info) + "\n").encode(), 0)

    def _remove_created(self) -> None:
        """Remove the folders this lock created, if the run left them empty."""
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:
                return
