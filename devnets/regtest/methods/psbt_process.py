"""PSBT RPCs that use the node's coins or keys from descriptors: utxoupdatepsbt, descriptorprocesspsbt
(Core's ``ProcessPSBT``), analyzepsbt (``AnalyzePSBT``) and joinpsbts.  See ``methods/psbt.py``."""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Any

from chains.btc import keys
from chains.btc import primitives as p
from chains.btc import psbt as P
from chains.btc import psbt_sign as S
from chains.btc.rpc_errors import RPC_INVALID_ADDRESS_OR_KEY, RPC_INVALID_PARAMETER
from chains.btc.script import is_unspendable
from devnets.regtest.methods import Arg, RpcFailure, rpc
from devnets.regtest.methods.common import NETWORK
from devnets.regtest.methods.psbt import _PSBT_ARG, _ROLES, _btc, _psbt_list, decode
from devnets.regtest.methods.rawtx_build import parse_sighash

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode

_KEY_TOKEN = re.compile(r"(\[[0-9a-fA-F]{8}(?:/[0-9]+['hH]?)*\])?([1-9A-HJ-NP-Za-km-z]{51,52}|[0-9a-fA-F]{66}|[0-9a-fA-F]{130})(?=[,)])")


class Provider:
    """Keys and scripts from descriptors: ``secrets`` by pubkey, per output script its redeem and
    witness scripts, and the key origins."""

    def __init__(self) -> None:
        self.secrets: dict[bytes, keys.Secret] = {}
        self.scripts: dict[bytes, tuple[bytes | None, bytes | None]] = {}
        self.origins: dict[bytes, tuple[bytes, list[int]]] = {}

    def add(self, desc: str) -> None:
        from devnets.regtest.descriptors import InvalidDescriptor, _call, _parse, descsum_check, network

        try:
            bare = descsum_check(desc)
        except InvalidDescriptor as exc:
            raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, exc.message) from None

        def key(m: re.Match) -> str:
            origin, text = m.group(1), m.group(2)
            if len(text) in (51, 52):
                try:
                    secret = keys.decode_wif(text, NETWORK)
                except keys.InvalidKey:
                    raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, f"key '{text}' is not valid") from None
                self.secrets[secret.pubkey] = secret
                pub = secret.pubkey
            else:
                pub = bytes.fromhex(text)
            if origin:
                parts = origin[1:-1].split("/")
                path = [int(x.rstrip("'hH")) | (0x80000000 if x[-1] in "'hH" else 0) for x in parts[1:]]
                self.origins[pub] = (bytes.fromhex(parts[0]), path)
            else:  # Core: a key without origin is its own master (fingerprint of its id, path m)
                self.origins.setdefault(pub, (p.hash160(pub)[:4], []))
            return pub.hex()

        plain = _KEY_TOKEN.sub(key, bare)
        net = network(NETWORK)
        try:
            spk = _parse(plain, "top", net)[0]
            name, body = _call(plain) or ("", "")
            redeem = witness = None
            if name == "sh":
                inner_name, inner_body = _call(body) or ("", "")
                redeem = _parse(body, "sh", net)[0]
                if inner_name == "wsh":
                    witness = _parse(inner_body, "wsh", net)[0]
            elif name == "wsh":
                witness = _parse(body, "wsh", net)[0]
        except InvalidDescriptor as exc:
            raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, exc.message) from None
        self.scripts[spk] = (redeem, witness)

    def update_input(self, record: dict, utxo: p.TxOut | None, bip32: bool) -> None:
        """Fill redeem/witness scripts and key origins the descriptors know (``FillSignatureData``)."""
        if utxo is None or utxo.script_pubkey not in self.scripts:
            return
        redeem, witness = self.scripts[utxo.script_pubkey]
        if redeem is not None:
            record.setdefault(P.k(P.IN_REDEEM_SCRIPT), redeem)
        if witness is not None:
            record.setdefault(P.k(P.IN_WITNESS_SCRIPT), witness)
        if bip32:
            self._origins(record, P.IN_BIP32, (redeem or b"") + (witness or b"") + utxo.script_pubkey)

    def update_output(self, record: dict, spk: bytes, bip32: bool) -> None:
        """``UpdatePSBTOutput``."""
        if spk not in self.scripts:
            return
        redeem, witness = self.scripts[spk]
        if redeem is not None:
            record.setdefault(P.k(P.OUT_REDEEM_SCRIPT), redeem)
        if witness is not None:
            record.setdefault(P.k(P.OUT_WITNESS_SCRIPT), witness)
        if bip32:
            self._origins(record, P.OUT_BIP32, (redeem or b"") + (witness or b"") + spk)

    def _origins(self, record: dict, kind: int, scripts: bytes) -> None:
        for pub, (fp, path) in self.origins.items():
            if pub in scripts or p.hash160(pub) in scripts:
                record.setdefault(P.k(kind, pub), P.ser_keypath(fp, path))


def _provider(descriptors: list | None) -> Provider:
    prov = Provider()
    for item in descriptors or []:
        if isinstance(item, dict):
            item = item.get("desc")
        if not isinstance(item, str):
            raise RpcFailure(RPC_INVALID_PARAMETER, "Descriptor must be a string")
        prov.add(item)
    return prov


def _node_tx(node: "RegtestNode", txid: str) -> p.Tx | None:
    if txid in node.mempool:
        return node.mempool.entries[txid].tx
    loc = node.chain.store.tx_location(txid)
    if loc is None:
        return None
    height = node.chain.store.height_of(loc[0])
    return p.Block.parse(node.chain.store.raw_at(height)).txs[loc[1]] if height is not None else None


def process(node: "RegtestNode", psbt: P.Psbt, prov: Provider, sign: bool, finalize: bool, bip32: bool) -> bool:
    """``ProcessPSBT``: UTXOs from the node, scripts and origins from the descriptors, signatures."""
    from devnets.regtest.methods.rawtx_build import _coin

    for i, txin in enumerate(psbt.tx.vin):
        rec = psbt.inputs[i]
        if P.k(P.IN_NON_WITNESS_UTXO) in rec or P.k(P.IN_WITNESS_UTXO) in rec:
            continue
        coin = _coin(node, txin.prevout.txid_hex, txin.prevout.n)
        if coin is None:
            continue
        out = p.TxOut(*coin)
        redeem = prov.scripts.get(out.script_pubkey, (None, None))[0]
        program = redeem if redeem is not None and out.script_pubkey[:1] == b"\xa9" else out.script_pubkey
        if len(program) >= 4 and (program[0] == 0 or 0x51 <= program[0] <= 0x60) and program[1] + 2 == len(program):
            rec[P.k(P.IN_WITNESS_UTXO)] = out.serialize()
        else:
            prev = _node_tx(node, txin.prevout.txid_hex)
            if prev is not None:
                rec[P.k(P.IN_NON_WITNESS_UTXO)] = prev.serialize()
    complete = True
    for i in range(len(psbt.inputs)):
        rec = psbt.inputs[i]
        if P.is_finalized(rec):
            continue
        prov.update_input(rec, P.spent_output(psbt, i), bip32)
        complete &= S.sign_input(psbt, i, prov.secrets if sign else {}, finalize)
    for i, out in enumerate(psbt.tx.vout):
        prov.update_output(psbt.outputs[i], out.script_pubkey, bip32)
    return complete and all(P.is_finalized(r) for r in psbt.inputs) if finalize else complete


@rpc(
    "utxoupdatepsbt",
    "Rawtransactions",
    "Updates all segwit inputs and outputs in a PSBT with data from output descriptors, the UTXO set, txindex, or the mempool.",
    [_PSBT_ARG, Arg("descriptors", "json array", "An array of either strings or objects", None, default_doc="")],
    result='"str"    (string) The base64-encoded partially signed transaction with inputs updated',
    examples=['"psbt"'],
)
def utxoupdatepsbt(node: "RegtestNode", text: str, descriptors: list | None) -> str:
    psbt = decode(text)
    process(node, psbt, _provider(descriptors), sign=False, finalize=True, bip32=True)
    return psbt.to_base64()


@rpc(
    "descriptorprocesspsbt",
    "Rawtransactions",
    "Update all segwit inputs in a PSBT with information from output descriptors, the UTXO set or the mempool. \n"
    "Then, sign the inputs we are able to with information from the output descriptors. ",
    [
        _PSBT_ARG,
        Arg("descriptors", "json array", "An array of either strings or objects"),
        Arg(
            "sighashtype",
            "string",
            'The signature hash type to sign with if not specified by the PSBT. Must be one of\n       "DEFAULT"\n       "ALL"',
            "DEFAULT",
        ),
        Arg("bip32derivs", "boolean", "Include BIP 32 derivation paths for public keys if we know them", True),
        Arg("finalize", "boolean", "Also finalize inputs if possible", True),
    ],
    result='{\n  "psbt" : "str",  (string) The base64-encoded partially signed transaction\n  "complete" : true|false,  '
    '(boolean) If the transaction has a complete set of signatures\n  "hex" : "hex"  (string, optional) The hex-encoded network transaction if complete\n}',
    examples=['"psbt" "[\\"descriptor1\\", \\"descriptor2\\"]"'],
)
def descriptorprocesspsbt(node: "RegtestNode", text: str, descriptors: list, sighashtype: str, bip32derivs: bool, finalize: bool) -> dict[str, Any]:
    parse_sighash(sighashtype)
    psbt = decode(text)
    complete = process(node, psbt, _provider(descriptors), sign=True, finalize=finalize, bip32=bip32derivs)
    result: dict[str, Any] = {"psbt": psbt.to_base64(), "complete": complete}
    if complete:
        copy = psbt.copy()
        S.finalize(copy)
        result["hex"] = P.extract(copy).serialize().hex()
    return result


@rpc(
    "joinpsbts",
    "Rawtransactions",
    "Joins multiple distinct PSBTs with different inputs and outputs into one PSBT with inputs and outputs from all of the PSBTs\n"
    "No input in any of the PSBTs can be in more than one of the PSBTs.",
    [Arg("txs", "json array", "The base64 strings of partially signed transactions")],
    result='"str"    (string) The base64-encoded partially signed transaction',
    examples=['"psbt"'],
)
def joinpsbts(node: "RegtestNode", txs: list) -> str:
    psbts = _psbt_list(txs)
    if len(psbts) <= 1:
        raise RpcFailure(RPC_INVALID_PARAMETER, "At least two PSBTs are required to join PSBTs.")
    version, locktime = 0, 0xFFFFFFFF
    ins: list[tuple[p.TxIn, dict]] = []
    outs: list[tuple[p.TxOut, dict]] = []
    seen: set[tuple[bytes, int]] = set()
    glob: dict[bytes, bytes] = {}
    for ps in psbts:
        version = max(version, ps.tx.version & 0xFFFFFFFF)
        locktime = min(locktime, ps.tx.locktime)
        for txin, rec in zip(ps.tx.vin, ps.inputs):
            if (txin.prevout.txid, txin.prevout.n) in seen:
                raise RpcFailure(RPC_INVALID_PARAMETER, f"Input {txin.prevout.txid_hex}:{txin.prevout.n} exists in multiple PSBTs")
            seen.add((txin.prevout.txid, txin.prevout.n))
            ins.append((txin, dict(rec)))
        outs += [(o, dict(rec)) for o, rec in zip(ps.tx.vout, ps.outputs)]
        for key, value in ps.globals.items():
            glob.setdefault(key, value)
    random.shuffle(ins)
    random.shuffle(outs)
    version = version - (1 << 32) if version >= 1 << 31 else version
    tx = p.Tx(version, [i for i, _ in ins], [o for o, _ in outs], locktime)
    return P.Psbt(tx, glob, [r for _, r in ins], [r for _, r in outs]).to_base64()


def analyze(psbt: P.Psbt) -> dict[str, Any]:
    """``AnalyzePSBT`` as the ``analyzepsbt`` RPC prints it."""
    inputs, in_amt, calc_fee = [], 0, True
    roles = []
    for i, txin in enumerate(psbt.tx.vin):
        rec = psbt.inputs[i]
        utxo = P.spent_output(psbt, i)
        entry: dict[str, Any] = {"has_utxo": True, "is_final": False}
        if utxo is not None:
            if not 0 <= utxo.value <= p.MAX_MONEY or not 0 <= in_amt + utxo.value <= p.MAX_MONEY:
                return {"next": "creator", "error": f"PSBT is not valid. Input {i} has invalid value"}
            in_amt += utxo.value
        else:
            prev = P.non_witness_utxo(rec)
            if prev is not None and txin.prevout.n >= len(prev.vout):
                return {"next": "creator", "error": f"PSBT is not valid. Input {i} specifies invalid prevout"}
            entry["has_utxo"], calc_fee = False, False
        if utxo is not None and is_unspendable(utxo.script_pubkey):
            return {"next": "creator", "error": f"PSBT is not valid. Input {i} spends unspendable output"}
        role = 1
        if P.is_finalized(rec) and utxo is not None:
            entry["is_final"], role = True, 4
        elif utxo is not None:
            sol = S.solve(psbt.tx, i, rec, utxo)
            if sol.complete:
                role = 3
            else:
                missing: dict[str, Any] = {}
                if sol.missing_pubkeys:
                    missing["pubkeys"] = [x.hex() for x in sol.missing_pubkeys]
                if sol.missing_sigs:
                    missing["signatures"] = [x.hex() for x in sol.missing_sigs]
                if sol.missing_redeem_script:
                    missing["redeemscript"] = sol.missing_redeem_script.hex()
                if sol.missing_witness_script:
                    missing["witnessscript"] = sol.missing_witness_script.hex()
                if missing:
                    entry["missing"] = missing
                only_sigs = sol.missing_sigs and not (sol.missing_pubkeys or sol.missing_redeem_script or sol.missing_witness_script)
                role = 2 if only_sigs else 1
        entry["next"] = _ROLES[role]
        roles.append(role)
        inputs.append(entry)
    result: dict[str, Any] = {}
    if inputs:
        result["inputs"] = inputs
    if calc_fee:
        out_amt = psbt.tx.total_out
        if not all(0 <= o.value <= p.MAX_MONEY for o in psbt.tx.vout) or out_amt > p.MAX_MONEY:
            return {"next": "creator", "error": "PSBT is not valid. Output amount invalid"}
        fee = in_amt - out_amt
        vin = []
        for i, txin in enumerate(psbt.tx.vin):
            rec = psbt.inputs[i]
            if P.is_finalized(rec):
                vin.append(txin._replace(script_sig=rec.get(P.k(P.IN_FINAL_SCRIPTSIG), b""), witness=tuple(P.final_witness(rec) or ())))
                continue
            sol = S.solve(psbt.tx, i, rec, P.spent_output(psbt, i), dummy=True)  # type: ignore[arg-type]
            if not sol.complete:
                vin = []
                break
            vin.append(txin._replace(script_sig=sol.script_sig, witness=tuple(sol.witness)))
        if vin or not psbt.tx.vin:
            size = p.Tx(psbt.tx.version, vin, psbt.tx.vout, psbt.tx.locktime).vsize
            result["estimated_vsize"] = size
            result["estimated_feerate"] = _btc(fee * 1000 // size if size else 0)
        result["fee"] = _btc(fee)
    result["next"] = _ROLES[min(roles, default=4)]
    return result


@rpc(
    "analyzepsbt",
    "Rawtransactions",
    "Analyzes and provides information about the current status of a PSBT and its inputs",
    [_PSBT_ARG],
    result='{\n  "inputs" : [...],  (json array, optional)\n  "estimated_vsize" : n,  (numeric, optional) Estimated vsize of the final signed transaction\n'
    '  "estimated_feerate" : n,  (numeric, optional) Estimated feerate of the final signed transaction in BTC/kvB. Shown only if all UTXO slots in the PSBT have been filled\n'
    '  "fee" : n,  (numeric, optional) The transaction fee paid. Shown only if all UTXO slots in the PSBT have been filled\n'
    '  "next" : "str",  (string) Role of the next person that this psbt needs to go to\n  "error" : "str"  (string, optional) Error message (if there is one)\n}',
    examples=['"psbt"'],
)
def analyzepsbt(node: "RegtestNode", text: str) -> dict[str, Any]:
    return analyze(decode(text))
