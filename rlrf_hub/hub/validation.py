"""What the offline Hub accepts as a repository id, a file path in a repository, a ref name and a blob id.

The rules follow the Hugging Face Hub and the `huggingface_hub` client (`validate_repo_id`,
`_validate_path_in_repo`), so whatever a legitimate client sends passes, while names that could reach outside a
folder, on the server or on the disk of whoever downloads the repository, are refused: `..`, absolute paths,
`.git/`, backslashes, control characters.
"""

from __future__ import annotations

import re
from urllib.parse import quote

OID = re.compile(r"[0-9a-f]{64}")
COMMIT_ID = re.compile(r"[0-9a-f]{40}")
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"(?:{_REPO_PART}/)?{_REPO_PART}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
FORBIDDEN_FOLDERS = (".git", ".cache")
MAX_PATH_CHARS = 1024
MAX_SEGMENT_BYTES = 255
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


class InvalidInputError(ValueError):
    """A name or id the Hub refuses; the server answers 400 with `code` as `X-Error-Code`."""

    status = 400
    code = "BadRequest"


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else f"{text[:100]}...({len(text)} chars)"


def check_oid(oid: object) -> str:
    """A blob id: the sha256 of the content, as 64 lowercase hex digits."""
    if not isinstance(oid, str) or not OID.fullmatch(oid):
        raise InvalidInputError(f"invalid oid {_shown(oid)}: expected 64 lowercase hex digits (a sha256)")
    return oid


def check_repo_id(repo_id: object) -> str:
    """`name` or `namespace/name`, each 1 to 96 of `A-Za-z0-9_.-`, starting and ending with a letter, digit or `_`,
    without `--` or `..`, and not ending in `.git`."""
    valid = isinstance(repo_id, str) and REPO_ID.fullmatch(repo_id)
    if not valid or "--" in repo_id or ".." in repo_id or repo_id.endswith(".git"):
        raise InvalidInputError(
            f"invalid repository id {_shown(repo_id)}: expected 'name' or 'namespace/name', each 1 to 96 letters,"
            " digits, '_', '.' or '-', starting and ending with a letter, digit or '_', without '--' or '..', and"
            " not ending in '.git'"
        )
    return repo_id


def check_path(path: object) -> str:
    """A file path in a repository: relative, `/`-separated, no empty, `.` or `..` segment, no `.git` or `.cache`
    folder, no backslash or control character, at most `MAX_PATH_CHARS` characters."""
    problem = _path_problem(path)
    if problem:
        raise InvalidInputError(f"invalid path in repo {_shown(path)}: {problem}")
    return path


def _path_problem(path: object) -> str:
    if not isinstance(path, str) or not path:
        return "it must be a non-empty string"
    if len(path) > MAX_PATH_CHARS:
        return f"it is longer than {MAX_PATH_CHARS} characters"
    if CONTROL.search(path) or "\\" in path:
        return "control characters and backslashes are not allowed"
    if path.startswith("/"):
        return "it must be relative"
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return "empty, '.' and '..' segments are not allowed"
        if segment.lower() in FORBIDDEN_FOLDERS:
            return f"a {segment!r} folder is not allowed"
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            return f"a segment is longer than {MAX_SEGMENT_BYTES} bytes"
    return ""


def check_ref_name(name: object) -> str:
    """A branch or tag name, by git's rules (no `..`, `//`, `@{`, space, control or `~^:?*[\\` characters, no
    segment starting with `.`, no trailing `/`, `.` or `.lock`), short enough to be one file name when quoted, and
    not under `refs/`, which names pull requests (`refs/pr/N`) and git's own refs."""
    valid = (
        isinstance(name, str)
        and name not in ("", "@")
        and not name.startswith(("/", "refs/"))
        and not name.endswith(("/", ".", ".lock"))
        and not _BAD_REF.search(name)
        and not any(segment.startswith(".") for segment in name.split("/"))
        and ref_file_name(name) is not None
    )
    if not valid:
        raise InvalidInputError(f"invalid branch or tag name {_shown(name)}")
    return name


def ref_file_name(name: str) -> str | None:
    """The file name that stores ref `name`, or None when it would be too long for the filesystem."""
    quoted = quote(name, safe="")
    return quoted if len(quoted) <= MAX_SEGMENT_BYTES else None
