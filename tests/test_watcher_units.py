"""Watcher pieces without a chain: pre-signed ladders, job format and pre-signed checks, fee-bump rules."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import replace

import pytest

from bridge.core.errors import InputError
from bridge.watch.jobs import JobRefused, _check_presigned, parse_job
from bridge.watch.presign import PREIMAGE_PLACEHOLDER, complete_claim, presign_claims, presign_refunds
from chains.bitcoin_wallet import BtcKey
from chains.btc.primitives import Tx
from chains.evm_fees import Fees
from chains.fee_bump import EvmTxFields, evm_bump, is_stuck, next_rung
from htlc.audit import audit
from htlc.bitcoin_script import p2wsh_htlc_script
from htlc.bitcoin_tx import SEQUENCE_LOCKTIME, HtlcCoin, spend_htlc
from htlc.secret import extract_secret

AMOUNT = 1_000_000
SECRET = secrets.token_bytes(32)
HASHLOCK = hashlib.sha256(SECRET).digest()
CLAIMER, REFUNDER = BtcKey.generate(), BtcKey.generate()
SCRIPT = p2wsh_htlc_script(HASHLOCK, CLAIMER.pubkey, REFUNDER.pubkey, 500)
COIN = HtlcCoin("ab" * 32, 1, AMOUNT, SCRIPT)


def btc_body(kind: str, ladder: list[dict], payout: bytes, **extra) -> dict:
    return {
        "kind": kind,
        "chain": "bitcoin",
        "hashlock": HASHLOCK.hex(),
        "payout": payout.hex(),
        "htlc": {"script": SCRIPT.hex(), "outpoint": f"{COIN.txid}:{COIN.vout}", "amount": AMOUNT},
        "presigned": ladder,
        **extra,
    }


def check_all(kind: str, ladder: list[dict], payout: bytes) -> None:
    spec = parse_job(btc_body(kind, ladder, payout, secret=SECRET.hex()) if kind == "claim" else btc_body(kind, ladder, payout))
    for n, rung in enumerate(spec.presigned):
        _check_presigned(spec, audit(SCRIPT), AMOUNT, n, rung)


def test_completed_claim_reveals_the_secret_with_the_txid_and_fee_it_was_signed_with():
    ladder = presign_claims(COIN, CLAIMER, CLAIMER.p2wpkh_script)
    assert [r["feerate"] for r in ladder] == [2, 5, 12, 30]
    blank = Tx.from_hex(ladder[1]["tx"])
    done = Tx.from_hex(complete_claim(ladder[1]["tx"], SECRET))
    assert done.txid == blank.txid and done.vsize == blank.vsize and done.vout == blank.vout
    assert done.vin[0].witness[1] == SECRET and blank.vin[0].witness[1] == PREIMAGE_PLACEHOLDER
    assert extract_secret(done.serialize(), HASHLOCK) == SECRET
    fees = [AMOUNT - Tx.from_hex(r["tx"]).vout[0].value for r in ladder]
    assert fees == sorted(fees) and fees[0] >= 2 * blank.vsize - 2


def test_complete_claim_refuses_a_wrong_secret_size_and_a_tx_without_placeholder():
    ladder = presign_claims(COIN, CLAIMER, CLAIMER.p2wpkh_script)
    with pytest.raises(InputError, match="32 bytes"):
        complete_claim(ladder[0]["tx"], SECRET[:31])
    with pytest.raises(InputError, match="no preimage placeholder"):
        complete_claim(complete_claim(ladder[0]["tx"], SECRET), SECRET)


def test_ladder_must_rise():
    with pytest.raises(InputError, match="rise strictly"):
        presign_refunds(COIN, REFUNDER, REFUNDER.p2wpkh_script, [5, 5])
    with pytest.raises(InputError, match=">= 1"):
        presign_claims(COIN, CLAIMER, CLAIMER.p2wpkh_script, [])


def test_honest_ladders_pass_the_presigned_checks():
    check_all("claim", presign_claims(COIN, CLAIMER, CLAIMER.p2wpkh_script), CLAIMER.p2wpkh_script)
    check_all("refund", presign_refunds(COIN, REFUNDER, REFUNDER.p2wpkh_script), REFUNDER.p2wpkh_script)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: presign_refunds(COIN, REFUNDER, CLAIMER.p2wpkh_script), "does not pay the party"),
        (lambda: presign_refunds(COIN, CLAIMER, REFUNDER.p2wpkh_script), "signature is not a valid"),
        (lambda: presign_refunds(replace(COIN, vout=0), REFUNDER, REFUNDER.p2wpkh_script), "does not spend exactly the HTLC output"),
        (lambda: presign_claims(COIN, REFUNDER, REFUNDER.p2wpkh_script), "witness is not (signature, empty, script)"),
        (
            lambda: [{"feerate": 2, "tx": spend_htlc(COIN, REFUNDER, [b""], REFUNDER.p2wpkh_script, 2, locktime=499).hex}],
            "nLockTime 499, the script refunds at height 500",
        ),
        (
            lambda: [{"feerate": 2, "tx": spend_htlc(COIN, REFUNDER, [b""], REFUNDER.p2wpkh_script, 2, locktime=500, sequence=SEQUENCE_LOCKTIME).hex}],
            "does not signal replaceability",
        ),
    ],
)
def test_bad_presigned_refunds_are_refused_with_the_reason(make, reason):
    with pytest.raises(JobRefused) as refused:
        check_all("refund", make(), REFUNDER.p2wpkh_script)
    assert reason in refused.value.reason


def test_a_claim_whose_preimage_slot_is_filled_is_refused():
    ladder = presign_claims(COIN, CLAIMER, CLAIMER.p2wpkh_script)
    filled = [{"feerate": 2, "tx": complete_claim(ladder[0]["tx"], SECRET)}]
    with pytest.raises(JobRefused, match="32-byte placeholder"):
        check_all("claim", filled, CLAIMER.p2wpkh_script)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"kind": "steal"}, "kind must be one of"),
        ({"chain": "litecoin"}, "chain must be bitcoin or evm"),
        ({"hashlock": "00"}, "hashlock must be 32 bytes"),
        ({"presigned": []}, "needs its pre-signed transactions"),
        ({"presigned": [{"feerate": 2, "tx": "00"}]}, "presigned[0].tx does not parse"),
        ({"secret": "11" * 32}, "only a claim job takes a secret"),
        ({"kind": "claim", "secret": "11" * 32}, "sha256(secret) is not the hashlock"),
        ({"htlc": {"script": "00", "outpoint": "nope", "amount": 1}}, "htlc.outpoint must be TXID:VOUT"),
        ({"reveal": {"chain": "evm", "contract": "0x" + "11" * 20, "swap_id": "22" * 32}}, "a refund job takes no reveal"),
        ({"chain": "evm"}, "an evm job takes no pre-signed transactions"),
    ],
)
def test_malformed_jobs_are_refused_naming_the_field(change, reason):
    body = btc_body("refund", presign_refunds(COIN, REFUNDER, REFUNDER.p2wpkh_script), REFUNDER.p2wpkh_script)
    body.update(change)
    with pytest.raises(JobRefused) as refused:
        parse_job(body)
    assert reason in refused.value.reason


def test_claim_job_needs_the_secret_or_a_reveal_and_ids_are_per_htlc_and_kind():
    ladder = presign_claims(COIN, CLAIMER, CLAIMER.p2wpkh_script)
    with pytest.raises(JobRefused, match="needs the secret or where it will be revealed"):
        parse_job(btc_body("claim", ladder, CLAIMER.p2wpkh_script))
    claim = parse_job(btc_body("claim", ladder, CLAIMER.p2wpkh_script, reveal={"chain": "bitcoin", "outpoint": f"{'cd' * 32}:0"}))
    again = parse_job(btc_body("claim", ladder[:2], CLAIMER.p2wpkh_script, secret=SECRET.hex()))
    refund = parse_job(btc_body("refund", presign_refunds(COIN, REFUNDER, REFUNDER.p2wpkh_script), REFUNDER.p2wpkh_script))
    assert claim.id == again.id != refund.id
    assert claim.canonical != again.canonical  # same HTLC, other terms: the store answers Conflict


def test_stuck_and_ladder_rules():
    assert not is_stuck(None, 100, 3)
    assert not is_stuck(98, 100, 3) and is_stuck(97, 100, 3)
    with pytest.raises(InputError):
        is_stuck(1, 2, 0)
    assert next_rung(4, 0) == 1 and next_rung(4, 3) is None


class _FeeNode:
    """The one node call a bump makes: today's fee suggestion."""

    def __init__(self, fees: Fees) -> None:
        self.fees = fees

    async def suggest_fees(self) -> Fees:
        return self.fees


async def test_evm_bump_keeps_the_nonce_and_raises_both_fees():
    old = EvmTxFields(31337, 7, "0x" + "11" * 20, "0xabcd", 90_000, max_fee=2_000, priority_fee=1)
    low = await evm_bump(_FeeNode(Fees(1_000, 1)), old, "1.5")
    assert (low.nonce, low.to, low.data, low.gas) == (7, old.to, old.data, old.gas)
    assert low.max_fee == 3_000 and low.priority_fee == 2  # x1.5 rounded up; a 1 wei tip still rises
    high = await evm_bump(_FeeNode(Fees(50_000, 3_000)), old, "1.5")
    assert (high.max_fee, high.priority_fee) == (50_000, 3_000)  # at least what the node suggests now
    assert EvmTxFields.from_dict(high.to_dict()) == high
