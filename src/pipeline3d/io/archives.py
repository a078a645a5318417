"""Safe, in-place iteration over raw inputs: zip, tar (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz) and directories.

Nothing is ever extracted: members are read into memory with bounded reads, so no file is written anywhere and
a hostile member name cannot reach the file system. ``open_raw`` scans the input once and applies the limits:

- whole archive refused (``ArchiveRefused``, one rejects row): ``bad_archive``, ``too_many_members``,
  ``too_many_bytes``, ``ratio``. Uncompressed bytes are counted as they are actually decompressed (for a tar:
  the whole decompressed tar stream, headers included), never taken from headers, so a lying archive is stopped
  as soon as it passes the limit.
- single member refused (a ``Reject`` in ``RawSource.rejects``, the rest goes on): ``unsafe_path`` (absolute,
  drive letter, ``..``, NUL), ``link`` (every symlink / hardlink in an archive; in a directory only links that
  leave the root or dangle), ``special_file`` (device, fifo, socket), ``encrypted``, ``too_big``
  (> max_member_bytes, checked on the declared size and again on the bytes read), ``ratio`` (zip member: judged
  on its declared sizes, and its read stops at the ratio whatever the header says), and ``read_error`` when the
  data cannot be read. A zip is refused whole only when the members that pass their own checks together break a
  limit (or overlap: an overlapping-entry bomb); a tar stream has to be decompressed through a bomb to reach what
  follows, so there the whole archive is refused.

Ratios are judged only once the uncompressed size passes ``RATIO_FLOOR_BYTES``: tiny archives have large ratios
from tar padding alone and are harmless. Directories are trusted for member count and total size (they were
already unpacked by the user); per-file size, special files and escaping links are still checked.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, Sequence

from .rejects import Reject

log = logging.getLogger(__name__)

RATIO_FLOOR_BYTES = 1 << 20
READ_CHUNK = 1 << 16


@dataclass(frozen=True)
class Limits:
    """Archive safety limits (the config's ``ingest`` section)."""

    max_members: int = 200_000
    max_total_bytes: int = 50_000_000_000
    max_member_bytes: int = 2_000_000_000
    max_ratio: float = 200.0

    @classmethod
    def from_config(cls, ingest: dict) -> "Limits":
        return cls(
            max_members=int(ingest.get("max_members", cls.max_members)),
            max_total_bytes=int(ingest.get("max_total_bytes", cls.max_total_bytes)),
            max_member_bytes=int(ingest.get("max_member_bytes", cls.max_member_bytes)),
            max_ratio=float(ingest.get("max_ratio", cls.max_ratio)),
        )


class ArchiveRefused(Exception):
    """The whole input is refused; ``reason`` is a code from ``pipeline3d.io.rejects.REASONS``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class Member:
    """A regular file inside an archive or directory that passed the safety scan."""

    index: int  # position in the archive (the identity: a tar may hold one name twice)
    name: str  # normalised relative posix path
    size: int  # declared uncompressed size
    source: str  # how manifest / rejects rows name it: "<archive>::<name>" or "<dir>/<name>"

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix.lower()


@dataclass
class RawSource:
    """A scanned raw input: its safe members, the members it refused, and the bytes read during the scan."""

    label: str  # the path as given (relative to the working directory)
    kind: str  # "directory" | "zip" | "tar"
    members: list[Member] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    prefetched: dict[int, bytes] = field(default_factory=dict)
    # True: read_all yields members in the order asked for; False: in archive order (a compressed stream)
    random_access: bool = True
    _reader: Callable[[Sequence[Member]], Iterator[tuple[Member, bytes | Reject]]] | None = None

    def read_all(self, wanted: Sequence[Member]) -> Iterator[tuple[Member, bytes | Reject]]:
        """Yield ``(member, data)`` (or ``(member, Reject)``) for every wanted member, each exactly once."""
        assert self._reader is not None
        return self._reader(wanted)


def safe_member_name(raw: str, backslash_is_separator: bool = False) -> str:
    """The normalised relative posix name of an archive member; raises ``ValueError`` if it is unsafe."""
    name = raw.replace("\\", "/") if backslash_is_separator else raw
    if "\x00" in name:
        raise ValueError("NUL byte in member name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes (surrogate escapes) cannot go into a UTF-8 manifest
        raise ValueError("member name is not valid UTF-8") from None
    if name.startswith("/"):
        raise ValueError("absolute member name")
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        raise ValueError("member name with a drive letter")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("member name with a '..' component")
    if not parts:
        raise ValueError("empty member name")
    return "/".join(parts)


def printable(name: str) -> str:
    """``name`` with undecodable bytes shown as escapes, for reject rows."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _bounded_read(fh, cap: int) -> bytes:
    """Read at most ``cap + 1`` bytes, so an oversized member is detected without reading all of it."""
    chunks, total = [], 0
    while total <= cap:
        chunk = fh.read(min(READ_CHUNK * 16, cap + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _too_big(member_source: str, n: int, limits: Limits) -> Reject:
    return Reject(member_source, "too_big", f"{n} bytes, more than max_member_bytes={limits.max_member_bytes}")


# --------------------------------------------------------------------------------------------------------------
# entry point

MAGIC = {
    b"\x1f\x8b": "gz",
    b"BZh": "bz2",
    b"\xfd7zXZ\x00": "xz",
    b"PK\x03\x04": "zip",
    b"PK\x05\x06": "zip",  # empty zip
}


def sniff(path: Path) -> str:
    """Container type from the first bytes: zip | gz | bz2 | xz | tar | unknown (never from the extension alone)."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    for magic, kind in MAGIC.items():
        if head.startswith(magic):
            return kind
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if path.name.lower().endswith(".tar") and len(head) >= 512:  # pre-POSIX (v7) tar has no magic
        return "tar"
    return "unknown"


def open_raw(
    path: str | os.PathLike,
    limits: Limits,
    prefetch: Callable[[str], bool] | None = None,
    prefetch_max_bytes: int = 1 << 20,
) -> RawSource:
    """Scan a directory or archive; members whose name satisfies ``prefetch`` (and are at most
    ``prefetch_max_bytes``) are read during the scan into ``RawSource.prefetched`` (e.g. the JSON of images).

    Raises ``FileNotFoundError`` if the path does not exist and ``ArchiveRefused`` for a refused archive.
    """
    label = str(path)
    p = Path(path)
    if p.is_dir():
        return _scan_directory(p, label, limits, prefetch, prefetch_max_bytes)
    if not p.exists():
        raise FileNotFoundError(f"{label}: raw input does not exist")
    if not p.is_file():
        raise ArchiveRefused("bad_archive", f"{label} is neither a directory nor a regular file")
    kind = sniff(p)
    if kind == "zip":
        return _scan_zip(p, label, limits, prefetch, prefetch_max_bytes)
    if kind in ("gz", "bz2", "xz", "tar"):
        return _scan_tar(p, label, kind, limits, prefetch, prefetch_max_bytes)
    raise ArchiveRefused("bad_archive", f"{label}: not a zip or (compressed) tar archive")


# --------------------------------------------------------------------------------------------------------------
# directories


def _scan_directory(root: Path, label: str, limits: Limits, prefetch, prefetch_max_bytes: int) -> RawSource:
    src = RawSource(label=label, kind="directory", random_access=True)
    real_root = os.path.realpath(root)
    base = label.rstrip("/") or "/"
    files: dict[int, str] = {}

    def inside(target: str) -> bool:
        return target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep)

    def source_of(rel: str) -> str:
        return f"{base}/{rel}"

    def unreadable(exc: OSError) -> None:
        src.rejects.append(Reject(printable(str(exc.filename)), "read_error", f"cannot list: {exc.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else Path(rel_dir).as_posix()
        # os.walk does not descend into directory links; refuse the ones that would leave the root
        for d in list(dirnames):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                rel = f"{rel_dir}/{d}" if rel_dir else d
                target = os.path.realpath(full)
                if not inside(target):
                    src.rejects.append(
                        Reject(
                            source_of(printable(rel)),
                            "link",
                            f"directory symlink leaves the root (-> {printable(target)})",
                        )
                    )
                else:
                    log.debug("%s: directory symlink inside the root not followed", source_of(rel))
        for fname in sorted(filenames):
            full = os.path.join(dirpath, fname)
            rel = f"{rel_dir}/{fname}" if rel_dir else fname
            if printable(rel) != rel:
                src.rejects.append(Reject(source_of(printable(rel)), "unsafe_path", "file name is not valid UTF-8"))
                continue
            try:
                st = os.lstat(full)
                if stat.S_ISLNK(st.st_mode):
                    target = os.path.realpath(full)
                    if not inside(target):
                        src.rejects.append(
                            Reject(source_of(rel), "link", f"symlink leaves the root (-> {printable(target)})")
                        )
                        continue
                    st = os.stat(full)
            except FileNotFoundError:
                src.rejects.append(Reject(source_of(rel), "link", "broken symlink"))
                continue
            except OSError as exc:
                src.rejects.append(Reject(source_of(rel), "read_error", f"cannot stat: {exc}"))
                continue
            if not stat.S_ISREG(st.st_mode):
                src.rejects.append(Reject(source_of(rel), "special_file", "not a regular file (device, fifo, socket)"))
                continue
            if st.st_size > limits.max_member_bytes:
                src.rejects.append(_too_big(source_of(rel), st.st_size, limits))
                continue
            member = Member(index=len(src.members), name=rel, size=st.st_size, source=source_of(rel))
            src.members.append(member)
            files[member.index] = full

    def read_one(member: Member) -> bytes | Reject:
        try:
            with open(files[member.index], "rb") as fh:
                data = _bounded_read(fh, limits.max_member_bytes)
        except OSError as exc:
            return Reject(member.source, "read_error", str(exc))
        if len(data) > limits.max_member_bytes:
            return _too_big(member.source, len(data), limits)
        return data

    return _random_access(src, read_one, prefetch, prefetch_max_bytes)


def _random_access(
    src: "RawSource", read_one: Callable[[Member], bytes | Reject], prefetch, prefetch_max_bytes: int
) -> "RawSource":
    """Finish a source whose members can be read in any order: prefetch the small wanted ones, then serve reads."""
    if prefetch is not None:
        for m in src.members:
            if prefetch(m.name) and m.size <= prefetch_max_bytes:
                got = read_one(m)
                if isinstance(got, bytes):
                    src.prefetched[m.index] = got

    def reader(wanted: Sequence[Member]) -> Iterator[tuple[Member, bytes | Reject]]:
        for m in wanted:
            yield m, read_one(m)

    src._reader = reader
    return src


# --------------------------------------------------------------------------------------------------------------
# zip


def zip_entry_count(fh) -> int | None:
    """Entries declared in the zip's end-of-central-directory record (zip64 aware), read before ``ZipFile``
    builds one object per entry, so a zip with millions of entries is refused cheaply. None if not found."""
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    tail_len = min(size, 22 + 65535)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    pos = tail.rfind(b"PK\x05\x06")
    if pos < 0 or pos + 22 > len(tail):
        return None
    total = struct.unpack("<H", tail[pos + 10 : pos + 12])[0]
    if total != 0xFFFF:
        return total
    loc = pos - 20  # zip64 end-of-central-directory locator sits right before the EOCD record
    if loc < 0 or tail[loc : loc + 4] != b"PK\x06\x07":
        return None
    offset = struct.unpack("<Q", tail[loc + 8 : loc + 16])[0]
    if offset + 56 > size:
        return None
    fh.seek(offset)
    rec = fh.read(56)
    if rec[:4] != b"PK\x06\x06":
        return None
    return struct.unpack("<Q", rec[32:40])[0]


def _zip_member_problem(info: zipfile.ZipInfo) -> tuple[str, str] | None:
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # unix permissions are only meaningful when made on unix
        if stat.S_ISLNK(mode):
            return "link", "symbolic link member (archive links are never followed)"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            return "special_file", "device, fifo or socket member"
    if info.flag_bits & 0x1:
        return "encrypted", "encrypted member"
    return None


def _ratio_cap(compressed: int, limits: Limits) -> int:
    """The most bytes a member of ``compressed`` bytes may decompress to."""
    return max(RATIO_FLOOR_BYTES, int(limits.max_ratio * max(compressed, 1)))


def _check_zip_totals(infos: list[zipfile.ZipInfo], archive_bytes: int, limits: Limits) -> None:
    """Refuse the zip when its accepted members together break a whole-archive limit.

    Members that claim more compressed bytes than the file holds overlap one another (one compressed blob read by
    many entries: the overlapping zip bomb), which no honest zip does.
    """
    total = sum(i.file_size for i in infos)
    compressed = sum(i.compress_size for i in infos)
    if compressed > archive_bytes:
        raise ArchiveRefused(
            "ratio",
            f"members claim {compressed} compressed bytes from a {archive_bytes}-byte "
            f"archive: overlapping entries (a zip bomb)",
        )
    if total > limits.max_total_bytes:
        raise ArchiveRefused(
            "too_many_bytes", f"members add up to {total} bytes, more than max_total_bytes={limits.max_total_bytes}"
        )
    if total > RATIO_FLOOR_BYTES and total > limits.max_ratio * max(archive_bytes, 1):
        raise ArchiveRefused(
            "ratio",
            f"{total} uncompressed bytes from {archive_bytes} archive bytes "
            f"(ratio {total / max(archive_bytes, 1):.0f} > max_ratio={limits.max_ratio:g})",
        )


def _scan_zip(path: Path, label: str, limits: Limits, prefetch, prefetch_max_bytes: int) -> RawSource:
    src = RawSource(label=label, kind="zip", random_access=True)
    archive_bytes = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            declared = zip_entry_count(fh)
        if declared is not None and declared > limits.max_members:
            raise ArchiveRefused("too_many_members", f"{declared} members, more than max_members={limits.max_members}")
        zf = zipfile.ZipFile(path)
    except ArchiveRefused:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
        raise ArchiveRefused("bad_archive", f"cannot read zip: {exc}") from exc
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        zf.close()
        raise ArchiveRefused("too_many_members", f"{len(infos)} members, more than max_members={limits.max_members}")
    by_index: dict[int, zipfile.ZipInfo] = {}
    for info in infos:
        raw_name = info.filename
        try:
            name = safe_member_name(raw_name, backslash_is_separator=True)
        except ValueError as exc:
            src.rejects.append(Reject(f"{label}::{printable(raw_name)}", "unsafe_path", str(exc)))
            continue
        source = f"{label}::{name}"
        if info.is_dir():
            continue
        problem = _zip_member_problem(info)
        if problem:
            src.rejects.append(Reject(source, *problem))
            continue
        if info.file_size > limits.max_member_bytes:
            src.rejects.append(_too_big(source, info.file_size, limits))
            continue
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            src.rejects.append(
                Reject(
                    source,
                    "ratio",
                    f"{info.file_size} bytes from {info.compress_size} compressed "
                    f"(ratio > max_ratio={limits.max_ratio:g})",
                )
            )
            continue
        member = Member(index=len(src.members), name=name, size=info.file_size, source=source)
        src.members.append(member)
        by_index[member.index] = info
    # Whole-archive limits on the members that passed their own checks: a zip is read member by member, so one
    # over-compressed member is refused alone and the rest is kept.
    try:
        _check_zip_totals(list(by_index.values()), archive_bytes, limits)
    except ArchiveRefused:
        zf.close()
        raise

    def read_one(member: Member) -> bytes | Reject:
        info = by_index[member.index]
        try:
            with zf.open(info) as fh:  # never more than the member's own ratio allows, whatever its header says
                data = _bounded_read(fh, min(limits.max_member_bytes, _ratio_cap(info.compress_size, limits)))
        except (
            zipfile.BadZipFile,
            zlib.error,
            lzma.LZMAError,
            OSError,
            EOFError,
            NotImplementedError,
            RuntimeError,
            ValueError,
        ) as exc:
            return Reject(member.source, "read_error", f"{type(exc).__name__}: {exc}")
        if len(data) > limits.max_member_bytes:
            return _too_big(member.source, len(data), limits)
        if len(data) > _ratio_cap(info.compress_size, limits):
            return Reject(
                member.source,
                "ratio",
                f"more than {len(data) - 1} bytes from {info.compress_size} "
                f"compressed (ratio > max_ratio={limits.max_ratio:g})",
            )
        return data

    return _random_access(src, read_one, prefetch, prefetch_max_bytes)


# --------------------------------------------------------------------------------------------------------------
# tar (plain or compressed), read as a stream


class _Exceeded(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class _CountingReader:
    """Decompressed tar stream that counts the bytes it hands out and stops at the size / ratio limits."""

    def __init__(self, fileobj, limits: Limits, compressed_bytes: int | None):
        self.fileobj, self.limits, self.compressed_bytes = fileobj, limits, compressed_bytes
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.fileobj.read(n if n is not None and n >= 0 else READ_CHUNK)
        self.count += len(data)
        lim = self.limits
        if self.count > lim.max_total_bytes:
            raise _Exceeded("too_many_bytes", f"uncompresses to more than max_total_bytes={lim.max_total_bytes}")
        if (
            self.compressed_bytes is not None
            and self.count > RATIO_FLOOR_BYTES
            and self.count > lim.max_ratio * max(self.compressed_bytes, 1)
        ):
            raise _Exceeded(
                "ratio",
                f"more than {self.count} bytes from {self.compressed_bytes} compressed bytes "
                f"(ratio > max_ratio={lim.max_ratio:g})",
            )
        return data


_OPENERS = {
    "gz": lambda fh: gzip.GzipFile(fileobj=fh, mode="rb"),
    "bz2": lambda fh: bz2.BZ2File(fh, mode="rb"),
    "xz": lambda fh: lzma.LZMAFile(fh, mode="rb"),
    "tar": lambda fh: fh,
}
_STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError, UnicodeError)


def _tar_member_problem(ti: tarfile.TarInfo) -> tuple[str, str] | None:
    if ti.issym() or ti.islnk():
        kind = "symbolic" if ti.issym() else "hard"
        return "link", f"{kind} link to {ti.linkname!r} (archive links are never followed)"
    if ti.ischr() or ti.isblk() or ti.isfifo():
        return "special_file", "device or fifo member"
    if not ti.isreg():
        return "special_file", f"unsupported tar member type {ti.type!r}"
    return None


def _scan_tar(path: Path, label: str, comp: str, limits: Limits, prefetch, prefetch_max_bytes: int) -> RawSource:
    src = RawSource(label=label, kind="tar", random_access=False)
    compressed = path.stat().st_size if comp != "tar" else None

    def stream():
        """Yield (index, TarInfo, tarfile) over the archive, in order, with the limits applied."""
        with open(path, "rb") as raw:
            counter = _CountingReader(_OPENERS[comp](raw), limits, compressed)
            with tarfile.open(fileobj=counter, mode="r|") as tf:
                index = 0
                while True:
                    ti = tf.next()
                    if ti is None:
                        return
                    tf.members.clear()  # stream mode keeps every header otherwise; we hold our own list
                    yield index, ti, tf
                    index += 1

    by_index: dict[int, tarfile.TarInfo] = {}
    try:
        for index, ti, tf in stream():
            if index + 1 > limits.max_members:
                raise _Exceeded("too_many_members", f"more than max_members={limits.max_members} members")
            try:
                name = safe_member_name(ti.name)
            except ValueError as exc:
                src.rejects.append(Reject(f"{label}::{printable(ti.name)}", "unsafe_path", str(exc)))
                continue
            source = f"{label}::{name}"
            if ti.isdir():
                continue
            problem = _tar_member_problem(ti)
            if problem:
                src.rejects.append(Reject(source, *problem))
                continue
            if ti.size > limits.max_member_bytes:
                src.rejects.append(_too_big(source, ti.size, limits))
                continue
            member = Member(index=index, name=name, size=ti.size, source=source)
            src.members.append(member)
            by_index[index] = ti
            if prefetch is not None and ti.size <= prefetch_max_bytes and prefetch(name):
                fh = tf.extractfile(ti)
                if fh is not None:
                    src.prefetched[index] = _bounded_read(fh, prefetch_max_bytes)
    except _Exceeded as exc:
        raise ArchiveRefused(exc.reason, exc.detail) from None
    except _STREAM_ERRORS as exc:
        raise ArchiveRefused("bad_archive", f"cannot read tar: {type(exc).__name__}: {exc}") from None

    def reader(wanted: Sequence[Member]) -> Iterator[tuple[Member, bytes | Reject]]:
        pending = {m.index: m for m in wanted}
        if not pending:
            return
        try:
            for index, ti, tf in stream():
                member = pending.pop(index, None)
                if member is None:
                    continue
                try:
                    fh = tf.extractfile(ti)
                    data = _bounded_read(fh, limits.max_member_bytes) if fh is not None else b""
                except _Exceeded:
                    raise
                except _STREAM_ERRORS as exc:
                    yield member, Reject(member.source, "read_error", f"{type(exc).__name__}: {exc}")
                    continue
                if len(data) > limits.max_member_bytes:
                    yield member, _too_big(member.source, len(data), limits)
                else:
                    yield member, data
                if not pending:
                    return  # everything wanted was read: skip the rest of the stream
        except (_Exceeded, *_STREAM_ERRORS) as exc:
            # the scan passed, so the file changed or is flaky; refuse what is left rather than guess
            detail = exc.detail if isinstance(exc, _Exceeded) else f"{type(exc).__name__}: {exc}"
            for member in pending.values():
                yield member, Reject(member.source, "read_error", f"archive stream failed: {detail}")
            pending.clear()
        for member in pending.values():  # not found on the second pass (should not happen)
            yield member, Reject(member.source, "read_error", "member vanished from the archive")

    src._reader = reader
    return src
