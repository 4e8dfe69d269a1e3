"""Chunk leases: telling a worker that died from a duplicate delivery.

Deliveries of one chunk come from several places: ``acks_late`` redelivery after a worker died,
and the scheduler re-sending every unfinished chunk on a resume (the documented recovery from a
broker loss, which operators repeat). Only the first kind says anything about the chunk being
poisonous. So a worker runs a chunk only while it holds the chunk row's lease:

- **claim**: one conditional ``UPDATE`` (a compare-and-set, atomic on SQLite and PostgreSQL)
  takes the lease if the chunk is not final and the lease is free, expired, or held by a process
  of this host that no longer exists. Taking a lease that was never released counts one death.
- **heartbeat**: a thread renews the lease every third of ``CXR_CHUNK_LEASE_S`` while the chunk
  runs, so a slow chunk keeps it and a dead holder loses it within one lease.
- **release**: whatever the way out (results written, a retry, an error), the holder clears the
  lease. Only a holder that never got there (SIGKILL, OOM, host loss) leaves it to expire.

A delivery that finds a live lease held by someone else is a *duplicate*: it does no work and
counts nothing; the Celery task re-sends itself for when the lease would expire, so a holder that
dies later still has its chunk picked up (see ``worker.tasks``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, case, or_, select, update

from cxr.core.db.jobs import FINAL_CHUNK
from cxr.core.db.models import Chunk, ChunkStatus, Job, JobStatus, utcnow
from cxr.core.db.session import insert_ignoring_conflicts, session_scope
from cxr.core.settings import Settings

log = logging.getLogger(__name__)

_HOST = socket.gethostname()[:64]
#: Leases this process holds right now. A lease of this process that is not in here is left from
#: an earlier delivery whose release failed (the database dropped the connection): stale, not a
#: death, and taken back at once.
_ACTIVE: set[str] = set()


def new_owner() -> str:
    """``host:pid:random``: unique per claim; host and pid let a sibling see the holder died."""
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _holder_is_gone(owner: str | None) -> bool:
    """True if ``owner`` was a process of this host that no longer exists (a pool child killed
    by its chunk: ``reject_on_worker_lost`` redelivers at once, long before the lease runs out)."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stream:
            return stream.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


@dataclass(frozen=True)
class Claim:
    """What a delivery found when it tried to take the chunk."""

    status: str  # claimed | duplicate | final | gone
    owner: str = ""
    deliveries: int = 0  # starts that took the lease, this one included
    deaths: int = 0  # of those, takeovers from a holder that never released it
    retry_in: float = 0.0  # duplicate: seconds until the live lease would expire
    reason: str = ""

    @property
    def claimed(self) -> bool:
        return self.status == "claimed"


def claim(settings: Settings, job_id: str, chunk_seq: int, uris: Sequence[str]) -> Claim:
    """Try to take the chunk's lease (creating the row if the scheduler did not). Committed
    before any work, so a worker killed by the chunk leaves its claim behind for the next."""
    owner = new_owner()
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        if job is None:
            return Claim("gone", reason=f"job {job_id} does not exist")
        if job.status in (JobStatus.CANCELLED, JobStatus.FAILED):
            return Claim("gone", reason=f"job {job_id} is {job.status.value}")
        insert_ignoring_conflicts(
            session,
            Chunk,
            [{"job_id": job_id, "seq": chunk_seq, "uris": list(uris), "status": ChunkStatus.QUEUED}],
        )
        row = session.execute(
            select(Chunk.status, Chunk.lease_owner, Chunk.lease_expires_at).where(
                Chunk.job_id == job_id, Chunk.seq == chunk_seq
            )
        ).one()
    status, holder, expires = row
    if status in FINAL_CHUNK:
        return Claim("final", reason=f"chunk {job_id}/{chunk_seq} is already {status.value}")
    now = utcnow()
    dead_holder = holder if _holder_is_gone(holder) else None
    stale_own = holder if _is_stale_own(holder) else None
    free = or_(
        Chunk.lease_owner.is_(None),
        Chunk.lease_expires_at < now,
        *([Chunk.lease_owner == dead_holder] if dead_holder else []),
        *([Chunk.lease_owner == stale_own] if stale_own else []),
    )
    # the previous holder never released the lease: it died holding the chunk (unless it was
    # this very process, whose release failed)
    died = and_(Chunk.lease_owner.is_not(None), Chunk.lease_owner != (stale_own or ""))
    with session_scope(settings) as session:
        taken = session.execute(
            update(Chunk)
            .where(
                and_(Chunk.job_id == job_id, Chunk.seq == chunk_seq, Chunk.status.not_in(FINAL_CHUNK), free)
            )
            .values(
                lease_owner=owner,
                lease_expires_at=now + dt.timedelta(seconds=settings.chunk_lease_s),
                deliveries=Chunk.deliveries + 1,
                deaths=Chunk.deaths + case((died, 1), else_=0),
                status=ChunkStatus.RUNNING,
                started_at=now,
            )
            .returning(Chunk.deliveries, Chunk.deaths)
        ).first()
    if taken is not None:
        _ACTIVE.add(owner)
        return Claim("claimed", owner, deliveries=taken[0], deaths=taken[1])
    retry_in = settings.chunk_lease_s
    if expires is not None:
        expires = expires if expires.tzinfo else expires.replace(tzinfo=dt.UTC)
        retry_in = max(1.0, (expires - now).total_seconds() + 1.0)
    return Claim(
        "duplicate",
        retry_in=retry_in,
        reason=f"chunk {job_id}/{chunk_seq} is running under {holder}'s lease (a duplicate delivery)",
    )


def _is_stale_own(owner: str | None) -> bool:
    return bool(owner) and owner.startswith(f"{_HOST}:{os.getpid()}:") and owner not in _ACTIVE


def release(settings: Settings, job_id: str, chunk_seq: int, owner: str) -> None:
    """Give the lease back (a clean end of this delivery, whatever its result). A chunk that is
    not final goes back to ``queued`` so resumes send it again. Never raises: a release that
    fails (the database is unreachable) must not hide the error that ended the chunk; the next
    delivery in this process takes the stale lease back, elsewhere it expires."""
    _ACTIVE.discard(owner)
    try:
        _release(settings, job_id, chunk_seq, owner)
    except Exception as exc:
        log.warning("could not release the lease on %s/%d: %s", job_id, chunk_seq, exc)


def _release(settings: Settings, job_id: str, chunk_seq: int, owner: str) -> None:
    with session_scope(settings) as session:
        session.execute(
            update(Chunk)
            .where(Chunk.job_id == job_id, Chunk.seq == chunk_seq, Chunk.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
        )
        session.execute(
            update(Chunk)
            .where(
                Chunk.job_id == job_id,
                Chunk.seq == chunk_seq,
                Chunk.lease_owner.is_(None),
                Chunk.status == ChunkStatus.RUNNING,
            )
            .values(status=ChunkStatus.QUEUED)
        )


class Heartbeat:
    """Renews a held lease every third of its length until stopped (a daemon thread)."""

    def __init__(self, settings: Settings, job_id: str, chunk_seq: int, owner: str) -> None:
        self.settings, self.job_id, self.chunk_seq, self.owner = settings, job_id, chunk_seq, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}-{chunk_seq}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        interval = self.settings.chunk_lease_s / 3
        while not self._stop.wait(interval):
            try:
                with session_scope(self.settings) as session:
                    session.execute(
                        update(Chunk)
                        .where(
                            Chunk.job_id == self.job_id,
                            Chunk.seq == self.chunk_seq,
                            Chunk.lease_owner == self.owner,
                        )
                        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=self.settings.chunk_lease_s))
                    )
            except Exception as exc:  # a dropped connection: the next beat tries again
                log.warning("lease heartbeat for %s/%d failed: %s", self.job_id, self.chunk_seq, exc)
