"""The PSBT roles past the creator for the script types the bridge signs: P2PKH, P2WPKH, P2SH-P2WPKH and
M-of-N multisig bare in P2SH, in P2WSH or in P2SH-P2WSH.  SIGHASH_ALL only.

``solve`` walks an input as Core's ``SignStep``/``ProduceSignature`` do: it adds the signatures the
given keys can make (bitcoind's exact bytes, see ``keys.sign_ecdsa``), reports what is missing
(pubkeys, signatures, redeem/witness script hashes, which ``analyzepsbt`` prints), and builds the
final scriptSig and witness when the input is complete.  Partial signatures are checked before
they are used, so a wrong signature never finalizes an input."""

from __future__ import annotations

from dataclasses import dataclass, field

from coincurve import PublicKey

from chains.btc import keys
from chains.btc import psbt as P
from chains.btc.primitives import Tx, TxOut, hash160, push_data, sha256
from chains.btc.script import is_p2pkh, is_p2sh, multisig_params, p2pkh_script
from chains.btc.sighash import SIGHASH_ALL, legacy_sighash, segwit_v0_sighash

#: A signature of the largest usual size (Core's dummy signature creator: 71 bytes with the hash type).
DUMMY_SIG = b"\x30" + bytes(69) + b"\x01"


@dataclass
class Solution:
    complete: bool = False
    script_sig: bytes = b""
    witness: list[bytes] = field(default_factory=list)
    missing_pubkeys: list[bytes] = field(default_factory=list)  # key ids (hash160)
    missing_sigs: list[bytes] = field(default_factory=list)  # key ids
    missing_redeem_script: bytes = b""  # hash160 of the script wanted
    missing_witness_script: bytes = b""  # sha256 of the script wanted
    new_sigs: dict[bytes, bytes] = field(default_factory=dict)


def _verify(pubkey: bytes, sig: bytes, digest: bytes) -> bool:
    if not sig or sig[-1] != SIGHASH_ALL:
        return False
    try:
        return PublicKey(pubkey).verify(sig[:-1], digest, hasher=None)
    except (ValueError, TypeError):
        return False


class _Ctx:
    def __init__(self, tx: Tx, index: int, amount: int, record: dict, secrets: dict[bytes, keys.Secret], dummy: bool) -> None:
        self.tx, self.index, self.amount, self.record = tx, index, amount, record
        self.by_id = {hash160(s.pubkey): s for s in secrets.values()}
        self.sigs = P.partial_sigs(record)
        self.known_pubkeys = {hash160(pk): pk for pk in list(self.sigs) + list(P.keypaths(record, P.IN_BIP32))}
        self.known_pubkeys.update({kid: s.pubkey for kid, s in self.by_id.items()})
        self.dummy = dummy
        self.sol = Solution()

    def digest(self, script_code: bytes, segwit: bool) -> bytes:
        if segwit:
            return segwit_v0_sighash(self.tx, self.index, script_code, self.amount)
        return legacy_sighash(self.tx, self.index, script_code)

    def sig(self, pubkey: bytes, script_code: bytes, segwit: bool) -> bytes | None:
        """``CreateSig``: a checked partial signature, a new one from our key, or a dummy."""
        kid = hash160(pubkey)
        have = self.sigs.get(pubkey)
        if have is not None and (self.dummy or _verify(pubkey, have, self.digest(script_code, segwit))):
            return have
        secret = self.by_id.get(kid)
        if secret is not None and secret.pubkey == pubkey and not self.dummy:
            new = keys.sign_ecdsa(secret.secret, self.digest(script_code, segwit)) + bytes((SIGHASH_ALL,))
            self.sol.new_sigs[pubkey] = new
            return new
        self.sol.missing_sigs.append(kid)
        return DUMMY_SIG if self.dummy else None

    def pubkey_for(self, kid: bytes) -> bytes | None:
        pk = self.known_pubkeys.get(kid)
        if pk is None:
            self.sol.missing_pubkeys.append(kid)
        return pk

    def single(self, kid: bytes, segwit: bool) -> list[bytes] | None:
        pk = self.pubkey_for(kid)
        if pk is None:
            return None
        sig = self.sig(pk, p2pkh_script(kid), segwit)
        return None if sig is None else [sig, pk]

    def multi(self, script: bytes, segwit: bool) -> list[bytes] | None:
        params = multisig_params(script)
        assert params is not None
        required, pubkeys = params
        got = []
        for pk in pubkeys:  # every key is tried so every missing signature is listed, as Core does
            sig = self.sig(pk, script, segwit)
            if sig is not None and len(got) < required:
                got.append(sig)
        return [b""] + got if len(got) >= required else None


def solve(tx: Tx, index: int, record: dict, utxo: TxOut, secrets: dict[bytes, keys.Secret] | None = None, dummy: bool = False) -> Solution:
    """Sign what ``secrets`` can and say whether input ``index`` can be finalized (``dummy``:
    stand-in signatures for every missing one, for size estimates)."""
    ctx = _Ctx(tx, index, utxo.value, record, secrets or {}, dummy)
    sol = ctx.sol
    spk = utxo.script_pubkey
    redeem = record.get(P.k(P.IN_REDEEM_SCRIPT))
    wscript = record.get(P.k(P.IN_WITNESS_SCRIPT))
    script_sig_prefix = b""
    inner = spk
    if is_p2sh(spk):
        if redeem is None or hash160(redeem) != spk[2:22]:
            sol.missing_redeem_script = spk[2:22]
            return sol
        inner = redeem
        script_sig_prefix = push_data(redeem)
    if len(inner) == 22 and inner[:2] == b"\x00\x14":
        stack = ctx.single(inner[2:], True)
        if stack is not None:
            sol.complete, sol.script_sig, sol.witness = True, script_sig_prefix, stack
        return sol
    if len(inner) == 34 and inner[:2] == b"\x00\x20":
        if wscript is None or sha256(wscript) != inner[2:]:
            sol.missing_witness_script = inner[2:]
            return sol
        if multisig_params(wscript) is None:
            return sol
        stack = ctx.multi(wscript, True)
        if stack is not None:
            sol.complete, sol.script_sig, sol.witness = True, script_sig_prefix, stack + [wscript]
        return sol
    if is_p2pkh(inner) and not script_sig_prefix:
        stack = ctx.single(inner[3:23], False)
        if stack is not None:
            sol.complete, sol.script_sig = True, b"".join(push_data(x) for x in stack)
        return sol
    if script_sig_prefix and multisig_params(inner) is not None:
        stack = ctx.multi(inner, False)
        if stack is not None:
            sol.complete, sol.script_sig = True, b"\x00" + b"".join(push_data(x) for x in stack[1:]) + script_sig_prefix
        return sol
    return sol


def input_utxo(psbt: P.Psbt, index: int) -> TxOut | None:
    return P.spent_output(psbt, index)


def sign_input(psbt: P.Psbt, index: int, secrets: dict[bytes, keys.Secret], finalize: bool = True) -> bool:
    """``SignPSBTInput``: add our signatures; with ``finalize`` write the final scripts when complete.
    Returns whether the input is complete (finalized or finalizable)."""
    record = psbt.inputs[index]
    if P.is_finalized(record):
        return True
    utxo = input_utxo(psbt, index)
    if utxo is None:
        return False
    sol = solve(psbt.tx, index, record, utxo, secrets)
    for pubkey, sig in sol.new_sigs.items():
        record[P.k(P.IN_PARTIAL_SIG, pubkey)] = sig
    if sol.complete and finalize:
        for key in [key for key in record if key[0] in P._SIGNING_FIELDS]:
            del record[key]
        if sol.script_sig:
            record[P.k(P.IN_FINAL_SCRIPTSIG)] = sol.script_sig
        if sol.witness:
            record[P.k(P.IN_FINAL_WITNESS)] = P.ser_witness_stack(sol.witness)
    return sol.complete


def finalize(psbt: P.Psbt) -> bool:
    """``FinalizePSBT``: finalize every input that can be; True when all are."""
    return all([sign_input(psbt, i, {}, True) for i in range(len(psbt.inputs))])
