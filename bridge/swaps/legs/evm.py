"""The EVM leg: a swap locked in the HTLC contract (ETH or an ERC-20 after its approve), audited
from its ``Locked`` event, claimed or refunded with transactions signed here under an explicit
nonce and re-sent byte for byte (see ``legs.base.Leg``).  Also the gas table and the JSON of the
swap parameters it records.

About 400 lines: one leg, its gas table and the parameter codec it alone uses.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from eth_utils import to_checksum_address

from bridge.core.dbapi import Db
from bridge.core.errors import InputError, NonceConflict, NotFound, TransactionRejected
from bridge.swaps.clock import ChainClock
from bridge.swaps.legs.base import LockRefused, LockSeen, NotYet
from bridge.swaps.models import SwapLeg
from bridge.swaps.observe import EvmHtlcConsumer
from bridge.swaps.store import SwapView
from bridge.swaps.timelock import ChainTime
from chains.base import EVM
from chains.evm import EvmAdapter, EvmLogFilter, EvmReceipt
from chains.evm_fees import Fees
from chains.evm_rpc import is_priced_out
from chains.fee_bump import EvmTxFields, evm_bump
from htlc.evm import ETH as ETH_TOKEN
from htlc.evm import Claimed, Erc20, EvmHtlc, Locked, SwapParams, SwapStatus, encode_call, load_artifact

if TYPE_CHECKING:
    from bridge.swaps.observe import ChainIndex


#: Gas limit per call kind.  A lock is signed before its approve is mined (and any transaction
#: before the one ahead of it), so estimation can fail; these are fixed.  Measured on Anvil with
#: HTLC.sol and TestToken: ETH lock 72k (a sender's first, 55k after), ERC-20 lock 109k (the first
#: into an HTLC holding none of the token yet; 92k after), approve 46k,
#: claim 43k (ETH) / 62k (ERC-20, a recipient's first tokens), refund 39k / 43k.  Unused gas is not
#: paid; the headroom is for tokens that do more in ``transfer``.
EVM_GAS = {"approve": 100_000, "lock_eth": 120_000, "lock_erc20": 250_000, "claim": 120_000, "refund": 120_000}


def _params_json(params: SwapParams, block: int) -> str:
    return json.dumps(
        {
            "sender": params.sender,
            "recipient": params.recipient,
            "token": params.token,
            "amount": params.amount,
            "hashlock": params.hashlock.hex(),
            "expiry": params.expiry,
            "nonce": params.nonce,
            "block": block,
        }
    )


def _params_from_json(text: str) -> SwapParams:
    p = json.loads(text)
    return SwapParams(p["sender"], p["recipient"], p["token"], p["amount"], bytes.fromhex(p["hashlock"]), p["expiry"], p["nonce"])


class EvmLeg:
    """EVM transactions are signed with an explicit nonce, recorded by the engine, then sent
    (again and again: ``EvmAdapter.send`` is idempotent), like Bitcoin's.

    Nonces come from the adapter's one allocator (``chains.evm_nonce``): past both the node's
    pending count and every nonce a recorded, still intended transaction of this party holds
    (``held``: ``SwapStore.evm_nonces``), so a transaction recorded before a crash keeps its
    nonce until it is sent.  The engine holds its per-chain prepare guard from choosing a nonce
    until the transaction is recorded.
    """

    chain = EVM

    def __init__(self, adapter: EvmAdapter, htlc: EvmHtlc, key: str, held: Callable[[], list[int]] = list) -> None:
        self.adapter = adapter
        self.clock = ChainClock(adapter)
        self.finds_locks = True
        self.htlc = htlc
        self.key = key
        self.address = adapter.account(key).address
        self.held = held
        self._code_checked = False
        #: The HTLC contract's events for our swaps, kept by the indexer (``observe.SwapObservers``);
        #: without it (one-off commands) the leg reads the logs itself.
        self.index: "ChainIndex | None" = None
        #: Per token (None: ETH): the announced head's hash and our balance read under it.
        self._balances: dict[str | None, tuple[str, int]] = {}

    @property
    def identity(self) -> str:
        return self.address

    def observer(self, db: Db, wake: Callable[[set[str]], None]) -> tuple[EvmHtlcConsumer, EvmLogFilter]:
        """The indexer keeps our swaps' events of the HTLC contract, looking at that contract's logs."""
        return EvmHtlcConsumer(wake), EvmLogFilter(self.htlc.address)

    async def now(self) -> ChainTime:
        return await self.clock.now()

    def time_left_text(self, leg: SwapLeg, now: ChainTime) -> str:
        return f"{leg.expiry - now.timestamp}s to the {leg.leg} leg's expiry"

    async def balance(self, token: str | None, include_reserved: bool = False) -> int:
        # A balance at the latest block changes only with the next block: one read per announced
        # block serves every quote and lock check until then.
        head = self.adapter.announced_head()
        cached = self._balances.get(token)
        if head is not None and cached is not None and cached[0] == head.hash:
            return cached[1]
        value = await self.adapter.balance(self.address) if token is None else await Erc20(self.adapter, token).balance(self.address)
        if head is not None:
            self._balances[token] = (head.hash, value)
        return value

    # --- signing ------------------------------------------------------------------

    async def _nonce_and_fees(self) -> tuple[int, Fees]:
        """The nonce for our next transaction and today's fees, asked for at once."""
        return await asyncio.gather(self.adapter.nonces.next_free(self.address, self.held()), self.adapter.suggest_fees())

    async def _sign(self, nonce: int, fees: Fees, to: str, data: bytes, gas: int, value: int = 0) -> tuple[EvmTxFields, str, str]:
        fields = EvmTxFields(
            chain_id=await self.adapter.chain_id_int(),
            nonce=nonce,
            to=to,
            data="0x" + data.hex(),
            gas=gas,
            max_fee=fees.max_fee,
            priority_fee=fees.priority_fee,
            value=value,
        )
        raw, tx_hash = fields.sign(self.adapter, self.key)
        return fields, raw, tx_hash

    async def _mined(self, tx_hash: str) -> EvmReceipt | None:
        """The receipt of one of our transactions once mined (``ContractReverted`` if it failed)."""
        try:
            return await self.adapter.receipt(tx_hash, self.htlc.abi)
        except NotFound:
            return None

    # --- our lock -------------------------------------------------------------

    async def _sign_lock(self, view: SwapView, leg: SwapLeg, history: list[str]) -> dict[str, Any]:
        """An ERC-20 lock is its approve (nonce N) and the lock (N+1), signed and recorded together:
        consecutive nonces keep another lock's approve from landing in between."""
        nonce, fees = await self._nonce_and_fees()
        approve = None
        if leg.token is not None:
            token = to_checksum_address(leg.token)
            data = encode_call(Erc20(self.adapter, token).abi, "approve", self.htlc.address, leg.value)
            fields, raw, tx_hash = await self._sign(nonce, fees, token, data, EVM_GAS["approve"])
            approve = {"fields": fields.to_dict(), "raw": raw, "tx": tx_hash}
            nonce += 1
        data = encode_call(
            self.htlc.abi,
            "lock",
            to_checksum_address(leg.recipient),
            to_checksum_address(leg.token or ETH_TOKEN),
            leg.value,
            bytes.fromhex(view.swap.hashlock),
            leg.expiry,
        )
        if leg.token is None:
            fields, raw, tx_hash = await self._sign(nonce, fees, self.htlc.address, data, EVM_GAS["lock_eth"], leg.value)
        else:
            fields, raw, tx_hash = await self._sign(nonce, fees, self.htlc.address, data, EVM_GAS["lock_erc20"])
        lock = {"fields": fields.to_dict(), "tx": tx_hash, "approve": approve, "history": history}
        return {"lock_raw": raw, "lock_tx": tx_hash, "lock_evm": json.dumps(lock)}

    async def prepare_lock(self, view: SwapView, leg: SwapLeg) -> dict[str, Any]:
        # The clock's tip is never ahead of the node's: a start no later than the lock can be.
        return {"watch_from": (await self.clock.now()).height, **await self._sign_lock(view, leg, [])}

    async def _mined_lock(self, leg: SwapLeg) -> Locked | None:
        """Our lock, from the receipt of whichever recorded version was mined."""
        lock = json.loads(leg.lock_evm)
        for tx_hash in [lock["tx"], *lock["history"]]:
            receipt = await self._mined(tx_hash)
            found = self.htlc.locked_in(receipt.logs) if receipt is not None else []
            if found:
                return found[0]
        return None

    async def broadcast_lock(self, view: SwapView, leg: SwapLeg, fresh: bool = False) -> dict[str, Any]:
        found = None if fresh else await self._mined_lock(leg)
        if found is None:
            approve = json.loads(leg.lock_evm)["approve"]
            if approve is not None:
                await self.adapter.send(approve["raw"])  # mined already: the node answers with its hash
            await self.adapter.send(leg.lock_raw)
            found = await self._mined_lock(leg)  # Anvil mines at once; elsewhere the next step looks again
        if found is None:
            return {}
        return {"lock_ref": "0x" + found.id.hex(), "lock_tx": found.where.tx_hash, "lock_params": _params_json(found.swap, found.where.block_number)}

    async def lock_confirmations(self, view: SwapView, leg: SwapLeg) -> int:
        if not leg.lock_ref or not leg.lock_tx:
            return 0
        # The transaction's depth now, not the recorded block: a reorg that drops the lock shows
        # here (the node has receipts for its canonical chain only).
        receipt = await self._mined(leg.lock_tx)
        return await self._depth(receipt.block_number) if receipt is not None else 0

    async def _depth(self, block: int) -> int:
        """Confirmations of a block the node just showed us: the clock's tip may not have been
        announced that block yet, but the node holds it."""
        return max((await self.clock.now()).height, block) - block + 1

    # --- nonces taken by another transaction ------------------------------------------

    async def stale(self, view: SwapView, leg: SwapLeg, what: str) -> bool:
        """True when a recorded transaction can never be mined (another transaction of the key took
        its nonce, none of our versions was mined) while the swap still needs it: no lock yet, or
        for a spend, the HTLC still locked."""
        if what == "lock":
            if leg.lock_ref or not leg.lock_evm:
                return False
            nonce = json.loads(leg.lock_evm)["fields"]["nonce"]
            return await self.adapter.nonce(self.address) > nonce and await self._mined_lock(leg) is None
        if not leg.spend_evm:
            return False
        nonce = json.loads(leg.spend_evm)["nonce"]
        if await self.adapter.nonce(self.address) <= nonce:
            return False
        for tx_hash in view.spend_versions(leg):
            if (await self.adapter.tx_status(tx_hash)).confirmations >= 1:
                return False
        return await self.htlc.swap(leg.lock_ref) == SwapStatus.LOCKED

    async def renew(self, view: SwapView, leg: SwapLeg, what: str) -> tuple[dict[str, Any], str] | None:
        """The stale transaction re-signed under a fresh nonce (fields to record, a note), or None."""
        if not await self.stale(view, leg, what):
            return None
        if what == "lock":
            lock = json.loads(leg.lock_evm)
            fields = await self._sign_lock(view, leg, [*lock["history"], lock["tx"]])
            new = json.loads(fields["lock_evm"])["fields"]["nonce"]
            return fields, f"lock nonce {lock['fields']['nonce']} was taken by another transaction: re-signed as {fields['lock_tx']}, nonce {new}"
        old = EvmTxFields.from_dict(json.loads(leg.spend_evm))
        nonce, fees = await self._nonce_and_fees()
        new = replace(old, nonce=nonce, max_fee=max(old.max_fee, fees.max_fee), priority_fee=max(old.priority_fee, fees.priority_fee))
        raw, tx_hash = new.sign(self.adapter, self.key)
        return (
            {
                "spend_raw": raw,
                "spend_tx": tx_hash,
                "spend_evm": json.dumps(new.to_dict()),
                "spend_sent_at": None,
            },
            f"{leg.spend_kind} nonce {old.nonce} was taken by another transaction: re-signed as {tx_hash}, nonce {new.nonce}",
        )

    # --- the counterparty's lock ------------------------------------------------

    async def _locked_event(self, ref: str, watch_from: int | None) -> Locked | None:
        if self.index is not None:
            found = self.index.locked(ref)
            if found is not None or not await self.index.caught_up():
                return found
        try:
            return await self.htlc.locked_swap(ref, watch_from or 0)
        except NotFound:
            return None

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
        block, status = await asyncio.gather(self.adapter.mined_block(found.where.tx_hash), self.htlc.swap(found.id))
        if block is None or status == SwapStatus.NONE:
            raise NotYet(f"no Locked event for swap {ref} on the chain now (dropped by a reorg?)", on_event=self.index is not None)
        if status != SwapStatus.LOCKED:
            raise LockRefused(f"the lock is {status.name.lower()}, no longer claimable")
        confirmations = await self._depth(block)
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
        """ "claimed" or "refunded" once the contract says so, else None."""
        status = await self.htlc.swap(leg.lock_ref)
        return {SwapStatus.CLAIMED: "claimed", SwapStatus.REFUNDED: "refunded"}.get(status)

    async def _params(self, leg: SwapLeg) -> tuple[SwapParams, dict[str, Any]]:
        """The swap's parameters for claim/refund calldata, and the fields to record if they were
        not known yet: from the lock's receipt (its ``lock_tx``), else from its ``Locked`` event."""
        if leg.lock_params:
            return _params_from_json(leg.lock_params), {}
        found = None
        if leg.lock_tx:
            receipt = await self._mined(leg.lock_tx)
            found = next((e for e in self.htlc.locked_in(receipt.logs if receipt else []) if "0x" + e.id.hex() == leg.lock_ref.lower()), None)
        if found is None:
            try:
                found = await self.htlc.locked_swap(leg.lock_ref, leg.watch_from or 0)
            except NotFound:
                raise NotYet(f"no Locked event for swap {leg.lock_ref} since block {leg.watch_from}") from None
        return found.swap, {"lock_params": _params_json(found.swap, found.where.block_number)}

    async def prepare_spend(self, view: SwapView, leg: SwapLeg, kind: str, secret: bytes | None, feerate: int | None = None) -> dict[str, Any]:
        params, known = await self._params(leg)
        if kind == "claim":
            data = encode_call(self.htlc.abi, "claim", params.as_tuple(), secret)
        else:
            data = encode_call(self.htlc.abi, "refund", params.as_tuple())
        fields, raw, tx_hash = await self._sign(*await self._nonce_and_fees(), self.htlc.address, data, EVM_GAS[kind])
        return {**known, "spend_kind": kind, "spend_raw": raw, "spend_tx": tx_hash, "spend_evm": json.dumps(fields.to_dict())}

    async def prepare_bump(self, view: SwapView, leg: SwapLeg, kind: str, secret: bytes | None) -> tuple[dict[str, Any], str]:
        """The same claim/refund (same nonce) with both EIP-1559 fees raised, to replace the pending one."""
        old = EvmTxFields.from_dict(json.loads(leg.spend_evm))
        new = await evm_bump(self.adapter, old)
        raw, tx_hash = new.sign(self.adapter, self.key)
        note = f"fee bump, same nonce {new.nonce}: max fee {old.max_fee} -> {new.max_fee}, tip {old.priority_fee} -> {new.priority_fee} wei"
        return {"spend_raw": raw, "spend_tx": tx_hash, "spend_evm": json.dumps(new.to_dict())}, note

    async def broadcast_spend(self, view: SwapView, leg: SwapLeg, fresh: bool = False) -> None:
        """``fresh``: signed this step against a lock just seen locked (no look before sending)."""
        if not fresh and await self.htlc.swap(leg.lock_ref) != SwapStatus.LOCKED:
            return  # settled already: by a version of ours, or by the counterparty
        try:
            await self.adapter.send(leg.spend_raw)
        except TransactionRejected as exc:
            if not is_priced_out(exc):
                raise
            # Priced under today's base fee (a node may drop it, Anvil refuses it): the same as
            # stuck in the pool, which the engine's fee bump (same nonce, higher fees) resolves.
        except NonceConflict:
            # Its nonce is used: by another version of ours (mined just now), or by another transaction (renewed next step).
            if await self.htlc.swap(leg.lock_ref) != SwapStatus.LOCKED:
                return
            raise

    async def spend_confirmations(self, view: SwapView, leg: SwapLeg) -> int:
        """Confirmations of whichever version of our claim/refund (fee bumps) was mined, from the
        contract's status; 1 when another sender settled it our way (the contract paid all the same)."""
        status = await self.htlc.swap(leg.lock_ref)
        wanted = SwapStatus.CLAIMED if leg.spend_kind == "claim" else SwapStatus.REFUNDED
        versions = view.spend_versions(leg)
        if status == wanted:
            depths = [(await self.adapter.tx_status(t)).confirmations for t in versions]
            if any(d >= 1 for d in depths):
                return max(depths)
            # Settled by another sender (a watcher of ours): the contract paid the lock's recipient
            # (claim) or sender (refund), which must be us; the lock is this swap's alone (``SwapLock``).
            if leg.lock_params:
                params = _params_from_json(leg.lock_params)
                paid = params.recipient if leg.spend_kind == "claim" else params.sender
                if paid.lower() != self.address.lower():
                    raise LockRefused(f"swap {leg.lock_ref} was {leg.spend_kind}ed to {paid}, not to us")
            return 1
        if status == SwapStatus.LOCKED:
            for tx_hash in versions:
                await self._mined(tx_hash)  # a version that was mined and failed raises ContractReverted
            return 0
        raise LockRefused(f"swap {leg.lock_ref} was {status.name.lower()} by the counterparty, not {leg.spend_kind}ed")
