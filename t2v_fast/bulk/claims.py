"""Row claims: at most one renderer per row, across any number of runs and nodes sharing an output folder.

Before rendering a row, a renderer creates `OUT/.t2v-claims/<id>.claim` with `O_CREAT | O_EXCL` (atomic on local and
NFS v3+ file systems): whoever creates it holds the row. The holder renews a lease on it by touching the file every
few seconds from a background thread; a claim untouched for `lease_seconds` belongs to a dead holder and may be taken
over, so a crash never blocks a row for longer than one lease (a holder on the same host whose process is gone is
known to be dead at once). A take-over is itself serialised by a second exclusive
file, and re-checks the claim it is replacing, so two renderers can never both take over the same stale claim.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from t2v_fast.atomic import atomic_path

DEFAULT_LEASE_SECONDS = 60.0
CLAIMS_FOLDER = ".t2v-claims"


@dataclass(frozen=True)
class Holder:
    """Who holds a claim: enough to tell a person what happened to a row."""

    token: str
    host: str
    pid: int
    run: str
    lease_seconds: float = DEFAULT_LEASE_SECONDS  # the holder's promise: renewed at least this often

    def describe(self) -> str:
        return f"{self.run} on {self.host} (pid {self.pid})"


# A claim file being written at this very moment, or gone unreadable: treated as freshly held by someone.
UNKNOWN_HOLDER = Holder("", "unknown host", 0, "another run")


# The beater: a separate, tiny Python process (no torch, no GIL shared with the render) that asks for real-time
# round-robin priority, else a lower nice value, else keeps the one it has (without CAP_SYS_NICE): a CPU-bound render,
# a neighbour's job or a C extension holding the GIL cannot make it late. It stops when told to (stdin closes) and
# when its parent is gone, so a dead renderer never looks alive.
_BEATER = """
import os, sys, threading, time
path, interval, parent = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
try:
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
except (AttributeError, OSError):
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        pass
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
while not stop.wait(interval) and os.getppid() == parent:
    try:
        os.utime(path)
    except OSError:
        pass
"""


class Heartbeat:
    """Touches a file every `interval` seconds until stopped: proof of life for whoever waits on us.

    The touching is done by a dedicated child process with the highest priority it may take (see `_BEATER`), not by
    a thread of this process: under CPU load a thread competes for the GIL with the render and starves.
    """

    def __init__(self, path: Path, interval: float):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BEATER, str(path), str(interval), str(os.getpid())],
            stdin=subprocess.PIPE,
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def stop(self) -> None:
        """Stop beating (the beater exits when its stdin closes), at once."""
        assert self._process.stdin is not None  # started with stdin=PIPE
        with contextlib.suppress(OSError):
            self._process.stdin.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


class Claims:
    """This process's claims in one output folder, with a thread that renews their leases until `close`."""

    def __init__(self, out_dir: Path, run: str, lease_seconds: float = DEFAULT_LEASE_SECONDS):
        self.folder = out_dir / CLAIMS_FOLDER
        # A read-only or full output folder: made again at the first claim, whose row then fails with the reason.
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
        self.lease_seconds = lease_seconds
        self.me = Holder(uuid.uuid4().hex, socket.gethostname(), os.getpid(), run, lease_seconds)
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew_forever, name="t2v-claims-lease", daemon=True)
        self._renewer.start()

    def path(self, row_id: str) -> Path:
        return self.folder / f"{row_id}.claim"

    def try_claim(self, row_id: str) -> Holder | None:
        """Claim `row_id`: None when this process now holds it, else the live holder that does."""
        path = self.path(row_id)
        for _ in range(3):  # a claim released or taken over meanwhile: look again
            if self._create(path):
                with self._lock:
                    self.held.add(row_id)
                return None
            holder, age = self._read(path)
            if holder is None:
                continue
            if not self._expired(holder, age):
                return holder
            if self._take_over(path, holder):
                with self._lock:
                    self.held.add(row_id)
                return None
        holder, _ = self._read(path)
        return holder or UNKNOWN_HOLDER

    def release(self, row_id: str) -> None:
        """Give a row back (rendered, or failed so that a later run may try again)."""
        with self._lock:
            self.held.discard(row_id)
        if self.holds(row_id):
            self.path(row_id).unlink(missing_ok=True)

    def holder(self, row_id: str) -> tuple[Holder | None, float]:
        """The current holder of a row and the seconds since its lease was renewed (None: unclaimed)."""
        return self._read(self.path(row_id))

    def close(self) -> None:
        """Stop renewing; claims still held are released."""
        self._stop.set()
        self._renewer.join(timeout=5)
        for row_id in list(self.held):
            self.release(row_id)
        with contextlib.suppress(OSError):  # leave no trace in the output folder once no run holds anything
            self.folder.rmdir()

    def _create(self, path: Path) -> bool:
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError:  # another run, finishing, removed the empty folder: make it again
            self.folder.mkdir(parents=True, exist_ok=True)
            return self._create(path)
        try:
            with os.fdopen(descriptor, "w") as handle:
                json.dump(self.me.__dict__, handle)
        except OSError:  # a full disk: an empty claim would look held by someone forever
            path.unlink(missing_ok=True)
            raise
        return True

    def _read(self, path: Path) -> tuple[Holder | None, float]:
        try:
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None, 0.0
        except OSError:
            return UNKNOWN_HOLDER, 0.0
        try:
            holder = Holder(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None, 0.0
        except (OSError, ValueError, TypeError):  # being written, or left empty: its lease still runs out
            return UNKNOWN_HOLDER, age
        return holder, age

    def _expired(self, holder: Holder, age: float) -> bool:
        """Its lease ran out, or its process is gone (only knowable for a holder on this host)."""
        if age >= (holder.lease_seconds if holder.token else self.lease_seconds):  # unreadable: our own lease
            return True
        if holder.host != self.me.host or holder.pid in (0, self.me.pid):
            return False
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, under another user
            return False
        return False

    def _take_over(self, path: Path, stale: Holder) -> bool:
        """Replace a stale claim by ours, one contender at a time; False if someone else got there first."""
        guard = path.with_name(path.name + ".takeover")
        try:
            descriptor = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > self.lease_seconds:
                    guard.unlink(missing_ok=True)  # a contender died mid-take-over
            except FileNotFoundError:
                pass
            return False
        os.close(descriptor)
        try:
            holder, age = self._read(path)
            if holder is None or holder.token != stale.token or not self._expired(holder, age):
                return False
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(self.me.__dict__))
            return True
        finally:
            guard.unlink(missing_ok=True)

    def _renew_forever(self) -> None:
        while not self._stop.wait(self.lease_seconds / 4):
            with self._lock:
                held = list(self.held)
            for row_id in held:
                if not self.holds(row_id):  # taken over after a stall longer than the lease: no longer ours
                    with self._lock:
                        self.held.discard(row_id)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.utime(self.path(row_id))

    def holds(self, row_id: str) -> bool:
        """Whether this process still holds `row_id` (checked again before its outputs are saved)."""
        holder, _ = self._read(self.path(row_id))
        return holder is not None and holder.token == self.me.token
