"""What one swap leg does on its chain: lock, audit the counterparty's lock, find the
secret, claim, refund.  One class per chain family, same methods.

Every broadcast is safe to repeat: Bitcoin transactions are signed once, stored by
the engine with the intent, and re-sent byte for byte (the adapter's ``send`` is
idempotent); EVM calls first look on chain for what a previous attempt did (a
``Locked`` event with our hashlock, the swap's status) and refuse to send while the
key has a transaction pending, so a restart never locks or claims twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from bridge.errors import BridgeError, InputError, NotFound, RpcError
from bridge.swaps.assets import BITCOIN, EVM
from bridge.swaps.models import SwapLeg
from bridge.swaps.store import SwapView
from bridge.swaps.timelock import ChainTime
from chains.bitcoin import COINBASE_MATURITY, BitcoinAdapter, BitcoinTxFilter
from chains.bitcoin_tx import btc_to_sats
from chains.bitcoin_wallet import BtcKey, Utxo
from chains.btc.primitives import Tx
from chains.btc.rpc_errors import RPC_METHOD_NOT_FOUND
from chains.evm import EvmAdapter
from htlc.audit import AuditError, audit
from htlc.bitcoin_script import TEMPLATE_P2WSH, htlc_script_pubkey, p2wsh_htlc_script
from htlc.bitcoin_tx import HtlcCoin, build_claim, build_funding, build_refund
from htlc.evm import ETH as ETH_TOKEN
from htlc.evm import Claimed, Erc20, EvmHtlc, Locked, SwapStatus, load_artifact
from htlc.secret import secret_in_spends

if TYPE_CHECKING:
    from bridge.swaps.observe import ChainIndex


class LockRefused(InputError):
    """The counterparty's lock is not what was agreed; ``reason`` names the difference."""

    def __init__(self, reason: str, **details: Any) -> None:
        super().__init__(f"lock refused: {reason}", reason=reason, **details)
        self.reason = reason


class NotYet(BridgeError):
    """Something the step waits for is not there yet (a lock, confirmations, a pending tx).

    ``on_event``: what it waits for arrives as an event the indexer or the LP's API wakes the
    swap for, so the engine need not poll for it (it re-checks now and then all the same).
    """

    retryable = True

    def __init__(self, message: str, *, on_event: bool = False, **details: Any) -> None:
        super().__init__(message, **details)
        self.on_event = on_event


@dataclass(frozen=True)
class LockSeen:
    ref: str
    tx: str
    amount: int
    expiry: int
    confirmations: int


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _secret_in_witness(items: list[bytes], hashlock: bytes) -> bytes | None:
    return next((i for i in items if len(i) == 32 and _sha256(i) == hashlock), None)


def _split_ref(ref: str) -> tuple[str, int]:
    txid, _, vout = ref.partition(":")
    if len(txid) != 64 or not vout.isdigit():
        raise InputError(f"bitcoin lock reference must be TXID:VOUT, got {ref!r}", field="lock_ref")
    return txid, int(vout)


class BitcoinLeg:
    chain = BITCOIN

    def __init__(
        self, adapter: BitcoinAdapter, key: BtcKey, feerate: int | None = None,
        reserved: Callable[[], set[tuple[str, int]]] = set,
    ) -> None:
        self.adapter = adapter
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

    async def now(self) -> ChainTime:
        head = await self.adapter.head()
        return ChainTime(head.height, head.timestamp)

    async def _feerate(self) -> int:
        return self.feerate if self.feerate is not None else await self.adapter.estimate_feerate()

    def _script(self, view: SwapView, leg: SwapLeg) -> bytes:
        return p2wsh_htlc_script(
            bytes.fromhex(view.swap.hashlock), bytes.fromhex(leg.recipient), bytes.fromhex(leg.sender), leg.expiry
        )

    async def _spendable(self, include_reserved: bool = False) -> list[Utxo]:
        """Coins a new lock may use: ours, unconfirmed change included, mature, and not reserved
        by a recorded but not yet broadcast lock (after a crash) whose stored bytes spend them."""
        coins = await self.adapter.utxos([self.key.p2wpkh_script], include_mempool=True)
        tip = await self.adapter.height()
        reserved = set() if include_reserved else self.reserved()
        return [
            u for u in coins
            if u.outpoint not in reserved and not (u.coinbase and u.height is not None and tip - u.height + 1 < COINBASE_MATURITY)
        ]

    async def balance(self, asset_token: str | None, include_reserved: bool = False) -> int:
        return sum(u.value_sats for u in await self._spendable(include_reserved))

    # --- our lock -------------------------------------------------------------

    async def prepare_lock(self, view: SwapView, leg: SwapLeg) -> dict[str, Any]:
        script = self._script(view, leg)
        spk = htlc_script_pubkey(TEMPLATE_P2WSH, script)
        signed = build_funding(await self._spendable(), [self.key], spk, leg.value, await self._feerate(), network=self.adapter.network)
        vout = next(n for n, out in enumerate(Tx.parse(bytes.fromhex(signed.raw_hex)).vout) if out.script_pubkey == spk)
        return {
            "script": script.hex(), "lock_raw": signed.raw_hex, "lock_tx": signed.txid,
            "lock_ref": f"{signed.txid}:{vout}", "watch_from": await self.adapter.height(),
        }

    async def broadcast_lock(self, view: SwapView, leg: SwapLeg) -> dict[str, Any]:
        await self.adapter.send(leg.lock_raw)
        return {}

    async def lock_confirmations(self, view: SwapView, leg: SwapLeg) -> int:
        txid, vout = _split_ref(leg.lock_ref)
        out = await self.adapter.rpc.call("gettxout", txid, vout, True)
        if out is not None:
            return int(out.get("confirmations") or 0)
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
        out = await self.adapter.rpc.call("gettxout", txid, vout, True)
        if out is None:
            raise NotYet(f"bitcoin lock output {ref} is not (or no longer) in the UTXO set or mempool")
        if out["scriptPubKey"]["hex"] != terms.script_pubkey.hex():
            raise LockRefused(f"output {ref} does not pay the HTLC script (wrong hash, keys or expiry)")
        amount = btc_to_sats(out["value"])
        if amount != leg.value:
            raise LockRefused(f"wrong amount: the HTLC holds {amount} sats, agreed {leg.value}")
        return LockSeen(ref, txid, amount, terms.locktime, int(out.get("confirmations") or 0))

    # --- secret and spends -------------------------------------------------------

    async def find_lock(self, view: SwapView, leg: SwapLeg) -> dict[str, Any] | None:
        """A counterparty lock seen on chain before it was reported: not knowable here (the script
        commits to an expiry only the locker knows), so Bitcoin locks are always reported."""
        return None

    async def find_secret(self, view: SwapView, leg: SwapLeg) -> bytes | None:
        """The preimage from whatever spent the HTLC output (mempool or chain), if anything did."""
        txid, vout = _split_ref(leg.lock_ref)
        if await self.adapter.rpc.call("gettxout", txid, vout, True) is not None:
            return None
        hashlock = bytes.fromhex(view.swap.hashlock)
        spent = await self._indexed_spend(leg.lock_ref)
        if spent is not None:
            return _secret_in_witness(spent.witness_items(), hashlock)
        spender = await self._mempool_spender(txid, vout)
        if spender is not None:
            return secret_in_spends([spender], (txid, vout), hashlock)
        if not await self._scan_needed():
            return None  # spent in a block the indexer has not reached yet: it wakes us when it does
        return secret_in_spends(await self._scan_spends(leg, txid, vout), (txid, vout), hashlock)

    async def settled(self, view: SwapView, leg: SwapLeg) -> str | None:
        """How the chain settled this HTLC: "claimed" (the spend reveals the secret), "refunded",
        or None while it is unspent or spent only in the mempool (a reorg may still undo it)."""
        txid, vout = _split_ref(leg.lock_ref)
        if await self.adapter.rpc.call("gettxout", txid, vout, False) is not None:
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
        if self.index is None:
            return True
        height = self.index.indexed_height()
        return height is not None and height >= await self.adapter.height()

    async def _mempool_spender(self, txid: str, vout: int) -> dict | None:
        try:
            [entry] = await self.adapter.rpc.call("gettxspendingprevout", [{"txid": txid, "vout": vout}])
        except RpcError as exc:
            if exc.code != RPC_METHOD_NOT_FOUND:
                raise
            # A node without gettxspendingprevout (bitcoind < 24): look through the mempool.
            for t in await self.adapter.rpc.call("getrawmempool"):
                tx = await self.adapter.rpc.call("getrawtransaction", t, True)
                if any((i.get("txid"), i.get("vout")) == (txid, vout) for i in tx.get("vin", [])):
                    return tx
            return None
        spender = entry.get("spendingtxid")
        if spender is None:
            return None
        try:
            return await self.adapter.rpc.call("getrawtransaction", spender, True)
        except NotFound:
            return None  # mined or replaced in between: the next look finds it

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

    async def broadcast_spend(self, view: SwapView, leg: SwapLeg) -> None:
        await self.adapter.send(leg.spend_raw)

    async def spend_confirmations(self, view: SwapView, leg: SwapLeg) -> int:
        """Confirmations of whichever version of our spend (fee bumps) made it, else 0/-1."""
        best = -1
        for txid in [leg.spend_tx, *(leg.spend_history or "").split(",")]:
            if txid:
                best = max(best, (await self.adapter.tx_status(txid)).confirmations)
        return best


class EvmLeg:
    chain = EVM

    def __init__(self, adapter: EvmAdapter, htlc: EvmHtlc, key: str) -> None:
        self.adapter = adapter
        self.htlc = htlc
        self.key = key
        self.address = adapter.account(key).address
        self._code_checked = False
        self._send_guard = asyncio.Lock()
        #: The HTLC contract's events for our swaps, kept by the indexer (``observe.SwapObservers``);
        #: without it (one-off commands) the leg reads the logs itself.
        self.index: "ChainIndex | None" = None

    @property
    def identity(self) -> str:
        return self.address

    async def now(self) -> ChainTime:
        head = await self.adapter.head()
        return ChainTime(head.height, head.timestamp)

    async def balance(self, token: str | None, include_reserved: bool = False) -> int:
        if token is None:
            return await self.adapter.balance(self.address)
        return await Erc20(self.adapter, token).balance(self.address)

    async def _check_no_pending(self) -> None:
        # A transaction of ours still in the mempool may be the lock/claim a crashed
        # attempt sent; sending again would use a new nonce and do it twice.
        pending = int(await self.adapter.rpc.call("eth_getTransactionCount", [self.address, "pending"]), 16)
        latest = int(await self.adapter.rpc.call("eth_getTransactionCount", [self.address, "latest"]), 16)
        if pending > latest:
            raise NotYet(f"{pending - latest} transaction(s) from {self.address} still pending")

    async def _locked(self, view: SwapView, leg: SwapLeg) -> Locked | None:
        """Our own earlier lock for this swap, found by hashlock and sender."""
        hashlock = bytes.fromhex(view.swap.hashlock)
        if self.index is not None and await self._index_current():
            return self.index.locked_by(view.swap.hashlock, self.address)
        for event in await self.htlc.events(leg.watch_from or 0):
            if isinstance(event, Locked) and event.swap.hashlock == hashlock and event.swap.sender == self.address:
                return event
        return None

    async def _index_current(self) -> bool:
        """Has the indexer looked at every block there is?  (Only then is "not indexed" "not there".)"""
        height = self.index.indexed_height() if self.index is not None else None
        return height is not None and height >= await self.adapter.height()

    async def _locked_event(self, ref: str, watch_from: int | None) -> Locked | None:
        if self.index is not None:
            found = self.index.locked(ref)
            if found is not None or not await self._index_current():
                return found
        try:
            return await self.htlc.locked_swap(ref, watch_from or 0)
        except NotFound:
            return None

    async def _params(self, leg: SwapLeg) -> tuple[Locked, SwapStatus]:
        event = await self._locked_event(leg.lock_ref, leg.watch_from)
        if event is None:
            raise NotYet(f"no Locked event for swap {leg.lock_ref} since block {leg.watch_from}")
        return event, await self.htlc.swap(event.id)

    # --- our lock -------------------------------------------------------------

    async def prepare_lock(self, view: SwapView, leg: SwapLeg) -> dict[str, Any]:
        return {"watch_from": await self.adapter.height()}

    async def broadcast_lock(self, view: SwapView, leg: SwapLeg) -> dict[str, Any]:
        found = await self._locked(view, leg)
        if found is None:
            # One lock at a time per key: an ERC-20 approval is overwritten by the next one, and
            # the pending-transaction guard must not mistake another swap's lock for ours.
            async with self._send_guard:
                found = await self._locked(view, leg)
                if found is None:
                    await self._check_no_pending()
                    token = leg.token or ETH_TOKEN
                    if leg.token is not None:
                        await Erc20(self.adapter, leg.token).approve(self.key, self.htlc.address, leg.value)
                    await self.htlc.lock(self.key, leg.recipient, token, leg.value, bytes.fromhex(view.swap.hashlock), leg.expiry)
                    found = await self._locked(view, leg)
            if found is None:
                raise NotYet("lock sent but its Locked event is not visible yet")
        return {"lock_ref": "0x" + found.id.hex(), "lock_tx": found.where.tx_hash}

    async def lock_confirmations(self, view: SwapView, leg: SwapLeg) -> int:
        event, _ = await self._params(leg)
        return await self.adapter.height() - event.where.block_number + 1

    # --- the counterparty's lock ------------------------------------------------

    async def _check_contract(self) -> None:
        if self._code_checked:
            return
        code = await self.adapter.code(self.htlc.address)
        expected = load_artifact("HTLC")["deployedBytecode"]
        expected = bytes.fromhex(expected.removeprefix("0x")) if isinstance(expected, str) else expected
        if code != expected:
            raise LockRefused(f"contract at {self.htlc.address} is not the audited HTLC bytecode")
        self._code_checked = True

    async def audit_lock(self, view: SwapView, leg: SwapLeg, ref: str, script_hex: str | None = None) -> LockSeen:
        await self._check_contract()
        try:
            found = await self._locked_event(ref, leg.watch_from)
        except InputError as exc:
            raise LockRefused(f"bad swap id {ref!r}: {exc.message}") from None
        if found is None:
            raise NotYet(f"no Locked event for swap {ref} yet", on_event=self.index is not None)
        p = found.swap
        if p.hashlock.hex() != view.swap.hashlock:
            raise LockRefused(f"wrong hash: the lock uses {p.hashlock.hex()}, agreed {view.swap.hashlock}")
        if p.recipient != self.address:
            raise LockRefused(f"wrong keys: the lock pays {p.recipient}, not us ({self.address})")
        if leg.sender and p.sender.lower() != leg.sender.lower():
            raise LockRefused(f"wrong keys: the lock was made by {p.sender}, agreed {leg.sender}")
        if p.token.lower() != (leg.token or ETH_TOKEN).lower():
            raise LockRefused(f"wrong asset: the lock holds token {p.token}, agreed {leg.token or 'ETH'}")
        if p.amount != leg.value:
            raise LockRefused(f"wrong amount: the lock holds {p.amount}, agreed {leg.value}")
        if leg.expiry is not None and p.expiry != leg.expiry:
            raise LockRefused(f"wrong expiry: the lock expires at {p.expiry}, agreed {leg.expiry}")
        # The index may lag the chain by a poll: where the lock is now, and whether it still is,
        # comes from the node (a reorg may have dropped or moved it).
        receipt = await self.adapter.rpc.call("eth_getTransactionReceipt", [found.where.tx_hash])
        status = await self.htlc.swap(found.id)
        if receipt is None or receipt.get("blockNumber") is None or status == SwapStatus.NONE:
            raise NotYet(f"no Locked event for swap {ref} on the chain now (dropped by a reorg?)", on_event=self.index is not None)
        if status != SwapStatus.LOCKED:
            raise LockRefused(f"the lock is {status.name.lower()}, no longer claimable")
        confirmations = await self.adapter.height() - int(receipt["blockNumber"], 16) + 1
        return LockSeen("0x" + found.id.hex(), found.where.tx_hash, p.amount, p.expiry, confirmations)

    # --- secret and spends -------------------------------------------------------

    async def find_lock(self, view: SwapView, leg: SwapLeg) -> dict[str, Any] | None:
        """The counterparty's lock for this swap as the indexer saw it (hashlock and recipient match;
        the caller audits the rest), before the counterparty reported it."""
        if self.index is None:
            return None
        found = self.index.locked_to(view.swap.hashlock, self.address)
        return {"lock_ref": "0x" + found.id.hex()} if found is not None else None

    async def find_secret(self, view: SwapView, leg: SwapLeg) -> bytes | None:
        if self.index is not None:
            # Our swaps' Claimed events are all indexed from before the lock; the indexer wakes us.
            row = self.index.settlement(leg.lock_ref)
            return bytes.fromhex(row.preimage) if row is not None and row.preimage else None
        for event in await self.htlc.events(leg.watch_from or 0, swap_id=leg.lock_ref):
            if isinstance(event, Claimed):
                return bytes(event.preimage)
        return None

    async def settled(self, view: SwapView, leg: SwapLeg) -> str | None:
        """"claimed" or "refunded" once the contract says so, else None."""
        status = await self.htlc.swap(leg.lock_ref)
        return {SwapStatus.CLAIMED: "claimed", SwapStatus.REFUNDED: "refunded"}.get(status)

    async def prepare_spend(self, view: SwapView, leg: SwapLeg, kind: str, secret: bytes | None, feerate: int | None = None) -> dict[str, Any]:
        return {"spend_kind": kind}

    async def broadcast_spend(self, view: SwapView, leg: SwapLeg) -> None:
        event, status = await self._params(leg)
        if status != SwapStatus.LOCKED:
            return  # settled already: by our earlier attempt, or by the counterparty
        async with self._send_guard:
            await self._check_no_pending()
            if leg.spend_kind == "claim":
                await self.htlc.claim(self.key, event.swap, bytes.fromhex(view.swap.secret))
            else:
                await self.htlc.refund(self.key, event.swap)

    async def spend_confirmations(self, view: SwapView, leg: SwapLeg) -> int:
        event, status = await self._params(leg)
        wanted = SwapStatus.CLAIMED if leg.spend_kind == "claim" else SwapStatus.REFUNDED
        if status == wanted:
            return 1
        if status == SwapStatus.LOCKED:
            return 0
        raise LockRefused(f"swap {leg.lock_ref} was {status.name.lower()} by the counterparty, not {leg.spend_kind}ed")


Leg = BitcoinLeg | EvmLeg
