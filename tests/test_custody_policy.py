"""What an honest attester refuses to sign: every rule of ``bridge.custody.policy`` on its own PSBT.

No node here: the coins are the replica's (made-up outpoints), the PSBTs are what a proposer
would send, honest or tampered with one way each.  A refused PSBT gets no signature.
"""

from __future__ import annotations

import hashlib

import pytest

from bridge.custody import (
    CustodyCoin,
    CustodyPolicy,
    ExpectedPayout,
    PayoutRefused,
    build_payout,
    build_spend,
    build_sweep,
    check_payout,
    combine,
    custody_script,
    custody_script_pubkey,
    deposit_script,
    finalize,
    sign_payout,
)
from chains.bitcoin_wallet import BtcKey
from chains.btc import psbt as P
from chains.btc.primitives import Tx, TxOut
from chains.btc.sighash import segwit_v0_sighash

COMMITTEE = [BtcKey(hashlib.sha256(f"policy-{i}".encode()).digest()) for i in range(4)]
POLICY = CustodyPolicy.of([k.pubkey for k in COMMITTEE], 3, 144)
CUSTODY = custody_script_pubkey(POLICY)
USER = BtcKey(hashlib.sha256(b"policy-user").digest())
ATTACKER = BtcKey(hashlib.sha256(b"policy-attacker").digest())
REFUND = BtcKey(hashlib.sha256(b"policy-refund").digest())

COINS = [
    CustodyCoin("11" * 32, 0, 400_000, deposit_script(POLICY, "0x" + "aa" * 20, REFUND.pubkey)),
    CustodyCoin("22" * 32, 3, 900_000, custody_script(POLICY)),
]
OWED = {USER.p2wpkh_script: 600_000}
TIP = 1_000


def expected(coins=COINS, owed=OWED, **kw) -> ExpectedPayout:
    caps = {"max_fee": 5_000, "max_feerate": 5, "tip_height": TIP, **kw}
    return ExpectedPayout({(c.txid, c.vout): (c.amount, c.witness_script) for c in coins}, owed, CUSTODY, **caps)


def honest() -> P.Psbt:
    return build_payout(COINS, list(OWED.items()), POLICY, feerate=2)


def refused(psbt: P.Psbt, reason: str, expect: ExpectedPayout | None = None) -> PayoutRefused:
    """``psbt`` is refused for ``reason``, and a signer given it adds nothing."""
    expect = expect or expected()
    with pytest.raises(PayoutRefused) as info:
        check_payout(psbt, expect)
    assert info.value.reason == reason, info.value.message
    before = [dict(r) for r in psbt.inputs]
    with pytest.raises(PayoutRefused):
        sign_payout(psbt, COMMITTEE[0], expect)
    assert [dict(r) for r in psbt.inputs] == before
    return info.value


def with_tx(psbt: P.Psbt, **changes) -> P.Psbt:
    tx = psbt.tx
    fields = {"version": tx.version, "vin": tx.vin, "vout": tx.vout, "locktime": tx.locktime, **changes}
    out = psbt.copy()
    out.tx = Tx(fields["version"], fields["vin"], fields["vout"], fields["locktime"])
    return out


# --- accepted ---------------------------------------------------------------------------------------


def test_the_honest_payout_is_accepted_and_three_signatures_finish_it():
    psbt = honest()
    check = check_payout(psbt, expected())
    assert check.change == psbt.tx.vout[1].value and check.fee == 1_300_000 - 600_000 - check.change
    assert check.feerate == pytest.approx(2, abs=0.01)
    copies = []
    for key in COMMITTEE[1:]:
        mine = P.Psbt.from_base64(psbt.to_base64())
        assert sign_payout(mine, key, expected()) == check
        copies.append(mine)
    tx = finalize(combine(copies))
    assert tx.txid == psbt.tx.txid and check.vsize - 1 <= tx.vsize <= check.vsize
    assert tx.vin[0].witness[-2] == b"\x01" and len(tx.vin[1].witness) == 1 + 3 + 1  # IF branch of the deposit


def test_an_honest_sweep_owes_nothing_and_is_accepted():
    psbt = build_sweep(COINS, POLICY, feerate=1)
    assert [out.script_pubkey for out in psbt.tx.vout] == [CUSTODY]
    assert check_payout(psbt, expected(owed={})).change == psbt.tx.vout[0].value


# --- refused: outputs -----------------------------------------------------------------------------


def test_extra_output_is_refused():
    psbt = build_spend(COINS, [*OWED.items(), (ATTACKER.p2wpkh_script, 10_000)], CUSTODY, 2)
    assert "neither owed nor custody" in refused(psbt, "extra output").message


def test_change_elsewhere_is_refused():
    psbt = build_spend(COINS, list(OWED.items()), ATTACKER.p2wpkh_script, 2)
    assert "not to custody" in refused(psbt, "change not to custody").message


def test_missing_owed_output_is_refused():
    other = BtcKey(hashlib.sha256(b"policy-other").digest()).p2wpkh_script
    refused(honest(), "missing owed output", expected(owed={**OWED, other: 50_000}))


def test_different_owed_amount_is_refused():
    psbt = build_payout(COINS, [(USER.p2wpkh_script, 599_000)], POLICY, feerate=2)
    assert "599000 sat" in refused(psbt, "owed amount mismatch").message


# --- refused: fee ------------------------------------------------------------------------------------


def test_higher_fee_is_refused():
    psbt = build_payout(COINS, list(OWED.items()), POLICY, feerate=8)  # less change, more to the miner
    refused(psbt, "feerate above cap")
    refused(honest(), "fee above cap", expected(max_fee=check_payout(honest(), expected()).fee - 1))


# --- refused: inputs -----------------------------------------------------------------------------------


def test_unknown_input_is_refused():
    stranger = CustodyCoin("33" * 32, 1, 50_000, custody_script(POLICY))
    psbt = build_payout([*COINS, stranger], list(OWED.items()), POLICY, feerate=2)
    assert "33" * 32 in refused(psbt, "unknown input").message


def test_wrong_amount_in_witness_utxo_is_refused():
    psbt = honest()
    psbt.inputs[1][P.k(P.IN_WITNESS_UTXO)] = TxOut(800_000, COINS[1].script_pubkey).serialize()  # hides 100k of fee
    assert "claims 800000 sat" in refused(psbt, "witness_utxo amount mismatch").message


def test_wrong_script_in_witness_utxo_or_witness_script_is_refused():
    psbt = honest()
    psbt.inputs[0][P.k(P.IN_WITNESS_UTXO)] = TxOut(COINS[0].amount, ATTACKER.p2wpkh_script).serialize()
    refused(psbt, "witness_utxo script mismatch")
    psbt = honest()
    psbt.inputs[0][P.k(P.IN_WITNESS_SCRIPT)] = custody_script(POLICY)
    refused(psbt, "witness_script mismatch")


def test_duplicate_input_is_refused():
    psbt = honest()
    psbt = with_tx(psbt, vin=[psbt.tx.vin[1], psbt.tx.vin[1]])
    psbt.inputs = [dict(psbt.inputs[1]), dict(psbt.inputs[1])]
    refused(psbt, "duplicate input")


def test_non_rbf_sequence_is_refused():
    psbt = honest()
    for sequence in (0xFFFFFFFF, 0xFFFFFFFE, 100):  # final, locktime-only, a relative lock
        tampered = with_tx(psbt, vin=[psbt.tx.vin[0], psbt.tx.vin[1]._replace(sequence=sequence)])
        assert f"{sequence:#010x}" in refused(tampered, "sequence not RBF").message


def test_sighash_none_is_refused():
    psbt = honest()
    psbt.inputs[1][P.k(P.IN_SIGHASH)] = (2).to_bytes(4, "little")  # SIGHASH_NONE: outputs not signed
    refused(psbt, "sighash not ALL")
    # A partial signature of another member made with SIGHASH_NONE.
    psbt = honest()
    digest = segwit_v0_sighash(psbt.tx, 1, COINS[1].witness_script, COINS[1].amount)
    psbt.inputs[1][P.k(P.IN_PARTIAL_SIG, COMMITTEE[2].pubkey)] = COMMITTEE[2].sign_digest(digest) + b"\x02"
    refused(psbt, "sighash not ALL")


def test_locktime_in_the_future_is_refused():
    assert check_payout(with_tx(honest(), locktime=TIP), expected()).fee > 0
    refused(with_tx(honest(), locktime=TIP + 1), "locktime in the future")
    refused(with_tx(honest(), locktime=1_700_000_000), "locktime in the future")


def test_other_version_and_finalized_inputs_are_refused():
    refused(with_tx(honest(), version=1), "version")
    psbt = honest()
    psbt.inputs[0][P.k(P.IN_FINAL_WITNESS)] = P.ser_witness_stack([b"\x01"])
    refused(psbt, "input finalized")


def test_signatures_of_another_psbt_signer_finalize_the_same_transaction():
    """embit's ``sign_with`` on the PSBT as sent: its partial signatures finalize here.  This PSBT
    is one where embit keeps a high-R signature (its grinding stops on a 70-byte DER, which a
    short S gives), so one witness differs from ours by that signature, never the transaction."""
    from embit import ec
    from embit.psbt import PSBT as EmbitPsbt

    from bridge.custody import add_signature

    theirs = EmbitPsbt.from_string(honest().to_base64())
    ours = honest()
    for key in COMMITTEE[:3]:
        assert theirs.sign_with(ec.PrivateKey(key.secret)) == 2 == add_signature(ours, key)
    signed = P.Psbt.from_base64(theirs.to_string())
    check_payout(signed, expected())  # what it carries is still an honest payout
    differ = [(i, pk) for i, r in enumerate(signed.inputs) for pk, sig in P.partial_sigs(r).items() if P.partial_sigs(ours.inputs[i])[pk] != sig]
    assert differ == [(0, COMMITTEE[0].pubkey)] and P.partial_sigs(signed.inputs[0])[COMMITTEE[0].pubkey][3] == 33
    assert finalize(signed).txid == finalize(ours).txid


def test_a_bad_signature_in_one_copy_does_not_crowd_out_a_good_one():
    good, forged = honest(), honest()
    for key in COMMITTEE[:3]:
        sign_payout(good, key, expected())
    for record in forged.inputs:
        record[P.k(P.IN_PARTIAL_SIG, COMMITTEE[0].pubkey)] = COMMITTEE[0].sign_digest(bytes(32)) + b"\x01"
    assert finalize(combine([forged, good])).txid == good.tx.txid
