"""A hypothesis state machine: several workers claim, heartbeat, transition,
re-stage and forget documents while time moves, against a model.

After every step: the rows equal the model (none lost), the counters equal a
full count, no document is held under two live leases (asked of the claimer
for every lease ever granted), and stale tokens were rejected (checked in the
steps themselves). The transport-free stores run against a real PostgreSQL on
a fake clock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

from claimer.stores import Stores, counters, full_count, make_stores, packs_of, unique_id
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from hevlayer.claimer.database import Database
from hevlayer.claimer.leases import ClaimRequest
from hevlayer.claimer.pipelines import PipelineSpec
from hevlayer.client.enums import TransitionOutcome
from hevlayer.client.types import StagedRecord

T = TypeVar("T")
DOCS = [f"d{i}" for i in range(7)]
WORKERS = ["w0", "w1", "w2"]
LEASE = 10
MAX_ATTEMPTS = 3
WORK = "embedding"


@dataclass
class Doc:
    stage: str
    token: int
    backing: str
    holder: str | None = None
    expires: datetime | None = None
    attempts: int = 0
    expiries: int = 0
    old_tokens: list[int] = field(default_factory=list)


class LeaseMachine(RuleBasedStateMachine):
    loop: ClassVar[asyncio.AbstractEventLoop]
    db: ClassVar[Database]

    def __init__(self) -> None:
        super().__init__()
        self.stores: Stores = make_stores(self.db)
        self.pid = unique_id("sm")
        self.run(
            self.stores.pipelines.create(
                PipelineSpec(
                    id=self.pid, queue_backend="row", max_attempts=MAX_ATTEMPTS, default_lease_seconds=LEASE
                )
            )
        )
        self.packs = self.run(packs_of(self.stores, self.pid))
        self.docs: dict[str, Doc] = {}
        self.granted: list[tuple[str, str, int]] = []  # (doc, worker, token)
        self.backings = itertools.count()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    @property
    def now(self) -> datetime:
        return self.stores.clock.now

    def held(self, doc_id: str, worker: str, token: int) -> bool:
        doc = self.docs.get(doc_id)
        return (
            doc is not None
            and doc.stage == WORK
            and doc.holder == worker
            and doc.expires is not None
            and doc.expires > self.now
            and token in (0, doc.token)
        )

    def pick_token(self, doc_id: str, choice: int) -> int:
        doc = self.docs.get(doc_id)
        if doc is None:
            return 12345
        if choice == 0:
            return doc.token
        if choice == 1:
            return 0
        return doc.old_tokens[-1] if doc.old_tokens else doc.token + 1000

    def retoken(self, doc: Doc, token: int) -> None:
        assert token > doc.token, "fencing tokens must grow"
        doc.old_tokens.append(doc.token)
        doc.token = token

    # -- rules ------------------------------------------------------------------------

    @rule(ids=st.lists(st.sampled_from(DOCS), min_size=1, max_size=3, unique=True))
    def restage(self, ids: list[str]) -> None:
        records = [StagedRecord(d, f"h{d}", f"{self.packs}{d}-{next(self.backings)}#0:1", 1) for d in ids]
        batch = self.run(self.stores.documents.record_staged(self.pid, records))
        previous_objects = sorted(self.docs[d].backing.split("#")[0] for d in ids if d in self.docs)
        assert batch.released_objects == previous_objects, "each test object holds one document"
        for record, result in zip(records, batch.results, strict=True):
            doc = self.docs.get(record.document_id)
            assert result.previous_backing == (doc.backing if doc else "")
            if doc is None:
                self.docs[record.document_id] = Doc("pending", result.fencing_token, record.backing)
                continue
            self.retoken(doc, result.fencing_token)
            doc.stage, doc.backing, doc.holder, doc.expires = "pending", record.backing, None, None
            doc.attempts = doc.expiries = 0

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 4))
    def claim(self, worker: str, limit: int) -> None:
        expired = {
            d
            for d, m in self.docs.items()
            if m.stage == WORK and m.expires is not None and m.expires <= self.now
        }
        fresh = {d for d, m in self.docs.items() if m.stage == "pending"}
        claimed = self.run(self.stores.leases.claim(ClaimRequest(self.pid, "pending", WORK, limit, worker)))
        returned = set(claimed.document_ids)
        assert len(returned) == len(claimed.document_ids)
        assert returned <= expired | fresh
        poisoned = {
            d
            for d in expired - returned
            if self.run(self.stores.documents.describe(self.pid, d)).stage == "failed"
        }
        assert len(returned) + len(poisoned) == min(limit, len(expired | fresh))
        if limit >= len(expired):
            assert expired <= returned | poisoned, "expired leases are taken back first"
        else:
            assert returned | poisoned <= expired
        assert claimed.poisoned == len(poisoned)
        for d in poisoned:
            doc = self.docs[d]
            assert doc.expiries + 1 >= MAX_ATTEMPTS
            doc.stage, doc.holder, doc.expires = "failed", None, None
            doc.expiries += 1
            doc.old_tokens.append(doc.token)
            doc.token = self.run(self.stores.documents.describe(self.pid, d)).fencing_token
        for d, token, attempts in zip(
            claimed.document_ids, claimed.fencing_tokens, claimed.attempts, strict=True
        ):
            doc = self.docs[d]
            if d in expired:
                assert doc.expiries + 1 < MAX_ATTEMPTS
                doc.expiries += 1
            self.retoken(doc, token)
            doc.attempts += 1
            assert attempts == doc.attempts
            doc.stage, doc.holder, doc.expires = WORK, worker, claimed.expires_at
            self.granted = [*self.granted[-40:], (d, worker, token)]

    @rule(
        worker=st.sampled_from(WORKERS),
        picks=st.lists(st.tuples(st.sampled_from(DOCS), st.integers(0, 2)), min_size=1, max_size=4),
        lease=st.sampled_from([0, 5, 30]),
    )
    def heartbeat(self, worker: str, picks: list[tuple[str, int]], lease: int) -> None:
        ids = [d for d, _ in picks]
        tokens = [self.pick_token(d, c) for d, c in picks]
        expected = [self.held(d, worker, t) for d, t in zip(ids, tokens, strict=True)]
        result = self.run(self.stores.leases.heartbeat(self.pid, WORK, worker, ids, tokens, lease))
        assert result.extended == expected, "only live leases with current tokens are extended"
        assert result.expires_at == self.now + timedelta(seconds=lease or LEASE)
        for d, ok in zip(ids, expected, strict=True):
            if ok:
                self.docs[d].expires = result.expires_at

    @rule(
        worker=st.sampled_from(WORKERS),
        picks=st.lists(st.tuples(st.sampled_from(DOCS), st.integers(0, 2)), min_size=1, max_size=4),
        to_stage=st.sampled_from(["indexed", "pending", "failed", "review"]),
    )
    def transition(self, worker: str, picks: list[tuple[str, int]], to_stage: str) -> None:
        ids = [d for d, _ in picks]
        tokens = [self.pick_token(d, c) for d, c in picks]
        expected: list[TransitionOutcome] = []
        named: set[str] = set()
        for d, t in zip(ids, tokens, strict=True):
            if d not in self.docs:
                expected.append(TransitionOutcome.NOT_FOUND)
            elif d not in named and self.held(d, worker, t):
                expected.append(TransitionOutcome.MOVED)
            else:  # not held, or named twice (only the first occurrence counts)
                expected.append(TransitionOutcome.NOT_HELD)
            named.add(d)
        result = self.run(self.stores.leases.transition(self.pid, WORK, worker, to_stage, ids, tokens, "why"))
        assert result.outcomes == expected
        for d, outcome, token in zip(ids, result.outcomes, result.fencing_tokens, strict=True):
            if outcome is TransitionOutcome.MOVED:
                doc = self.docs[d]
                self.retoken(doc, token)
                doc.stage, doc.holder, doc.expires = to_stage, None, None

    @rule(seconds=st.integers(1, 12))
    def advance(self, seconds: int) -> None:
        self.stores.clock.advance(seconds)

    @rule(doc_id=st.sampled_from(DOCS))
    def forget(self, doc_id: str) -> None:
        backings, deleted, released = self.run(self.stores.documents.forget(self.pid, [doc_id]))
        doc = self.docs.pop(doc_id, None)
        assert deleted == (1 if doc else 0)
        assert backings == ([doc.backing] if doc else [])
        assert released == ([doc.backing.split("#")[0]] if doc else [])

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def rows_match_model(self) -> None:
        async def rows() -> dict[str, Any]:
            async with self.db.acquire() as conn:
                found = await conn.fetch(
                    """SELECT document_id, stage, claimed_by, lease_expires_at, fencing_token,
                              attempts, lease_expiries, backing
                       FROM documents WHERE pipeline_id = $1""",
                    self.pid,
                )
            return {r["document_id"]: r for r in found}

        actual = self.run(rows())
        assert set(actual) == set(self.docs), "no document lost or invented"
        for d, doc in self.docs.items():
            row = actual[d]
            assert (row["stage"], row["claimed_by"], row["fencing_token"], row["backing"]) == (
                doc.stage,
                doc.holder,
                doc.token,
                doc.backing,
            )
            assert row["lease_expires_at"] == doc.expires
            assert (row["attempts"], row["lease_expiries"]) == (doc.attempts, doc.expiries)

    @invariant()
    def counters_equal_full_count(self) -> None:
        model: dict[str, int] = {}
        for doc in self.docs.values():
            model[doc.stage] = model.get(doc.stage, 0) + 1
        assert self.run(counters(self.db, self.pid)) == self.run(full_count(self.db, self.pid)) == model

    @invariant()
    def no_document_under_two_live_leases(self) -> None:
        live: dict[str, int] = {}
        by_worker: dict[str, list[tuple[str, int]]] = {}
        for d, worker, token in self.granted:
            by_worker.setdefault(worker, []).append((d, token))
        for worker, leases in by_worker.items():
            check = self.run(
                self.stores.leases.check(
                    self.pid, worker, WORK, [d for d, _ in leases], [t for _, t in leases]
                )
            )
            for (d, token), held in zip(leases, check.held, strict=True):
                assert held == self.held(d, worker, token)
                if held:
                    live[d] = live.get(d, 0) + 1
        assert all(n == 1 for n in live.values()), live


def test_lease_state_machine(database_url: str) -> None:
    loop = asyncio.new_event_loop()
    db = Database(database_url, min_size=1, max_size=2, timeout=10)
    loop.run_until_complete(db.open())
    LeaseMachine.loop = loop
    LeaseMachine.db = db
    try:
        run_state_machine_as_test(
            LeaseMachine,
            settings=settings(
                max_examples=100,
                stateful_step_count=40,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        loop.run_until_complete(db.close())
        loop.close()
