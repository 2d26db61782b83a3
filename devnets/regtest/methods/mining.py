"""Mining RPCs, plus ``devnetreorg``, the embedded node's documented replacement for
``invalidateblock``-driven reorgs in tests, and ``devnetautomine``, its counterpart of Anvil's
automine."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chains.btc import primitives as p
from devnets.regtest.mempool import Rejected
from chains.btc.rpc_errors import (
    RPC_DESERIALIZATION_ERROR,
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_MISC_ERROR,
    RPC_VERIFY_ERROR,
)
from devnets.regtest.methods import Arg, RpcFailure, json_type, rpc
from devnets.regtest.methods.common import NETWORK, address_script, int_arg
from devnets.regtest.miner import COINBASE_RESERVED_WEIGHT, MAX_BLOCK_WEIGHT

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode

DEFAULT_MAX_TRIES = 1_000_000


def _descriptor_script(descriptor: str) -> bytes:
    from devnets.regtest.descriptors import parse_descriptor

    try:
        scripts = parse_descriptor(descriptor, NETWORK)
    except Exception as exc:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, getattr(exc, "message", str(exc))) from None
    if len(scripts) != 1:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Ranged descriptor not accepted. Maybe pass through deriveaddresses first?")
    return scripts[0]


def _generate(node: "RegtestNode", count: int, script: bytes) -> list[str]:
    hashes = []
    for _ in range(count):
        block, outcome = node.mine(script)
        if not outcome.valid:
            raise RpcFailure(RPC_MISC_ERROR, f"ProcessNewBlock, block not accepted: {outcome.reason}")
        hashes.append(block.hash)
    return hashes


@rpc(
    "generatetoaddress",
    "Generating",
    "Mine to a specified address and return the block hashes.",
    [
        Arg("nblocks", "numeric", "How many blocks are generated."),
        Arg("address", "string", "The address to send the newly generated bitcoin to."),
        Arg("maxtries", "numeric", "How many iterations to try.", DEFAULT_MAX_TRIES),
    ],
    result='[           (json array) hashes of blocks generated\n  "hex",    (string) blockhash\n  ...\n]',
    examples=['11 "myaddress"'],
)
def generatetoaddress(node: "RegtestNode", nblocks: Any, address: str, maxtries: Any) -> list[str]:
    count = int_arg(nblocks)
    script = address_script(address)
    int_arg(maxtries)  # read like bitcoind (out of range is an error); regtest PoW never needs many
    return _generate(node, count, script)


@rpc(
    "generatetodescriptor",
    "Generating",
    "Mine to a specified descriptor and return the block hashes.",
    [
        Arg("num_blocks", "numeric", "How many blocks are generated."),
        Arg("descriptor", "string", "The descriptor to send the newly generated bitcoin to."),
        Arg("maxtries", "numeric", "How many iterations to try.", DEFAULT_MAX_TRIES),
    ],
    result='[           (json array) hashes of blocks generated\n  "hex",    (string) blockhash\n  ...\n]',
    examples=['11 "mydesc"'],
)
def generatetodescriptor(node: "RegtestNode", num_blocks: Any, descriptor: str, maxtries: Any) -> list[str]:
    count = int_arg(num_blocks)
    script = _descriptor_script(descriptor)
    int_arg(maxtries)
    return _generate(node, count, script)


@rpc(
    "generateblock",
    "Generating",
    "Mine a set of ordered transactions to a specified address or descriptor and return the block hash.",
    [
        Arg("output", "string", "The address or descriptor to send the newly generated bitcoin to."),
        Arg(
            "transactions",
            "json array",
            "An array of hex strings which are either txids or raw transactions.\n"
            "Txids must reference transactions currently in the mempool.\n"
            "All transactions must be valid and in valid order, otherwise the block will be rejected.",
        ),
        Arg("submit", "boolean", "Whether to submit the block before the RPC call returns or to return it as hex.", True),
    ],
    result='{                    (json object)\n  "hash" : "hex",    (string) hash of generated block\n'
    '  "hex" : "hex"      (string, optional) hex of generated block, only present when submit=false\n}',
    examples=['"myaddress" \'["rawtx", "mempool_txid"]\''],
)
def generateblock(node: "RegtestNode", output: str, transactions: list, submit: bool) -> dict[str, Any]:
    try:
        script = _descriptor_script(output)
    except RpcFailure:
        try:
            script = address_script(output)
        except RpcFailure:
            raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Error: Invalid address or descriptor") from None
    txs: list[p.Tx] = []
    for item in transactions:
        if not isinstance(item, str):
            raise RpcFailure(-3, f"JSON value of type {json_type(item)} is not of expected type string")
        if len(item) == 64 and _is_hex(item):
            entry = node.mempool.entries.get(item.lower())
            if entry is None:
                raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, f"Transaction {item} not in mempool.")
            txs.append(entry.tx)
            continue
        try:
            txs.append(p.Tx.parse(bytes.fromhex(item)))
        except (ValueError, p.DecodeError):
            raise RpcFailure(RPC_DESERIALIZATION_ERROR, f"Transaction decode failed for {item}. Make sure the tx has at least one input.") from None
    if sum(tx.weight for tx in txs) > MAX_BLOCK_WEIGHT - COINBASE_RESERVED_WEIGHT:
        raise RpcFailure(RPC_VERIFY_ERROR, "TestBlockValidity failed: bad-blk-weight")
    if not submit:
        from devnets.regtest.miner import assemble

        chain = node.chain
        block = assemble(chain.tip_hash(), chain.height + 1, chain.median_time_past(), node.now(), script, txs, node._fees_of(txs))
        return {"hash": block.hash, "hex": block.serialize().hex()}
    block, outcome = node.mine(script, txs)
    if not outcome.valid:
        raise RpcFailure(RPC_VERIFY_ERROR, f"TestBlockValidity failed: {outcome.reason}")
    return {"hash": block.hash}


def _is_hex(s: str) -> bool:
    try:
        bytes.fromhex(s)
        return True
    except ValueError:
        return False


@rpc(
    "submitblock",
    "Mining",
    "Attempts to submit new block to network.\nSee https://en.bitcoin.it/wiki/BIP_0022 for full specification.",
    [
        Arg("hexdata", "string", "the hex-encoded block data to submit"),
        Arg("dummy", "string", "dummy value, for compatibility with BIP22. This value is ignored.", None, default_doc="ignored"),
    ],
    result='null    (json null) Returns JSON Null when valid\n\nor\n\n"str"    (string) A string according to BIP22 (e.g. "duplicate", "duplicate-invalid", "inconclusive", "rejected")',
    examples=['"mydata"'],
)
def submitblock(node: "RegtestNode", hexdata: str, dummy: Any) -> Any:
    try:
        block = p.Block.parse(bytes.fromhex(hexdata))
    except (ValueError, p.DecodeError):
        raise RpcFailure(RPC_DESERIALIZATION_ERROR, "Block decode failed") from None
    if not block.txs or not block.txs[0].is_coinbase:
        raise RpcFailure(RPC_DESERIALIZATION_ERROR, "Block does not start with a coinbase")
    known = node.chain.kernel.entry(block.hash)
    if known is not None and node.chain.kernel.has_block_data(known):
        return "duplicate-invalid" if node.chain.kernel.known_invalid(block.hash) else "duplicate"
    outcome = node.submit_block(block)
    if not outcome.valid:
        return outcome.reason
    if node.chain.tip_hash() != block.hash and node.chain.store.height_of(block.hash) is None:
        return "inconclusive"
    return None


@rpc(
    "getmininginfo",
    "Mining",
    "Returns a json object containing mining-related information.",
    result='{\n  "blocks" : n,  (numeric) The current block\n  ...\n}',
)
def getmininginfo(node: "RegtestNode") -> dict[str, Any]:
    chain = node.chain
    tip_raw = chain.store.raw_at(chain.height)
    tip = p.Block.parse(tip_raw)
    return {
        "blocks": chain.height,
        "currentblockweight": tip.weight,
        "currentblocktx": len(tip.txs) - 1,
        "difficulty": p.target_to_difficulty(p.REGTEST_BITS),
        "networkhashps": 0,
        "pooledtx": len(node.mempool),
        "chain": "regtest",
        "warnings": [],
    }


@rpc(
    "estimatesmartfee",
    "Util",
    "Estimates the approximate fee per kilobyte needed for a transaction to begin\n"
    "confirmation within conf_target blocks if possible and return the number of blocks\n"
    "for which the estimate is valid. Uses virtual transaction size as defined\n"
    "in BIP 141 (witness data is discounted).",
    [
        Arg("conf_target", "numeric", "Confirmation target in blocks (1 - 1008)"),
        Arg(
            "estimate_mode",
            "string",
            'The fee estimate mode.\nWhether to return a more conservative estimate which also satisfies\na longer history. A conservative estimate potentially returns a\nhigher feerate and is more likely to be sufficient for the desired\ntarget, but is not as responsive to short term drops in the\nprevailing fee market. Must be one of (case insensitive):\n"unset"\n"economical"\n"conservative"',
            "economical",
        ),
    ],
    result='{                   (json object)\n  "feerate" : n,    (numeric, optional) estimate fee rate in BTC/kvB (only present if no errors were encountered)\n'
    '  "errors" : [       (json array, optional) Errors encountered during processing (if there are any)\n    "str",          (string) error\n    ...\n  ],\n'
    '  "blocks" : n       (numeric) block number where estimate was found\n}',
    examples=["6"],
)
def estimatesmartfee(node: "RegtestNode", conf_target: Any, estimate_mode: str) -> dict[str, Any]:
    target = int_arg(conf_target)
    if target < 1 or target > 1008:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid conf_target, must be between 1 and 1008")
    if estimate_mode.lower() not in ("unset", "economical", "conservative"):
        raise RpcFailure(RPC_INVALID_PARAMETER, 'Invalid estimate_mode parameter, must be one of: "unset", "economical", "conservative"')
    # Like a fresh regtest bitcoind: the estimator has seen no confirmations to learn from.
    return {"errors": ["Insufficient data or no feerate found"], "blocks": 0}


@rpc(
    "devnetreorg",
    "Generating",
    "Devnet only (not a bitcoind RPC). Replaces the last `depth` blocks of the active chain with a longer\n"
    "competing branch of empty blocks built on the block `depth` below the tip, and submits it to the\n"
    "consensus engine, which reorganises to it because it has more work. Transactions of the replaced\n"
    "blocks go back to the mempool unless they conflict. This stands in for invalidateblock, which\n"
    "libbitcoinkernel does not offer.",
    [
        Arg("depth", "numeric", "How many blocks at the tip to replace (1 to the current height)."),
        Arg("nblocks", "numeric", "How many blocks the new branch has (more than depth).", None, default_doc="depth + 1"),
        Arg("address", "string", "Address the new branch's coinbases pay to.", None, default_doc="an OP_TRUE script"),
    ],
    result='{\n  "old_tip" : "hex",      (string) the replaced tip\n  "new_tip" : "hex",      (string) the new tip\n'
    '  "disconnected" : n,     (numeric) blocks disconnected\n  "blocks" : [ "hex", ... ]  (json array) the new branch\n}',
    examples=["2", '2 3 "bcrt1q..."'],
)
def devnetreorg(node: "RegtestNode", depth: Any, nblocks: Any, address: str | None) -> dict[str, Any]:
    script = address_script(address) if address is not None else b"\x51"
    d = int_arg(depth)
    old_tip = node.chain.tip_hash()
    try:
        hashes = node.replace_tip(d, script, None if nblocks is None else int_arg(nblocks))
    except ValueError as exc:
        raise RpcFailure(RPC_INVALID_PARAMETER, str(exc)) from None
    except (RuntimeError, Rejected) as exc:
        raise RpcFailure(RPC_MISC_ERROR, str(exc)) from None
    return {"old_tip": old_tip, "new_tip": node.chain.tip_hash(), "disconnected": d, "blocks": hashes}


@rpc(
    "devnetautomine",
    "Generating",
    "Devnet only (not a bitcoind RPC). While enabled, every transaction sendrawtransaction accepts is\n"
    "mined at once: the call returns after a block holding the mempool is connected, as Anvil's\n"
    "automine does. For tests and benchmarks that want each transaction confirmed when it is sent,\n"
    "without a task polling the mempool to mine it.",
    [
        Arg("enable", "boolean", "Mine on every accepted transaction (true) or stop (false)."),
        Arg("address", "string", "Address the coinbases pay to.", None, default_doc="an OP_TRUE script"),
    ],
    result='{\n  "automine" : true|false      (boolean) whether automine is now on\n}',
    examples=["true", 'true "bcrt1q..."', "false"],
)
def devnetautomine(node: "RegtestNode", enable: Any, address: str | None) -> dict[str, Any]:
    node.automine = (address_script(address) if address is not None else b"\x51") if enable else None
    return {"automine": node.automine is not None}
