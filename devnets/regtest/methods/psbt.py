"""The PSBT family (Core's ``rpc/rawtransaction.cpp``): createpsbt, decodepsbt, analyzepsbt, combinepsbt,
finalizepsbt, converttopsbt, utxoupdatepsbt, joinpsbts, descriptorprocesspsbt, with bitcoind's field
names and error texts.  The codec is ``chains.btc.psbt``; signing and finalizing ``chains.btc.psbt_sign``
(P2PKH, P2WPKH, P2SH-P2WPKH, multisig in P2SH/P2WSH/P2SH-P2WSH; SIGHASH_ALL/DEFAULT).

Descriptors given to ``utxoupdatepsbt``/``descriptorprocesspsbt`` may use hex pubkeys or WIF private
keys, optionally with a ``[fingerprint/path]`` origin (no extended keys or ranges).  Unlike bitcoind,
``utxoupdatepsbt`` also fills a non-segwit input's ``non_witness_utxo`` from the node's tx index."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chains.btc import primitives as p
from chains.btc import psbt as P
from chains.btc import psbt_sign as S
from chains.btc.address import b58check_encode
from chains.btc.rpc_errors import RPC_DESERIALIZATION_ERROR, RPC_INVALID_PARAMETER, RPC_TYPE_ERROR
from chains.btc.script import disassemble
from devnets.regtest.methods import Arg, RpcFailure, json_type, rpc
from devnets.regtest.methods.common import INT64, NETWORK, int_arg
from devnets.regtest.methods.rawtx_build import LOCKTIME_MAX, _inputs, _outputs

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode

_PSBT_ARG = Arg("psbt", "string", "A base64 string of a PSBT")
_ROLES = ["creator", "updater", "signer", "finalizer", "extractor"]
_SIGHASH_STR = {1: "ALL", 2: "NONE", 3: "SINGLE", 0x81: "ALL|ANYONECANPAY", 0x82: "NONE|ANYONECANPAY", 0x83: "SINGLE|ANYONECANPAY", 0: "DEFAULT"}


def decode(text: str) -> P.Psbt:
    try:
        return P.Psbt.from_base64(text)
    except P.PsbtError as exc:
        raise RpcFailure(RPC_DESERIALIZATION_ERROR, f"TX decode failed {exc.message}") from None


def _btc(sats: int) -> Any:
    from devnets.regtest.decode import amount_to_btc

    return amount_to_btc(sats)


def _path(path: list[int]) -> str:
    return "m" + "".join(f"/{i & 0x7FFFFFFF}{'h' if i & 0x80000000 else ''}" for i in path)


def _derivs(record: dict, kind: int) -> list[dict]:
    return [{"pubkey": pk.hex(), "master_fingerprint": fp.hex(), "path": _path(path)} for pk, (fp, path) in sorted(P.keypaths(record, kind).items())]


def _extras(record: dict, proprietary: int, known: set[int]) -> dict[str, Any]:
    props, unknown = [], {}
    for key, value in sorted(record.items()):
        kind = P._key_type(key)
        if kind == proprietary:
            r = P._Reader(key)
            r.compact()
            ident = r.vector()
            props.append({"identifier": ident.hex(), "subtype": r.compact(), "key": key.hex(), "value": value.hex()})
        elif kind not in known:
            unknown[key.hex()] = value.hex()
    return {"proprietary": props, "unknown": unknown}


def _script_json(script: bytes) -> dict[str, str]:
    from devnets.regtest.decode import script_pubkey_json

    full = script_pubkey_json(script, NETWORK)
    return {"asm": full["asm"], "hex": script.hex(), "type": full["type"]}


def _input_json(psbt: P.Psbt, i: int) -> dict[str, Any]:
    from devnets.regtest.decode import script_pubkey_json, tx_to_json

    rec = psbt.inputs[i]
    out: dict[str, Any] = {}
    prev = P.non_witness_utxo(rec)
    if prev is not None:
        out["non_witness_utxo"] = tx_to_json(prev, NETWORK)
    wu = P.witness_utxo(rec)
    if wu is not None:
        out["witness_utxo"] = {"amount": _btc(wu.value), "scriptPubKey": script_pubkey_json(wu.script_pubkey, NETWORK)}
    final = P.is_finalized(rec)
    if not final:
        sigs = P.partial_sigs(rec)
        if sigs:
            out["partial_signatures"] = {pk.hex(): sig.hex() for pk, sig in sorted(sigs.items(), key=lambda kv: p.hash160(kv[0]))}
        sh = P.sighash_type(rec)
        if sh is not None:
            out["sighash"] = _SIGHASH_STR.get(sh, f"{sh}")
        for kind, name in ((P.IN_REDEEM_SCRIPT, "redeem_script"), (P.IN_WITNESS_SCRIPT, "witness_script")):
            if P.k(kind) in rec:
                out[name] = _script_json(rec[P.k(kind)])
        if P.keypaths(rec, P.IN_BIP32):
            out["bip32_derivs"] = _derivs(rec, P.IN_BIP32)
    if P.k(P.IN_FINAL_SCRIPTSIG) in rec:
        ss = rec[P.k(P.IN_FINAL_SCRIPTSIG)]
        out["final_scriptSig"] = {"asm": disassemble(ss, sighash_decode=True), "hex": ss.hex()}
    if P.k(P.IN_FINAL_WITNESS) in rec:
        out["final_scriptwitness"] = [w.hex() for w in P.final_witness(rec) or []]
    if not final:
        for kind, name in ((P.IN_RIPEMD160, "ripemd160"), (P.IN_SHA256, "sha256"), (P.IN_HASH160, "hash160"), (P.IN_HASH256, "hash256")):
            found = {key[1:].hex(): v.hex() for key, v in sorted(rec.items()) if key[0] == kind}
            if found:
                out[f"{name}_preimages"] = found
    known = set(P._IN_RANK) - {P.IN_PROPRIETARY}
    extras = _extras(rec, P.IN_PROPRIETARY, known)
    out.update({k: v for k, v in extras.items() if v})
    return out


def _output_json(rec: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, name in ((P.OUT_REDEEM_SCRIPT, "redeem_script"), (P.OUT_WITNESS_SCRIPT, "witness_script")):
        if P.k(kind) in rec:
            out[name] = _script_json(rec[P.k(kind)])
    if P.keypaths(rec, P.OUT_BIP32):
        out["bip32_derivs"] = _derivs(rec, P.OUT_BIP32)
    extras = _extras(rec, P.OUT_PROPRIETARY, set(P._OUT_RANK) - {P.OUT_PROPRIETARY})
    out.update({k: v for k, v in extras.items() if v})
    return out


@rpc(
    "decodepsbt",
    "Rawtransactions",
    "Return a JSON object representing the serialized, base64-encoded partially signed Bitcoin transaction.",
    [Arg("psbt", "string", "The PSBT base64 string")],
    result='{\n  "tx" : {...},  (json object) The decoded network-serialized unsigned transaction.\n  "global_xpubs" : [...],\n  "psbt_version" : n,\n'
    '  "proprietary" : [...],\n  "unknown" : {...},\n  "inputs" : [...],\n  "outputs" : [...],\n  "fee" : n  (numeric, optional) The transaction fee paid if all UTXOs slots in the PSBT have been filled.\n}',
    examples=['"psbt"'],
)
def decodepsbt(node: "RegtestNode", text: str) -> dict[str, Any]:
    from devnets.regtest.decode import tx_to_json

    psbt = decode(text)
    result: dict[str, Any] = {"tx": tx_to_json(psbt.tx, NETWORK)}
    xpubs = []
    for key, value in psbt.globals.items():
        if key[0] == P.G_XPUB and len(key) == 79:
            fp, path = P.parse_keypath(value)
            xpubs.append({"xpub": b58check_encode(key[1:]), "master_fingerprint": fp.hex(), "path": _path(path)})
    result["global_xpubs"] = xpubs
    result["psbt_version"] = 0
    result.update(_extras(psbt.globals, P.G_PROPRIETARY, {P.G_XPUB, P.G_VERSION}))
    total_in, have_all = 0, True
    for i in range(len(psbt.inputs)):
        wu = P.witness_utxo(psbt.inputs[i])
        prev = P.non_witness_utxo(psbt.inputs[i])
        if wu is not None:
            total_in += wu.value
        elif prev is not None:
            n = psbt.tx.vin[i].prevout.n
            if n >= len(prev.vout):
                raise RpcFailure(RPC_DESERIALIZATION_ERROR, f"Input {i} specifies invalid prevout")
            total_in += prev.vout[n].value
        else:
            have_all = False
    result["inputs"] = [_input_json(psbt, i) for i in range(len(psbt.inputs))]
    result["outputs"] = [_output_json(rec) for rec in psbt.outputs]
    if have_all:
        result["fee"] = _btc(total_in - psbt.tx.total_out)
    return result


@rpc(
    "createpsbt",
    "Rawtransactions",
    "Creates a transaction in the Partially Signed Transaction format.\nImplements the Creator role.",
    [
        Arg("inputs", "json array", "The inputs"),
        Arg("outputs", "any", "The outputs specified as key-value pairs.", shown_type="json array"),
        Arg("locktime", "numeric", "Raw locktime. Non-0 value also locktime-activates inputs", 0),
        Arg("replaceable", "boolean", "Marks this transaction as BIP125 replaceable.", True),
    ],
    result='"str"    (string) The resulting raw transaction (base64-encoded string)',
    examples=['"[{\\"txid\\":\\"myid\\",\\"vout\\":0}]" "[{\\"data\\":\\"00010203\\"}]"'],
)
def createpsbt(node: "RegtestNode", inputs: list, outputs: Any, locktime: Any, replaceable: bool) -> str:
    lock = int_arg(locktime, INT64)
    if not 0 <= lock <= LOCKTIME_MAX:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Invalid parameter, locktime out of range")
    tx = p.Tx(2, _inputs(inputs, lock, replaceable), _outputs(outputs), lock)
    return P.Psbt.from_tx(tx).to_base64()


def _psbt_list(txs: list) -> list[P.Psbt]:
    out = []
    for item in txs:
        if not isinstance(item, str):
            raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(item)} is not of expected type string")
        out.append(decode(item))
    return out


def combine(psbts: list[P.Psbt]) -> P.Psbt:
    """``CombinePSBTs``: union of every map (the first value wins on a key clash)."""
    merged = psbts[0].copy()
    for other in psbts[1:]:
        if other.tx.txid != merged.tx.txid:
            raise RpcFailure(RPC_INVALID_PARAMETER, "PSBTs not compatible (different transactions)")
        for mine, theirs in [(merged.globals, other.globals), *zip(merged.inputs, other.inputs), *zip(merged.outputs, other.outputs)]:
            for key, value in theirs.items():
                mine.setdefault(key, value)
    return merged


@rpc(
    "combinepsbt",
    "Rawtransactions",
    "Combine multiple partially signed Bitcoin transactions into one transaction.\nImplements the Combiner role.",
    [Arg("txs", "json array", "The base64 strings of partially signed transactions")],
    result='"str"    (string) The base64-encoded partially signed transaction',
    examples=['"[\\"mybase64_1\\", \\"mybase64_2\\", \\"mybase64_3\\"]"'],
)
def combinepsbt(node: "RegtestNode", txs: list) -> str:
    psbts = _psbt_list(txs)
    if not psbts:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Parameter 'txs' cannot be empty")
    return combine(psbts).to_base64()


@rpc(
    "finalizepsbt",
    "Rawtransactions",
    "Finalize the inputs of a PSBT. If the transaction is fully signed, it will produce a\nnetwork serialized transaction which can be "
    "broadcast with sendrawtransaction. Otherwise a PSBT will be\ncreated which has the final_scriptSig and final_scriptWitness fields "
    "filled for inputs that are complete.\nImplements the Finalizer and Extractor roles.",
    [
        _PSBT_ARG,
        Arg(
            "extract",
            "boolean",
            "If true and the transaction is complete,\nextract and return the complete transaction in normal network serialization instead of the PSBT.",
            True,
        ),
    ],
    result='{\n  "psbt" : "str",  (string, optional) The base64-encoded partially signed transaction if not extracted\n'
    '  "hex" : "hex",  (string, optional) The hex-encoded network transaction if extracted\n  "complete" : true|false  (boolean) If the transaction has a complete set of signatures\n}',
    examples=['"psbt"'],
)
def finalizepsbt(node: "RegtestNode", text: str, extract: bool) -> dict[str, Any]:
    psbt = decode(text)
    complete = S.finalize(psbt)
    if complete and extract:
        return {"hex": P.extract(psbt).serialize().hex(), "complete": True}
    return {"psbt": psbt.to_base64(), "complete": complete}


@rpc(
    "converttopsbt",
    "Rawtransactions",
    "Converts a network serialized transaction to a PSBT. This should be used only with createrawtransaction and fundrawtransaction\n"
    "createpsbt and walletcreatefundedpsbt should be used for new applications.",
    [
        Arg("hexstring", "string", "The hex string of a raw transaction"),
        Arg(
            "permitsigdata",
            "boolean",
            "If true, any signatures in the input will be discarded and conversion\nwill continue. If false, RPC will fail if any signatures are present.",
            False,
        ),
        Arg("iswitness", "boolean", "Whether the transaction hex is a serialized witness transaction.", None, default_doc="depends on heuristic tests"),
    ],
    result='"str"    (string) The resulting raw transaction (base64-encoded string)',
    examples=['"rawtransaction"'],
)
def converttopsbt(node: "RegtestNode", hexstring: str, permitsigdata: bool, iswitness: bool | None) -> str:
    from devnets.regtest.decode import decode_hex_tx

    try:
        tx = decode_hex_tx(hexstring, try_no_witness=iswitness is None or not iswitness, try_witness=iswitness is None or iswitness)
    except p.DecodeError:
        raise RpcFailure(RPC_DESERIALIZATION_ERROR, "TX decode failed") from None
    if any(txin.script_sig or txin.witness for txin in tx.vin):
        if not permitsigdata:
            raise RpcFailure(RPC_DESERIALIZATION_ERROR, "Inputs must not have scriptSigs and scriptWitnesses")
        tx = p.Tx(tx.version, [txin._replace(script_sig=b"", witness=()) for txin in tx.vin], tx.vout, tx.locktime)
    return P.Psbt.from_tx(tx).to_base64()


from devnets.regtest.methods import psbt_process  # noqa: E402,F401  (utxoupdatepsbt, joinpsbts, analyzepsbt, descriptorprocesspsbt)
