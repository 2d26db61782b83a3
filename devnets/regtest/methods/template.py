"""``getblocktemplate`` (BIP22/23/9/145 as bitcoind 28 answers on regtest) and the merkle-proof pair
``gettxoutproof``/``verifytxoutproof`` (``CMerkleBlock`` bytes, identical to bitcoind's)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from chains.btc import primitives as p
from chains.btc import script as sc
from chains.btc.rpc_errors import RPC_DESERIALIZATION_ERROR, RPC_INVALID_PARAMETER, RPC_TYPE_ERROR
from devnets.regtest.methods import Arg, RpcFailure, json_type, rpc
from devnets.regtest.methods.common import parse_hash
from devnets.regtest.miner import BLOCK_VERSION, COINBASE_RESERVED_WEIGHT, MAX_BLOCK_WEIGHT

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode

VB_PERIOD = 144  # regtest nMinerConfirmationWindow
TESTDUMMY_BIT = 28
MAX_TIMEWARP = 600
OP_CHECKSIG, OP_CHECKSIGVERIFY, OP_CHECKMULTISIG, OP_CHECKMULTISIGVERIFY = 0xAC, 0xAD, 0xAE, 0xAF


# --- sigop cost (Core's GetTransactionSigOpCost with P2SH and WITNESS flags) -------------------


def _sigops(script: bytes, accurate: bool) -> int:
    n, last = 0, None
    for op, data in sc.parse_script(script):
        if op <= 0x4E and data is None:
            break  # GetOp failed: Core stops counting
        if op in (OP_CHECKSIG, OP_CHECKSIGVERIFY):
            n += 1
        elif op in (OP_CHECKMULTISIG, OP_CHECKMULTISIGVERIFY):
            n += last - 0x50 if accurate and last is not None and 0x51 <= last <= 0x60 else 20
        last = op
    return n


def _witness_sigops(program: tuple[int, bytes] | None, witness: tuple[bytes, ...]) -> int:
    if program is None or program[0] != 0:
        return 0
    if len(program[1]) == 20:
        return 1
    if len(program[1]) == 32 and witness:
        return _sigops(witness[-1], True)
    return 0


def sigop_cost(tx: p.Tx, spent: list[bytes]) -> int:
    cost = 4 * (sum(_sigops(i.script_sig, False) for i in tx.vin) + sum(_sigops(o.script_pubkey, False) for o in tx.vout))
    if tx.is_coinbase:
        return cost
    for txin, prev in zip(tx.vin, spent):
        program = sc.witness_program(prev)
        if sc.is_p2sh(prev):
            pushes = sc.parse_script(txin.script_sig)
            redeem = pushes[-1][1] if pushes and pushes[-1][1] is not None else b""
            if sc.is_push_only(txin.script_sig):
                cost += 4 * _sigops(redeem, True)
                program = sc.witness_program(redeem)
            else:
                program = None
        cost += _witness_sigops(program, txin.witness)
    return cost


def _spent_scripts(node: "RegtestNode", tx: p.Tx) -> list[bytes]:
    out = []
    for txin in tx.vin:
        key = (txin.prevout.txid_hex, txin.prevout.n)
        mem = node.mempool.mempool_coin(*key)
        coin = None if mem is not None else node.chain.store.coin(*key)
        out.append(mem[1] if mem is not None else coin.script if coin is not None else b"")
    return out


# --- getblocktemplate ----------------------------------------------------------------------------


def _version_bits(height: int) -> tuple[int, dict[str, int]]:
    """testdummy (bit 28, start 0, no timeout) is STARTED from the second 144-block period on and
    never locks in here (nothing signals it), so bitcoind sets its bit and offers it in vbavailable."""
    if height >= VB_PERIOD:
        return BLOCK_VERSION | (1 << TESTDUMMY_BIT), {"testdummy": TESTDUMMY_BIT}
    return BLOCK_VERSION, {}


def _template(node: "RegtestNode", rules: set[str]) -> dict[str, Any]:
    chain, pool = node.chain, node.mempool
    tip, height = chain.tip_hash(), chain.height + 1
    entries = pool.select_for_block(MAX_BLOCK_WEIGHT - COINBASE_RESERVED_WEIGHT)
    index: dict[str, int] = {}
    transactions = []
    for i, e in enumerate(entries, 1):
        index[e.txid] = i
        transactions.append(
            {
                "data": e.tx.serialize().hex(),
                "txid": e.txid,
                "hash": e.tx.wtxid,
                "depends": [index[t.prevout.txid_hex] for t in e.tx.vin if t.prevout.txid_hex in index],
                "fee": e.fee,
                "sigops": sigop_cost(e.tx, _spent_scripts(node, e.tx)),
                "weight": e.tx.weight,
            }
        )
    mintime = chain.median_time_past() + 1
    if height % 2016 == 0:  # BIP94 timewarp rule, applied on every network
        mintime = max(mintime, chain.store.times(height - 1, height - 1)[0] - MAX_TIMEWARP)
    version, vbavailable = _version_bits(height)
    commitment = p.witness_commitment_script([e.tx.wtxid_bytes for e in entries])
    return {
        "capabilities": ["proposal"],
        "version": version,
        "rules": ["csv", "!segwit", "taproot"],
        "vbavailable": vbavailable,
        "vbrequired": 0,
        "previousblockhash": tip,
        "transactions": transactions,
        "coinbaseaux": {},
        "coinbasevalue": p.block_subsidy(height) + sum(e.fee for e in entries),
        "longpollid": f"{tip}{pool.sequence}",
        "target": f"{p.bits_to_target(p.REGTEST_BITS):064x}",
        "mintime": mintime,
        "mutable": ["time", "transactions", "prevblock"],
        "noncerange": "00000000ffffffff",
        "sigoplimit": sc.MAX_BLOCK_SIGOPS_COST,
        "sizelimit": 4_000_000,
        "weightlimit": MAX_BLOCK_WEIGHT,
        "curtime": max(mintime, node.now()),
        "bits": f"{p.REGTEST_BITS:08x}",
        "height": height,
        "default_witness_commitment": commitment.hex(),
    }


async def _long_poll(node: "RegtestNode", lpval: Any) -> None:
    """BIP22 long polling as bitcoind does it: return once the tip moves, or, checked after a
    minute and then every 10 seconds, once the mempool has changed."""
    if isinstance(lpval, str):
        watched = parse_hash(lpval[:64], "longpollid")
        digits = lpval[64:].strip()
        seen = int(digits) if digits.isdigit() and len(digits) < 20 else 0
    else:
        watched, seen = node.chain.tip_hash(), node.mempool.sequence
    wait_ms = 60_000
    while not node.stopped.is_set():
        await node.wait_for_tip(lambda: node.chain is None or node.chain.tip_hash() != watched, wait_ms)
        if node.chain is None or node.chain.tip_hash() != watched or node.mempool.sequence != seen:
            break
        wait_ms = 10_000
        await asyncio.sleep(0)
    if node.stopped.is_set():
        raise RpcFailure(-9, "Shutting down")


def _proposal(node: "RegtestNode", request: dict) -> Any:
    data = request.get("data")
    if not isinstance(data, str):
        raise RpcFailure(RPC_TYPE_ERROR, "Missing data String key for proposal")
    try:
        block = p.Block.parse(bytes.fromhex(data))
    except (ValueError, p.DecodeError):
        raise RpcFailure(RPC_DESERIALIZATION_ERROR, "Block decode failed") from None
    kernel = node.chain.kernel
    if kernel.entry(block.hash) is not None:
        if kernel.known_invalid(block.hash):
            return "duplicate-invalid"
        return "duplicate" if kernel.has_block_data(kernel.entry(block.hash)) else "duplicate-inconclusive"
    if block.header.prev_hash_hex != node.chain.tip_hash():
        return "inconclusive-not-best-prevblk"
    if not block.txs or block.header.merkle_root_hex != block.compute_merkle_root()[::-1].hex():
        return "bad-txnmrklroot"
    return None  # the kernel offers no TestBlockValidity: transactions are checked on submitblock


@rpc(
    "getblocktemplate",
    "Mining",
    "If the request parameters include a 'mode' key, that is used to explicitly select between the default 'template' request or a 'proposal'.\n"
    "It returns data needed to construct a block to work on.\n"
    "For full specification, see BIPs 22, 23, 9, and 145:\n"
    "    https://github.com/bitcoin/bips/blob/master/bip-0022.mediawiki\n"
    "    https://github.com/bitcoin/bips/blob/master/bip-0023.mediawiki\n"
    "    https://github.com/bitcoin/bips/blob/master/bip-0009.mediawiki#getblocktemplate_changes\n"
    "    https://github.com/bitcoin/bips/blob/master/bip-0145.mediawiki",
    [Arg("template_request", "json object", "Format of the template", {}, default_doc="{}")],
    result='{                                     (json object)\n  "version" : n,                      (numeric) The preferred block version\n  ...\n'
    '  "default_witness_commitment" : "hex"  (string, optional) a valid witness commitment for the unmodified block template\n}',
    examples=['\'{"rules": ["segwit"]}\''],
)
async def getblocktemplate(node: "RegtestNode", template_request: dict) -> Any:
    mode = template_request.get("mode")
    if mode is None:
        mode = "template"
    elif not isinstance(mode, str):
        raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid mode")
    if mode == "proposal":
        return _proposal(node, template_request)
    rules: set[str] = set()
    client_rules = template_request.get("rules")
    if isinstance(client_rules, list):
        for r in client_rules:
            if not isinstance(r, str):
                raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(r)} is not of expected type string")
            rules.add(r)
    if mode != "template":
        raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid mode")
    lpval = template_request.get("longpollid")
    if lpval is not None:
        await _long_poll(node, lpval)
    if "segwit" not in rules:
        raise RpcFailure(RPC_INVALID_PARAMETER, 'getblocktemplate must be called with the segwit rule set (call with {"rules": ["segwit"]})')
    return _template(node, rules)
