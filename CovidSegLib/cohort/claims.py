"""Per-case claims: at most one process works on a case at a time, across processes and machines, with no
service to coordinate them.

A claim is the file ``OUT/.covidseg/claims/<case>.claim``, created with ``O_CREAT | O_EXCL`` (atomic on local
file systems and on NFS v3 and later) and holding JSON: host, pid, the process's start time, a random token and
when it was taken. Whoever creates it owns the case until it deletes it; while it works, a heartbeat thread
touches the file every :data:`HEARTBEAT_S` seconds.

A claim is stale, and another process may take the case over, when

- its holder ran on this host and that process is gone (killed with ``kill -9``, by the OOM killer or a power
  cut; a crash), is a zombie, or is another process that got the same pid (its start time differs); or
- it has not been touched for :data:`STALE_AFTER_S` seconds: a holder on another host that died, or one that
  hangs (a process stopped with Ctrl-Z counts as hung; if it is resumed it finds its claim gone and records
  nothing).

Taking over: the stale claim is renamed to a private name (of two processes trying, one rename wins), and
removed only if it is still the very file judged stale (same inode and contents); if a fresh claim was renamed
by mistake, because another process took over first, it is linked back. Then the case is claimed as usual with
``O_EXCL``. Before recording a case as done, the owner checks that the claim still holds its token.

Assumptions: host names tell machines (and containers sharing one output folder) apart; clocks agree to well
within :data:`STALE_AFTER_S` (NTP): a claim's age is its modification time, set by the file server on a network
file system, against this host's clock.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

#: Seconds between a holder's touches of its claim file.
HEARTBEAT_S = 30.0
#: Seconds without a touch after which a claim is stale whoever holds it (ten missed heartbeats).
STALE_AFTER_S = 300.0
CLAIM_SUFFIX = ".claim"


@dataclass(frozen=True)
class Holder:
    """Who holds a claim."""

    host: str
    pid: int
    #: the process's start time in clock ticks since boot (``/proc/PID/stat``), to tell a reused pid apart
    start_ticks: int | None
    token: str
    claimed_at: float

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}"


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` from its field 3 (the state) on, or None if there is no such process (or no /proc).
    The command name (field 2) is cut off at its last ``)``: it may hold spaces and parentheses itself."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None


def _start_ticks(fields: list[str]) -> int | None:
    try:
        return int(fields[19])  # field 22 of stat(5), the start time; the fields start at field 3
    except ValueError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot, where ``/proc`` tells it (Linux); else None."""
    fields = _stat_fields(pid)
    return _start_ticks(fields) if fields is not None else None


def this_process() -> Holder:
    return Holder(socket.gethostname(), os.getpid(), process_start_ticks(os.getpid()), uuid.uuid4().hex, time.time())


def process_alive(pid: int, start_ticks: int | None) -> bool:
    """Whether process ``pid`` on this host still runs and is the one that took the claim (not a zombie, not a
    newer process with the same pid)."""
    if Path("/proc/self/stat").exists():
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return False
        return start_ticks is None or _start_ticks(fields) == start_ticks
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_holder(path: Path) -> tuple[Holder | None, bytes, os.stat_result] | None:
    """The holder of claim ``path`` (None while its creator has not written it yet, or if it is unreadable),
    its raw contents and its stat; None if there is no claim."""
    try:
        info = path.stat()
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        document = json.loads(raw.decode("utf-8"))
        holder = Holder(str(document["host"]), int(document["pid"]), document.get("start_ticks"),
                        str(document["token"]), float(document["claimed_at"]))
    except (ValueError, KeyError, TypeError):
        holder = None
    return holder, raw, info


def is_stale(holder: Holder | None, info: os.stat_result, now: float | None = None) -> bool:
    """See the module docstring. A claim whose contents cannot be read is judged by its age alone."""
    now = time.time() if now is None else now
    if now - info.st_mtime > STALE_AFTER_S:
        return True
    if holder is not None and holder.host == socket.gethostname():
        return not process_alive(holder.pid, holder.start_ticks)
    return False


class Claim:
    """A claim this process holds; a context manager that releases it, with a heartbeat while it is held."""

    def __init__(self, path: Path, holder: Holder) -> None:
        self.path, self.holder = path, holder
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"claim {path.name}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            if not self.beat():
                return

    def beat(self) -> bool:
        """One heartbeat: touch the claim if this process still holds it; False (and nothing touched) once it
        does not, since another process took it over."""
        if not self.still_held():
            return False
        try:
            os.utime(self.path)
        except OSError:
            pass
        return True

    def still_held(self) -> bool:
        found = read_holder(self.path)
        return found is not None and found[0] is not None and found[0].token == self.holder.token

    def release(self) -> None:
        self._stop.set()
        if self.still_held():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def claim_path(claims: Path, case: str) -> Path:
    return claims / f"{case}{CLAIM_SUFFIX}"


def try_claim(claims: Path, case: str, holder: Holder) -> tuple[Claim | None, Holder | None]:
    """Claim ``case`` for ``holder`` (this process): ``(claim, None)``, or ``(None, other)`` while another live
    process holds it (``other`` is None while its claim is being written)."""
    claims.mkdir(parents=True, exist_ok=True)
    path = claim_path(claims, case)
    data = json.dumps(asdict(holder)).encode("utf-8")
    for _ in range(3):  # create; or take over a stale claim and create again
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            found = read_holder(path)
            if found is None:
                continue  # released in between: try again
            other, raw, info = found
            if not is_stale(other, info):
                return None, other
            _remove_stale(path, raw, info)
            continue
        try:
            os.write(handle, data)
        finally:
            os.close(handle)
        return Claim(path, holder), None
    found = read_holder(path)
    return None, found[0] if found else None


def _remove_stale(path: Path, raw: bytes, info: os.stat_result) -> None:
    """Remove claim ``path`` if it is still the file judged stale (its inode and contents); put back a claim
    that turns out to be fresh."""
    private = path.with_name(f".{path.name}.{uuid.uuid4().hex}.stale")
    try:
        os.rename(path, private)
    except FileNotFoundError:
        return
    try:
        moved = private.stat()
        same = (moved.st_ino, moved.st_dev) == (info.st_ino, info.st_dev) and private.read_bytes() == raw
    except OSError:
        same = False
    if not same:
        try:
            os.link(private, path)  # fails if a third process claimed the case meanwhile: its claim stands
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not path.exists():
                os.rename(private, path)
    private.unlink(missing_ok=True)
