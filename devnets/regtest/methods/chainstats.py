"""Chain statistics: ``getblockstats``, ``getchaintxstats``, ``gettxoutsetinfo`` (hash types
``hash_serialized_3``, ``muhash`` and ``none``, computed by a scan like bitcoind without
coinstatsindex) and ``getnetworkhashps``, with bitcoind 28's fields and errors."""

from __future__ import annotations

import hashlib
import struct
from typing import TYPE_CHECKING, Any

from chains.btc import primitives as p
from chains.btc import script as sc
from chains.btc.rpc_errors import RPC_INVALID_ADDRESS_OR_KEY, RPC_INVALID_PARAMETER, RPC_TYPE_ERROR
from devnets.regtest.methods import Arg, RpcFailure, json_type, rpc
from devnets.regtest.methods.blockchain import _btc, find_block
from devnets.regtest.methods.common import int_arg, parse_hash

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode

POW_TARGET_SPACING = 600
DIFFICULTY_ADJUSTMENT_INTERVAL = 2016
BLOCK_WORK = 2  # every regtest block (bits 0x207fffff)
PER_UTXO_OVERHEAD = 36 + 4 + 1  # COutPoint + nHeight + fCoinBase
MAX_BLOCK_SERIALIZED_SIZE = 4_000_000


def _block_at(node: "RegtestNode", hash_or_height: Any) -> tuple[p.Block, int]:
    """Core's ``ParseHashOrHeight`` (the block must then be on the active chain for its undo data)."""
    kind = json_type(hash_or_height)
    if kind not in ("number", "string"):
        raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {kind} is not of expected type string")
    if kind == "number":
        height = int_arg(hash_or_height)
        if height < 0:
            raise RpcFailure(RPC_INVALID_PARAMETER, f"Target block height {height} is negative")
        tip = node.chain.height
        if height > tip:
            raise RpcFailure(RPC_INVALID_PARAMETER, f"Target block height {height} after current tip {tip}")
        return p.Block.parse(node.chain.store.raw_at(height)), height
    block, _raw, height, _active = find_block(node, parse_hash(hash_or_height, "hash_or_height"))
    return block, height


def _median(values: list[int]) -> int:
    if not values:
        return 0
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) // 2


def _percentiles(scores: list[tuple[int, int]], total_weight: int) -> list[int]:
    result = [0] * 5
    if not scores:
        return result
    scores = sorted(scores)
    marks = [total_weight / 10.0, total_weight / 4.0, total_weight / 2.0, total_weight * 3.0 / 4.0, total_weight * 9.0 / 10.0]
    nxt, cumulative = 0, 0
    for rate, weight in scores:
        cumulative += weight
        while nxt < 5 and cumulative >= marks[nxt]:
            result[nxt] = rate
            nxt += 1
    for i in range(nxt, 5):
        result[i] = scores[-1][0]
    return result


def _out_size(value_script: tuple[int, bytes]) -> int:
    script = value_script[1]
    return 8 + len(p.ser_compact_size(len(script))) + len(script) + PER_UTXO_OVERHEAD


def _div(a: int, b: int) -> int:
    """C++ integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def block_stats(node: "RegtestNode", block: p.Block, height: int) -> dict[str, Any]:
    entry = node.chain.kernel.entry(block.hash)
    undo = node.chain.kernel.spent_outputs(entry) if entry is not None else []
    ins = outs = utxos = 0
    utxo_size_inc = utxo_size_inc_actual = 0
    total_out = totalfee = total_size = total_weight = 0
    sw_size = sw_weight = swtxs = 0
    maxfee = maxfeerate = maxtxsize = 0
    minfee = minfeerate = p.MAX_MONEY
    mintxsize = MAX_BLOCK_SERIALIZED_SIZE
    fees: list[int] = []
    rates: list[tuple[int, int]] = []
    sizes: list[int] = []
    for i, tx in enumerate(block.txs):
        outs += len(tx.vout)
        tx_out = 0
        for out in tx.vout:
            tx_out += out.value
            size = _out_size((out.value, out.script_pubkey))
            utxo_size_inc += size
            if height == 0 or sc.is_unspendable(out.script_pubkey):
                continue
            utxos += 1
            utxo_size_inc_actual += size
        if i == 0:
            continue
        ins += len(tx.vin)
        total_out += tx_out
        size, weight = tx.size, tx.weight
        sizes.append(size)
        maxtxsize, mintxsize = max(maxtxsize, size), min(mintxsize, size)
        total_size += size
        total_weight += weight
        if tx.has_witness:
            swtxs += 1
            sw_size += size
            sw_weight += weight
        spent = undo[i - 1] if i - 1 < len(undo) else []
        value_in = 0
        for value, script, _h, _cb in spent:
            value_in += value
            utxo_size_inc -= _out_size((value, script))
            utxo_size_inc_actual -= _out_size((value, script))
        fee = value_in - tx_out
        fees.append(fee)
        maxfee, minfee = max(maxfee, fee), min(minfee, fee)
        totalfee += fee
        rate = _div(fee * 4, weight) if weight else 0
        rates.append((rate, weight))
        maxfeerate, minfeerate = max(maxfeerate, rate), min(minfeerate, rate)
    n = len(block.txs)
    return {
        "avgfee": _div(totalfee, n - 1) if n > 1 else 0,
        "avgfeerate": _div(totalfee * 4, total_weight) if total_weight else 0,
        "avgtxsize": total_size // (n - 1) if n > 1 else 0,
        "blockhash": block.hash,
        "feerate_percentiles": _percentiles(rates, total_weight),
        "height": height,
        "ins": ins,
        "maxfee": maxfee,
        "maxfeerate": maxfeerate,
        "maxtxsize": maxtxsize,
        "medianfee": _median(fees),
        "mediantime": node.chain.median_time_past(height),
        "mediantxsize": _median(sizes),
        "minfee": 0 if minfee == p.MAX_MONEY else minfee,
        "minfeerate": 0 if minfeerate == p.MAX_MONEY else minfeerate,
        "mintxsize": 0 if mintxsize == MAX_BLOCK_SERIALIZED_SIZE else mintxsize,
        "outs": outs,
        "subsidy": p.block_subsidy(height),
        "swtotal_size": sw_size,
        "swtotal_weight": sw_weight,
        "swtxs": swtxs,
        "time": block.header.time,
        "total_out": total_out,
        "total_size": total_size,
        "total_weight": total_weight,
        "totalfee": totalfee,
        "txs": n,
        "utxo_increase": outs - ins,
        "utxo_size_inc": utxo_size_inc,
        "utxo_increase_actual": utxos - ins,
        "utxo_size_inc_actual": utxo_size_inc_actual,
    }


@rpc(
    "getblockstats",
    "Blockchain",
    "Compute per block statistics for a given window. All amounts are in satoshis.\nIt won't work for some heights with pruning.",
    [
        Arg("hash_or_height", "any", "The block hash or height of the target block", shown_type="string or numeric"),
        Arg("stats", "json array", "Values to plot (see result below)", None, default_doc="all values"),
    ],
    result='{                              (json object)\n  "avgfee" : n,                (numeric, optional) Average fee in the block\n  ...\n'
    '  "utxo_size_inc_actual" : n   (numeric, optional) The increase/decrease in size for the utxo index, not counting unspendables\n}',
    examples=['\'"00000000c937983704a73af28acdec37b049d214adbda81d7e2a3dd146f6ed09"\' \'["minfeerate","avgfeerate"]\'', '1000 \'["minfeerate","avgfeerate"]\''],
)
def getblockstats(node: "RegtestNode", hash_or_height: Any, stats: list | None) -> dict[str, Any]:
    block, height = _block_at(node, hash_or_height)
    selected: set[str] = set()
    for item in stats or []:
        if not isinstance(item, str):
            raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(item)} is not of expected type string")
        selected.add(item)
    everything = block_stats(node, block, height)
    if not selected:
        return everything
    out = {}
    for name in sorted(selected):  # a std::set<std::string>, as bitcoind keeps them
        if name not in everything:
            raise RpcFailure(RPC_INVALID_PARAMETER, f"Invalid selected statistic '{name}'")
        out[name] = everything[name]
    return out


def _chain_tx_counts(node: "RegtestNode", height: int) -> list[int]:
    """Cumulative transaction count per height (``m_chain_tx_count``), from each block's tx count."""
    rows = node.chain.store.db.execute("SELECT height, substr(raw, 81, 9) FROM chain WHERE height <= ? ORDER BY height", (height,))
    counts, total = [], 0
    for _h, head in rows:
        total += p.read_compact_size(bytes(head), 0, False)[0]
        counts.append(total)
    return counts


@rpc(
    "getchaintxstats",
    "Blockchain",
    "Compute statistics about the total number and rate of transactions in the chain.",
    [
        Arg("nblocks", "numeric", "Size of the window in number of blocks", None, default_doc="one month"),
        Arg("blockhash", "string", "The hash of the block that ends the window.", None, default_doc="chain tip"),
    ],
    result='{                                       (json object)\n  "time" : xxx,                         (numeric) The timestamp for the final block in the window, expressed in UNIX epoch time\n'
    '  "txcount" : n,                        (numeric, optional) The total number of transactions in the chain up to that point, if known. It may be unknown when using assumeutxo.\n'
    '  "window_final_block_hash" : "hex",    (string) The hash of the final block in the window\n'
    '  "window_final_block_height" : n,      (numeric) The height of the final block in the window.\n'
    '  "window_block_count" : n,             (numeric) Size of the window in number of blocks\n'
    '  "window_interval" : n,                (numeric, optional) The elapsed time in the window in seconds. Only returned if "window_block_count" is > 0\n'
    '  "window_tx_count" : n,                (numeric, optional) The number of transactions in the window. Only returned if "window_block_count" is > 0 and if txcount exists for the start and end of the window.\n'
    '  "txrate" : n                          (numeric, optional) The average rate of transactions per second in the window. Only returned if "window_interval" is > 0 and if window_tx_count exists.\n}',
    examples=["", "2016"],
)
def getchaintxstats(node: "RegtestNode", nblocks: Any, blockhash: str | None) -> dict[str, Any]:
    chain = node.chain
    if blockhash is None:
        height = chain.height
    else:
        h = parse_hash(blockhash, "blockhash")
        height = chain.store.height_of(h)
        if height is None:
            if chain.header_height(h) is None:
                raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
            raise RpcFailure(RPC_INVALID_PARAMETER, "Block is not in main chain")
    if nblocks is None:
        count = max(0, min(30 * 24 * 60 * 60 // POW_TARGET_SPACING, height - 1))
    else:
        count = int_arg(nblocks)
        if count < 0 or (count > 0 and count >= height):
            raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid block count: should be between 0 and the block's height - 1")
    counts = _chain_tx_counts(node, height)
    out: dict[str, Any] = {
        "time": chain.store.times(height, height)[0],
        "txcount": counts[height],
        "window_final_block_hash": chain.store.hash_at(height),
        "window_final_block_height": height,
        "window_block_count": count,
    }
    if count > 0:
        interval = chain.median_time_past(height) - chain.median_time_past(height - count)
        window_txs = counts[height] - counts[height - count]
        out["window_interval"] = interval
        out["window_tx_count"] = window_txs
        if interval > 0:
            out["txrate"] = window_txs / interval
    return out


@rpc(
    "getnetworkhashps",
    "Mining",
    "Returns the estimated network hashes per second based on the last n blocks.\n"
    "Pass in [blocks] to override # of blocks, -1 specifies since last difficulty change.\n"
    "Pass in [height] to estimate the network speed at the time when a certain block was found.",
    [
        Arg("nblocks", "numeric", "The number of previous blocks to calculate estimate from, or -1 for blocks since last difficulty change.", 120),
        Arg("height", "numeric", "To estimate at the time of the given height.", -1),
    ],
    result="n    (numeric) Hashes per second estimated",
)
def getnetworkhashps(node: "RegtestNode", nblocks: Any, height: Any) -> float:
    lookup, at = int_arg(nblocks), int_arg(height)
    tip = node.chain.height
    if lookup < -1 or lookup == 0:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid nblocks. Must be a positive number or -1.")
    if at < -1 or at > tip:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Block does not exist at specified height")
    h = tip if at < 0 else at
    if h == 0:
        return 0
    if lookup == -1:
        lookup = h % DIFFICULTY_ADJUSTMENT_INTERVAL + 1
    lookup = min(lookup, h)
    times = node.chain.store.times(h - lookup, h)
    if min(times) == max(times):
        return 0
    return (lookup * BLOCK_WORK) / (max(times) - min(times))


# --- gettxoutsetinfo ---------------------------------------------------------------------------

_MUHASH_PRIME = 2**3072 - 1103717


def _chacha20_keystream(key: bytes, length: int) -> bytes:
    """ChaCha20 keystream with a zero nonce from block 0 (Core's ``ChaCha20Aligned`` as MuHash uses it)."""
    mask = 0xFFFFFFFF
    k = struct.unpack("<8I", key)
    out = bytearray()
    counter = 0
    while len(out) < length:
        init = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574, *k, counter, 0, 0, 0]
        x = list(init)
        for _ in range(10):
            for a, b, c, d in ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15), (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)):
                x[a] = (x[a] + x[b]) & mask
                x[d] ^= x[a]
                x[d] = ((x[d] << 16) | (x[d] >> 16)) & mask
                x[c] = (x[c] + x[d]) & mask
                x[b] ^= x[c]
                x[b] = ((x[b] << 12) | (x[b] >> 20)) & mask
                x[a] = (x[a] + x[b]) & mask
                x[d] ^= x[a]
                x[d] = ((x[d] << 8) | (x[d] >> 24)) & mask
                x[c] = (x[c] + x[d]) & mask
                x[b] ^= x[c]
                x[b] = ((x[b] << 7) | (x[b] >> 25)) & mask
        out += struct.pack("<16I", *((x[i] + init[i]) & mask for i in range(16)))
        counter += 1
    return bytes(out[:length])


def muhash_element(data: bytes) -> int:
    """Core's ``MuHash3072::ToNum3072``: SHA256, then 384 bytes of ChaCha20 keystream as a number."""
    return int.from_bytes(_chacha20_keystream(hashlib.sha256(data).digest(), 384), "little")


def muhash_finalize(numerator: int, denominator: int = 1) -> str:
    value = numerator * pow(denominator, -1, _MUHASH_PRIME) % _MUHASH_PRIME
    return hashlib.sha256(value.to_bytes(384, "little")).digest()[::-1].hex()


def _txout_ser(txid: str, vout: int, value: int, script: bytes, height: int, coinbase: bool) -> bytes:
    """Core's ``TxOutSer``: outpoint, (height << 1) + coinbase as uint32, then the CTxOut."""
    return bytes.fromhex(txid)[::-1] + struct.pack("<IIq", vout, (height << 1) + int(coinbase), value) + p.ser_compact_size(len(script)) + script


@rpc(
    "gettxoutsetinfo",
    "Blockchain",
    "Returns statistics about the unspent transaction output set.\nNote this call may take some time if you are not using coinstatsindex.",
    [
        Arg(
            "hash_type",
            "string",
            "Which UTXO set hash should be calculated. Options: 'hash_serialized_3' (the legacy algorithm), 'muhash', 'none'.",
            "hash_serialized_3",
        ),
        Arg(
            "hash_or_height", "any", "The block hash or height of the target height (only available with coinstatsindex).", None, shown_type="string or numeric"
        ),
        Arg("use_index", "boolean", "Use coinstatsindex, if available.", True),
    ],
    result='{                                     (json object)\n  "height" : n,                       (numeric) The block height (index) of the returned statistics\n'
    '  "bestblock" : "hex",                (string) The hash of the block at which these statistics are calculated\n'
    '  "txouts" : n,                       (numeric) The number of unspent transaction outputs\n'
    '  "bogosize" : n,                     (numeric) Database-independent, meaningless metric indicating the UTXO set size\n'
    '  "hash_serialized_3" : "hex",        (string, optional) The serialized hash (only present if \'hash_serialized_3\' hash_type is chosen)\n'
    '  "muhash" : "hex",                   (string, optional) The serialized hash (only present if \'muhash\' hash_type is chosen)\n'
    '  "transactions" : n,                 (numeric, optional) The number of transactions with unspent outputs (not available when coinstatsindex is used)\n'
    '  "disk_size" : n,                    (numeric, optional) The estimated size of the chainstate on disk (not available when coinstatsindex is used)\n'
    '  "total_amount" : n                  (numeric) The total amount of coins in the UTXO set\n}',
    examples=["", '"none"', '"none" 1000', '"none" \'"00000000c937983704a73af28acdec37b049d214adbda81d7e2a3dd146f6ed09"\''],
)
def gettxoutsetinfo(node: "RegtestNode", hash_type: str, hash_or_height: Any, use_index: bool) -> dict[str, Any]:
    if hash_type not in ("hash_serialized_3", "muhash", "none"):
        raise RpcFailure(RPC_INVALID_PARAMETER, f"'{hash_type}' is not a valid hash_type")
    if hash_or_height is not None:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Querying specific block heights requires coinstatsindex")
    chain = node.chain
    rows = chain.store.db.execute("SELECT txid, vout, value, script, height, coinbase FROM utxo").fetchall()
    rows.sort(key=lambda r: (bytes.fromhex(r[0])[::-1], r[1]))  # the coins database's key order
    bogosize = sum(50 + len(r[3]) for r in rows)  # GetBogoSize: 32+4+4+8+2 + script
    out: dict[str, Any] = {"height": chain.height, "bestblock": chain.tip_hash(), "txouts": len(rows), "bogosize": bogosize}
    if hash_type == "hash_serialized_3":
        hasher = hashlib.sha256()
        for r in rows:
            hasher.update(_txout_ser(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5])))
        out["hash_serialized_3"] = hashlib.sha256(hasher.digest()).digest()[::-1].hex()
    elif hash_type == "muhash":
        acc = 1
        for r in rows:
            acc = acc * muhash_element(_txout_ser(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]))) % _MUHASH_PRIME
        out["muhash"] = muhash_finalize(acc)
    out["total_amount"] = _btc(sum(r[2] for r in rows))
    out["transactions"] = len({r[0] for r in rows})
    # Not LevelDB's own estimate (there is none here): the coins' serialized size, as a stand-in.
    out["disk_size"] = sum(len(r[0]) // 2 + 9 + len(r[3]) for r in rows)
    return out
