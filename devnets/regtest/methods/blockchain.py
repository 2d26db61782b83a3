"""Blockchain RPCs: chain info, blocks, headers, UTXOs, mempool views.

Over 400 lines on purpose: one RPC family as bitcoind groups it, most of the length its help texts.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from chains.btc import primitives as p
from chains.btc.rpc_errors import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_MISC_ERROR,
    RPC_TYPE_ERROR,
)
from devnets.regtest.methods import (
    Arg,
    RpcFailure,
    json_type,
    rpc,
)
from devnets.regtest.methods.common import NETWORK, UINT32, int_arg, parse_hash, spk_json, verbosity

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode


def _btc(sats: int) -> Decimal:
    from devnets.regtest.decode import amount_to_btc

    return amount_to_btc(sats)


def _difficulty() -> float:
    return p.target_to_difficulty(p.REGTEST_BITS)


def header_json(node: "RegtestNode", block: p.Block, height: int, active: bool) -> dict[str, Any]:
    chain = node.chain
    h = block.header
    tip = chain.height
    out: dict[str, Any] = {
        "hash": block.hash,
        "confirmations": tip - height + 1 if active else -1,
        "height": height,
        "version": h.version,
        "versionHex": f"{h.version & 0xFFFFFFFF:08x}",
        "merkleroot": h.merkle_root_hex,
        "time": h.time,
        "mediantime": chain.median_time_past(height) if active else chain.kernel_mtp(block.hash),
        "nonce": h.nonce,
        "bits": f"{h.bits:08x}",
        "difficulty": p.target_to_difficulty(h.bits),
        "chainwork": chain.chainwork(height),
        "nTx": len(block.txs),
    }
    if height > 0:
        out["previousblockhash"] = h.prev_hash_hex
    if active and height < tip:
        out["nextblockhash"] = chain.store.hash_at(height + 1)
    return out


def find_block(node: "RegtestNode", block_hash: str) -> tuple[p.Block, bytes, int, bool]:
    found = node.chain.block_raw(block_hash)
    if found is None:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Block not found")
    raw, height = found
    block = p.Block.parse(raw)
    if height is None:
        return block, raw, node.chain.header_height(block_hash) or 0, False
    return block, raw, height, True


@rpc(
    "getblockchaininfo",
    "Blockchain",
    "Returns an object containing various state info regarding blockchain processing.",
    result='{\n  "chain" : "str",  (string) current network name (main, test, testnet4, signet, regtest)\n  "blocks" : n, ...\n}',
)
def getblockchaininfo(node: "RegtestNode") -> dict[str, Any]:
    chain = node.chain
    tip = chain.height
    tip_time = chain.store.times(tip, tip)[0]
    return {
        "chain": "regtest",
        "blocks": tip,
        "headers": tip,
        "bestblockhash": chain.tip_hash(),
        "difficulty": _difficulty(),
        "time": tip_time,
        "mediantime": chain.median_time_past(),
        "verificationprogress": 1,
        "initialblockdownload": False,
        "chainwork": chain.chainwork(tip),
        "size_on_disk": _size_on_disk(node),
        "pruned": False,
        "warnings": [],
    }


def _size_on_disk(node: "RegtestNode") -> int:
    blocks = node.netdir / "blocks"
    return sum(f.stat().st_size for f in blocks.glob("*.dat")) if blocks.exists() else 0


@rpc(
    "getblockcount",
    "Blockchain",
    "Returns the height of the most-work fully-validated chain.\nThe genesis block has height 0.",
    result="n    (numeric) The current block count",
    examples=[""],
)
def getblockcount(node: "RegtestNode") -> int:
    return node.chain.height


@rpc(
    "getbestblockhash",
    "Blockchain",
    "Returns the hash of the best (tip) block in the most-work fully-validated chain.",
    result='"hex"    (string) the block hash, hex-encoded',
)
def getbestblockhash(node: "RegtestNode") -> str:
    return node.chain.tip_hash()


_WAIT_NOTE = "\nReturns the current block on timeout or exit.\n\nMake sure to use no RPC timeout (bitcoin-cli -rpcclienttimeout=0)"
_WAIT_TIMEOUT = Arg("timeout", "numeric", "Time in milliseconds to wait for a response. 0 indicates no timeout.", 0)
_WAIT_RESULT = '{                    (json object)\n  "hash" : "hex",    (string) The blockhash\n  "height" : n       (numeric) Block height\n}'
#: The methods that wait for the chain: the RPC server runs them outside its request lock.
WAITING_METHODS = frozenset({"waitfornewblock", "waitforblock", "waitforblockheight"})


def _tip(node: "RegtestNode") -> dict[str, Any]:
    return {"hash": node.chain.tip_hash(), "height": node.chain.height}


def _timeout_ms(value: Any) -> int:
    ms = int_arg(value)
    if ms < 0:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Negative timeout")
    return ms


@rpc(
    "waitfornewblock",
    "Hidden",
    "Waits for any new block and returns useful info about it.\n" + _WAIT_NOTE,
    [_WAIT_TIMEOUT, Arg("current_tip", "string", "Method waits for the chain tip to differ from this.", None, default_doc="")],
    result=_WAIT_RESULT,
    examples=["1000"],
)
async def waitfornewblock(node: "RegtestNode", timeout: Any, current_tip: str | None) -> dict[str, Any]:
    start = parse_hash(current_tip, "current_tip") if current_tip is not None else node.chain.tip_hash()
    await node.wait_for_tip(lambda: node.chain.tip_hash() != start, _timeout_ms(timeout))
    return _tip(node)


@rpc(
    "waitforblock",
    "Hidden",
    "Waits for a specific new block and returns useful info about it.\n" + _WAIT_NOTE,
    [Arg("blockhash", "string", "Block hash to wait for."), _WAIT_TIMEOUT],
    result=_WAIT_RESULT,
    examples=['"0000000000079f8ef3d2c688c244eb7a4570b24c9ed7b4a8c619eb02596f8862" 1000'],
)
async def waitforblock(node: "RegtestNode", blockhash: str, timeout: Any) -> dict[str, Any]:
    wanted = parse_hash(blockhash, "blockhash")
    await node.wait_for_tip(lambda: node.chain.tip_hash() == wanted, _timeout_ms(timeout))
    return _tip(node)


@rpc(
    "waitforblockheight",
    "Hidden",
    "Waits for (at least) block height and returns the height and hash\nof the current tip.\n" + _WAIT_NOTE,
    [Arg("height", "numeric", "Block height to wait for."), _WAIT_TIMEOUT],
    result=_WAIT_RESULT,
    examples=["100 1000"],
)
async def waitforblockheight(node: "RegtestNode", height: Any, timeout: Any) -> dict[str, Any]:
    wanted = int_arg(height)
    await node.wait_for_tip(lambda: node.chain.height >= wanted, _timeout_ms(timeout))
    return _tip(node)


@rpc(
    "getblockhash",
    "Blockchain",
    "Returns hash of block in best-block-chain at height provided.",
    [Arg("height", "numeric", "The height index")],
    result='"hex"    (string) The block hash',
    examples=["1000"],
)
def getblockhash(node: "RegtestNode", height: Any) -> str:
    h = int_arg(height)
    if h < 0 or h > node.chain.height:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Block height out of range")
    return node.chain.store.hash_at(h)


@rpc(
    "getblockheader",
    "Blockchain",
    "If verbose is false, returns a string that is serialized, hex-encoded data for blockheader 'hash'.\n"
    "If verbose is true, returns an Object with information about blockheader <hash>.",
    [Arg("blockhash", "string", "The block hash"), Arg("verbose", "boolean", "true for a json object, false for the hex-encoded data", True)],
    result='{\n  "hash" : "hex",  (string) the block hash (same as provided)\n  ...\n}',
    examples=['"00000000c937983704a73af28acdec37b049d214adbda81d7e2a3dd146f6ed09"'],
)
def getblockheader(node: "RegtestNode", blockhash: str, verbose: bool) -> Any:
    h = parse_hash(blockhash, "hash")
    block, raw, height, active = find_block(node, h)
    if not verbose:
        return raw[:80].hex()
    return header_json(node, block, height, active)


def _tx_json(node: "RegtestNode", tx: p.Tx, **kw: Any) -> dict[str, Any]:
    from devnets.regtest.decode import tx_to_json

    return tx_to_json(tx, NETWORK, **kw)


@rpc(
    "getblock",
    "Blockchain",
    "If verbosity is 0, returns a string that is serialized, hex-encoded data for block 'hash'.\n"
    "If verbosity is 1, returns an Object with information about block <hash>.\n"
    "If verbosity is 2, returns an Object with information about block <hash> and information about each transaction.\n"
    "If verbosity is 3, returns an Object with information about block <hash> and information about each transaction, including prevout information for inputs (only for unpruned blocks in the current best chain).",
    [
        Arg("blockhash", "string", "The block hash"),
        Arg(
            "verbosity",
            "any",
            "0 for hex-encoded data, 1 for a JSON object, 2 for JSON object with transaction data, and 3 for JSON object with transaction data including prevout information for inputs",
            1,
            shown_type="numeric",
        ),
    ],
    result="\"hex\"    (string) A string that is serialized, hex-encoded data for block 'hash'",
    examples=['"00000000c937983704a73af28acdec37b049d214adbda81d7e2a3dd146f6ed09"'],
)
def getblock(node: "RegtestNode", blockhash: str, verbosity_arg: Any) -> Any:
    level = verbosity(verbosity_arg, 1)
    h = parse_hash(blockhash, "blockhash")
    block, raw, height, active = find_block(node, h)
    if level <= 0:
        return raw.hex()
    out = header_json(node, block, height, active)
    out.update({"size": block.size, "strippedsize": block.strippedsize, "weight": block.weight})
    if level == 1:
        out["tx"] = [tx.txid for tx in block.txs]
    else:
        undo = _undo(node, h) if active else None
        from devnets.regtest.decode import SpentOutput

        txs = []
        for i, tx in enumerate(block.txs):
            kw: dict[str, Any] = {}
            if undo is not None and i > 0:
                kw["prevouts"] = [SpentOutput(p.TxOut(c[0], c[1]), c[2], c[3]) for c in undo[i - 1]]
                kw["include_prevout"] = level >= 3
            txs.append(_tx_json(node, tx, include_hex=True, **kw))
        out["tx"] = txs
    out["nTx"] = len(block.txs)
    order = [
        "hash",
        "confirmations",
        "height",
        "version",
        "versionHex",
        "merkleroot",
        "time",
        "mediantime",
        "nonce",
        "bits",
        "difficulty",
        "chainwork",
        "nTx",
        "previousblockhash",
        "nextblockhash",
        "strippedsize",
        "size",
        "weight",
        "tx",
    ]
    return {k: out[k] for k in order if k in out}


def _undo(node: "RegtestNode", block_hash: str):
    entry = node.chain.kernel.entry(block_hash)
    return node.chain.kernel.spent_outputs(entry) if entry is not None and entry.height > 0 else None


@rpc(
    "gettxout",
    "Blockchain",
    "Returns details about an unspent transaction output.",
    [
        Arg("txid", "string", "The transaction id"),
        Arg("n", "numeric", "vout number"),
        Arg("include_mempool", "boolean", "Whether to include the mempool. Note that an unspent output that is spent in the mempool won't appear.", True),
    ],
    result='{\n  "bestblock" : "hex",  (string) The hash of the block at the tip of the chain\n  "confirmations" : n, ...\n}',
    examples=['"txid" 1'],
)
def gettxout(node: "RegtestNode", txid: str, n: Any, include_mempool: bool) -> Any:
    t = parse_hash(txid, "txid")
    vout = int_arg(n, UINT32)  # ``getInt<uint32_t>``: a negative n is out of range too
    chain, pool = node.chain, node.mempool
    if include_mempool:
        if pool.spenders.get((t, vout)) is not None:
            return None
        mem = pool.mempool_coin(t, vout)
        if mem is not None:
            return {"bestblock": chain.tip_hash(), "confirmations": 0, "value": _btc(mem[0]), "scriptPubKey": spk_json(mem[1]), "coinbase": False}
    coin = chain.store.coin(t, vout)
    if coin is None:
        return None
    return {
        "bestblock": chain.tip_hash(),
        "confirmations": chain.height - coin.height + 1,
        "value": _btc(coin.value),
        "scriptPubKey": spk_json(coin.script),
        "coinbase": coin.coinbase,
    }


def mempool_entry_json(node: "RegtestNode", txid: str) -> dict[str, Any]:
    pool = node.mempool
    e = pool.entries[txid]
    anc = pool.ancestors(txid)
    desc = pool.descendants(txid)
    # Core reports modified fees (base + prioritisetransaction delta) for these three.
    anc_fee = sum(pool.modified_fee(t) for t in anc | {txid})
    desc_fee = sum(pool.modified_fee(t) for t in desc | {txid})
    spentby = sorted({pool.spenders[(txid, n)] for n in range(len(e.tx.vout)) if (txid, n) in pool.spenders})
    return {
        "vsize": e.vsize,
        "weight": e.tx.weight,
        "time": e.time,
        "height": e.height,
        "descendantcount": len(desc) + 1,
        "descendantsize": e.vsize + sum(pool.entries[d].vsize for d in desc),
        "ancestorcount": len(anc) + 1,
        "ancestorsize": e.vsize + sum(pool.entries[a].vsize for a in anc),
        "wtxid": e.tx.wtxid,
        "fees": {"base": _btc(e.fee), "modified": _btc(pool.modified_fee(txid)), "ancestor": _btc(anc_fee), "descendant": _btc(desc_fee)},
        "depends": sorted(e.parents),
        "spentby": spentby,
        "bip125-replaceable": any(txin.sequence < 0xFFFFFFFE for txin in e.tx.vin)
        or any(any(t.sequence < 0xFFFFFFFE for t in pool.entries[a].tx.vin) for a in anc),
        "unbroadcast": False,
    }


@rpc(
    "getrawmempool",
    "Blockchain",
    "Returns all transaction ids in memory pool as a json array of string transaction ids.\n\n"
    "Hint: use getmempoolentry to fetch a specific transaction from the mempool.",
    [
        Arg("verbose", "boolean", "True for a json object, false for array of transaction ids", False),
        Arg("mempool_sequence", "boolean", "If verbose=false, returns a json object with transaction list and mempool sequence number attached.", False),
    ],
    result='[           (json array)\n  "hex",    (string) The transaction id\n  ...\n]',
    examples=["true"],
)
def getrawmempool(node: "RegtestNode", verbose: bool, mempool_sequence: bool) -> Any:
    pool = node.mempool
    if verbose and mempool_sequence:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Verbose results cannot contain mempool sequence values.")
    if verbose:
        return {t: mempool_entry_json(node, t) for t in pool.entries}
    if mempool_sequence:
        return {"txids": list(pool.entries), "mempool_sequence": pool.sequence}
    return list(pool.entries)


@rpc(
    "gettxspendingprevout",
    "Blockchain",
    "Scans the mempool to find transactions spending any of the given outputs",
    [Arg("outputs", "json array", "The transaction outputs that we want to check, and within each, the txid (string) vout (numeric).")],
    result="[                              (json array)\n  {                            (json object)\n"
    '    "txid" : "hex",            (string) the transaction id of the checked output\n'
    '    "vout" : n,                (numeric) the vout value of the checked output\n'
    '    "spendingtxid" : "hex"     (string, optional) the transaction id of the mempool transaction spending this output (omitted if unspent)\n'
    "  },\n  ...\n]",
    examples=['"[{\\"txid\\":\\"a08e6907dbbd3d809776dbfc5d82e371b764ed838b5655e72f463568df1aadf0\\",\\"vout\\":3}]"'],
)
def gettxspendingprevout(node: "RegtestNode", outputs: Any) -> list[dict[str, Any]]:
    # Relayers ask "who spends this HTLC output in the mempool?" without fetching the whole mempool.
    if not isinstance(outputs, list):
        raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(outputs)} is not of expected type array")
    if not outputs:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid parameter, outputs are missing")
    wanted: list[tuple[str, int]] = []
    for item in outputs:
        if not isinstance(item, dict):
            raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(item)} is not of expected type object")
        if "txid" not in item:
            raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid parameter, missing txid key")
        if "vout" not in item:
            raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid parameter, missing vout key")
        for key, expected in (("txid", "string"), ("vout", "number")):  # RPCTypeCheckObj
            if json_type(item[key]) != expected:
                raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(item[key])} for field {key} is not of expected type {expected}")
        vout = int_arg(item["vout"])
        if vout < 0:
            raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid parameter, vout cannot be negative")
        wanted.append((parse_hash(item["txid"], "txid"), vout))
    result = []
    for txid, vout in wanted:
        entry: dict[str, Any] = {"txid": txid, "vout": vout}
        spender = node.mempool.spenders.get((txid, vout))
        if spender is not None:
            entry["spendingtxid"] = spender
        result.append(entry)
    return result


@rpc(
    "getmempoolentry",
    "Blockchain",
    "Returns mempool data for given transaction",
    [Arg("txid", "string", "The transaction id (must be in mempool)")],
    result='{\n  "vsize" : n,  (numeric) virtual transaction size as defined in BIP 141.\n  ...\n}',
    examples=['"mytxid"'],
)
def getmempoolentry(node: "RegtestNode", txid: str) -> dict[str, Any]:
    t = parse_hash(txid, "txid")
    if t not in node.mempool:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Transaction not in mempool")
    return mempool_entry_json(node, t)


@rpc(
    "getmempoolinfo",
    "Blockchain",
    "Returns details on the active state of the TX memory pool.",
    result='{\n  "loaded" : true|false,  (boolean) True if the initial load attempt of the persisted mempool finished\n  ...\n}',
)
def getmempoolinfo(node: "RegtestNode") -> dict[str, Any]:
    pool = node.mempool
    size = sum(e.vsize for e in pool.entries.values())
    return {
        "loaded": True,
        "size": len(pool),
        "bytes": size,
        "usage": sum(len(e.tx.serialize()) * 4 + 400 for e in pool.entries.values()),
        "total_fee": _btc(sum(e.fee for e in pool.entries.values())),
        "maxmempool": 300_000_000,
        "mempoolminfee": _btc(1000),
        "minrelaytxfee": _btc(1000),
        "incrementalrelayfee": _btc(1000),
        "unbroadcastcount": 0,
        "fullrbf": True,
    }


@rpc(
    "getindexinfo",
    "Util",
    "Returns the status of one or all available indices currently running in the node.",
    [Arg("index_name", "string", "Filter results for an index with a specific name.", "", default_doc="")],
    result='{  (json object)\n  "name" : {  (json object) The name of the index\n    "synced" : true|false,\n    "best_block_height" : n\n  }\n}',
    examples=['"txindex"'],
)
def getindexinfo(node: "RegtestNode", index_name: str) -> dict[str, Any]:
    info = {"txindex": {"synced": True, "best_block_height": node.chain.height}}
    if index_name:
        return {k: v for k, v in info.items() if k == index_name}
    return info


@rpc(
    "getdifficulty",
    "Blockchain",
    "Returns the proof-of-work difficulty as a multiple of the minimum difficulty.",
    result="n    (numeric) the proof-of-work difficulty as a multiple of the minimum difficulty.",
)
def getdifficulty(node: "RegtestNode") -> float:
    return _difficulty()


@rpc(
    "getchaintips",
    "Blockchain",
    "Return information about all known tips in the block tree, including the main chain as well as orphaned branches.",
    result='[  (json array)\n  {\n    "height" : n,\n    "hash" : "hex",\n    "branchlen" : n,\n    "status" : "str"\n  }\n]',
)
def getchaintips(node: "RegtestNode") -> list[dict[str, Any]]:
    return [{"height": node.chain.height, "hash": node.chain.tip_hash(), "branchlen": 0, "status": "active"}]


SCAN_HELP = (
    "Scans the unspent transaction output set for entries that match certain output descriptors.\n"
    "Examples of output descriptors are:\n"
    "    addr(<address>)                      Outputs whose output script corresponds to the specified address (does not include P2PK)\n"
    "    raw(<hex script>)                    Outputs whose output script equals the specified hex-encoded bytes\n"
    "    combo(<pubkey>)                      P2PK, P2PKH, P2WPKH, and P2SH-P2WPKH outputs for the given pubkey\n"
    "    pkh(<pubkey>)                        P2PKH outputs for the given pubkey\n"
    "    sh(multi(<n>,<pubkey>,<pubkey>,...)) P2SH-multisig outputs for the given threshold and pubkeys\n"
    "    tr(<pubkey>)                         P2TR\n"
)


@rpc(
    "scantxoutset",
    "Blockchain",
    SCAN_HELP,
    [
        Arg(
            "action",
            "string",
            'The action to execute\n"start" for starting a scan\n"abort" for aborting the current scan (returns true when abort was successful)\n"status" for progress report (in %) of the current scan',
        ),
        Arg("scanobjects", "json array", 'Array of scan objects. Required for "start" action', None, default_doc=""),
    ],
    result='{  (json object)\n  "success" : true|false,  (boolean) Whether the scan was completed\n  "txouts" : n, ...\n}',
    examples=["start '[\"addr(bcrt1q...)\"]'"],
)
def scantxoutset(node: "RegtestNode", action: str, scanobjects: list | None) -> Any:
    if action == "status":
        return None
    if action == "abort":
        return False
    if action != "start":
        raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid action '%s'" % action)
    if scanobjects is None:
        raise RpcFailure(RPC_MISC_ERROR, "scanobjects argument is required for the start action")
    from devnets.regtest.descriptors import parse_descriptor

    scripts: dict[bytes, str] = {}
    for obj in scanobjects:
        if isinstance(obj, str):
            desc = obj
        elif isinstance(obj, dict) and isinstance(obj.get("desc"), str):
            desc = obj["desc"]
        else:
            raise RpcFailure(RPC_INVALID_PARAMETER, "Scan object needs to be either a string or an object")
        try:
            found = parse_descriptor(desc, NETWORK)
        except Exception as exc:
            raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, getattr(exc, "message", str(exc))) from None
        for script in found:
            scripts.setdefault(script, desc)
    chain = node.chain
    coins = chain.store.coins_for_scripts(scripts)
    from devnets.regtest.descriptors import infer_descriptor

    unspents = []
    total = 0
    for c in coins:
        total += c.value
        unspents.append(
            {
                "txid": c.txid,
                "vout": c.vout,
                "scriptPubKey": c.script.hex(),
                "desc": infer_descriptor(c.script, NETWORK),
                "amount": _btc(c.value),
                "coinbase": c.coinbase,
                "height": c.height,
                "blockhash": chain.store.hash_at(c.height),
                "confirmations": chain.height - c.height + 1,
            }
        )
    count, _ = chain.store.utxo_stats()
    return {"success": True, "txouts": count, "height": chain.height, "bestblock": chain.tip_hash(), "unspents": unspents, "total_amount": _btc(total)}


@rpc(
    "invalidateblock",
    "Blockchain",
    "Permanently marks a block as invalid, as if it violated a consensus rule.",
    [Arg("blockhash", "string", "the hash of the block to mark as invalid")],
    result="null    (json null)",
)
def invalidateblock(node: "RegtestNode", blockhash: str) -> None:
    raise RpcFailure(
        RPC_MISC_ERROR,
        "invalidateblock is not supported by the embedded regtest node (libbitcoinkernel has no "
        "way to invalidate a block); use devnetreorg <depth> to replace the last blocks with a longer branch",
    )


@rpc(
    "reconsiderblock",
    "Blockchain",
    "Removes invalidity status of a block, its ancestors and its descendants, reconsider them for activation.",
    [Arg("blockhash", "string", "the hash of the block to reconsider")],
    result="null    (json null)",
)
def reconsiderblock(node: "RegtestNode", blockhash: str) -> None:
    raise RpcFailure(
        RPC_MISC_ERROR, "reconsiderblock is not supported by the embedded regtest node; use devnetreorg <depth> to replace the last blocks with a longer branch"
    )
