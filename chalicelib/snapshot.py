"""What reconcile remembers about each user, in as few bytes as it can.

A snapshot is one `username<TAB>fingerprint-hex[<TAB>sub]` line per user, gzip-compressed (the `sub` lets a captured
change find a deleted user's name: `sub_index`). Several gzip members may be
concatenated (still one valid gzip file), which is how a run appends to a partial snapshot across invocations without
recompressing what it already wrote. Cognito usernames cannot contain whitespace (pattern
`[\\p{L}\\p{M}\\p{S}\\p{N}\\p{P}]+`), so tab and newline are safe separators.

In memory, a run needs "what did this user look like last time, and have I seen them in this scan?". A dict of
username -> digest costs ~150 bytes a user (measured); `FingerprintTable` keeps a 64-bit hash of the username, the
64-bit fingerprint and a seen flag in flat arrays (17 bytes a slot, 23-34 bytes a user at 50-75 % load), and the
usernames of deleted users are streamed back from the snapshot at the end of the scan instead of being kept. The new
snapshot is built compressed (~14 bytes a user). docs/RECONCILE.md has the measurements.

Reading back is strict: a stream that is not gzip, ends before its end-of-stream marker, fails its CRC, or holds a
line that is not `username<TAB>16 lowercase hex digits` raises `SnapshotDamaged` (never a silently shorter list), so
the caller can tell "damaged" apart from "a network read failed" (botocore's own errors, which pass through).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import zlib
from array import array
from collections.abc import Iterable, Iterator, Mapping
from enum import StrEnum
from typing import IO, Any, Protocol, cast

FINGERPRINT_BYTES = 8
_LINE = re.compile(rb"([^\t\n]+)\t([0-9a-f]{16})(?:\t([\w-]{1,128}))?\n")
_SUB = re.compile(r"[\w-]{1,128}")


class Readable(Protocol):
    """What a snapshot can be streamed from: a file, or botocore's StreamingBody."""

    def read(self, size: int = -1, /) -> bytes: ...


class SnapshotDamaged(ValueError):
    """Stored entries that cannot be read back; the message says what is wrong and how far reading got."""


class Verdict(StrEnum):
    NEW = "new"
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    DUPLICATE = "duplicate"  # listed twice in one scan (ListUsers is eventually consistent)


def _fingerprinted_time(value: Any) -> str:
    """UserLastModifiedDate as the fingerprint reads it. Never change this: every stored fingerprint depends on it."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def fingerprint(user: Mapping[str, Any]) -> int:
    """64-bit digest of what UserHub could care about: attributes, status, enabled flag, last-modified time.

    JSON of the sorted attribute pairs keeps it unambiguous whatever the values contain.
    """
    attributes = sorted((a["Name"], a.get("Value", "")) for a in user.get("Attributes") or ())
    canonical = json.dumps(
        [
            attributes,
            user.get("UserStatus"),
            user.get("Enabled"),
            _fingerprinted_time(user.get("UserLastModifiedDate")),
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    digest = hashlib.blake2b(canonical.encode(), digest_size=FINGERPRINT_BYTES, person=b"uhs-user").digest()
    return int.from_bytes(digest, "big")


def user_key(username: str) -> int:
    """64-bit hash of a username (never 0: 0 marks an empty slot). Two users colliding is ~n²/2⁶⁵ likely."""
    digest = hashlib.blake2b(username.encode(), digest_size=8, person=b"uhs-name").digest()
    return int.from_bytes(digest, "big") or 1


class FingerprintTable:
    """username-hash -> (fingerprint, seen) with open addressing over flat arrays.

    Loaded from the previous snapshot, then `observe`d for every listed user. After a complete scan, an entry still
    unseen is a deleted user (mark and sweep). Grows by half when 3/4 full, so a run never needs the count upfront.
    """

    MAX_LOAD = 0.75
    TARGET_LOAD = 0.6

    def __init__(self, expected: int = 0) -> None:
        self._allocate(max(16, int(expected / self.TARGET_LOAD) + 1))

    def _allocate(self, size: int) -> None:
        self._size = size
        self._keys = array("Q", bytes(8 * size))
        self._fps = array("Q", bytes(8 * size))
        self._seen = bytearray(size)
        self._count = 0
        self._limit = int(size * self.MAX_LOAD)

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._size * 17

    def _slot(self, key: int) -> int:
        keys, size = self._keys, self._size
        index = key % size
        while True:
            found = keys[index]
            if found == key or found == 0:
                return index
            index += 1
            if index == size:
                index = 0

    def _insert(self, index: int, key: int, fp: int, seen: int) -> None:
        self._keys[index] = key
        self._fps[index] = fp
        self._seen[index] = seen
        self._count += 1
        if self._count > self._limit:
            self._grow()

    def _grow(self) -> None:
        keys, fps, seen = self._keys, self._fps, self._seen
        self._allocate(self._size + self._size // 2)
        for index, key in enumerate(keys):
            if key:
                slot = self._slot(key)
                self._keys[slot], self._fps[slot], self._seen[slot] = key, fps[index], seen[index]
                self._count += 1

    def load(self, key: int, fp: int) -> None:
        """Add or overwrite a baseline entry (a later source wins), unseen."""
        index = self._slot(key)
        if self._keys[index] == 0:
            self._insert(index, key, fp, 0)
        else:
            self._fps[index] = fp

    def observe(self, key: int, fp: int) -> Verdict:
        """Record that the scan listed this user with this fingerprint, and say how it compares."""
        index = self._slot(key)
        if self._keys[index] == 0:
            self._insert(index, key, fp, 1)
            return Verdict.NEW
        if self._seen[index]:
            return Verdict.DUPLICATE
        self._seen[index] = 1
        if self._fps[index] == fp:
            return Verdict.UNCHANGED
        self._fps[index] = fp
        return Verdict.CHANGED

    def take_unseen(self, key: int) -> bool:
        """True once for an entry the scan never listed (then it counts as seen, so it is reported once)."""
        index = self._slot(key)
        if self._keys[index] == 0 or self._seen[index]:
            return False
        self._seen[index] = 1
        return True

    def forget_marks(self) -> None:
        """Everything known becomes baseline again (a scan restarting from the first page)."""
        self._seen = bytearray(self._size)


class SnapshotWriter:
    """Appends entries to a gzip stream held compressed in memory (~14 bytes a user for email usernames)."""

    FLUSH_LINES = 512

    def __init__(self, initial: bytes = b"", count: int = 0) -> None:
        self._data = bytearray(initial)
        self._pending: list[str] = []
        self._compressor: Any = None
        self.count = count

    def add(self, username: str, fp: int, sub: str | None = None) -> None:
        if "\t" in username or "\n" in username:
            raise ValueError("a Cognito username cannot contain a tab or newline")
        if sub is not None and not _SUB.fullmatch(sub):
            sub = None  # not a sub Cognito makes: better no entry in the map than a wrong one
        self._pending.append(f"{username}\t{fp:016x}\t{sub}\n" if sub else f"{username}\t{fp:016x}\n")
        self.count += 1
        if len(self._pending) >= self.FLUSH_LINES:
            self._compress_pending()

    def _compress_pending(self) -> None:
        if not self._pending:
            return
        if self._compressor is None:
            self._compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: a gzip member
        self._data += self._compressor.compress("".join(self._pending).encode())
        self._pending.clear()

    def finish(self) -> bytes:
        """Everything written so far as a valid gzip file; later `add`s start a new member."""
        self._compress_pending()
        if self._compressor is not None:
            self._data += self._compressor.flush(zlib.Z_FINISH)
            self._compressor = None
        return bytes(self._data)


def read_entries(source: bytes | bytearray | Readable) -> Iterator[tuple[str, int]]:
    """Stream (username, fingerprint) pairs from a snapshot, one line at a time; SnapshotDamaged if it is damaged.

    Entries before the damage are yielded first (the stream is read lazily), so a caller that must not act on a
    half-read snapshot has to read it to the end before trusting any of it.
    """
    for name, fp, _sub in read_lines(source):
        yield name, fp


def read_subs(source: bytes | bytearray | Readable) -> Iterator[tuple[str, str]]:
    """(sub, username) for every entry that has a sub."""
    for name, _fp, sub in read_lines(source):
        if sub is not None:
            yield sub, name


def read_lines(source: bytes | bytearray | Readable) -> Iterator[tuple[str, int, str | None]]:
    raw: Readable = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    count = 0
    try:
        # reading front to back never seeks, so botocore's StreamingBody will do; typeshed asks for seek() anyway
        with gzip.GzipFile(fileobj=cast("IO[bytes]", raw), mode="rb") as stream:
            for line in stream:
                match = _LINE.fullmatch(line)
                if match is None:
                    raise SnapshotDamaged(f"entry {count + 1} is not username<TAB>16 hex digits[<TAB>sub]")
                name = match[1].decode()
                count += 1
                yield name, int(match[2], 16), match[3].decode() if match[3] else None
    except SnapshotDamaged:
        raise
    except UnicodeDecodeError:
        raise SnapshotDamaged(f"entry {count + 1}: username is not UTF-8") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        # BadGzipFile: not gzip, or a CRC/length mismatch; EOFError: cut before the end-of-stream marker;
        # zlib.error: corrupt deflate data. Network failures are botocore errors and are not caught here.
        raise SnapshotDamaged(f"not a complete gzip stream after {count} entries: {error}") from None


def write_entries(entries: Iterable[tuple[str, int]]) -> bytes:
    """A snapshot from pairs (tests, tools)."""
    writer = SnapshotWriter()
    for name, fp in entries:
        writer.add(name, fp)
    return writer.finish()
