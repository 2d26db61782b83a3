"""What one swap leg does on its chain: lock, audit the counterparty's lock, find the
secret, claim, refund.  One class per chain family, same methods.

Every broadcast is safe to repeat: transactions are signed once, stored by the engine
with the intent, and re-sent byte for byte (the adapters' ``send`` is idempotent), so a
restart never locks or claims twice.  A stuck claim/refund is replaced by a version
with a higher fee (``prepare_bump``); every version is kept, any may be mined.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

from eth_utils import to_checksum_address

from bridge.core.errors import BridgeError, InputError, NonceConflict, NotFound, RpcError, TransactionRejected
from bridge.swaps.assets import BITCOIN, EVM
from bridge.swaps.models import SwapLeg
from bridge.swaps.store import SwapView
from bridge.swaps.timelock import ChainTime
from chains.base import BlockRef
from chains.bitcoin import COINBASE_MATURITY, BitcoinAdapter, BitcoinTxFilter
from chains.bitcoin_tx import btc_to_sats
from chains.bitcoin_wallet import BtcKey, Utxo
from chains.btc.primitives import Tx
from chains.btc.rpc_errors import RPC_METHOD_NOT_FOUND
from chains.evm import EvmAdapter, EvmReceipt
from chains.evm_fees import Fees
from chains.fee_bump import EvmTxFields, evm_bump
from htlc.audit import AuditError, audit
from htlc.bitcoin_script import TEMPLATE_P2WSH, htlc_script_pubkey, p2wsh_htlc_script
from htlc.bitcoin_tx import HtlcCoin, build_claim, build_funding, build_refund
from htlc.evm import ETH as ETH_TOKEN
from htlc.evm import Claimed, Erc20, EvmHtlc, Locked, SwapParams, SwapStatus, encode_call, load_artifact
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
    ``on_block``: it can only change with a new block on this chain (confirmations, a timelock):
    the engine steps the swap again when the node announces one.
    """

    retryable = True

    def __init__(self, message: str, *, on_event: bool = False, on_block: str | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.on_event = on_event
        self.on_block = on_block


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


_BTC_REF = re.compile(r"([0-9a-fA-F]{64}):([0-9]{1,10})")


def _split_ref(ref: str) -> tuple[str, int]:
    """``TXID:VOUT`` as (lower-case txid, vout): one spelling per output."""
    found = _BTC_REF.fullmatch(ref)
    if found is None:
        raise InputError(f"bitcoin lock reference must be TXID:VOUT, got {ref[:80]!r}", field="lock_ref")
    return found[1].lower(), int(found[2])


class ChainClock:
    """The chain's tip as a ``ChainTime``, read at most once per ``ttl`` seconds: hundreds of
    waiting swaps checking their expiry in one pass share one read.  Timelock decisions allow
    minutes of margin, so a tip a few tens of milliseconds old changes none of them.  Where the
    node announces blocks (``adapter.heads``), a read stays good until the next one is
    announced (up to ``announced_ttl``), and the announced tip replaces it, so most steps ask
    the node nothing."""

    def __init__(self, adapter: Any, ttl: float = 0.02, announced_ttl: float = 1.0) -> None:
        self.adapter = adapter
        self.ttl = ttl
        self.announced_ttl = announced_ttl
        self._read: tuple[float, ChainTime] | None = None

    def forget(self, announced: BlockRef | None = None) -> None:
        """A new block came: the next read is that block where its announcement carried it
        (``ChainAdapter.announced_head``), else the node's answer."""
        if announced is not None and (self._read is None or announced.height >= self._read[1].height):
            self._read = (time.monotonic(), ChainTime(announced.height, announced.timestamp))
        else:
            self._read = None

    def _fresh(self, at: float) -> bool:
        if self._read is None:
            return False
        age, value = at - self._read[0], self._read[1]
        if age < self.ttl:
            return True
        heads = self.adapter.heads
        return heads is not None and heads.live and heads.height == value.height and age < self.announced_ttl

    async def now(self) -> ChainTime:
        at = time.monotonic()
        if self._fresh(at):
            return self._read[1]  # type: ignore[index]
        head = await self.adapter.head()
        value = ChainTime(head.height, head.timestamp)
        self._read = (at, value)
        return value


class BitcoinLeg:
    chain = BITCOIN

    def __init__(
        self, adapter: BitcoinAdapter, key: BtcKey, feerate: int | None = None,
        reserved: Callable[[], set[tuple[str, int]]] = set,
    ) -> None:
        self.adapter = adapter
        self.clock = ChainClock(adapter)
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
        return await self.clock.now()

    async def _feerate(self) -> int:
        return self.feerate if self.feerate is not None else await self.adapter.estimate_feerate()

    def _script(self, view: SwapView, leg: SwapLeg) -> bytes:
        return p2wsh_htlc_script(
            bytes.fromhex(view.swap.hashlock), bytes.fromhex(leg.recipient), bytes.fromhex(leg.sender), leg.expiry
        )

    async def _spendable(self, include_reserved: bool = False) -> list[Utxo]:
        """Coins a new lock may use: ours, unconfirmed change included, mature, and not reserved
        by a recorded but not yet broadcast lock (after a crash) whose stored bytes spend them."""
        coins, tip = await asyncio.gather(self.adapter.utxos([self.key.p2wpkh_script], include_mempool=True), self.adapter.height())
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
            "lock_ref": f"{signed.txid}:{vout}", "watch_from": (await self.clock.now()).height,
        }

    async def broadcast_lock(self, view: SwapView, leg: SwapLeg, fresh: bool = False) -> dict[str, Any]:
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
        return LockSeen(f"{txid}:{vout}", txid, amount, terms.locktime, int(out.get("confirmations") or 0))

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
        return self.index is None or await self.index.caught_up()

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
        for txid in leg.spend_versions():
            # Its one output is ours and most often unspent: its depth in one call; else the
            # transaction's status (two).
            out = await self.adapter.rpc.call("gettxout", txid, 0, True)
            confirmations = int(out.get("confirmations") or 0) if out is not None else (await self.adapter.tx_status(txid)).confirmations
            best = max(best, confirmations)
        return best


#: Gas limit per call kind.  A lock is signed before its approve is mined (and any transaction
#: before the one ahead of it), so estimation can fail; these are fixed.  Measured on Anvil with
#: HTLC.sol and TestToken: ETH lock 72k (a sender's first, 55k after), ERC-20 lock 109k (the first
#: into an HTLC holding none of the token yet; 92k after), approve 46k,
#: claim 43k (ETH) / 62k (ERC-20, a recipient's first tokens), refund 39k / 43k.  Unused gas is not
#: paid; the headroom is for tokens that do more in ``transfer``.
EVM_GAS = {"approve": 100_000, "lock_eth": 120_000, "lock_erc20": 250_000, "claim": 120_000, "refund": 120_000}


#: A node's refusal of a transaction whose fees are too low for the coming blocks.
_PRICED_OUT = re.compile(r"less than (the )?(block )?base fee|fee cap .*too low|underpriced", re.I)


def _params_json(params: SwapParams, block: int) -> str:
    return json.dumps({
        "sender": params.sender, "recipient": params.recipient, "token": params.token, "amount": params.amount,
        "hashlock": params.hashlock.hex(), "expiry": params.expiry, "nonce": params.nonce, "block": block,
    })


def _params_from_json(text: str) -> SwapParams:
    p = json.loads(text)
    return SwapParams(p["sender"], p["recipient"], p["token"], p["amount"], bytes.fromhex(p["hashlock"]), p["expiry"], p["nonce"])


class EvmLeg:
    """EVM transactions are signed with an explicit nonce, recorded by the engine, then sent
    (again and again: ``EvmAdapter.send`` is idempotent), like Bitcoin's.

    Nonces: the next one is past both the node's pending count and every nonce a recorded,
    still intended transaction of this party holds (``held``: ``SwapStore.evm_nonces``), so a
    transaction recorded before a crash keeps its nonce until it is sent.  The engine holds
    its per-chain prepare guard from choosing a nonce until the transaction is recorded.
    """

    chain = EVM

    def __init__(self, adapter: EvmAdapter, htlc: EvmHtlc, key: str, held: Callable[[], list[int]] = list) -> None:
        self.adapter = adapter
        self.clock = ChainClock(adapter)
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

    async def now(self) -> ChainTime:
        return await self.clock.now()

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

    async def _tx_count(self, block: str) -> int:
        return int(await self.adapter.rpc.call("eth_getTransactionCount", [self.address, block]), 16)

    async def _next_nonce(self) -> int:
        mined, pending = await asyncio.gather(self._tx_count("latest"), self._tx_count("pending"))
        # A held nonce below the mined count is spent (by that transaction or another): not ours to skip.
        return max([pending, *(n + 1 for n in self.held() if n >= mined)])

    async def _nonce_and_fees(self) -> tuple[int, Fees]:
        """The nonce for our next transaction and today's fees, asked for at once."""
        return await asyncio.gather(self._next_nonce(), self.adapter.suggest_fees())

    async def _sign(self, nonce: int, fees: Fees, to: str, data: bytes, gas: int, value: int = 0) -> tuple[EvmTxFields, str, str]:
        fields = EvmTxFields(
            chain_id=await self.adapter.chain_id_int(), nonce=nonce, to=to, data="0x" + data.hex(), gas=gas,
            max_fee=fees.max_fee, priority_fee=fees.priority_fee, value=value,
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
            self.htlc.abi, "lock", to_checksum_address(leg.recipient), to_checksum_address(leg.token or ETH_TOKEN), leg.value,
            bytes.fromhex(view.swap.hashlock), leg.expiry,
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
            return await self._tx_count("latest") > nonce and await self._mined_lock(leg) is None
        if not leg.spend_evm:
            return False
        nonce = json.loads(leg.spend_evm)["nonce"]
        if await self._tx_count("latest") <= nonce:
            return False
        for tx_hash in leg.spend_versions():
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
            {"spend_raw": raw, "spend_tx": tx_hash, "spend_evm": json.dumps(new.to_dict()), "spend_history": leg.history_when_replaced(),
             "spend_sent_at": None},
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
        receipt, status = await asyncio.gather(
            self.adapter.rpc.call("eth_getTransactionReceipt", [found.where.tx_hash]), self.htlc.swap(found.id))
        if receipt is None or receipt.get("blockNumber") is None or status == SwapStatus.NONE:
            raise NotYet(f"no Locked event for swap {ref} on the chain now (dropped by a reorg?)", on_event=self.index is not None)
        if status != SwapStatus.LOCKED:
            raise LockRefused(f"the lock is {status.name.lower()}, no longer claimable")
        confirmations = await self._depth(int(receipt["blockNumber"], 16))
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
            if not _PRICED_OUT.search(exc.reason or exc.message):
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
        versions = leg.spend_versions()
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


Leg = BitcoinLeg | EvmLeg
