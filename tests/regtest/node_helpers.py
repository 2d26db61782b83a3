"""Test-side helpers for the regtest node tests: an async JSON-RPC client and transactions signed
with bitcoinlib keys (BIP143 digests from ``chains.btc.sighash``; no node wallet anywhere)."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import aiohttp
from bitcoinlib.keys import Key, sign

from chains.btc import primitives as p
from chains.btc.address import script_to_address
from chains.btc.sighash import SIGHASH_ALL, segwit_v0_sighash


class NodeError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Rpc:
    """JSON-RPC 1.0 client speaking to either backend through its URL and credentials only."""

    def __init__(self, url: str, auth: tuple[str, str]) -> None:
        self.url = url
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}

    async def raw(self, body: bytes | str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        async with aiohttp.ClientSession() as s:
            async with s.post(self.url, data=body, headers=headers if headers is not None else self.headers) as r:
                return r.status, await r.text()

    async def __call__(self, method: str, *params: Any) -> Any:
        status, text = await self.raw(json.dumps({"jsonrpc": "1.0", "id": "t", "method": method, "params": list(params)}))
        reply = json.loads(text, parse_float=Decimal)
        if reply["error"] is not None:
            raise NodeError(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]


@dataclass
class Wallet:
    """One P2WPKH key."""

    key: Key

    @classmethod
    def new(cls) -> "Wallet":
        return cls(Key())

    @property
    def pubkey(self) -> bytes:
        return self.key.public_byte

    @property
    def script(self) -> bytes:
        return b"\x00\x14" + p.hash160(self.pubkey)

    @property
    def address(self) -> str:
        return script_to_address(self.script, "regtest")

    def sig(self, digest: bytes) -> bytes:
        return sign(digest, self.key, hash_type=SIGHASH_ALL).as_der_encoded(include_hash_type=True)


@dataclass(frozen=True)
class Coin:
    txid: str
    vout: int
    value: int


def spend_p2wpkh(
    owner: Wallet, coins: list[Coin], outputs: list[tuple[bytes, int]], *, locktime: int = 0, sequence: int = 0xFFFFFFFD, version: int = 2
) -> p.Tx:
    vin = [p.TxIn(p.OutPoint.from_hex(c.txid, c.vout), b"", sequence, ()) for c in coins]
    tx = p.Tx(version, vin, [p.TxOut(v, s) for s, v in outputs], locktime)
    script_code = b"\x76\xa9\x14" + p.hash160(owner.pubkey) + b"\x88\xac"
    signed = []
    for i, c in enumerate(coins):
        sig = owner.sig(segwit_v0_sighash(tx, i, script_code, c.value))
        signed.append(vin[i]._replace(witness=(sig, owner.pubkey)))
    return p.Tx(version, signed, tx.vout, locktime)


def p2wsh(witness_script: bytes) -> bytes:
    return b"\x00\x20" + hashlib.sha256(witness_script).digest()


def spend_p2wsh(
    coin: Coin, witness_script: bytes, outputs: list[tuple[bytes, int]], witness_before_script, *, locktime: int = 0, sequence: int = 0xFFFFFFFD
) -> p.Tx:
    """``witness_before_script(digest)`` returns the stack items that precede the witness script."""
    vin = [p.TxIn(p.OutPoint.from_hex(coin.txid, coin.vout), b"", sequence, ())]
    tx = p.Tx(2, vin, [p.TxOut(v, s) for s, v in outputs], locktime)
    digest = segwit_v0_sighash(tx, 0, witness_script, coin.value)
    items = tuple(witness_before_script(digest)) + (witness_script,)
    return p.Tx(2, [vin[0]._replace(witness=items)], tx.vout, locktime)


def push(data: bytes) -> bytes:
    return p.push_data(data)


def sats(btc: Decimal) -> int:
    return int(Decimal(btc) * 100_000_000)


async def mature_coin(rpc: Rpc, owner: Wallet, burn_address: str) -> Coin:
    """Mine a block paying ``owner``, then 100 more so its coinbase can be spent."""
    [block_hash] = await rpc("generatetoaddress", 1, owner.address)
    block = p.Block.parse(bytes.fromhex(await rpc("getblock", block_hash, 0)))
    await rpc("generatetoaddress", 100, burn_address)
    coinbase = block.txs[0]
    return Coin(coinbase.txid, 0, coinbase.vout[0].value)


async def coin_of(rpc: Rpc, txid: str, vout: int) -> Coin:
    tx = p.Tx.parse(bytes.fromhex(await rpc("getrawtransaction", txid)))
    return Coin(txid, vout, tx.vout[vout].value)


_FAUCETS: dict[str, tuple[Wallet, list[Coin]]] = {}
FAUCET_OUTPUTS = 25


async def fund(rpc: Rpc, owner: Wallet, burn_address: str) -> Coin:
    """A confirmed coin paying ``owner``, drawn from a per-node faucet: one matured coinbase split
    into many outputs, so tests on the shared session node do not each mine 100 blocks (every 150
    blocks halve the regtest subsidy for everyone else in the session)."""
    faucet, coins = _FAUCETS.get(rpc.url, (Wallet.new(), []))
    if not coins:
        base = await mature_coin(rpc, faucet, burn_address)
        each = (base.value - 10_000) // FAUCET_OUTPUTS
        fan = spend_p2wpkh(faucet, [base], [(faucet.script, each)] * FAUCET_OUTPUTS)
        await rpc("sendrawtransaction", fan.serialize().hex())
        coins = [Coin(fan.txid, i, each) for i in range(FAUCET_OUTPUTS)]
        _FAUCETS[rpc.url] = (faucet, coins)
    source = coins.pop()
    pay = spend_p2wpkh(faucet, [source], [(owner.script, source.value - 1_000)])
    await rpc("sendrawtransaction", pay.serialize().hex())
    await rpc("generatetoaddress", 1, burn_address)
    return Coin(pay.txid, 0, source.value - 1_000)
