"""What the watcher does for each job, one step at a time, restart-safe.

Why polling with stored state rather than ``chains.indexer``: each job follows one
outpoint or one swap id on a known contract, found with one cheap query
(``gettxout``, filtered logs, a block scan over a short persisted range); the
indexer's job is whole-chain streams with reorg rewinds.  The per-job scan cursors
(``reveal_scan_from``, ``first_sent_height``) are persisted and kept ``reorg_margin``
blocks behind the tip, so a restart resumes without rescanning and a shallow reorg
is rescanned.

Every spend is recorded (``spend_intended``, the signed bytes stored) before it is
broadcast; a restart re-sends the same bytes, which the adapters treat as idempotent.
On the EVM the watcher pays gas from its own key and signs with an explicit nonce,
never while another of its spends is recorded but unsent, so two jobs never share
a nonce; completion is read from the contract's status (the contract pays the
party whichever of our transactions, or anyone's, made the claim).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from bridge.core import jsonsafe
from bridge.core.errors import BridgeError, ConfigError, NotFound
from bridge.watch.jobs import JobSpec, audit_job, parse_job
from bridge.watch.models import (
    CLAIM,
    CONFIRMED,
    EXPIRED,
    SPEND_INTENDED,
    SPEND_SENT,
    SPENT_ELSEWHERE,
    WATCHING,
    WatchJob,
)
from bridge.watch.presign import complete_claim
from bridge.watch.store import WatchStore
from chains.base import BITCOIN, EVM
from chains.bitcoin import BitcoinAdapter, BitcoinTxFilter
from chains.btc.primitives import Tx
from chains.evm import EvmAdapter
from chains.evm_fees import choose_fees
from chains.fee_bump import EvmTxFields, evm_bump, is_stuck, next_rung
from htlc.evm import Claimed, EvmHtlc, SwapStatus, encode_call
from htlc.secret import secret_in_spends

log = logging.getLogger("bridge.watch")


@dataclass(frozen=True)
class WatchPolicy:
    #: A spend unconfirmed this many blocks after it was sent gets the next fee.
    stuck_blocks: int = 3
    #: Depth at which a spend counts as done.
    confirmations: int = 1
    #: Scan cursors stay this far behind the tip so a shallow reorg is looked at again.
    reorg_margin: int = 6
    evm_bump_multiplier: str = "1.5"
    #: Fees of the watcher's first EVM transaction of a job (None: the node's suggestion).
    evm_max_fee: int | None = None
    evm_priority_fee: int | None = None


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class Watcher:
    def __init__(
        self,
        store: WatchStore,
        btc: BitcoinAdapter | None,
        evm: EvmAdapter | None,
        evm_key: str | None = None,
        policy: WatchPolicy = WatchPolicy(),
    ) -> None:
        self.store = store
        self.btc = btc
        self.evm = evm
        self.evm_key = evm_key
        self.policy = policy

    # --- intake --------------------------------------------------------------------------

    async def submit(self, body: Any) -> tuple[WatchJob, bool]:
        """Validate a job (shape, then on chain) and store it; returns ``(job, created)``."""
        spec = parse_job(body)
        with contextlib.suppress(NotFound):
            existing = self.store.get(spec.id)
            if existing.spec == spec.canonical:
                return existing, False  # a re-sent job: answered from the database, even once the HTLC is spent
        expiry = await audit_job(spec, self.btc, self.evm)
        now = time.time()
        job = WatchJob(
            id=spec.id,
            kind=spec.kind,
            chain=spec.chain,
            state=WATCHING,
            spec=spec.canonical,
            hashlock=spec.hashlock.hex(),
            expiry=expiry,
            payout=spec.payout,
            secret=spec.secret.hex() if spec.secret else None,
            reveal_scan_from=spec.reveal.from_height if spec.reveal else None,
            created_at=now,
            updated_at=now,
        )
        return self.store.add(job)

    # --- the loop ------------------------------------------------------------------------

    async def step_all(self) -> None:
        """Step every open job once, due or not, as the runtime steps them (``operations``): a
        failure is recorded on its job and retried, it never stops the others."""
        from bridge.runtime import Runtime
        from bridge.watch.operations import WatchOperations  # it builds on this module

        runtime = Runtime(WatchOperations(self), "watch job", max_concurrency=1)
        # Recorded-but-unsent spends go first: an EVM one holds the nonce a new spend would take.
        for job in sorted(self.store.open_jobs(), key=lambda j: j.state != SPEND_INTENDED):
            await runtime.step(job.id)

    async def step(self, job: WatchJob) -> None:
        spec = parse_job(jsonsafe.loads(job.spec, max_bytes=None))
        if job.state == WATCHING:
            await (self._watch_btc(job, spec) if job.chain == BITCOIN else self._watch_evm(job, spec))
        elif job.state == SPEND_INTENDED:
            await (self._broadcast_btc(job, spec) if job.chain == BITCOIN else self._broadcast_evm(job, spec))
        elif job.state == SPEND_SENT:
            await (self._follow_btc(job, spec) if job.chain == BITCOIN else self._follow_evm(job, spec))

    # --- the secret ----------------------------------------------------------------------

    async def _secret(self, job: WatchJob, spec: JobSpec) -> bytes | None:
        if job.secret:
            return bytes.fromhex(job.secret)
        reveal = spec.reveal
        hashlock = bytes.fromhex(job.hashlock)
        start = job.reveal_scan_from or 0
        if reveal.chain == EVM:
            tip = await self.evm.height()
            found = None
            for event in await EvmHtlc(self.evm, reveal.contract).events(start, tip, swap_id=reveal.swap_id):
                if isinstance(event, Claimed) and _sha256(bytes(event.preimage)) == hashlock:
                    found = bytes(event.preimage)
        else:
            tip = await self.btc.height()
            found = await self._btc_reveal(reveal.outpoint, hashlock, start, tip)
        if found is None:
            self.store.update(job.id, reveal_scan_from=max(start, tip - self.policy.reorg_margin))
        return found

    async def _btc_reveal(self, outpoint: tuple[str, int], hashlock: bytes, start: int, tip: int) -> bytes | None:
        txid, vout = outpoint
        if await self.btc.txout(txid, vout) is not None:
            return None  # unspent, in the chain and in the mempool: nothing revealed yet
        spender = await self.btc.mempool_spender(outpoint)
        txs = [spender] if spender is not None else []
        if start <= tip:
            txs += [e.data["tx"] for e in await self.btc.events(start, tip, BitcoinTxFilter(outpoints=[outpoint]))]
        return secret_in_spends(txs, (txid, vout), hashlock)

    def _sent(self, job: WatchJob, tip: int, level: str) -> None:
        """SPEND_INTENDED -> SPEND_SENT at height ``tip``: ``job.spend_tx`` joins the versions sent."""
        self.store.transition(
            job.id,
            SPEND_INTENDED,
            SPEND_SENT,
            f"sent {job.spend_tx} ({level} {job.spend_level})",
            sent=job.spend_tx,
            sent_height=tip,
            first_sent_height=job.first_sent_height if job.first_sent_height is not None else tip,
        )

    # --- bitcoin -------------------------------------------------------------------------

    async def _watch_btc(self, job: WatchJob, spec: JobSpec) -> None:
        txid, vout = spec.outpoint
        if await self.btc.txout(txid, vout) is None:
            self.store.transition(job.id, WATCHING, SPENT_ELSEWHERE, f"htlc output {txid}:{vout} was spent by someone else")
            return
        rung = spec.presigned[0]
        if job.kind == CLAIM:
            secret = await self._secret(job, spec)
            if secret is None:
                return
            raw = complete_claim(rung.hex, secret)
            note = f"secret found; claim at {rung.feerate} sat/vB"
        else:
            tip = await self.btc.height()
            if tip < job.expiry:
                return
            secret, raw = None, rung.hex
            note = f"refund height {job.expiry} reached (tip {tip}); refund at {rung.feerate} sat/vB"
        self.store.transition(
            job.id,
            WATCHING,
            SPEND_INTENDED,
            note,
            secret=secret.hex() if secret else job.secret,
            spend_level=0,
            spend_raw=raw,
            spend_tx=Tx.from_hex(raw).txid,
        )

    async def _broadcast_btc(self, job: WatchJob, spec: JobSpec) -> None:
        tip = await self.btc.height()
        try:
            await self.btc.send(job.spend_raw)
        except BridgeError:
            txid, vout = spec.outpoint
            if await self.btc.txout(txid, vout) is not None:
                raise
            # The output is spent already (an earlier rung of ours was mined, or someone else
            # spent it): following the sent spend finds out which.
        self._sent(job, tip, "rung")

    async def _follow_btc(self, job: WatchJob, spec: JobSpec) -> None:
        tip = await self.btc.height()
        ours = set(self.store.spend_versions(job.id))
        start = max(0, (job.first_sent_height or tip) - self.policy.reorg_margin)
        spends = await self.btc.events(start, tip, BitcoinTxFilter(outpoints=[spec.outpoint])) if start <= tip else []
        for event in spends:
            depth = tip - event.block.height + 1
            if depth < self.policy.confirmations:
                continue
            if event.key in ours:
                self.store.transition(job.id, SPEND_SENT, CONFIRMED, f"{job.kind} {event.key} confirmed at height {event.block.height}", spend_tx=event.key)
            else:
                self.store.transition(job.id, SPEND_SENT, SPENT_ELSEWHERE, f"htlc output spent by {event.key}, not by this watcher")
            return
        if spends:
            return  # mined, not deep enough yet
        # Not mined: make sure the node still has it (a restart, an eviction), then bump if stuck.
        await self.btc.send(job.spend_raw)
        if not is_stuck(job.sent_height, tip, self.policy.stuck_blocks):
            return
        level = next_rung(len(spec.presigned), job.spend_level)
        if level is None:
            return  # the top rung the party signed: nothing higher to send
        rung = spec.presigned[level]
        raw = complete_claim(rung.hex, bytes.fromhex(job.secret)) if job.kind == CLAIM else rung.hex
        self.store.transition(
            job.id,
            SPEND_SENT,
            SPEND_INTENDED,
            f"{job.spend_tx} unconfirmed {tip - job.sent_height} blocks after sending: bump to {rung.feerate} sat/vB (rung {level})",
            spend_level=level,
            spend_raw=raw,
            spend_tx=Tx.from_hex(raw).txid,
        )

    # --- evm -----------------------------------------------------------------------------

    def _htlc(self, spec: JobSpec) -> EvmHtlc:
        return EvmHtlc(self.evm, spec.htlc["contract"])

    async def _watch_evm(self, job: WatchJob, spec: JobSpec) -> None:
        swap = spec.swap
        htlc = self._htlc(spec)
        status = await htlc.swap(swap.id)
        if status != SwapStatus.LOCKED:
            self.store.transition(job.id, WATCHING, SPENT_ELSEWHERE, f"swap 0x{swap.id.hex()} was {status.name.lower()} by someone else")
            return
        head = await self.evm.head()
        if job.kind == CLAIM:
            if head.timestamp >= job.expiry:
                self.store.transition(job.id, WATCHING, EXPIRED, "the lock expired before the secret was seen")
                return
            secret = await self._secret(job, spec)
            if secret is None:
                return
            data = encode_call(htlc.abi, "claim", swap.as_tuple(), secret)
            note = "secret found; claim"
        else:
            if head.timestamp < job.expiry:
                return
            secret, data = None, encode_call(htlc.abi, "refund", swap.as_tuple())
            note = f"expiry {job.expiry} reached (chain time {head.timestamp}); refund"
        if self.evm_key is None:
            raise ConfigError("this watcher has no EVM key to pay gas with (--evm-key-env)")
        if any(j.state == SPEND_INTENDED and j.chain == EVM for j in self.store.open_jobs()):
            return  # another spend of ours holds the next nonce until it is sent
        sender = self.evm.account(self.evm_key).address
        fees = choose_fees(await self.evm.suggest_fees(), self.policy.evm_max_fee, self.policy.evm_priority_fee)
        fields = EvmTxFields(
            chain_id=await self.evm.chain_id_int(),
            nonce=await self._next_nonce(sender),
            to=htlc.address,
            data="0x" + data.hex(),
            gas=await self.evm.estimate_gas(sender, htlc.address, 0, data),
            max_fee=fees.max_fee,
            priority_fee=fees.priority_fee,
        )
        raw, tx_hash = fields.sign(self.evm, self.evm_key)
        self.store.transition(
            job.id,
            WATCHING,
            SPEND_INTENDED,
            f"{note} from {sender}, nonce {fields.nonce}",
            secret=secret.hex() if secret else job.secret,
            spend_level=0,
            spend_raw=raw,
            spend_tx=tx_hash,
            evm_tx=json.dumps(fields.to_dict()),
        )

    async def _next_nonce(self, sender: str) -> int:
        """From the adapter's one allocator: never a nonce one of our unconfirmed spends holds (a
        spend the node dropped, underpriced, still owns its nonce until it is bumped)."""
        held = [json.loads(j.evm_tx)["nonce"] for j in self.store.open_jobs() if j.chain == EVM and j.evm_tx]
        return await self.evm.nonces.next_free(sender, held)

    async def _broadcast_evm(self, job: WatchJob, spec: JobSpec) -> None:
        tip = await self.evm.height()
        try:
            await self.evm.send(job.spend_raw)
        except BridgeError:
            if await self._htlc(spec).swap(spec.swap.id) == SwapStatus.LOCKED:
                raise
            # Settled meanwhile (an earlier fee level of ours was mined, or someone else acted).
        self._sent(job, tip, "bump")

    async def _follow_evm(self, job: WatchJob, spec: JobSpec) -> None:
        status = await self._htlc(spec).swap(spec.swap.id)
        wanted = SwapStatus.CLAIMED if job.kind == CLAIM else SwapStatus.REFUNDED
        if status == wanted:
            # Oldest first: the first of ours mined is the one named.
            depths = {h: (await self.evm.tx_status(h)).confirmations for h in reversed(self.store.spend_versions(job.id))}
            mined = [h for h, depth in depths.items() if depth > 0]
            if mined and depths[mined[0]] < self.policy.confirmations:
                return  # ours, not deep enough yet
            by = f"by {mined[0]}" if mined else "by another sender"
            self.store.transition(job.id, SPEND_SENT, CONFIRMED, f"swap {status.name.lower()} {by}", spend_tx=mined[0] if mined else job.spend_tx)
            return
        if status != SwapStatus.LOCKED:
            self.store.transition(job.id, SPEND_SENT, SPENT_ELSEWHERE, f"swap was {status.name.lower()} by someone else")
            return
        tip = await self.evm.height()
        if not is_stuck(job.sent_height, tip, self.policy.stuck_blocks):
            if (await self.evm.tx_status(job.spend_tx)).confirmations < 0:
                await self.evm.send(job.spend_raw)  # unknown to the node (a restart, an eviction): same bytes again
            return
        # Stuck, whether still pending or evicted as underpriced (Anvil drops those): same nonce, higher fees.
        fields = await evm_bump(self.evm, EvmTxFields.from_dict(json.loads(job.evm_tx)), self.policy.evm_bump_multiplier)
        sender = self.evm.account(self.evm_key).address
        mined_count = await self.evm.nonce(sender)
        how = f"same nonce {fields.nonce}"
        if mined_count > fields.nonce:
            # Another transaction of this key took the nonce (ours was dropped meanwhile): the swap
            # is still locked, so the claim or refund goes out again under the next free nonce.
            fields = replace(fields, nonce=await self._next_nonce(sender))
            how = f"nonce {fields.nonce} (the old one was taken)"
        raw, tx_hash = fields.sign(self.evm, self.evm_key)
        self.store.transition(
            job.id,
            SPEND_SENT,
            SPEND_INTENDED,
            f"{job.spend_tx} pending {tip - job.sent_height} blocks: {how}, max fee {fields.max_fee}, tip {fields.priority_fee} wei",
            spend_level=job.spend_level + 1,
            spend_raw=raw,
            spend_tx=tx_hash,
            evm_tx=json.dumps(fields.to_dict()),
        )


def describe(job: WatchJob, actions: list[Any] | None = None, sent: list[str] | None = None) -> dict[str, Any]:
    """A job as GET /jobs/{id} shows it (never the pre-signed bytes); ``sent`` is the store's
    ``spend_versions`` of the job (newest first), shown oldest first as ``spend_history``."""
    out = {
        "id": job.id,
        "kind": job.kind,
        "chain": job.chain,
        "state": job.state,
        "hashlock": job.hashlock,
        "expiry": job.expiry,
        "payout": job.payout,
        "secret_known": job.secret is not None,
        "spend_tx": job.spend_tx,
        "spend_level": job.spend_level,
        "spend_history": list(reversed(sent or [])),
        "sent_height": job.sent_height,
        "attempts": job.attempts,
        "last_error": job.last_error,
    }
    if actions is not None:
        out["actions"] = [{"at": a.at, "from": a.from_state, "to": a.to_state, "note": a.note} for a in actions]
    return out
