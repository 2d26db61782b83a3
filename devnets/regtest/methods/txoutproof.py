"""``gettxoutproof``/``verifytxoutproof``: ``CMerkleBlock`` (header, tx count, hashes, flag bits),
byte-identical to bitcoind's serialisation, and ``CPartialMerkleTree::ExtractMatches``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chains.btc import primitives as p
from chains.btc.rpc_errors import RPC_INVALID_ADDRESS_OR_KEY, RPC_INVALID_PARAMETER, RPC_MISC_ERROR, RPC_TYPE_ERROR
from devnets.regtest.methods import Arg, RpcFailure, json_type, rpc
from devnets.regtest.methods.common import parse_hash, parse_hex
from devnets.regtest.miner import MAX_BLOCK_WEIGHT

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode


# --- CMerkleBlock ------------------------------------------------------------------------------


def _width(n_tx: int, height: int) -> int:
    return (n_tx + (1 << height) - 1) >> height


def _tree_height(n_tx: int) -> int:
    h = 0
    while _width(n_tx, h) > 1:
        h += 1
    return h


def merkle_block(block: p.Block, wanted: set[str]) -> bytes:
    """``CMerkleBlock(block, txids)`` serialised: header, tx count, hashes, flag bits (LSB first)."""
    txids = [tx.txid_bytes for tx in block.txs]
    match = [tx.txid in wanted for tx in block.txs]
    n = len(txids)

    def calc(height: int, pos: int) -> bytes:
        if height == 0:
            return txids[pos]
        left = calc(height - 1, pos * 2)
        right = calc(height - 1, pos * 2 + 1) if pos * 2 + 1 < _width(n, height - 1) else left
        return p.hash256(left + right)

    bits: list[bool] = []
    hashes: list[bytes] = []

    def build(height: int, pos: int) -> None:
        parent = any(match[pos << height : min((pos + 1) << height, n)])
        bits.append(parent)
        if height == 0 or not parent:
            hashes.append(calc(height, pos))
        else:
            build(height - 1, pos * 2)
            if pos * 2 + 1 < _width(n, height - 1):
                build(height - 1, pos * 2 + 1)

    build(_tree_height(n), 0)
    flags = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        flags[i // 8] |= int(b) << (i % 8)
    return (
        block.header.serialize() + n.to_bytes(4, "little") + p.ser_compact_size(len(hashes)) + b"".join(hashes) + p.ser_compact_size(len(flags)) + bytes(flags)
    )


class _Truncated(Exception):
    pass


def parse_merkle_block(raw: bytes) -> tuple[p.BlockHeader, int, list[bytes], list[bool]]:
    if len(raw) < 84:
        raise _Truncated
    header = p.BlockHeader.parse(raw[:80])
    n_tx = int.from_bytes(raw[80:84], "little")
    try:
        count, pos = p.read_compact_size(raw, 84)
        if pos + 32 * count > len(raw):
            raise _Truncated
        hashes = [raw[pos + 32 * i : pos + 32 * (i + 1)] for i in range(count)]
        pos += 32 * count
        nbytes, pos = p.read_compact_size(raw, pos)
    except p.DecodeError:
        raise _Truncated from None
    if pos + nbytes > len(raw):
        raise _Truncated
    flags = raw[pos : pos + nbytes]
    return header, n_tx, hashes, [bool(flags[i // 8] >> (i % 8) & 1) for i in range(8 * nbytes)]


def extract_matches(n_tx: int, hashes: list[bytes], bits: list[bool]) -> tuple[bytes, list[bytes]]:
    """``CPartialMerkleTree::ExtractMatches``: the root (zero when malformed) and the matched txids."""
    zero = bytes(32)
    if n_tx == 0 or n_tx > MAX_BLOCK_WEIGHT // 240 or len(hashes) > n_tx or len(bits) < len(hashes):
        return zero, []
    state = {"bits": 0, "hashes": 0, "bad": False}
    matches: list[bytes] = []

    def extract(height: int, pos: int) -> bytes:
        if state["bits"] >= len(bits):
            state["bad"] = True
            return zero
        parent = bits[state["bits"]]
        state["bits"] += 1
        if height == 0 or not parent:
            if state["hashes"] >= len(hashes):
                state["bad"] = True
                return zero
            h = hashes[state["hashes"]]
            state["hashes"] += 1
            if height == 0 and parent:
                matches.append(h)
            return h
        left = extract(height - 1, pos * 2)
        if pos * 2 + 1 < _width(n_tx, height - 1):
            right = extract(height - 1, pos * 2 + 1)
            if right == left:
                state["bad"] = True  # CVE-2012-2459
        else:
            right = left
        return p.hash256(left + right)

    root = extract(_tree_height(n_tx), 0)
    if state["bad"] or (state["bits"] + 7) // 8 != (len(bits) + 7) // 8 or state["hashes"] != len(hashes):
        return zero, []
    return root, matches


@rpc(
    "gettxoutproof",
    "Blockchain",
    'Returns a hex-encoded proof that "txid" was included in a block.\n\n'
    "NOTE: By default this function only works sometimes. This is when there is an\n"
    "unspent output in the utxo for this transaction. To make it always work,\n"
    "you need to maintain a transaction index, using the -txindex command line option or\n"
    "specify the block in which the transaction is included manually (by blockhash).",
    [
        Arg("txids", "json array", "The txids to filter"),
        Arg("blockhash", "string", "If specified, looks for txid in the block with this hash", None, default_doc="null"),
    ],
    result='"str"    (string) A string that is a serialized, hex-encoded data for the proof.',
    examples=["'[\"mytxid\",...]'", '\'["mytxid",...]\' "blockhash"'],
)
def gettxoutproof(node: "RegtestNode", txids: list, blockhash: str | None) -> str:
    if not txids:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Parameter 'txids' cannot be empty")
    wanted: set[str] = set()
    for item in txids:
        if not isinstance(item, str):
            raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(item)} is not of expected type string")
        t = parse_hash(item, "txid")
        if t in wanted:
            raise RpcFailure(RPC_INVALID_PARAMETER, f"Invalid parameter, duplicated txid: {item}")
        wanted.add(t)
    ordered = sorted(wanted, key=lambda h: bytes.fromhex(h)[::-1])  # std::set<Txid> order
    store = node.chain.store
    block = None
    if blockhash is not None:
        h = parse_hash(blockhash, "blockhash")
        found = node.chain.block_raw(h)
        if found is None:
            raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
        block = p.Block.parse(found[0])
    else:
        for t in ordered:  # a tx with an unspent output names its block through the coin's height
            row = store.db.execute("SELECT height FROM utxo WHERE txid=? ORDER BY vout LIMIT 1", (t,)).fetchone()
            if row is not None:
                block = p.Block.parse(store.raw_at(row[0]))
                break
        if block is None:
            loc = store.tx_location(ordered[0])
            if loc is None:
                raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not yet in block")
            block = p.Block.parse(node.chain.block_raw(loc[0])[0])
    if sum(1 for tx in block.txs if tx.txid in wanted) != len(wanted):
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Not all transactions found in specified or retrieved block")
    return merkle_block(block, wanted).hex()


@rpc(
    "verifytxoutproof",
    "Blockchain",
    "Verifies that a proof points to a transaction in a block, returning the transaction it commits to\n"
    "and throwing an RPC error if the block is not in our best chain",
    [Arg("proof", "string", "The hex-encoded proof generated by gettxoutproof")],
    result='[           (json array)\n  "hex",    (string) The txid(s) which the proof commits to, or empty array if the proof cannot be validated.\n  ...\n]',
    examples=['"proof"'],
)
def verifytxoutproof(node: "RegtestNode", proof: str) -> list[str]:
    raw = parse_hex(proof, "proof")
    try:
        header, n_tx, hashes, bits = parse_merkle_block(raw)
    except _Truncated:
        raise RpcFailure(RPC_MISC_ERROR, "DataStream::read(): end of data: unspecified iostream_category error") from None
    root, matches = extract_matches(n_tx, hashes, bits)
    if root != header.merkle_root:
        return []
    height = node.chain.store.height_of(header.hash)
    if height is None:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Block not found in chain")
    block_tx_count = p.read_compact_size(node.chain.store.raw_at(height), 80, False)[0]
    if block_tx_count != n_tx:
        return []
    return [h[::-1].hex() for h in matches]
