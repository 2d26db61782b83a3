"""The Bitcoin leg: an HTLC output (P2WSH) locked, audited, claimed or refunded with
transactions signed here and re-sent byte for byte (see ``legs.base.Leg``)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import TYPE_CHECKING, Any, Callable

from bridge.core.dbapi import Db
from bridge.core.errors import InputError
from bridge.swaps.clock import ChainClock
from bridge.swaps.legs.base import LockRefused, LockSeen, NotYet
from bridge.swaps.models import SwapLeg
from bridge.swaps.observe import BtcSpendConsumer, outpoints_selector
from bridge.swaps.store import SwapView
from bridge.swaps.timelock import ChainTime
from chains.base import BITCOIN
from chains.bitcoin import COINBASE_MATURITY, BitcoinAdapter, BitcoinTxFilter
from chains.bitcoin_wallet import BtcKey, Utxo
from chains.btc.primitives import Tx
from htlc.audit import AuditError, audit
from htlc.bitcoin_script import TEMPLATE_P2WSH, htlc_script_pubkey, p2wsh_htlc_script
from htlc.bitcoin_tx import HtlcCoin, build_claim, build_funding, build_refund
from htlc.secret import secret_in_spends

if TYPE_CHECKING:
    from bridge.swaps.observe import ChainIndex


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _secret_in_witness(items: list[bytes], hashlock: bytes) -> bytes | None:
    return next((i for i in items if len(i) == 32 and _sha256(i) == hashlock), None)


_BTC_REF = re.compile(r"([0-9a-fA-F]{64}):([0-9]{1,10})")


def _split_ref(ref: str) -> tuple[str, int]:
    """``TXID:VOUT`` as (lower-case txid, vout): one spelling per output."""
    found = _BTC_REF.fullmatch(ref)
    if found is None:
        raise InputError(f"bitcoin lock reference must be TXID:VOUT, got {ref[:80]!r}", field="lock_ref")
    return found[1].lower(), int(found[2])


class BitcoinLeg:
    chain = BITCOIN

    def __init__(
        self,
        adapter: BitcoinAdapter,
        key: BtcKey,
        feerate: int | None = None,
        reserved: Callable[[], set[tuple[str, int]]] = set,
    ) -> None:
        self.adapter = adapter
        self.clock = ChainClock(adapter)
        self.finds_locks = False
        self.key = key
        self.feerate = feerate
        #: Outpoints of our own stored, unconfirmed lock transactions (see ``SwapStore.reserved_inputs``).
        self.reserved = reserved
        #: Mined spends of our HTLC outputs, kept by the indexer (``observe.SwapObservers``); without
        #: it (one-off commands) the leg scans the chain itself.
        self.index: "ChainIndex | None" = None

    @property
    def identity(self) -> str:
        """What the counterparty names us by on this chain: our compressed pubkey."""
        return self.key.pubkey.hex()

    def observer(self, db: Db, wake: Callable[[set[str]], None]) -> tuple[BtcSpendConsumer, Callable[[], BitcoinTxFilter]]:
        """The indexer keeps the mined spends of our swaps' HTLC outputs, looking for those outputs."""
        return BtcSpendConsumer(wake), outpoints_selector(db)

    async def now(self) -> ChainTime:
        return await self.clock.now()

    def time_left_text(self, leg: SwapLeg, now: ChainTime) -> str:
        return f"{leg.expiry - now.height} blocks to the {leg.leg} leg's expiry (height {leg.expiry})"

    async def _feerate(self) -> int:
        return self.feerate if self.feerate is not None else await self.adapter.estimate_feerate()

    def _script(self, view: SwapView, leg: SwapLeg) -> bytes:
        return p2wsh_htlc_script(bytes.fromhex(view.swap.hashlock), bytes.fromhex(leg.recipient), bytes.fromhex(leg.sender), leg.expiry)

    async def _spendable(self, include_reserved: bool = False) -> list[Utxo]:
        """Coins a new lock may use: ours, unconfirmed change included, mature, and not reserved
        by a recorded but not yet broadcast lock (after a crash) whose stored bytes spend them."""
        coins, tip = await asyncio.gather(self.adapter.utxos([self.key.p2wpkh_script], include_mempool=True), self.adapter.height())
        reserved = set() if include_reserved else self.reserved()
        return [u for u in coins if u.outpoint not in reserved and not (u.coinbase and u.height is not None and tip - u.height + 1 < COINBASE_MATURITY)]

    async def balance(self, token: str | None, include_reserved: bool = False) -> int:
        return sum(u.value_sats for u in await self._spendable(include_reserved))

    # --- our lock -------------------------------------------------------------

    async def prepare_lock(self, view: SwapView, leg: SwapLeg) -> dict[str, Any]:
        script = self._script(view, leg)
        spk = htlc_script_pubkey(TEMPLATE_P2WSH, script)
        signed = build_funding(await self._spendable(), [self.key], spk, leg.value, await self._feerate(), network=self.adapter.network)
        vout = next(n for n, out in enumerate(Tx.parse(bytes.fromhex(signed.raw_hex)).vout) if out.script_pubkey == spk)
        return {
            "script": script.hex(),
            "lock_raw": signed.raw_hex,
            "lock_tx": signed.txid,
            "lock_ref": f"{signed.txid}:{vout}",
            "watch_from": (await self.clock.now()).height,
        }

    async def broadcast_lock(self, view: SwapView, leg: SwapLeg, fresh: bool = False) -> dict[str, Any]:
        await self.adapter.send(leg.lock_raw)
        return {}

    async def lock_confirmations(self, view: SwapView, leg: SwapLeg) -> int:
        txid, vout = _split_ref(leg.lock_ref)
        out = await self.adapter.txout(txid, vout)
        if out is not None:
            return out.confirmations
        return (await self.adapter.tx_status(txid)).confirmations

    # --- the counterparty's lock ------------------------------------------------

    async def audit_lock(self, view: SwapView, leg: SwapLeg, ref: str, script_hex: str | None) -> LockSeen:
        """Check the counterparty's HTLC output against the agreed terms.

        ``leg.expiry`` None means the expiry was not agreed up front (the participant
        picks it when locking); the caller then applies the timelock policy to it.
        """
        if not script_hex:
            raise LockRefused("no HTLC script was given for the bitcoin lock")
        try:
            script = bytes.fromhex(script_hex)
            terms = audit(script, network=self.adapter.network)
        except (ValueError, AuditError) as exc:
            raise LockRefused(f"script is not our HTLC template: {getattr(exc, 'reason', exc)}") from None
        if terms.template != TEMPLATE_P2WSH:
            raise LockRefused(f"template {terms.template} is not the agreed p2wsh")
        if terms.hashlock.hex() != view.swap.hashlock:
            raise LockRefused(f"wrong hash: the script locks to {terms.hashlock.hex()}, agreed {view.swap.hashlock}")
        if terms.claim_pubkey.hex() != self.identity:
            raise LockRefused("wrong keys: the script's claim key is not ours")
        if terms.refund_pubkey.hex() != leg.sender:
            raise LockRefused("wrong keys: the script's refund key is not the counterparty's agreed key")
        if leg.expiry is not None and terms.locktime != leg.expiry:
            raise LockRefused(f"wrong expiry: the script refunds at height {terms.locktime}, agreed {leg.expiry}")
        txid, vout = _split_ref(ref)
        out = await self.adapter.txout(txid, vout)
        if out is None:
            raise NotYet(f"bitcoin lock output {ref} is not (or no longer) in the UTXO set or mempool")
        if out.script_pubkey != terms.script_pubkey:
            raise LockRefused(f"output {ref} does not pay the HTLC script (wrong hash, keys or expiry)")
        if out.value != leg.value:
            raise LockRefused(f"wrong amount: the HTLC holds {out.value} sats, agreed {leg.value}")
        return LockSeen(f"{txid}:{vout}", txid, out.value, terms.locktime, out.confirmations)

    # --- secret and spends -------------------------------------------------------

    async def find_lock(self, view: SwapView, leg: SwapLeg) -> dict[str, Any] | None:
        """A counterparty lock seen on chain before it was reported: not knowable here (the script
        commits to an expiry only the locker knows), so Bitcoin locks are always reported."""
        return None

    async def find_secret(self, view: SwapView, leg: SwapLeg) -> bytes | None:
        """The preimage from whatever spent the HTLC output (mempool or chain), if anything did."""
        txid, vout = _split_ref(leg.lock_ref)
        if await self.adapter.txout(txid, vout) is not None:
            return None
        hashlock = bytes.fromhex(view.swap.hashlock)
        spent = await self._indexed_spend(leg.lock_ref)
        if spent is not None:
            return _secret_in_witness(spent.witness_items(), hashlock)
        spender = await self.adapter.mempool_spender((txid, vout))
        if spender is not None:
            return secret_in_spends([spender], (txid, vout), hashlock)
        if not await self._scan_needed():
            return None  # spent in a block the indexer has not reached yet: it wakes us when it does
        return secret_in_spends(await self._scan_spends(leg, txid, vout), (txid, vout), hashlock)

    async def settled(self, view: SwapView, leg: SwapLeg) -> str | None:
        """How the chain settled this HTLC: "claimed" (the spend reveals the secret), "refunded",
        or None while it is unspent or spent only in the mempool (a reorg may still undo it)."""
        txid, vout = _split_ref(leg.lock_ref)
        if await self.adapter.txout(txid, vout, include_mempool=False) is not None:
            return None
        hashlock = bytes.fromhex(view.swap.hashlock)
        spent = await self._indexed_spend(leg.lock_ref)
        if spent is not None:
            return "claimed" if _secret_in_witness(spent.witness_items(), hashlock) else "refunded"
        if not await self._scan_needed():
            return None
        for tx in await self._scan_spends(leg, txid, vout):
            for vin in tx.get("vin", []):
                if (vin.get("txid"), vin.get("vout")) == (txid, vout):
                    items = [bytes.fromhex(i) for i in vin.get("txinwitness", [])]
                    return "claimed" if _secret_in_witness(items, hashlock) else "refunded"
        return None

    async def _indexed_spend(self, ref: str) -> Any:
        return self.index.btc_spend(ref) if self.index is not None else None

    async def _scan_needed(self) -> bool:
        """Scan blocks ourselves only without an indexer, or when it has caught up and still has no
        spend (an output it started watching after the spend, e.g. a lock reported late)."""
        return self.index is None or await self.index.caught_up()

    async def _scan_spends(self, leg: SwapLeg, txid: str, vout: int) -> list[Any]:
        tip = await self.adapter.height()
        start = leg.watch_from if leg.watch_from is not None else max(tip - 1000, 0)
        if start > tip:
            return []
        return [e.data["tx"] for e in await self.adapter.events(start, tip, BitcoinTxFilter(outpoints=[(txid, vout)]))]

    async def prepare_spend(self, view: SwapView, leg: SwapLeg, kind: str, secret: bytes | None, feerate: int | None = None) -> dict[str, Any]:
        txid, vout = _split_ref(leg.lock_ref)
        coin = HtlcCoin(txid, vout, leg.value, bytes.fromhex(leg.script))
        feerate = feerate or await self._feerate()
        network = self.adapter.network
        if kind == "claim":
            signed = build_claim(coin, secret, self.key, self.key.p2wpkh_script, feerate, network=network)
        else:
            signed = build_refund(coin, self.key, self.key.p2wpkh_script, feerate, network=network)
        return {"spend_kind": kind, "spend_raw": signed.hex, "spend_tx": signed.txid, "spend_feerate": feerate}

    async def prepare_bump(self, view: SwapView, leg: SwapLeg, kind: str, secret: bytes | None) -> tuple[dict[str, Any], str]:
        """The same spend at a higher feerate (BIP125/full RBF); ``InputError`` past the builders' fee caps."""
        old_rate = leg.spend_feerate or 1
        new_rate = old_rate + max(1, old_rate // 2)
        fields = await self.prepare_spend(view, leg, kind, secret, feerate=new_rate)
        return fields, f"fee bump {old_rate} -> {new_rate} sat/vB"

    async def stale(self, view: SwapView, leg: SwapLeg, what: str) -> bool:
        return False  # coins, not nonces: a recorded transaction stays valid until its inputs are spent

    async def renew(self, view: SwapView, leg: SwapLeg, what: str) -> tuple[dict[str, Any], str] | None:
        return None

    async def broadcast_spend(self, view: SwapView, leg: SwapLeg, fresh: bool = False) -> None:
        await self.adapter.send(leg.spend_raw)

    async def spend_confirmations(self, view: SwapView, leg: SwapLeg) -> int:
        """Confirmations of whichever version of our spend (fee bumps) made it, else 0/-1."""
        best = -1
        for txid in view.spend_versions(leg):
            # Its one output is ours and most often unspent: its depth in one call; else the
            # transaction's status (two).
            out = await self.adapter.txout(txid, 0)
            confirmations = out.confirmations if out is not None else (await self.adapter.tx_status(txid)).confirmations
            best = max(best, confirmations)
        return best
