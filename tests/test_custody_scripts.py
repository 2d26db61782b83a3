"""Committee custody on Bitcoin: deposit and custody scripts, sweeps, payouts and the depositor's refund.

The spends run on a regtest node of this module's own (it mines past refund delays), so the
node's own consensus and relay policy say what is accepted; embit (a well-kept PSBT library)
signs our PSBTs to show a committee member could use any BIP-174 signer.
"""

from __future__ import annotations

import hashlib

import pytest
from embit import ec
from embit.descriptor import Descriptor
from embit.networks import NETWORKS as EMBIT_NETWORKS
from embit.psbt import PSBT as EmbitPsbt
from embit.script import Script, p2wsh
from eth_account import Account

from bridge.custody import (
    CustodyCoin,
    CustodyPolicy,
    CustodyRefused,
    ExpectedPayout,
    add_signature,
    build_payout,
    build_refund,
    build_sweep,
    combine,
    custody_address,
    custody_script,
    custody_script_pubkey,
    deposit_address,
    deposit_script,
    deposit_script_pubkey,
    finalize,
    parse_deposit_script,
    pubkey_matches_evm_address,
    refund_pubkey_of_evm_key,
    sign_payout,
    spend_vsize,
    verify_deposit_address,
)
from bridge.custody.spend import multisig_witness
from chains.bitcoin import BitcoinAdapter
from chains.bitcoin_wallet import BtcKey
from chains.btc import psbt as P
from chains.btc.primitives import Tx, push_data
from chains.btc.script import p2wsh_script
from devnets.controls import BitcoinDevnet
from support.faucet import Faucet
from support.scenario import module_regtest

regtest = module_regtest("custody")

DELAY = 10
DEPOSIT = 500_000


def committee_keys(n: int, tag: str = "custody") -> list[BtcKey]:
    return [BtcKey(hashlib.sha256(f"{tag}-{i}".encode()).digest()) for i in range(n)]


COMMITTEE = committee_keys(4)
POLICY = CustodyPolicy.of([k.pubkey for k in COMMITTEE], 3, DELAY)


def depositor() -> tuple[str, bytes, bytes]:
    """An EVM account: ``(address, private key, refund pubkey)``."""
    acct = Account.create()
    return acct.address, bytes(acct.key), refund_pubkey_of_evm_key(bytes(acct.key))


async def fund(btc: BitcoinAdapter, faucet: Faucet, script: bytes, amount: int = DEPOSIT) -> CustodyCoin:
    """Pay ``amount`` to the P2WSH of ``script`` and confirm it."""
    payer = BtcKey.generate()
    await faucet.pay(btc, payer, amount + 50_000)
    spk = p2wsh_script(script)
    signed = await btc.send_to([payer], [(spk, amount)], 2)
    await BitcoinDevnet(btc).mine(1)
    vout = next(n for n, out in enumerate(Tx.from_hex(signed.raw_hex).vout) if out.script_pubkey == spk)
    return CustodyCoin(signed.txid, vout, amount, script)


async def mempool_verdict(btc: BitcoinAdapter, tx: Tx | bytes) -> dict:
    raw = tx.serialize() if isinstance(tx, Tx) else tx
    [verdict] = await btc.rpc.call("testmempoolaccept", [raw.hex()])
    return verdict


def expected(coins: list[CustodyCoin], owed: dict, tip: int) -> ExpectedPayout:
    return ExpectedPayout(
        {(c.txid, c.vout): (c.amount, c.witness_script) for c in coins}, owed, custody_script_pubkey(POLICY), max_fee=20_000, max_feerate=5, tip_height=tip
    )


def cosign(psbt: P.Psbt, signers: list[BtcKey], expect: ExpectedPayout) -> Tx:
    """One round: each attester gets the PSBT as base64, checks and signs its copy; combine, finalize."""
    copies = []
    for key in signers:
        mine = P.Psbt.from_base64(psbt.to_base64())
        sign_payout(mine, key, expect)
        copies.append(P.Psbt.from_base64(mine.to_base64()))
    return finalize(combine(copies))


# --- on the node --------------------------------------------------------------------------------


async def test_deposit_swept_by_3_of_4_then_paid_out_with_change_to_custody(btc, faucet):
    account, _, refund = depositor()
    coin = await fund(btc, faucet, deposit_script(POLICY, account, refund))
    assert await btc.balance([deposit_address(POLICY, account, refund)]) == DEPOSIT

    sweep = build_sweep([coin], POLICY, feerate=2)
    tip = await btc.height()
    check = sign_payout(sweep.copy(), COMMITTEE[0], expected([coin], {}, tip))
    tx = cosign(sweep, COMMITTEE[:3], expected([coin], {}, tip))  # the fourth is down
    assert check.vsize - 1 <= tx.vsize <= check.vsize and check.fee == DEPOSIT - tx.total_out
    assert (await mempool_verdict(btc, tx))["allowed"]
    assert await btc.send(tx.serialize()) == tx.txid
    await BitcoinDevnet(btc).mine(1)
    assert (await btc.tx_status(tx.txid)).confirmations == 1
    custody = custody_address(POLICY)
    assert await btc.balance([custody]) >= tx.total_out and await btc.balance([deposit_address(POLICY, account, refund)]) == 0

    # A payout from the swept coin, co-signed by another three: the user paid, change to custody.
    swept = CustodyCoin(tx.txid, 0, tx.vout[0].value, custody_script(POLICY))
    user = BtcKey.generate()
    owed = {user.p2wpkh_address(): 200_000}
    payout = build_payout([swept], list(owed.items()), POLICY, feerate=3)
    paid = cosign(payout, [COMMITTEE[3], COMMITTEE[1], COMMITTEE[0]], expected([swept], owed, await btc.height()))
    assert [out.script_pubkey for out in paid.vout] == [user.p2wpkh_script, custody_script_pubkey(POLICY)]
    assert await btc.send(paid.serialize()) == paid.txid
    await BitcoinDevnet(btc).mine(1)
    assert await btc.balance([user.p2wpkh_script]) == 200_000
    change = await btc.txout(paid.txid, 1)
    assert change is not None and change.value == paid.vout[1].value


@pytest.mark.parametrize(("m", "n"), [(2, 3), (5, 7), (14, 20)])
async def test_other_committee_sizes_up_to_the_largest_spend_within_relay_policy(btc, faucet, m, n):
    """Up to 20 keys (OP_CHECKMULTISIG's limit, N pushed as a number above 16): the node relays and
    mines a sweep of a deposit and a custody coin, and the size estimate holds."""
    members = committee_keys(n, f"size-{n}")
    policy = CustodyPolicy.of([k.pubkey for k in members], m, DELAY)
    coins = [await fund(btc, faucet, deposit_script(policy, depositor()[0], members[0].pubkey)), await fund(btc, faucet, custody_script(policy))]
    psbt = build_sweep(coins, policy, feerate=2)
    estimate = spend_vsize(psbt.tx, [c.witness_script for c in coins])
    for key in reversed(members[n - m :]):
        assert add_signature(psbt, key) == 2
    tx = finalize(psbt)
    assert estimate - 1 <= tx.vsize <= estimate and len(tx.vin[0].witness) == m + 3
    assert await btc.send(tx.serialize()) == tx.txid
    await BitcoinDevnet(btc).mine(1)
    assert await btc.balance([custody_address(policy)]) == tx.vout[0].value


async def test_two_of_four_signatures_are_refused_by_finalize_and_by_the_node(btc, faucet):
    account, _, refund = depositor()
    coin = await fund(btc, faucet, deposit_script(POLICY, account, refund))
    psbt = build_sweep([coin], POLICY, feerate=2)
    for key in COMMITTEE[:2]:
        assert add_signature(psbt, key) == 1
    with pytest.raises(CustodyRefused) as info:
        finalize(psbt.copy())
    assert info.value.reason == "not enough signatures"

    script = coin.witness_script
    sigs = [s for pk, s in sorted(P.partial_sigs(psbt.inputs[0]).items())]
    # Two signatures alone, and two with an empty third: consensus refuses both.
    for stack, why in (
        (multisig_witness(script, sigs), "Operation not valid with the current stack size"),
        (multisig_witness(script, [*sigs, b""]), "Script evaluated without error but finished with a false/empty top stack element"),
    ):
        short = Tx(psbt.tx.version, [psbt.tx.vin[0]._replace(witness=tuple(stack))], psbt.tx.vout, psbt.tx.locktime)
        verdict = await mempool_verdict(btc, short)
        assert not verdict["allowed"] and verdict["reject-reason"] == f"mandatory-script-verify-flag-failed ({why})", verdict
    # A signature of a key outside the committee does not make a third one.
    outsider = BtcKey.generate()
    assert add_signature(psbt, outsider) == 0
    assert await btc.txout(coin.txid, coin.vout) is not None


async def test_depositor_refund_only_after_the_relative_delay(btc, faucet):
    account, evm_key, refund = depositor()
    coin = await fund(btc, faucet, deposit_script(POLICY, account, refund))
    funded_at = await btc.height()
    dest = BtcKey.generate()
    with pytest.raises(CustodyRefused, match="refund key"):
        build_refund(coin, COMMITTEE[0], dest.p2wpkh_script, feerate=2)
    refund_tx = build_refund(coin, evm_key, dest.p2wpkh_script, feerate=2)  # signed by the account's EVM key
    assert Tx.parse(refund_tx.raw).vin[0].sequence == DELAY and Tx.parse(refund_tx.raw).version == 2

    assert (await mempool_verdict(btc, refund_tx.raw))["reject-reason"] == "non-BIP68-final"
    await BitcoinDevnet(btc).mine_to(funded_at + DELAY - 2)  # the next block is the delay-th minus one
    assert (await mempool_verdict(btc, refund_tx.raw))["reject-reason"] == "non-BIP68-final"
    await BitcoinDevnet(btc).mine(1)
    # Old enough now; a sequence below the script's delay is refused by OP_CHECKSEQUENCEVERIFY itself.
    sneaky = build_refund(coin, evm_key, dest.p2wpkh_script, feerate=2, sequence=DELAY - 1)
    verdict = await mempool_verdict(btc, sneaky.raw)
    assert not verdict["allowed"] and "Locktime requirement not satisfied" in verdict["reject-reason"], verdict
    assert (await mempool_verdict(btc, refund_tx.raw))["allowed"]
    assert await btc.send(refund_tx.raw) == refund_tx.txid
    await BitcoinDevnet(btc).mine(1)
    assert await btc.balance([dest.p2wpkh_script]) == DEPOSIT - refund_tx.fee


async def test_embit_signatures_finalize_into_the_same_transaction_as_ours(btc, faucet):
    account, _, refund = depositor()
    coins = [await fund(btc, faucet, deposit_script(POLICY, account, refund)), await fund(btc, faucet, custody_script(POLICY), 300_000)]
    user = BtcKey.generate()
    psbt = build_payout(coins, [(user.p2wpkh_script, 250_000)], POLICY, feerate=2)

    ours = psbt.copy()
    for key in COMMITTEE[1:]:
        assert add_signature(ours, key) == 2
    our_sigs = [P.partial_sigs(r) for r in ours.inputs]
    ours_tx = finalize(ours)

    theirs = EmbitPsbt.from_string(psbt.to_base64())
    for key in COMMITTEE[1:]:
        assert theirs.sign_with(ec.PrivateKey(key.secret)) == 2
    signed = P.Psbt.from_base64(theirs.to_string())
    assert signed.tx == psbt.tx
    their_sigs = [P.partial_sigs(r) for r in signed.inputs]
    assert [sorted(s) for s in their_sigs] == [sorted(s) for s in our_sigs]
    theirs_tx = finalize(signed)
    assert theirs_tx.txid == ours_tx.txid
    # Both sign with RFC 6979 nonces ground to a low R, so the witnesses are byte for byte the same,
    # except where embit kept a high R because a short S made the DER 70 bytes anyway (embit stops
    # grinding on the DER length, Core and we on R alone): about one signature in 256.
    for mine, theirs in zip(our_sigs, their_sigs):
        for pubkey, sig in mine.items():
            assert theirs[pubkey] == sig or (theirs[pubkey][3] == 33 and len(theirs[pubkey]) == 71), (sig.hex(), theirs[pubkey].hex())
    if their_sigs == our_sigs:
        assert theirs_tx.serialize() == ours_tx.serialize()
    assert (await mempool_verdict(btc, theirs_tx))["allowed"]

    # And the reverse: embit reads the PSBT our signers produced.
    mixed = EmbitPsbt.from_string(psbt.to_base64())
    mixed.sign_with(ec.PrivateKey(COMMITTEE[0].secret))
    ours_part = P.Psbt.from_base64(mixed.to_string())
    add_signature(ours_part, COMMITTEE[2])
    add_signature(ours_part, COMMITTEE[3])
    assert EmbitPsbt.from_string(ours_part.to_base64()).inputs[0].partial_sigs
    assert (await mempool_verdict(btc, finalize(ours_part)))["allowed"]


# --- derivation, checks, parsing (no node) ----------------------------------------------------------


def test_derivation_is_deterministic_and_anyone_with_the_keys_gets_the_same_address():
    account = "0x" + "ab" * 20
    refund = COMMITTEE[0].pubkey
    shuffled = CustodyPolicy.of([k.pubkey for k in reversed(COMMITTEE)], 3, DELAY)
    assert shuffled == POLICY
    assert deposit_address(shuffled, account, refund) == deposit_address(POLICY, bytes.fromhex("ab" * 20), refund)
    # Pinned: a change of encoding would move every account's address.
    assert deposit_address(POLICY, account, refund) == "bcrt1qkj7z9u3l5f9sc7hkx3c4jehhk87q2mu0c9e753p5vz5gzqwecyfsgcj0m0"
    assert custody_address(POLICY) == "bcrt1qxrxylwd2f39n44mpywj2d3crn7ce7nrnj4erfeq5rku09wqxfm4s8wg7uj"
    mainnet = CustodyPolicy(POLICY.pubkeys, 3, DELAY, "mainnet")
    assert deposit_address(mainnet, account, refund).startswith("bc1q")
    # embit derives the same addresses from the same scripts and descriptor.
    net = EMBIT_NETWORKS["regtest"]
    assert p2wsh(Script(deposit_script(POLICY, account, refund))).address(net) == deposit_address(POLICY, account, refund)
    assert Descriptor.from_string(POLICY.descriptor).address(net) == custody_address(POLICY)


def test_a_deposit_address_of_account_a_does_not_verify_for_account_b():
    a, b = "0x" + "aa" * 20, "0x" + "bb" * 20
    refund = COMMITTEE[0].pubkey
    address = deposit_address(POLICY, a, refund)
    assert verify_deposit_address(address, POLICY, a, refund)
    check = verify_deposit_address(address, POLICY, b, refund)
    assert not check and "not the deposit address of account 0x" + "bb" * 20 in check.reason
    assert not verify_deposit_address(address, POLICY, a, COMMITTEE[1].pubkey)
    assert not verify_deposit_address(address, CustodyPolicy(POLICY.pubkeys, 4, DELAY), a, refund)
    assert "P2WSH" in verify_deposit_address(COMMITTEE[0].p2wpkh_address(), POLICY, a, refund).reason
    assert "not a regtest address" in verify_deposit_address(address.replace("bcrt", "bc"), POLICY, a, refund).reason


def test_parse_deposit_script_is_strict():
    account = bytes.fromhex("cd" * 20)
    script = deposit_script(POLICY, account, COMMITTEE[1].pubkey)
    terms = parse_deposit_script(script)
    assert terms == (account, 3, POLICY.pubkeys, DELAY, COMMITTEE[1].pubkey) and terms.policy() == POLICY
    keys = list(POLICY.pubkeys)
    bad = {
        "custody script": custody_script(POLICY),
        "trailing byte": script + b"\x51",
        "truncated": script[:-3],
        "non-minimal delay": script.replace(bytes((0x5A, 0xB2)), push_data(bytes((DELAY,))) + b"\xb2"),
        "unsorted keys": script.replace(keys[0], b"\xff" * 33).replace(keys[1], keys[0]).replace(b"\xff" * 33, keys[1]),
        "2-of-4": script.replace(b"\x63\x53", b"\x63\x52"),
        "19-byte tag": push_data(account[:19]) + script[21:],
    }
    for name, candidate in bad.items():
        with pytest.raises(CustodyRefused) as info:
            parse_deposit_script(candidate)
        assert info.value.reason == "not a deposit script", name


def test_policy_rules():
    pubkeys = [k.pubkey for k in committee_keys(5)]
    with pytest.raises(CustodyRefused, match="below ceil"):
        CustodyPolicy.of(pubkeys, 3, DELAY)  # 3-of-5 < ceil(10/3) = 4
    with pytest.raises(CustodyRefused, match="not sorted"):
        CustodyPolicy(tuple(sorted(pubkeys, reverse=True)), 4, DELAY)
    with pytest.raises(CustodyRefused, match="duplicate"):
        CustodyPolicy.of(pubkeys[:2] + pubkeys[:1], 2, DELAY)
    with pytest.raises(CustodyRefused, match="1 to 20"):
        CustodyPolicy.of([k.pubkey for k in committee_keys(21)], 14, DELAY)
    for delay in (0, 65536, True):
        with pytest.raises(CustodyRefused, match="refund delay"):
            CustodyPolicy.of(pubkeys, 4, delay)
    with pytest.raises(CustodyRefused, match="compressed"):
        CustodyPolicy.of(pubkeys[:2] + [b"\x04" + bytes(64)], 2, DELAY)
    # The largest committee still fits relay policy (3600-byte scripts, 201 ops).
    big = CustodyPolicy.of([k.pubkey for k in committee_keys(20)], 14, 65535)
    assert len(deposit_script(big, bytes(20), pubkeys[0])) < 800


def test_refund_key_of_an_evm_account():
    address, key, refund = depositor()
    assert len(refund) == 33 and pubkey_matches_evm_address(refund, address)
    assert pubkey_matches_evm_address(refund, bytes.fromhex(address[2:]))
    assert not pubkey_matches_evm_address(refund, depositor()[0])
    assert not pubkey_matches_evm_address(b"\x02" + bytes(32), address)
    with pytest.raises(CustodyRefused):
        refund_pubkey_of_evm_key(bytes(32))
    assert deposit_script_pubkey(POLICY, address, refund) == deposit_script_pubkey(POLICY, address.lower(), refund)
