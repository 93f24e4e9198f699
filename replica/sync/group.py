"""A consistency group: shapes whose rows readers only see at one common Postgres LSN (R11).

Each member's follow loop stages everything, up-to-date included (``Store.apply(defer=True)``), and
tells the group how far the shape is complete (its latest up-to-date's ``global_last_seen_lsn``).
The group publishes every member's staged changes at or below ``F`` — the smallest of those points —
in one SQLite transaction (``Store.publish_group``), once every member has one and every staged
snapshot is known to be the state at some LSN at or below ``F``; until then readers see the old
rows (or none). A snapshot read from Postgres can hold transactions past its up-to-date's LSN, so
its bound is the LSN of a transaction that began after it (xid ≥ its ``xmax``), seen in any shape;
if none comes within ``SNAPSHOT_SETTLE`` (a quiet database), the LSN of a catch-up sent after that
time, trusting the server to have processed by then what committed before the snapshot. A member
that is behind the others only because it is quiet (its long-poll waits for a change that will not
come) is probed at once: its long-poll is dropped for a non-live catch-up, which Electric answers at
once with a fresh up-to-date; a member is probed at most once per ``PROBE_WINDOW`` (later needs wait
for the window's end), so a burst of changes costs one catch-up per quiet member per window. A member
stopped by an error (R7) leaves the group; its rows stay as last published.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio

from replica.protocol.shape import DEFAULT_GROUP, Shape
from replica.store import Applied, Pending
from replica.sync.follow import Host, Session

__all__ = ["DEFAULT_GROUP_LIMIT", "PROBE_WINDOW", "SNAPSHOT_SETTLE", "Group", "Member", "Plan", "group_members", "plan"]

log = logging.getLogger("replica")

PROBE_WINDOW = 0.025  # a member is asked for a catch-up at most once per window (design.md §3c: measured)
# A change costs a catch-up request per quiet member: past this many shapes the default group is not
# formed (a group of 1,000 took a core at one change a second; design.md §3c). Named groups are the app's call.
DEFAULT_GROUP_LIMIT = 32
# A snapshot no later transaction vouches for (a quiet database) is bounded by a catch-up sent this
# long after it: by then the server has processed what committed before it (design.md §3c).
SNAPSHOT_SETTLE = 0.25


def group_members(shapes: Sequence[Shape]) -> dict[str, list[Shape]]:
    """The groups to coordinate: shapes by group name, groups of one left out (they publish on their
    own), and the default group only up to ``DEFAULT_GROUP_LIMIT`` shapes (logged when dropped).

    A subquery shape is never a member, whatever its ``group``: its move events carry no LSN, so no
    group LSN can say which of its rows belong below it; it publishes alone at each up-to-date."""
    members: dict[str, list[Shape]] = {}
    for shape in shapes:
        if shape.group is not None and not shape.subquery:
            members.setdefault(shape.group, []).append(shape)
    formed = {}
    for name, group_shapes in members.items():
        if name == DEFAULT_GROUP and len(group_shapes) > DEFAULT_GROUP_LIMIT:
            log.warning(
                "%d shapes are in the default consistency group; past %d its cost per change is too high "
                "(one catch-up request per quiet shape), so they publish on their own. Give the shapes that "
                "must be consistent a group of their own (Shape(group=\"orders\"), group = \"orders\" in the "
                "config), and the others group=None (group = false) to silence this.",
                len(group_shapes), DEFAULT_GROUP_LIMIT,
            )
        elif len(group_shapes) > 1:
            formed[name] = group_shapes
    return formed


@dataclass
class Member:
    """What the group knows of one member."""

    shape: Shape
    complete: int | None = None  # the LSN the shape is known complete up to, this run
    snapshot: bool = False  # a staged snapshot is pending …
    snapshot_lsn: int | None = None  # … its up-to-date came at this LSN (None: still arriving)
    witness: int | None = None  # … a transaction that began after it committed at this LSN
    settled: int | None = None  # … or (none came in time) a catch-up sent after settle_at answered this LSN
    settle_at: float | None = None  # monotonic time from which a catch-up's answer may bound the snapshot
    staged: bool = False  # something waits to be published …
    lowest: int | None = None  # … the earliest change at this LSN
    failed: bool = False
    probe: Callable[[int], None] | None = None  # a catch-up for the LSN the group needs (set by its loop)
    probed_at: float = -1.0

    def take(self, pending: Pending | None, now: float) -> float | None:
        """Learn what the member has staged (``Store.pending``); returns the time from which a
        catch-up may bound its snapshot, when that wait starts now."""
        self.snapshot = pending is not None and pending.refetch
        snapshot_lsn = pending.snapshot_lsn if pending is not None and pending.refetch else None
        if snapshot_lsn is None or snapshot_lsn != self.snapshot_lsn:
            self.witness = self.settled = self.settle_at = None  # another snapshot (or none)
        self.snapshot_lsn = snapshot_lsn
        if pending is not None and pending.witness is not None:
            self.witness = pending.witness
        self.staged = pending is not None
        self.lowest = pending.lowest if pending is not None else None
        if snapshot_lsn is not None and self.witness is None and self.settle_at is None:
            self.settle_at = now + SNAPSHOT_SETTLE
            return self.settle_at
        return None

    def vouched(self, pending: Pending | None) -> None:
        """Learn a witness found since (a transaction another member staged) for the same snapshot."""
        if pending is not None and pending.snapshot_lsn == self.snapshot_lsn and pending.witness is not None:
            self.witness = pending.witness

    @property
    def bound(self) -> int | None:
        """An LSN at or above every transaction the staged snapshot holds; None while unknown. The
        snapshot table also holds the changes that came before its up-to-date: at least that LSN."""
        found = self.witness if self.witness is not None else self.settled
        if self.snapshot_lsn is None or found is None:
            return None
        return max(self.snapshot_lsn, found)


class Group:
    """The coordinator; ``run`` it as a task next to its members' follow loops."""

    def __init__(self, name: str, shapes: Sequence[Shape], session: Session, host: Host) -> None:
        self.name = name
        self.members = {shape.local_name: Member(shape) for shape in shapes}
        self._session = session
        self._host = host
        self._wake = anyio.Event()
        self._due: float | None = None  # when the next probe may go out (monotonic), if one waits
        self._due_set = anyio.Event()
        self._published = anyio.Event()  # set (and renewed) at each publish and each probe
        self.published: int | None = None  # the group's LSN, once it has published this run
        self.probes = 0  # catch-up requests asked of quiet members (for measurements)

    # --- what the members' loops say ---

    def staged(self, name: str, pending: Pending | None) -> None:
        settle_at = self.members[name].take(pending, time.monotonic())
        if settle_at is not None:
            self._wake_at(settle_at)
        self._nudge()

    def coming(self, name: str, complete: int) -> None:
        """``name`` is writing changes up to ``complete``: ask the members behind it for a catch-up now,
        so their answers come back while it writes (a catch-up is only a question: the publish still
        waits for ``staged`` and the answers). Until every member has reached up-to-date, ``plan`` asks."""
        active = [m for m in self.members.values() if not m.failed]
        if all(m.complete is not None for m in active):
            self._probe([m for m in active if m.complete is not None and m.complete < complete
                         and m.shape.local_name != name], complete)

    def up_to_date(self, name: str, complete: int | None, sent: float | None = None) -> None:
        """``complete``: the LSN the member is complete up to; ``sent``: when the probe that said so
        went out (monotonic). Only a probe's answer is known fresh: its URL is one no cache answered
        before (§3h), where the loop's own non-live answer may come from a proxy's cache."""
        member = self.members[name]
        if (complete is not None and sent is not None and member.settle_at is not None and sent >= member.settle_at
                and member.bound is None):
            member.settled = complete
            self._nudge()
        if complete is not None and (member.complete is None or complete > member.complete):
            member.complete = complete
            self._nudge()

    def refetching(self, name: str) -> None:
        """A 409 (or a new definition): the member's rows stay until its new snapshot can be published."""
        member = self.members[name]
        member.complete, member.snapshot, member.snapshot_lsn = None, True, None
        member.witness = member.settled = member.settle_at = None
        member.staged, member.lowest = True, None
        self._nudge()

    def failed(self, name: str) -> None:
        self.members[name].failed = True
        self._nudge()

    def attach(self, name: str, probe: Callable[[int], None]) -> None:
        self.members[name].probe = probe

    def again(self) -> None:
        """A catch-up got no answer: look again (and ask again if still needed)."""
        self._nudge()

    def poke(self) -> None:
        """Wake the members waiting in ``visible``."""
        self._renew()

    async def visible(self, name: str, complete: int | None) -> bool:
        """Wait until the group has published at or past ``complete`` (True), or a probe asks the
        member for another catch-up first (False). For ``run(once=True)``: a member stops only
        once its rows are visible."""
        member = self.members[name]
        while True:
            if self.published is not None and complete is not None and self.published >= complete:
                return True
            asked = member.probed_at
            await self._published.wait()
            if member.probed_at != asked:
                return False

    def _nudge(self) -> None:
        self._wake.set()

    def _wake_at(self, due: float) -> None:
        if self._due is None or due < self._due:
            self._due = due
            self._due_set.set()

    def _renew(self) -> None:
        published, self._published = self._published, anyio.Event()
        published.set()

    # --- the coordinator ---

    async def run(self) -> None:
        for name, member in self.members.items():  # what an earlier run left staged
            self.staged(name, await self._session.call_store(self._session.store.pending, member.shape))
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._timer)
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                await self._step()

    async def _timer(self) -> None:
        """Look again when a member that could not be probed yet (probed within the window) can be."""
        while True:
            await self._due_set.wait()
            self._due_set = anyio.Event()
            while self._due is not None:
                due, self._due = self._due, None
                await anyio.sleep(max(0.0, due - time.monotonic()))
                self._nudge()

    async def _step(self) -> None:
        active = [m for m in self.members.values() if not m.failed]
        for member in active:  # a transaction another member staged may vouch for a waiting snapshot
            if member.snapshot_lsn is not None and member.witness is None:
                member.vouched(await self._session.call_store(self._session.store.pending, member.shape))
        now = time.monotonic()
        settling = [m for m in active if m.snapshot_lsn is not None and m.bound is None
                    and m.settle_at is not None and m.settle_at <= now]
        for member in settling:  # none vouched for it in time: a catch-up sent now bounds it
            # Its buster is the snapshot's LSN: a URL first asked now, not a proxy's older answer.
            self._probe([member], member.snapshot_lsn or 0)
        decided = plan(active)
        if decided.publish is not None:
            await self._publish(active, decided.publish)  # everything staged at or below it; later changes wait
            decided = plan(active)
        if decided.probe:
            self._probe([self.members[name] for name in decided.probe], decided.need)

    async def _publish(self, active: list[Member], upto: int) -> None:
        session = self._session
        store, shapes = session.store, {m.shape.local_name: m.shape for m in active}

        def publish() -> tuple[list[Applied], list[Pending | None]]:  # one trip to the writer thread
            applied = store.publish_group(self.name, list(shapes.values()), upto)
            return applied, [store.pending(shapes[done.name]) for done in applied]

        applied, pending = await session.call_store(publish)
        for done, waiting in zip(applied, pending, strict=True):
            self.staged(done.name, waiting)
        self.published = upto
        self._renew()
        now = time.time()
        self._host._published(applied)
        for done in applied:
            self._host._observe("commit", done.name, applied=done)
            await self._host._notify(done)
            self._host._set(done.name, rows=done.rows)
        for member in active:
            self._host._set(member.shape.local_name, last_synced_at=now)
            self._host._reached(member.shape.local_name)

    def _probe(self, behind: list[Member], need: int) -> None:
        """Ask the members behind for a catch-up to ``need`` now, or (probed within the window) at its end."""
        now = time.monotonic()
        later = []
        for member in behind:
            if member.probe is None:
                continue  # not following yet: its first up-to-date is on its way
            if now - member.probed_at >= PROBE_WINDOW:
                member.probed_at = now
                self.probes += 1
                member.probe(need)
            else:
                later.append(member.probed_at + PROBE_WINDOW)
        if later:
            self._renew()  # a run(once) member waiting in visible() learns of its probe
            self._wake_at(min(later))
        elif behind:
            self._renew()


@dataclass(frozen=True)
class Plan:
    """What a group should do now: publish at ``publish`` (an LSN), and/or ask ``probe`` to catch up."""

    publish: int | None
    probe: tuple[str, ...]
    need: int = 0  # the LSN the members in ``probe`` must be complete at


def plan(members: Sequence[Member]) -> Plan:
    """The group's decision, from what it knows of its (active) members. Pure.

    Publish at ``F = min(complete)`` once every member has reached up-to-date this run, every staged
    snapshot's ``bound`` is known and at or below ``F``, and something staged is at or below ``F``.
    Probe the members whose complete LSN is below what the others need (a staged snapshot's bound,
    or a staged change's member's complete LSN).
    """
    if not members or any(m.complete is None or (m.snapshot and m.bound is None) for m in members):
        return Plan(None, ())  # a member has not reached up-to-date, or a snapshot waits for its bound
    upto = min(m.complete for m in members if m.complete is not None)
    snapshots = max((m.bound for m in members if m.snapshot and m.bound is not None), default=upto)
    publish = upto if upto >= snapshots and any(_due(m, upto) for m in members) else None
    waiting = [m for m in members if m.staged and not (publish is not None and _all_due(m, upto))]
    target = max([snapshots] + [m.complete for m in waiting if m.complete is not None])
    behind = tuple(m.shape.local_name for m in members if m.complete is not None and m.complete < target)
    return Plan(publish, behind, target)


def _all_due(member: Member, upto: int) -> bool:
    """True if publishing at ``upto`` leaves nothing of ``member``'s staged (as far as the group knows)."""
    return member.complete is not None and member.complete <= upto


def _due(member: Member, upto: int) -> bool:
    """True if publishing at ``upto`` would show something of ``member``'s."""
    if member.snapshot:
        return member.bound is not None and member.bound <= upto
    return member.lowest is not None and member.lowest <= upto
