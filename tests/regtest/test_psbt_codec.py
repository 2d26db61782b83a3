"""The BIP-174 codec (``chains.btc.psbt``) and roles (``chains.btc.psbt_sign``) against BIP-174's own
test vectors (tests/regtest/data/bip174_vectors.json, taken from bip-0174.mediawiki), plus base64
handling and, when embit is installed, a cross-check that embit reads our PSBTs the same way."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from chains.btc import keys
from chains.btc import psbt_sign as S
from chains.btc.psbt import Psbt, PsbtError, extract, partial_sigs

VECTORS = json.loads((Path(__file__).parent / "data" / "bip174_vectors.json").read_text())
ROLES = VECTORS["roles"]


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["case"][:60])
def test_invalid_vectors_are_refused(case) -> None:
    with pytest.raises(PsbtError):
        Psbt.from_base64(case["base64"])


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["case"][:60])
def test_valid_vectors_round_trip(case) -> None:
    psbt = Psbt.from_base64(case["base64"])
    assert psbt.to_base64() == case["base64"]
    assert Psbt.parse(psbt.serialize()).serialize() == psbt.serialize()


def test_invalid_vector_messages_are_cores() -> None:
    msgs = {c["case"]: None for c in VECTORS["invalid"]}
    for c in VECTORS["invalid"]:
        with pytest.raises(PsbtError) as err:
            Psbt.from_base64(c["base64"])
        msgs[c["case"]] = err.value.message
    assert msgs["Network transaction, not PSBT format"] == "Invalid PSBT magic bytes: iostream error"
    assert msgs["PSBT missing outputs"] == "Outputs provided does not match the number of outputs in transaction.: iostream error"
    assert (
        msgs["PSBT where one input has a filled scriptSig in the unsigned tx"]
        == "Unsigned tx does not have empty scriptSigs and scriptWitnesses.: iostream error"
    )
    assert msgs["PSBT with duplicate keys in an input"] == "Duplicate Key, input non-witness utxo already provided: iostream error"
    assert msgs["PSBT where inputs and outputs are provided but without an unsigned tx"] == "No unsigned transaction was provided: iostream error"
    assert msgs["PSBT with invalid input sighash type typed key"] == "Sighash type key is more than one byte type: iostream error"


@pytest.mark.parametrize(
    "name", ["creator", "updater", "updater_sighash", "signer1", "signer2", "combined", "finalized", "unknown_a", "unknown_b", "unknown_combined"]
)
def test_role_vectors_round_trip(name: str) -> None:
    assert Psbt.from_base64(ROLES[name]).to_base64() == ROLES[name]


def _sign(b64: str, wifs: list[str]) -> Psbt:
    psbt = Psbt.from_base64(b64)
    secrets = {s.pubkey: s for s in map(keys.decode_wif, wifs)}
    for i in range(len(psbt.inputs)):
        S.sign_input(psbt, i, secrets, finalize=False)
    return psbt


def test_signer_vectors() -> None:
    # Signer 1's signatures happen to have a low R: equal to the vector byte for byte.
    assert _sign(ROLES["updater_sighash"], ROLES["signer1_keys"]).to_base64() == ROLES["signer1"]
    # Signer 2's vector has one high-R signature (made before Core ground R); ours is the ground
    # one, 71 bytes.
    ours = _sign(ROLES["updater_sighash"], ROLES["signer2_keys"])
    want = Psbt.from_base64(ROLES["signer2"])
    for i in range(2):
        mine, theirs = partial_sigs(ours.inputs[i]), partial_sigs(want.inputs[i])
        assert set(mine) == set(theirs)
        for pk, sig in theirs.items():
            if mine[pk] != sig:
                assert sig[3] == 33 and sig[5] & 0x80 and len(sig) == 72 and len(mine[pk]) == 71


def test_combine_finalize_extract_vectors() -> None:
    from devnets.regtest.methods.psbt import combine

    a, b = Psbt.from_base64(ROLES["signer1"]), Psbt.from_base64(ROLES["signer2"])
    assert combine([a, b]).to_base64() == ROLES["combined"]
    psbt = Psbt.from_base64(ROLES["combined"])
    assert S.finalize(psbt)
    assert psbt.to_base64() == ROLES["finalized"]
    assert extract(psbt).serialize().hex() == ROLES["extracted_hex"]
    merged = combine([Psbt.from_base64(ROLES["unknown_a"]), Psbt.from_base64(ROLES["unknown_b"])])
    assert merged.to_base64() == ROLES["unknown_combined"]


def test_base64_and_trailing_bytes() -> None:
    good = ROLES["creator"]
    for bad in ["not base64!", good[:-1], good + "=", good.replace("c", "*", 1)]:
        with pytest.raises(PsbtError) as err:
            Psbt.from_base64(bad)
        assert err.value.message in ("invalid base64", "Invalid PSBT magic bytes: iostream error")
    with pytest.raises(PsbtError) as err:
        Psbt.from_base64(base64.b64encode(base64.b64decode(good) + b"\x00").decode())
    assert err.value.message == "extra data after PSBT"
    with pytest.raises(PsbtError) as err:
        Psbt.from_base64(base64.b64encode(base64.b64decode(good)[:-3]).decode())
    assert "iostream error" in err.value.message


def test_embit_reads_our_psbts_the_same() -> None:
    embit_psbt = pytest.importorskip("embit.psbt")
    for name in ["updater", "signer1", "combined", "finalized", "unknown_combined"]:
        ours = Psbt.from_base64(ROLES[name])
        theirs = embit_psbt.PSBT.from_string(ours.to_base64())
        assert theirs.to_string() == ours.to_base64()
        assert theirs.tx.serialize() == ours.tx.serialize(witness=False)
        assert len(theirs.inputs) == len(ours.inputs) and len(theirs.outputs) == len(ours.outputs)
