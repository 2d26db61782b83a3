"""The Bitcoin ``ChainAdapter``: blocks, transactions in a range, coins, fees, broadcast.

Everything goes through ``BitcoinRpc`` (no node wallet).  Block scans fetch
``getblockhash`` and serialized ``getblock <hash> 0`` in batches and scan the
bytes with ``chains.bitcoin_block``; coins come from ``scantxoutset`` checked
against the mempool; transactions are built and signed by ``chains.bitcoin_wallet``.

Over 400 lines because it is one class: every read, scan, coin query and broadcast of the
family goes through it (the block scanner, the wallet and the RPC client are modules of their own).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Iterable, Sequence

from bridge.core.errors import (
    AlreadyInChain,
    ChainUnavailable,
    InputError,
    NotFound,
    RpcError,
    TransactionRejected,
    Unsupported,
)
from bridge.core.retry import RetryPolicy
from bridge.core.settings import Settings
from chains.base import BITCOIN, BlockRef, ChainAdapter, ChainEvent, TxStatus
from chains.bitcoin_block import block_header, outpoint_key, scan_block
from chains.bitcoin_rpc import BitcoinRpc, gc_paused
from chains.bitcoin_tx import address_to_script, btc_to_sats
from chains.bitcoin_wallet import MAX_FEE, MAX_FEERATE, BtcKey, SignedTx, Utxo, build_payment
from chains.btc.primitives import Tx
from chains.btc.rpc_errors import RPC_METHOD_NOT_FOUND
from chains.heads import HeadFollower

COINBASE_MATURITY = 100
#: How long one ``waitforblockheight`` waits (ms) before the follower asks again.
LONG_POLL_MS = 1000
HASH_CHUNK = 1000
#: A ``getblock`` batch aims at this much hex: enough to amortise a round trip, little
#: enough that the node answers soon and the parse of one batch overlaps the next fetch.
HEX_BYTES_PER_BATCH = 4_000_000
MAX_BLOCKS_PER_BATCH = 200

# scantxoutset refuses a second scan while one runs (ours or another client's); wait it out.
_SCAN_BUSY_RETRY = RetryPolicy(
    attempts=40,
    base_delay=0.05,
    max_delay=0.5,
    retry_on=lambda exc: isinstance(exc, RpcError) and "already in progress" in exc.message,
)


@dataclass(frozen=True)
class BitcoinTxFilter:
    """Which transactions ``events`` keeps: those paying to ``scripts`` or spending ``outpoints``.

    ``None`` for both fields keeps nothing of that kind; pass ``selector=None`` to
    ``events`` to keep every transaction.  Outputs to a watched script found during
    a scan are watched too, so a coin funded and spent inside one scanned range
    shows both transactions.
    """

    scripts: frozenset[bytes] | None = None
    outpoints: frozenset[tuple[str, int]] | None = None

    def __init__(self, scripts: Iterable[bytes] | None = None, outpoints: Iterable[tuple[str, int]] | None = None) -> None:
        object.__setattr__(self, "scripts", None if scripts is None else frozenset(bytes(s) for s in scripts))
        object.__setattr__(self, "outpoints", None if outpoints is None else frozenset((t, int(n)) for t, n in outpoints))


def _block_ref(block: dict[str, Any]) -> BlockRef:
    return BlockRef(
        height=block["height"],
        hash=block["hash"],
        parent_hash=block.get("previousblockhash") or "00" * 32,
        timestamp=int(block["time"]),
    )


@dataclass(frozen=True)
class TxOut:
    """An unspent output as ``gettxout`` shows it."""

    value: int  # sats
    script_pubkey: bytes
    confirmations: int  # 0: created by a mempool transaction
    coinbase: bool


class BitcoinAdapter(ChainAdapter):
    family = BITCOIN

    def __init__(
        self,
        rpc: BitcoinRpc,
        network: str = "regtest",
        confirmations: int = 1,
        fallback_feerate: int = 2,
        max_feerate: int = MAX_FEERATE,
        max_fee: int = MAX_FEE,
        push_blocks: bool = True,
    ) -> None:
        self.rpc = rpc
        self.network = network
        self.confirmations = confirmations
        self.fallback_feerate = fallback_feerate
        self.max_feerate = max_feerate
        self.max_fee = max_fee
        #: New blocks through bitcoind's ``waitforblockheight`` long poll (``push_blocks=False``: poll).
        self.heads = HeadFollower(f"bitcoin {rpc.url}", self._follow_tip) if push_blocks else None

    @classmethod
    def from_settings(cls, settings: Settings) -> "BitcoinAdapter":
        """Connect as configured: user/password if set, else the cookie file (default in the devnet data dir)."""
        btc = settings.bitcoin
        cookie = None
        if btc.rpc_user is None:
            cookie = btc.cookie_file or settings.data_path / "bitcoin" / "regtest" / ".cookie"
        rpc = BitcoinRpc(btc.rpc_url, user=btc.rpc_user, password=btc.rpc_password, cookie_file=cookie, timeout=btc.rpc_timeout)
        return cls(rpc, network=btc.network, confirmations=btc.confirmations, fallback_feerate=btc.fallback_feerate, push_blocks=btc.push_blocks)

    @property
    def chain_id(self) -> str:
        return f"bitcoin:{self.network}"

    async def close(self) -> None:
        await super().close()
        await self.rpc.close()

    async def _follow_tip(self, publish: Callable[[BlockRef], None]) -> None:
        # waitforblockheight has no race (a block mined between two calls is not missed, unlike
        # waitfornewblock before Core 29); answering on timeout, it also reports a tip that
        # shrank or was replaced at the same height within LONG_POLL_MS.  Each new tip's header
        # is read here once, for everyone in this process who would read the head on waking.
        head = await self.head()
        publish(head)
        while True:
            try:
                tip = await self.rpc.call("waitforblockheight", head.height + 1, LONG_POLL_MS)
            except RpcError as exc:
                if exc.details.get("code") == RPC_METHOD_NOT_FOUND:
                    raise Unsupported(f"the node does not offer waitforblockheight: {exc.message}") from exc
                raise
            if tip["hash"] != head.hash:
                head = await self.block_by_hash(tip["hash"])
            publish(head)

    # --- blocks ---------------------------------------------------------------

    async def head(self) -> BlockRef:
        return await self.block_by_hash(await self.rpc.call("getbestblockhash"))

    async def block_by_height(self, height: int) -> BlockRef:
        if height < 0:
            raise InputError(f"block height must be >= 0, got {height}")
        return await self.block_by_hash(await self.rpc.call("getblockhash", height))

    async def block_by_hash(self, block_hash: str) -> BlockRef:
        return _block_ref(await self.rpc.call("getblockheader", block_hash, True))

    async def height(self) -> int:
        return int(await self.rpc.call("getblockcount"))

    async def events(
        self,
        from_height: int,
        to_height: int,
        selector: BitcoinTxFilter | None = None,
        blocks: Sequence[BlockRef] | None = None,
    ) -> list[ChainEvent]:
        """Transactions of blocks ``from_height..to_height`` as events keyed by txid, in chain order.

        ``data`` holds ``txid``, ``index`` (position in its block) and ``tx``: a
        read-only ``BitcoinTx`` mapping in bitcoind's verbose shape, decoded on first
        access (see ``chains.bitcoin_block``; amounts as ``Decimal`` BTC, use ``btc_to_sats``).  Blocks are fetched serialized
        (``getblock <hash> 0``) in batches and parsed here, which is several times
        faster than having the node render verbose JSON.
        """
        if from_height < 0 or to_height < from_height:
            raise InputError(f"bad height range {from_height}..{to_height}")
        scripts: frozenset[bytes] | None = None
        outpoints: set[bytes] | None = None
        if selector is not None:
            scripts = selector.scripts or frozenset()
            outpoints = {outpoint_key(t, n) for t, n in selector.outpoints or ()}
        known = {b.height: b.hash for b in blocks or ()}
        hashes: list[str] = []
        if all(h in known for h in range(from_height, to_height + 1)):
            hashes = [known[h] for h in range(from_height, to_height + 1)]
        for start in range(from_height + len(hashes), to_height + 1, HASH_CHUNK):
            stop = min(start + HASH_CHUNK, to_height + 1)
            hashes += await self.rpc.batch([("getblockhash", [h]) for h in range(start, stop)])

        def fetch(chunk: list[str]) -> asyncio.Task[list[Any]]:
            return asyncio.ensure_future(self.rpc.batch([("getblock", [h, 0]) for h in chunk]))

        # Each batch is sized from the previous one's bytes per block, and the next batch is
        # in flight while this one is parsed, so the node and this process work in parallel.
        events: list[ChainEvent] = []
        pending: asyncio.Task[list[Any]] | None = fetch(hashes[:1])
        pos = 0
        size = 1
        try:
            while pending is not None:
                blocks = await pending
                per_block = max(1, sum(len(b) for b in blocks) // len(blocks))
                first, pos = pos, pos + size
                size = max(1, min(MAX_BLOCKS_PER_BATCH, HEX_BYTES_PER_BATCH // per_block))
                pending = fetch(hashes[pos : pos + size]) if pos < len(hashes) else None
                with gc_paused():
                    for offset, block_hex in enumerate(blocks):
                        self._block_events(from_height + first + offset, hashes[first + offset], block_hex, scripts, outpoints, events)
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
        return events

    @staticmethod
    def _block_events(
        height: int, expected_hash: str, block_hex: str, scripts: frozenset[bytes] | None, outpoints: set[bytes] | None, out: list[ChainEvent]
    ) -> None:
        raw = bytes.fromhex(block_hex)
        block_hash, parent_hash, timestamp = block_header(raw)
        if block_hash != expected_hash:
            raise RpcError(f"getblock {expected_hash} returned block {block_hash}", method="getblock")
        ref = BlockRef(height=height, hash=block_hash, parent_hash=parent_hash, timestamp=timestamp)
        scan_block(raw, scripts, outpoints, lambda index, tx: out.append(ChainEvent(tx.txid, ref, {"txid": tx.txid, "index": index, "tx": tx})))

    # --- transactions ---------------------------------------------------------

    async def send(self, tx: str | bytes | SignedTx) -> str:
        """Broadcast; idempotent: a transaction the node already has returns its txid."""
        raw_hex = tx.raw_hex if isinstance(tx, SignedTx) else tx.hex() if isinstance(tx, bytes) else tx
        try:
            parsed = Tx.parse(bytes.fromhex(raw_hex))
        except ValueError:
            raise InputError("raw transaction is not hex") from None
        try:
            return await self.rpc.call("sendrawtransaction", raw_hex)
        except AlreadyInChain:
            return parsed.txid
        except (TransactionRejected, ChainUnavailable):
            # A rejection (e.g. inputs spent: by this very tx, confirmed) or a lost reply may
            # hide a first broadcast that landed; ask the node before reporting failure.
            if await self._is_known(parsed):
                return parsed.txid
            raise

    async def _is_known(self, parsed: Tx) -> bool:
        try:
            await self.rpc.call("getrawtransaction", parsed.txid, False)
            return True
        except (NotFound, RpcError):
            pass  # -5: not in the mempool (nor in a tx index, if the node keeps one)
        if not parsed.vout:
            return False
        outs = await self.rpc.batch([("gettxout", [parsed.txid, n, True]) for n in range(len(parsed.vout))])
        return any(o is not None for o in outs)

    async def txout(self, txid: str, vout: int, include_mempool: bool = True) -> TxOut | None:
        """Output ``vout`` of ``txid`` while it is unspent, else None.  ``include_mempool``: an output
        a mempool transaction spends counts as spent, one a mempool transaction creates as there."""
        out = await self.rpc.call("gettxout", txid, vout, include_mempool)
        if out is None:
            return None
        return TxOut(btc_to_sats(out["value"]), bytes.fromhex(out["scriptPubKey"]["hex"]), int(out.get("confirmations") or 0), bool(out.get("coinbase", False)))

    async def mempool_spender(self, outpoint: tuple[str, int]) -> dict[str, Any] | None:
        """The mempool transaction spending ``outpoint`` (bitcoind's verbose shape), or None.  One
        ``gettxspendingprevout``; a node without it (bitcoind < 24) has its mempool looked through."""
        txid, vout = outpoint
        try:
            [entry] = await self.rpc.call("gettxspendingprevout", [{"txid": txid, "vout": vout}])
        except RpcError as exc:
            if exc.code != RPC_METHOD_NOT_FOUND:
                raise
            for t in await self.rpc.call("getrawmempool"):
                tx = await self.rpc.call("getrawtransaction", t, True)
                if any((i.get("txid"), i.get("vout")) == (txid, vout) for i in tx.get("vin", [])):
                    return tx
            return None
        spender = entry.get("spendingtxid")
        if spender is None:
            return None
        try:
            return await self.rpc.call("getrawtransaction", spender, True)
        except NotFound:
            return None  # mined or replaced in between: the next look finds it

    async def tx_status(self, txid: str) -> TxStatus:
        """Confirmations of ``txid``: from the mempool/tx index, else from its first output.

        A confirmed transaction whose output 0 is spent is unknown (-1) to a node
        without ``-txindex``; the bridge's own watchers follow such spends with ``events``.
        """
        try:
            entry = await self.rpc.call("getrawtransaction", txid, True)
        except NotFound:
            entry = None
        if entry is not None:
            if not entry.get("confirmations") or "blockhash" not in entry:
                return TxStatus(txid=txid, confirmations=0)
            return TxStatus(txid=txid, confirmations=int(entry["confirmations"]), block=await self.block_by_hash(entry["blockhash"]))
        out = await self.rpc.call("gettxout", txid, 0, True)
        if out is None:
            return TxStatus(txid=txid, confirmations=-1)
        confirmations = int(out.get("confirmations") or 0)
        if confirmations == 0:
            return TxStatus(txid=txid, confirmations=0)
        best = await self.block_by_hash(out["bestblock"])
        return TxStatus(txid=txid, confirmations=confirmations, block=await self.block_by_height(best.height - confirmations + 1))

    # --- coins and fees ---------------------------------------------------------

    async def utxos(self, targets: Iterable[str | bytes], include_mempool: bool = False) -> list[Utxo]:
        """Unspent outputs paying to the given addresses or scriptPubKeys.

        Confirmed coins come from ``scantxoutset``; coins already spent by a mempool
        transaction are dropped.  With ``include_mempool`` the unconfirmed outputs
        (``height=None``) to the targets are added.
        """
        scripts = {address_to_script(t, self.network) if isinstance(t, str) else bytes(t) for t in targets}
        if not scripts:
            return []
        descriptors = [f"raw({s.hex()})" for s in sorted(scripts)]
        scanning = _SCAN_BUSY_RETRY.run(lambda: self.rpc.call("scantxoutset", "start", descriptors), what="scantxoutset")
        if include_mempool:  # both asked at once; a tx mined in between shows in one or the other
            scan, mempool = await asyncio.gather(scanning, self._mempool_coins(scripts))
        else:
            scan, mempool = await scanning, []
        found = scan.get("unspents", [])
        # scantxoutset sees only the confirmed UTXO set: drop the coins a mempool tx spends.
        spent = await self._spent_in_mempool(found, scan.get("bestblock")) if all("coinbase" in u for u in found) else None
        if spent is None:
            # An older node: gettxout(include_mempool) answers null for a coin a mempool tx
            # spends, and says whether the coin is a coinbase (scantxoutset did not before v25).
            live = await self.rpc.batch([("gettxout", [u["txid"], u["vout"], True]) for u in found])
            found = [{**u, "coinbase": out.get("coinbase", False)} for u, out in zip(found, live) if out is not None]
        else:
            found = [u for u in found if (u["txid"], int(u["vout"])) not in spent]
        coins = [
            Utxo(
                txid=u["txid"],
                vout=int(u["vout"]),
                value_sats=btc_to_sats(u["amount"]),
                script_pubkey=bytes.fromhex(u["scriptPubKey"]),
                height=int(u["height"]),
                coinbase=bool(u["coinbase"]),
            )
            for u in found
        ]
        confirmed = {(u.txid, u.vout) for u in coins}
        coins += [c for c in mempool if (c.txid, c.vout) not in confirmed]
        return sorted(coins, key=lambda u: (u.height is None, u.height or 0, u.txid, u.vout))

    async def _spent_in_mempool(self, coins: list[dict[str, Any]], scanned_at: str | None) -> set[tuple[str, int]] | None:
        """Which of these coins (scanned at block ``scanned_at``) a mempool transaction spends, in
        one ``gettxspendingprevout`` for the whole wallet instead of a ``gettxout`` each.  None
        when that answer cannot be trusted alone: the node lacks the call (bitcoind < 24), or a
        block came after the scan (it may have spent a coin the mempool no longer shows)."""
        if not coins:
            return set()
        # The tip is asked after the spends: the same tip as the scan's means no block came in between.
        spends, tip = await self.rpc.batch(
            [
                ("gettxspendingprevout", [[{"txid": u["txid"], "vout": int(u["vout"])} for u in coins]]),
                ("getbestblockhash", []),
            ],
            return_exceptions=True,
        )
        if isinstance(spends, RpcError) and spends.details.get("code") == RPC_METHOD_NOT_FOUND:
            return None
        for reply in (spends, tip):
            if isinstance(reply, BaseException):
                raise reply
        if tip != scanned_at:
            return None
        return {(e["txid"], int(e["vout"])) for e in spends if e.get("spendingtxid")}

    async def _mempool_coins(self, scripts: set[bytes]) -> list[Utxo]:
        mempool = await self.rpc.call("getrawmempool")
        if not mempool:
            return []
        replies = await self.rpc.batch([("getrawtransaction", [txid, True]) for txid in mempool], return_exceptions=True)
        # A tx mined or evicted since getrawmempool is NotFound here: its coins are in the
        # UTXO set or gone, either way not mempool coins.
        txs = []
        for reply in replies:
            if isinstance(reply, NotFound):
                continue
            if isinstance(reply, BaseException):
                raise reply
            txs.append(reply)
        spent = {(vin.get("txid"), vin.get("vout")) for tx in txs for vin in tx["vin"]}
        wanted = {s.hex() for s in scripts}
        return [
            Utxo(tx["txid"], int(out["n"]), btc_to_sats(out["value"]), bytes.fromhex(out["scriptPubKey"]["hex"]), None)
            for tx in txs
            for out in tx["vout"]
            if out["scriptPubKey"]["hex"] in wanted and (tx["txid"], out["n"]) not in spent
        ]

    async def balance(self, targets: Iterable[str | bytes]) -> int:
        """Confirmed sats held by the addresses/scripts (coins spent in the mempool excluded)."""
        return sum(u.value_sats for u in await self.utxos(targets))

    async def estimate_feerate(self, target: int = 6) -> int:
        """Feerate in sat/vB (int, rounded up) for confirmation within ``target`` blocks."""
        try:
            estimate = await self.rpc.call("estimatesmartfee", target)
        except RpcError:
            return self.fallback_feerate
        btc_per_kvb = estimate.get("feerate") if isinstance(estimate, dict) else None
        if btc_per_kvb is None or Decimal(btc_per_kvb) <= 0:
            return self.fallback_feerate
        return max(1, math.ceil(Decimal(btc_per_kvb) * 100_000_000 / 1000))

    async def send_to(
        self,
        keys: Sequence[BtcKey],
        outputs: Sequence[tuple[str | bytes, int]],
        feerate: int | None = None,
        change_script: bytes | None = None,
        broadcast: bool = True,
        include_mempool: bool = True,
    ) -> SignedTx:
        """Pay ``outputs`` from coins of ``keys``' P2WPKH addresses; sign, and broadcast unless told not to."""
        if not keys:
            raise InputError("send_to needs at least one key")
        feerate = await self.estimate_feerate() if feerate is None else feerate
        coins = await self.utxos([k.p2wpkh_script for k in keys], include_mempool=include_mempool)
        tip = await self.height()
        # A coinbase output is spendable once it has COINBASE_MATURITY confirmations.
        coins = [u for u in coins if not (u.coinbase and u.height is not None and tip - u.height + 1 < COINBASE_MATURITY)]
        signed = build_payment(
            keys, coins, outputs, feerate, change_script=change_script, network=self.network, max_feerate=self.max_feerate, max_fee=self.max_fee
        )
        if broadcast:
            await self.send(signed.raw_hex)
        return signed
