"""Price reports: attesters sign what their own price source says, any relayer posts a quorum.

``../shared/DESIGN.md``, "Prices, margin and liquidation"; the contract is
``htlc/contracts/PriceOracle.sol`` (its binding: ``bridge.committee.oracle``).

A report is the committee's one message struct, kind PRICE_REPORT, under the bridge's domain:

    sourceChainId = destChainId = the bridge's chain, sourceTx = report_source(asset),
    sourceIndex 0, account zero, asset, amount = the price (USD, 8 decimals, per whole unit),
    nonce = the reporting slot (the observation time rounded DOWN to ``interval`` seconds),
    expiry = slot + the oracle's maxAge, payloadHash zero.

So every honest attester reading the same price signs the same bytes (one message, many
signatures in the store), and the attestation store's slot (kind, sourceTx, sourceIndex, nonce)
is one per asset and reporting slot: an attester signs at most one price per asset and slot, and
a second one is recorded as equivocation.  A CLEAR_BREAKER is the same struct with payloadHash
keccak256("CLEAR_BREAKER"), sourceIndex the trip it clears, amount the new reference price.

* ``Reporter`` (one per attester key): reads each asset's Chainlink-style feed and puts its
  signed report for the current slot into the ``AttestationStore``, once per slot.
* ``Poster`` (any relayer): for each asset, the newest slot newer than the price on chain
  with reports of at least M distinct members of a valid committee, checked as the contract
  checks them (freshness, the median, a quorum agreeing within the spread), then ``postPrices``.
  Idempotent: a slot at or before the price on chain is never sent; losing a race to another
  poster (``NotNewer``) is success.
* ``fold_price_event`` folds the oracle's events into a replica (``replica_price``) in the
  replica's own transaction; ``replica_prices`` reads them back.

Nothing read from the store is taken at its word: every report is decoded strictly, its id
recomputed under the domain and its signature recovered again.

Longer than the house's ~400 lines on purpose: the report format, the store reads, the reporter,
the poster and the fold share the slot and quorum rules, kept in one file to check against the
contract's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

from sqlalchemy import BigInteger, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Field, SQLModel

from bridge.committee.contract import BridgeEvent
from bridge.committee.crypto import ZERO_ADDRESS, SignatureRefused, address_of, keccak256, recover, sign
from bridge.committee.messages import ZERO32, Committee, Domain, Kind, Message, MessageRefused, decode_message, digest
from bridge.committee.oracle import PRICE_DECIMALS, OraclePrice, PriceOracle, RoundData, revert_reason
from bridge.committee.store import AttestationRefused, AttestationStore, Equivocation
from bridge.core.db import init_db
from bridge.core.errors import ContractReverted, InputError, NotFound, PriceRejected
from bridge.core.retry import is_retryable
from chains.base import BlockRef
from chains.evm import EvmAdapter

__all__ = [
    "CLEAR_BREAKER",
    "DEFAULT_INTERVAL",
    "PRICE_TABLES",
    "Aggregator",
    "FoldedPrice",
    "PostOutcome",
    "Poster",
    "ReplicaPrice",
    "ReportOutcome",
    "Reporter",
    "Selection",
    "SignedReport",
    "agreed_median",
    "clear_breaker_message",
    "fold_price_event",
    "init_price_tables",
    "price_report",
    "replica_prices",
    "report_source",
    "report_slots",
    "reports_in_slot",
    "scale_answer",
    "select_reports",
    "sign_clear",
    "signed_in_slot",
    "slot_of",
]

log = logging.getLogger("bridge.committee.prices")

#: Seconds per reporting slot: every attester reports once per slot, for the slot's start.
DEFAULT_INTERVAL = 60
#: A CLEAR_BREAKER message's payload hash (the contract's ``CLEAR_BREAKER``).
CLEAR_BREAKER = keccak256(b"CLEAR_BREAKER")
MAX_BPS = 10_000
MAX_PRICE = (1 << 128) - 1
#: A poster leaves a report this many seconds of freshness at least, for the transaction's way.
POST_MARGIN = 10
#: A feed's update this far in the future (seconds) is a broken feed, not clock skew.
SOURCE_FUTURE_SLACK = 60


class Aggregator(Protocol):
    """A Chainlink-style feed (``oracle.MockAggregator`` on the devnet)."""

    async def latest_round_data(self) -> RoundData: ...

    async def decimals(self) -> int: ...


# --- messages -----------------------------------------------------------------------------------


def report_source(asset: bytes) -> bytes:
    """A report's ``source_tx``: one per asset, so the store's slot (kind, sourceTx, sourceIndex,
    nonce) is one per asset and reporting slot."""
    _asset(asset)
    return keccak256(b"PRICE_REPORT" + asset)


def slot_of(observed_at: int, interval: int = DEFAULT_INTERVAL) -> int:
    """The reporting slot of a time: rounded down to a multiple of ``interval``."""
    if type(observed_at) is not int or observed_at < 0:
        raise InputError(f"a time is non-negative unix seconds, got {observed_at!r}", field="observed_at")
    if type(interval) is not int or interval < 1:
        raise InputError(f"the reporting interval is a positive number of seconds, got {interval!r}", field="interval")
    return observed_at - observed_at % interval


def price_report(domain: Domain, asset: bytes, price: int, observed_at: int, expiry: int, *, interval: int = DEFAULT_INTERVAL) -> Message:
    """The PRICE_REPORT of ``price`` (USD, 8 decimals) for ``asset`` observed at ``observed_at``;
    its nonce is the slot (``observed_at`` rounded down to ``interval``)."""
    _price(price)
    slot = slot_of(observed_at, interval)
    if type(expiry) is not int or expiry <= slot:
        raise InputError(f"a report's expiry must follow its slot {slot}, got {expiry!r}", field="expiry")
    chain = domain.chain_id
    return Message(1, Kind.PRICE_REPORT, chain, report_source(asset), 0, chain, ZERO_ADDRESS, asset, price, slot, expiry, ZERO32)


def clear_breaker_message(domain: Domain, asset: bytes, price: int, trip: int, at: int, expiry: int) -> Message:
    """The CLEAR_BREAKER of ``asset``'s ``trip``-th breaker trip (``PriceOracle.trips``), with
    the new reference price ``price`` as of ``at``; a quorum signs it, anyone sends it."""
    _price(price)
    if type(trip) is not int or not 1 <= trip < 1 << 32:
        raise InputError(f"a breaker trip is numbered from 1, got {trip!r}", field="trip")
    chain = domain.chain_id
    return Message(1, Kind.PRICE_REPORT, chain, report_source(asset), trip, chain, ZERO_ADDRESS, asset, price, at, expiry, CLEAR_BREAKER)


def scale_answer(answer: int, decimals: int) -> int:
    """A feed's answer in 8-decimal USD (rounded down when the feed has more decimals)."""
    if decimals >= PRICE_DECIMALS:
        return answer // 10 ** (decimals - PRICE_DECIMALS)
    return answer * 10 ** (PRICE_DECIMALS - decimals)


def agreed_median(prices: Sequence[int], threshold: int, max_spread_bps: int) -> int:
    """The contract's rule: the median of all the prices (the lower middle for an even count),
    accepted if ``threshold`` neighbours in sorted order spread at most ``max_spread_bps`` of it
    (a quorum agrees); else ``PriceRejected`` (reason ``disputed``, or ``quorum``)."""
    ordered = sorted(prices)
    if len(ordered) < max(threshold, 1):
        raise PriceRejected(f"{len(ordered)} reports, {threshold} needed", reason="quorum", reports=len(ordered), threshold=threshold)
    median = ordered[(len(ordered) - 1) // 2]
    for j in range(len(ordered) - threshold + 1):
        if (ordered[j + threshold - 1] - ordered[j]) * MAX_BPS <= max_spread_bps * median:
            return median
    raise PriceRejected(
        f"no {threshold} reports agree within {max_spread_bps} bps of the median {median} (prices {ordered[0]}..{ordered[-1]})",
        reason="disputed",
        median=median,
        low=ordered[0],
        high=ordered[-1],
    )


def _asset(asset: object) -> None:
    if type(asset) is not bytes or len(asset) != 20:
        raise InputError("an asset is 20 bytes", field="asset")


def _price(price: object) -> None:
    if type(price) is not int or not 0 < price <= MAX_PRICE:
        raise InputError(f"a price is a positive uint128 (USD, 8 decimals), got {price!r}", field="price")


# --- reading reports from the store ---------------------------------------------------------------


@dataclass(frozen=True)
class SignedReport:
    """One member's verified report: ``index`` into the committee's signers."""

    index: int
    signer: bytes
    message: Message
    signature: bytes


@dataclass(frozen=True)
class Selection:
    """What a poster sends: one slot's reports of distinct members, ascending indices."""

    asset: bytes
    slot: int
    committee: Committee
    reports: tuple[SignedReport, ...]
    median: int

    @property
    def messages(self) -> list[Message]:
        return [r.message for r in self.reports]

    @property
    def indices(self) -> list[int]:
        return [r.index for r in self.reports]

    @property
    def signatures(self) -> list[bytes]:
        return [r.signature for r in self.reports]


_SLOT_ROWS = (
    "SELECT s.signer, s.signature, m.id, m.body FROM committee_signature s JOIN committee_message m ON m.id = s.message_id "
    "WHERE s.kind = :kind AND s.source_tx = :source AND s.source_index = 0 AND s.nonce = :slot "
    "AND m.domain_chain_id = :chain AND m.verifying_contract = :contract ORDER BY s.signer"
)
_SLOTS = (
    "SELECT DISTINCT s.nonce FROM committee_signature s JOIN committee_message m ON m.id = s.message_id "
    "WHERE s.kind = :kind AND s.source_tx = :source AND s.source_index = 0 AND m.expires_at > :now "
    "AND m.domain_chain_id = :chain AND m.verifying_contract = :contract"
)


def signed_in_slot(store: AttestationStore, signer: bytes, asset: bytes, slot: int) -> bool:
    """Whether ``signer`` already put a report for ``asset`` and ``slot`` into the store."""
    with store.db.transaction() as tx:
        found = tx.column(
            "SELECT 1 FROM committee_signature WHERE signer = :signer AND kind = :kind AND source_tx = :source AND source_index = 0 AND nonce = :slot",
            {"signer": signer.hex(), "kind": int(Kind.PRICE_REPORT), "source": report_source(asset).hex(), "slot": str(slot)},
        )
    return bool(found)


def report_slots(store: AttestationStore, domain: Domain, asset: bytes, now: int) -> list[int]:
    """Slots with unexpired reports for ``asset`` under ``domain``, newest first."""
    with store.db.transaction() as tx:
        rows = tx.column(_SLOTS, {**_where(domain, asset), "now": now})
    return sorted({int(n) for n in rows}, reverse=True)


def reports_in_slot(store: AttestationStore, domain: Domain, asset: bytes, committee: Committee, slot: int, now: int) -> list[SignedReport]:
    """The slot's reports by members of ``committee``, each verified again (decoded strictly, its
    id recomputed under ``domain``, its signature recovered to its member), valid at ``now``
    (unexpired, the asset's, no payload), ascending by member index; a row that fails any check
    is left out."""
    with store.db.transaction() as tx:
        rows = tx.rows(_SLOT_ROWS, {**_where(domain, asset), "slot": str(slot)})
    index_of = {s: i for i, s in enumerate(committee.signers)}
    found: dict[int, SignedReport] = {}
    for row in rows:
        try:
            signer, signature = bytes.fromhex(row["signer"]), bytes.fromhex(row["signature"])
            message = decode_message(bytes.fromhex(row["body"]))
            mid = digest(domain, message)
            if mid.hex() != row["id"] or recover(mid, signature) != signer:
                continue
        except (MessageRefused, SignatureRefused, ValueError):
            continue
        index = index_of.get(signer)
        if index is None or index in found:
            continue
        if (
            message.kind != Kind.PRICE_REPORT
            or message.asset != asset
            or message.source_tx != report_source(asset)
            or message.source_index != 0
            or message.nonce != slot
            or message.payload_hash != ZERO32
            or message.dest_chain_id != domain.chain_id
            or not 0 < message.amount <= MAX_PRICE
            or message.expiry <= now
        ):
            continue
        found[index] = SignedReport(index, signer, message, signature)
    return [found[i] for i in sorted(found)]


def select_reports(
    store: AttestationStore,
    domain: Domain,
    asset: bytes,
    committees: Sequence[Committee],
    now: int,
    *,
    after: int,
    max_age: int,
    max_spread_bps: int,
    margin: int = POST_MARGIN,
) -> Selection | None:
    """The newest slot newer than ``after`` (the price on chain), still fresh for ``margin``
    seconds more, whose reports by at least M members of one of ``committees`` (tried in order:
    the current one first) pass the contract's rule (``agreed_median``); None if there is none."""
    for slot in report_slots(store, domain, asset, now):
        if slot <= after:
            break
        if slot > now or slot + max_age < now + margin:
            continue
        for committee in committees:
            reports = reports_in_slot(store, domain, asset, committee, slot, now + margin)
            if len(reports) < committee.threshold:
                continue
            try:
                median = agreed_median([r.message.amount for r in reports], committee.threshold, max_spread_bps)
            except PriceRejected as exc:
                log.warning("price of 0x%s, slot %d: %s", asset.hex(), slot, exc.message)
                continue
            return Selection(asset, slot, committee, tuple(reports), median)
    return None


def _where(domain: Domain, asset: bytes) -> dict[str, object]:
    return {
        "kind": int(Kind.PRICE_REPORT),
        "source": report_source(asset).hex(),
        "chain": str(domain.chain_id),
        "contract": domain.verifying_contract.hex(),
    }


# --- the reporter and the poster --------------------------------------------------------------------


CommitteeOf = Callable[[int], "Committee | None"]
CommitteesAt = Callable[[int], Sequence[Committee]]


@dataclass(frozen=True)
class ReportOutcome:
    asset: bytes
    slot: int
    #: "signed", "already" (this slot was signed before), "skipped" (see ``detail``), "refused", "failed"
    state: str
    detail: str = ""
    price: int | None = None
    message_id: bytes | None = None


@dataclass(frozen=True)
class PostOutcome:
    asset: bytes
    #: "posted", "tripped" (the breaker tripped on it), "skipped" (see ``detail``), "raced" (another
    #: poster was first), "failed" (an error, logged; the next run tries again)
    state: str
    detail: str = ""
    slot: int | None = None
    price: int | None = None
    tx_hash: str | None = None
    gas_used: int | None = None


class Reporter:
    """An attester's price reports: for every asset, the feed's price signed for the current slot,
    at most once per slot (checked in the store, so a restart signs nothing twice)."""

    def __init__(
        self,
        store: AttestationStore,
        key: bytes,
        domain: Domain,
        feeds: Mapping[bytes, Aggregator],
        *,
        committee: Committee | CommitteeOf,
        interval: int = DEFAULT_INTERVAL,
        max_age: int = 300,
        source_max_age: int = 86_400,
        chain: EvmAdapter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if type(key) is not bytes or len(key) != 32:
            raise InputError("an attester key is 32 bytes")
        for asset in feeds:
            _asset(asset)
        slot_of(0, interval)
        if type(max_age) is not int or max_age <= 0:
            raise InputError(f"max_age must be positive seconds, got {max_age!r}", field="max_age")
        self.store, self.key, self.domain, self.feeds = store, key, domain, dict(feeds)
        self.address = address_of(key)
        self.committee = committee
        self.interval, self.max_age, self.source_max_age = interval, max_age, source_max_age
        self.chain, self.clock = chain, clock
        self._decimals: dict[bytes, int] = {}
        self._done: dict[bytes, int] = {}

    async def now(self) -> int:
        """The contract's clock: the wall clock, or the newest block's time if later."""
        now = int(self.clock())
        if self.chain is not None:
            now = max(now, (await self.chain.head()).timestamp)
        return now

    async def report(self) -> list[ReportOutcome]:
        """Sign and store this slot's report of every asset not reported yet; what happened to each."""
        now = await self.now()
        slot = slot_of(now, self.interval)
        committee = self.committee if isinstance(self.committee, Committee) else await asyncio.to_thread(self.committee, now)
        if committee is None or self.address not in committee.members:
            return [ReportOutcome(a, slot, "skipped", "this key is no member of a valid committee") for a in self.feeds]
        out = []
        for asset, feed in self.feeds.items():
            try:
                out.append(await self._report_one(asset, feed, slot, now, committee))
            except Exception as exc:  # one asset's broken feed or node stops no other asset
                _log_failure(exc, "price report of 0x%s", asset.hex())
                out.append(ReportOutcome(asset, slot, "failed", str(exc)))
        return out

    async def _report_one(self, asset: bytes, feed: Aggregator, slot: int, now: int, committee: Committee) -> ReportOutcome:
        if self._done.get(asset) == slot or await asyncio.to_thread(signed_in_slot, self.store, self.address, asset, slot):
            self._done[asset] = slot
            return ReportOutcome(asset, slot, "already")
        if asset not in self._decimals:
            self._decimals[asset] = await feed.decimals()
        data = await feed.latest_round_data()
        problem = self._judge(data, now)
        if problem:
            log.warning("price source of 0x%s: %s; not reporting", asset.hex(), problem)
            return ReportOutcome(asset, slot, "skipped", problem)
        price = scale_answer(data.answer, self._decimals[asset])
        if not 0 < price <= MAX_PRICE:
            return ReportOutcome(asset, slot, "skipped", f"price {price} out of range")
        message = price_report(self.domain, asset, price, slot, slot + self.max_age, interval=self.interval)
        mid = digest(self.domain, message)
        try:
            await asyncio.to_thread(self.store.put, self.domain, message, self.address, sign(mid, self.key), committee, now)
        except Equivocation as exc:
            # Another process with this key signed another price for the slot: the store kept the
            # first and the evidence.  Nothing more is signed for this slot.
            self._done[asset] = slot
            log.error("price report of 0x%s for slot %d refused as equivocation: %s", asset.hex(), slot, exc.message)
            return ReportOutcome(asset, slot, "refused", exc.reason, price, mid)
        except AttestationRefused as exc:
            return ReportOutcome(asset, slot, "refused", exc.reason, price, mid)
        self._done[asset] = slot
        return ReportOutcome(asset, slot, "signed", "", price, mid)

    def _judge(self, data: RoundData, now: int) -> str:
        """Why this round is not signed, or ""."""
        if data.round_id == 0 or data.updated_at == 0:
            return "no answer yet"
        if data.answered_in_round < data.round_id:
            return f"round {data.round_id} is incomplete"
        if data.answer <= 0:
            return f"non-positive answer {data.answer}"
        if data.updated_at > now + SOURCE_FUTURE_SLACK:
            return f"updated in the future ({data.updated_at} > {now})"
        if now - data.updated_at > self.source_max_age:
            return f"last updated {now - data.updated_at} s ago (more than {self.source_max_age} s)"
        return ""


class Poster:
    """Posts, for each asset, the newest slot with an agreeing quorum of reports that is newer
    than the price on chain.  Any number of posters may run: the contract takes each slot once."""

    def __init__(
        self,
        store: AttestationStore,
        oracle: PriceOracle,
        domain: Domain,
        key: str | None,
        assets: Sequence[bytes],
        *,
        committees: Committee | CommitteesAt,
        max_age: int,
        max_spread_bps: int,
        clock: Callable[[], float] = time.time,
        margin: int = POST_MARGIN,
    ) -> None:
        for asset in assets:
            _asset(asset)
        self.store, self.oracle, self.domain, self.key = store, oracle, domain, key
        self.assets = list(assets)
        self.committees = committees
        self.max_age, self.max_spread_bps = max_age, max_spread_bps
        self.clock, self.margin = clock, margin

    @classmethod
    async def for_oracle(cls, store: AttestationStore, oracle: PriceOracle, domain: Domain, key: str | None, assets: Sequence[bytes], **kw) -> "Poster":
        """A poster with the contract's own maxAge and spread."""
        max_age, spread, _step = await oracle.params()
        return cls(store, oracle, domain, key, assets, max_age=max_age, max_spread_bps=spread, **kw)

    async def now(self) -> int:
        return max(int(self.clock()), (await self.oracle.chain.head()).timestamp)

    async def _committees(self, now: int) -> list[Committee]:
        if isinstance(self.committees, Committee):
            return [self.committees]
        return list(await asyncio.to_thread(self.committees, now))

    async def select(self, asset: bytes, on_chain: OraclePrice | None = None) -> Selection | None:
        """What ``post`` would send for ``asset`` now (None: nothing newer with a quorum)."""
        on_chain = on_chain or await self.oracle.price(asset)
        now = await self.now()
        committees = await self._committees(now)
        return await asyncio.to_thread(
            select_reports,
            self.store,
            self.domain,
            asset,
            committees,
            now,
            after=on_chain.time,
            max_age=self.max_age,
            max_spread_bps=self.max_spread_bps,
            margin=self.margin,
        )

    async def post(self) -> list[PostOutcome]:
        """``post_asset`` for every asset; one asset's failure (``state`` "failed") stops no other."""
        out = []
        for asset in self.assets:
            try:
                out.append(await self.post_asset(asset))
            except Exception as exc:
                _log_failure(exc, "price post of 0x%s", asset.hex())
                out.append(PostOutcome(asset, "failed", str(exc)))
        return out

    async def post_asset(self, asset: bytes) -> PostOutcome:
        on_chain = await self.oracle.price(asset)
        if on_chain.tripped:
            return PostOutcome(asset, "skipped", "the breaker is tripped: a quorum's CLEAR_BREAKER clears it")
        selection = await self.select(asset, on_chain)
        if selection is None:
            return PostOutcome(asset, "skipped", f"no agreeing quorum of reports newer than {on_chain.time}")
        if self.key is None:
            return PostOutcome(asset, "skipped", "no key to send with (read-only poster)", selection.slot, selection.median)
        try:
            receipt = await self.oracle.post_prices(self.key, asset, selection.messages, selection.committee, selection.indices, selection.signatures)
        except ContractReverted as exc:
            reason = revert_reason(exc.data) or exc.reason
            if reason == "NotNewer":
                return PostOutcome(asset, "raced", "another poster sent this slot or a newer one first", selection.slot, selection.median)
            if reason == "BreakerIsTripped":
                return PostOutcome(asset, "skipped", "the breaker tripped meanwhile", selection.slot, selection.median)
            raise
        outcome = PostOutcome(asset, "posted", "", selection.slot, selection.median, receipt.tx_hash, receipt.gas_used)
        for event in self.oracle.events_in(receipt):
            if event.name == "BreakerTripped":
                log.warning(
                    "price of 0x%s: %d is beyond the breaker's step from %d: tripped (trip %d)", asset.hex(), event["proposed"], event["last"], event["trip"]
                )
                outcome = PostOutcome(
                    asset, "tripped", f"{event['proposed']} vs {event['last']}", selection.slot, selection.median, receipt.tx_hash, receipt.gas_used
                )
        return outcome

    async def clear_breaker(self, message: Message) -> PostOutcome:
        """Send a CLEAR_BREAKER once a quorum of the current committee signed it in the store."""
        now = await self.now()
        committees = await self._committees(now)
        if not committees:
            return PostOutcome(message.asset, "skipped", "no valid committee")
        try:
            tally = await asyncio.to_thread(self.store.quorum, digest(self.domain, message), committees[0], self.domain, now)
        except NotFound:
            return PostOutcome(message.asset, "skipped", "not signed by anyone yet")
        if tally.quorum is None:
            return PostOutcome(message.asset, "skipped", tally.reason or "no quorum")
        if self.key is None:
            return PostOutcome(message.asset, "skipped", "no key to send with (read-only poster)")
        q = tally.quorum
        receipt = await self.oracle.clear_breaker(self.key, q.message, q.committee, q.indices, q.signatures)
        return PostOutcome(message.asset, "posted", "breaker cleared", message.nonce, message.amount, receipt.tx_hash, receipt.gas_used)


def _log_failure(exc: Exception, what: str, *args: object) -> None:
    if is_retryable(exc):
        log.warning(what + ": %s; trying again next time", *args, exc)
    else:
        log.error(what + " failed: %s", *args, exc, exc_info=exc)


def sign_clear(store: AttestationStore, key: bytes, domain: Domain, committee: Committee, message: Message, now: int | None = None) -> bytes:
    """An attester's signature of a CLEAR_BREAKER its operator approved, into the store; the id."""
    if message.payload_hash != CLEAR_BREAKER or message.kind != Kind.PRICE_REPORT:
        raise InputError("not a CLEAR_BREAKER message", field="message")
    mid = digest(domain, message)
    store.put(domain, message, address_of(key), sign(mid, key), committee, now)
    return mid


# --- the replica's fold -------------------------------------------------------------------------------


class ReplicaPrice(SQLModel, table=True):
    """The oracle's price of an asset as a replica folded it from the chain."""

    __tablename__ = "replica_price"

    asset: str = Field(primary_key=True)  # 0x + 40 hex, lowercase
    price: str  # USD with 8 decimals, decimal
    time: int = Field(sa_type=BigInteger)  # the price's observation time
    tripped: bool
    trips: int = Field(sa_type=BigInteger)
    proposed: str = ""  # the median that tripped the breaker (while tripped)
    block_height: int = Field(sa_type=BigInteger)


PRICE_TABLES = [ReplicaPrice.__table__]


def init_price_tables(engine: Engine) -> None:
    init_db(engine, PRICE_TABLES)


_UPSERT = (
    "INSERT INTO replica_price (asset, price, time, tripped, trips, proposed, block_height) "
    "VALUES (:asset, :price, :time, :tripped, :trips, :proposed, :height) ON CONFLICT (asset) DO UPDATE SET "
)


def fold_price_event(conn: Connection, event: BridgeEvent, block: BlockRef) -> bool:
    """Apply one of the oracle's events (``oracle.decode_oracle_events``, filtered by the oracle's
    address) in ``conn``'s transaction; False for an event of another name.  Deterministic and
    idempotent for a block refolded: every write sets values from the event alone."""
    asset = event["asset"].lower() if isinstance(event["asset"], str) else "0x" + bytes(event["asset"]).hex()
    base = {"asset": asset, "height": block.height}
    if event.name == "PriceUpdated":
        conn.execute(
            text(_UPSERT + "price = excluded.price, time = excluded.time, tripped = excluded.tripped, proposed = '', block_height = excluded.block_height"),
            {**base, "price": str(event["price"]), "time": event["time"], "tripped": False, "trips": 0, "proposed": ""},
        )
    elif event.name == "BreakerTripped":
        conn.execute(
            text(_UPSERT + "tripped = excluded.tripped, trips = excluded.trips, proposed = excluded.proposed, block_height = excluded.block_height"),
            {**base, "price": str(event["last"]), "time": 0, "tripped": True, "trips": event["trip"], "proposed": str(event["proposed"])},
        )
    elif event.name == "BreakerCleared":
        conn.execute(
            text(
                _UPSERT + "price = excluded.price, time = excluded.time, tripped = excluded.tripped, trips = excluded.trips, "
                "proposed = '', block_height = excluded.block_height"
            ),
            {**base, "price": str(event["price"]), "time": event["time"], "tripped": False, "trips": event["trip"], "proposed": ""},
        )
    else:
        return False
    return True


@dataclass(frozen=True)
class FoldedPrice:
    price: int
    time: int
    tripped: bool
    trips: int
    proposed: int | None
    block_height: int


def replica_prices(engine: Engine) -> dict[str, FoldedPrice]:
    """asset (0x + 40 hex, lowercase) -> the oracle's price as folded, for every asset priced."""
    with engine.connect() as conn:
        return prices_in(conn)


def prices_in(conn: Connection) -> dict[str, FoldedPrice]:
    """``replica_prices`` inside the caller's transaction (the fold's)."""
    rows = conn.execute(text("SELECT * FROM replica_price ORDER BY asset")).mappings().all()
    return {
        r["asset"]: FoldedPrice(
            int(r["price"]), int(r["time"]), bool(r["tripped"]), int(r["trips"]), int(r["proposed"]) if r["proposed"] else None, int(r["block_height"])
        )
        for r in rows
    }
