"""Committee messages and signatures (issue 14, "Messages and signatures").

Interop: digests byte-identical to ``eth_account``'s ``encode_typed_data`` over random messages and
domains; signatures of ``eth_account`` recover with ours and ours with ``eth_account``.
Exploit classes (bridge hacks of 2021-23), one named test each: flipped bytes of a valid
attestation, empty / duplicate / unsorted / outside-set signers, M-1 signers, another chain id or
contract, expired, zero id and zero amount (Nomad), a 2-of-5 committee (Harmony), a carried
signer set that does not hash to the stored one (Wormhole), malformed encodings from a fuzzer (BNB).
"""

from __future__ import annotations

import dataclasses
import os

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_hash.auto import keccak as reference_keccak
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bridge.committee import crypto
from bridge.committee import messages as msgs
from bridge.committee.crypto import SECP256K1_HALF_N, SECP256K1_N, keccak256
from bridge.committee.messages import (
    BTC_ASSET,
    Bundle,
    BundleRefused,
    Committee,
    CommitteeRefused,
    Domain,
    Kind,
    Message,
    MessageRefused,
    QuorumRefused,
    Refused,
    SignatureRefused,
    address_of,
    bitcoin_source,
    decode_bundle,
    digest,
    encode_bundle,
    evm_source,
    recover,
    sign,
    typed_data,
    verify_quorum,
)
from bridge.core.errors import InputError

NOW = 1_700_000_000
DOMAIN = Domain(31337, bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3"))


def _key(i: int) -> bytes:
    return keccak256(b"committee test key %d" % i)


#: Five committee keys, ordered by address (the committee's order), and an outsider.
KEYS = sorted((_key(i) for i in range(5)), key=address_of)
ADDRESSES = tuple(address_of(k) for k in KEYS)
OUTSIDER = _key(99)
COMMITTEE = Committee(7, ADDRESSES[:4], 3)  # 3-of-4


def make_message(**changes: object) -> Message:
    base = dict(
        version=1,
        kind=Kind.RELEASE,
        source_chain_id=31337,
        source_tx=bytes.fromhex("11" * 32),
        source_index=3,
        dest_chain_id=31337,
        account=bytes.fromhex("22" * 20),
        asset=msgs.ETH_ASSET,
        amount=10**18,
        nonce=1,
        expiry=NOW + 3600,
        payload_hash=bytes(32),
    )
    base.update(changes)
    return Message(**base)


MESSAGE = make_message()
MESSAGE_ID = digest(DOMAIN, MESSAGE)


def quorum(message: Message = MESSAGE, indices: tuple[int, ...] = (0, 1, 2), domain: Domain = DOMAIN, keys=KEYS) -> tuple[tuple[int, ...], tuple[bytes, ...]]:
    d = digest(domain, message)
    return indices, tuple(sign(d, keys[i]) for i in indices)


def refused(reason: str, fn, *args, error: type[Refused] = Refused) -> Refused:
    with pytest.raises(error) as info:
        fn(*args)
    assert isinstance(info.value, InputError)
    assert info.value.reason == reason, info.value.reason
    return info.value


# --- strategies ------------------------------------------------------------------------------

b20 = st.binary(min_size=20, max_size=20)
b32 = st.binary(min_size=32, max_size=32)


def uint(bits: int) -> st.SearchStrategy[int]:
    return st.integers(0, 2**bits - 1) | st.sampled_from([0, 1, 2**bits - 1])


@st.composite
def messages_st(draw: st.DrawFn) -> Message:
    fields = dict(
        version=1,
        kind=draw(st.sampled_from(list(Kind))),
        source_chain_id=draw(uint(64)),
        source_tx=draw(b32),
        source_index=draw(uint(32)),
        dest_chain_id=draw(uint(64)),
        account=draw(b20),
        asset=draw(b20 | st.sampled_from([msgs.ETH_ASSET, BTC_ASSET])),
        amount=draw(uint(256)),
        nonce=draw(uint(64)),
        expiry=draw(st.integers(1, 2**64 - 1)),
        payload_hash=draw(b32),
    )
    try:
        return Message(**fields)
    except MessageRefused:
        assume(False)
        raise


domains_st = st.builds(Domain, st.integers(1, 2**256 - 1), b20.filter(any))


def eth_account_digest(domain: Domain, message: Message) -> bytes:
    signable = encode_typed_data(full_message=typed_data(domain, message))
    return reference_keccak(b"\x19" + signable.version + signable.header + signable.body)


# --- the primitives and interop with eth_account ----------------------------------------------------


@given(st.binary(max_size=600))
def test_keccak_matches_eth_hash(data: bytes) -> None:
    assert keccak256(data) == reference_keccak(data)


def test_constants() -> None:
    assert BTC_ASSET == reference_keccak(b"BTC")[-20:]
    assert msgs.ETH_ASSET == bytes(20)
    assert msgs.MESSAGE_TYPEHASH == reference_keccak(msgs.MESSAGE_TYPE.encode())
    assert bitcoin_source("ab" * 31 + "cd", 5) == (bytes.fromhex("ab" * 31 + "cd"), 5)
    assert evm_source("0x" + "ef" * 32, 2) == (bytes.fromhex("ef" * 32), 2)
    for bad in (("zz" * 32, 0), ("ab" * 31, 0), ("ab" * 32, -1), ("ab" * 32, 2**32)):
        with pytest.raises(MessageRefused):
            bitcoin_source(*bad)
    for bad in (("ef" * 32, 0), ("0x" + "ef" * 31, 0), ("0x" + "ef" * 32, True)):
        with pytest.raises(MessageRefused):
            evm_source(*bad)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(messages_st(), domains_st)
def test_digest_is_eth_accounts_encode_typed_data(message: Message, domain: Domain) -> None:
    assert digest(domain, message) == eth_account_digest(domain, message)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(messages_st(), domains_st, st.binary(min_size=32, max_size=32))
def test_signatures_interoperate_with_eth_account(message: Message, domain: Domain, secret: bytes) -> None:
    assume(0 < int.from_bytes(secret, "big") < SECP256K1_N)
    account = Account.from_key(secret)
    d = digest(domain, message)
    signable = encode_typed_data(full_message=typed_data(domain, message))
    theirs = account.sign_message(signable).signature
    assert recover(d, bytes(theirs)) == bytes.fromhex(account.address[2:])
    assert recover(d, bytes(Account.unsafe_sign_hash(d, secret).signature)) == address_of(secret)
    ours = sign(d, secret)
    assert ours == bytes(theirs)  # RFC 6979 on both sides: the same bytes
    assert Account.recover_message(signable, signature=ours) == account.address


def test_our_signature_shape() -> None:
    for i in range(50):
        sig = sign(keccak256(b"%d" % i), KEYS[0])
        assert len(sig) == 65 and sig[64] in (27, 28)
        assert int.from_bytes(sig[32:64], "big") <= SECP256K1_HALF_N
        assert recover(keccak256(b"%d" % i), sig) == ADDRESSES[0]
    with pytest.raises(SignatureRefused):
        sign(b"\x01" * 31, KEYS[0])
    with pytest.raises(InputError):
        sign(MESSAGE_ID, b"\x00" * 32)


def test_committee_hash_is_keccak_of_the_packed_committee() -> None:
    packed = (7).to_bytes(8, "big") + bytes([3]) + b"".join(ADDRESSES[:4])
    assert COMMITTEE.packed == packed and len(packed) == 8 + 1 + 20 * 4
    assert COMMITTEE.hash == reference_keccak(packed)


# --- strict signatures -----------------------------------------------------------------------------


def _high_s(sig: bytes) -> bytes:
    s = int.from_bytes(sig[32:64], "big")
    return sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes((55 - sig[64],))


def test_signature_malleability_and_shape_refused() -> None:
    sig = sign(MESSAGE_ID, KEYS[0])
    refused("high s", recover, MESSAGE_ID, _high_s(sig))
    refused("signature: short", recover, MESSAGE_ID, sig[:64])
    refused("signature: trailing bytes", recover, MESSAGE_ID, sig + b"\x00")
    refused("signature: not bytes", recover, MESSAGE_ID, bytearray(sig))
    for v in (0, 1, 26, 29, 255):
        refused("v not 27 or 28", recover, MESSAGE_ID, sig[:64] + bytes((v,)))
    refused("r out of range", recover, MESSAGE_ID, bytes(32) + sig[32:])
    refused("r out of range", recover, MESSAGE_ID, SECP256K1_N.to_bytes(32, "big") + sig[32:])
    refused("s zero", recover, MESSAGE_ID, sig[:32] + bytes(32) + sig[64:])
    refused("digest: not 32 bytes", recover, MESSAGE_ID[:31], sig)


def test_failed_recovery_refused() -> None:
    p = 2**256 - 2**32 - 977
    r = next(x for x in range(1, 100) if pow(x**3 + 7, (p - 1) // 2, p) != 1)  # no point has this x
    sig = r.to_bytes(32, "big") + (12345).to_bytes(32, "big") + b"\x1b"
    refused("recovery failed", recover, MESSAGE_ID, sig)


def test_recovered_zero_address_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    sig = sign(MESSAGE_ID, KEYS[0])
    real = crypto.keccak256
    monkeypatch.setattr(crypto, "keccak256", lambda data: bytes(32) if len(data) == 64 else real(data))
    refused("recovered the zero address", recover, MESSAGE_ID, sig)


# --- messages and committees ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"version": 2}, "version: unknown"),
        ({"version": True}, "version: not an integer"),
        ({"kind": 0}, "kind: unknown"),
        ({"kind": 8}, "kind: unknown"),
        ({"kind": 256}, "kind: not a uint8"),
        ({"source_chain_id": 2**64}, "source_chain_id: not a uint64"),
        ({"source_chain_id": -1}, "source_chain_id: not a uint64"),
        ({"source_tx": b"\x01" * 31}, "source_tx: not 32 bytes"),
        ({"source_tx": "11" * 32}, "source_tx: not 32 bytes"),
        ({"source_index": 2**32}, "source_index: not a uint32"),
        ({"dest_chain_id": 1.0}, "dest_chain_id: not an integer"),
        ({"account": b"\x01" * 21}, "account: not 20 bytes"),
        ({"asset": "0x" + "00" * 20}, "asset: not 20 bytes"),
        ({"amount": 2**256}, "amount: not a uint256"),
        ({"nonce": 2**64}, "nonce: not a uint64"),
        ({"expiry": 2**64}, "expiry: not a uint64"),
        ({"expiry": 0}, "expiry: zero (every message expires)"),
        ({"payload_hash": b""}, "payload_hash: not 32 bytes"),
        ({"kind": Kind.ROTATION, "payload_hash": bytes(32)}, "payload_hash: zero"),
        ({"kind": Kind.SNAPSHOT_ROOT, "payload_hash": bytes(32)}, "payload_hash: zero"),
    ],
)
def test_message_fields_refused(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(MessageRefused) as info:
        make_message(**changes)
    assert info.value.reason == reason


@pytest.mark.parametrize("kind", [Kind.DEPOSIT_CREDIT, Kind.RELEASE, Kind.PAYOUT_DONE])
def test_zero_amount_never_acts(kind: Kind) -> None:
    for field, reason in (("amount", "amount: zero"), ("account", "account: zero address"), ("source_tx", "source_tx: zero")):
        with pytest.raises(MessageRefused) as info:
            make_message(kind=kind, **{field: 0 if field == "amount" else bytes(len(getattr(MESSAGE, field)))})
        assert info.value.reason == reason
    # A message forced past its constructor (object.__setattr__) is still refused by verify_quorum,
    # even with a quorum of valid signatures over it.
    message = make_message(kind=kind)
    object.__setattr__(message, "amount", 0)
    indices, sigs = quorum(message)
    refused("amount: zero", verify_quorum, DOMAIN, message, COMMITTEE, indices, sigs, NOW)


def test_kinds_without_value_may_carry_zero_amount() -> None:
    for kind in (Kind.UNPAUSE, Kind.PRICE_REPORT):
        m = make_message(kind=kind, amount=0, account=bytes(20), source_tx=bytes(32))
        assert verify_quorum(DOMAIN, m, COMMITTEE, *quorum(m), NOW) == digest(DOMAIN, m)


@pytest.mark.parametrize("n", range(1, 21))
def test_committee_quorum_rule(n: int) -> None:
    signers = tuple(sorted(keccak256(b"s%d" % i)[12:] for i in range(n)))
    for m in range(0, n + 2):
        if -(-2 * n // 3) <= m <= n:
            assert Committee(1, signers, m).threshold == m
        else:
            with pytest.raises(CommitteeRefused):
                Committee(1, signers, m)


def test_two_of_five_committee_refused_harmony() -> None:
    refused("threshold: below ceil(2N/3)", Committee, 1, ADDRESSES, 2)
    refused("threshold: below ceil(2N/3)", Committee, 1, ADDRESSES, 3)
    assert Committee(1, ADDRESSES, 4).threshold == 4


def test_committee_shape_refused() -> None:
    refused("signers: not 1 to 256", Committee, 1, (), 0)
    refused("signers: not 1 to 256", Committee, 1, tuple(sorted(keccak256(b"%d" % i)[12:] for i in range(257))), 200)
    refused("signers: duplicate", Committee, 1, (ADDRESSES[0], ADDRESSES[0], ADDRESSES[1]), 2)
    refused("signers: not ascending", Committee, 1, (ADDRESSES[1], ADDRESSES[0], ADDRESSES[2]), 2)
    refused("signer: zero address", Committee, 1, (bytes(20), ADDRESSES[0], ADDRESSES[1]), 2)
    refused("signer: not 20 bytes", Committee, 1, ("0x" + ADDRESSES[0].hex(),), 1)
    refused("threshold: above the number of signers", Committee, 1, ADDRESSES[:3], 4)
    refused("epoch: not a uint64", Committee, 2**64, ADDRESSES[:3], 2)


# --- quorums: the exploit classes ------------------------------------------------------------------


def test_valid_quorum_accepted() -> None:
    for indices in ((0, 1, 2), (0, 1, 3), (1, 2, 3), (0, 1, 2, 3)):
        assert verify_quorum(DOMAIN, MESSAGE, COMMITTEE, *quorum(indices=indices), NOW) == MESSAGE_ID


def test_every_byte_of_a_signature_flipped_refused() -> None:
    indices, sigs = quorum()
    for which in range(len(sigs)):
        for pos in range(65):
            for mask in (0xFF, 0x01, 0x80):
                bad = bytearray(sigs[which])
                bad[pos] ^= mask
                bad_sigs = list(sigs)
                bad_sigs[which] = bytes(bad)
                with pytest.raises(Refused) as info:
                    verify_quorum(DOMAIN, MESSAGE, COMMITTEE, indices, bad_sigs, NOW)
                if isinstance(info.value, QuorumRefused):  # recovered: someone outside the set
                    assert info.value.reason == "signer outside the set"
                    assert recover(MESSAGE_ID, bytes(bad)) not in COMMITTEE.members
                else:
                    assert isinstance(info.value, SignatureRefused)


def test_every_byte_of_a_bundle_flipped_refused() -> None:
    bundle = Bundle(MESSAGE, COMMITTEE, *quorum())
    data = encode_bundle(bundle)
    assert decode_bundle(data) == bundle
    assert bundle.verify(DOMAIN, COMMITTEE.hash, NOW) == MESSAGE_ID
    for pos in range(len(data)):
        for mask in (0xFF, 0x01):
            bad = bytearray(data)
            bad[pos] ^= mask
            with pytest.raises(Refused):
                decode_bundle(bytes(bad)).verify(DOMAIN, COMMITTEE.hash, NOW)


def test_empty_signer_list_refused() -> None:
    refused("empty", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, (), (), NOW)
    refused("empty", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, [], [], NOW)


def test_duplicate_signer_refused() -> None:
    indices, sigs = quorum(indices=(0, 1, 2))
    refused("duplicate index", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, (0, 1, 1), (sigs[0], sigs[1], sigs[1]), NOW)
    refused("duplicate index", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, (0, 0, 1, 2), (sigs[0], *sigs), NOW)


def test_unsorted_signers_refused() -> None:
    indices, sigs = quorum(indices=(0, 1, 2))
    refused("unsorted indices", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, (1, 0, 2), (sigs[1], sigs[0], sigs[2]), NOW)


def test_signer_outside_the_set_refused() -> None:
    indices, sigs = quorum(indices=(0, 1, 2))
    outsider = sign(MESSAGE_ID, OUTSIDER)
    refused("signer outside the set", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, (0, 1, 2), (sigs[0], sigs[1], outsider), NOW)
    # the fifth key is a signer of another committee, not of this one
    refused("signer outside the set", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, (0, 1, 2), (sigs[0], sigs[1], sign(MESSAGE_ID, KEYS[4])), NOW)
    # a member's signature under another member's index
    refused("signer does not match its index", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, (0, 1, 3), sigs, NOW)
    refused("index outside the set", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, (0, 1, 4), (sigs[0], sigs[1], outsider), NOW)
    refused("index outside the set", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, (0, 1, 256), sigs, NOW)
    refused("index: not an integer", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, (0, 1, True), sigs, NOW)


def test_mismatched_counts_refused() -> None:
    indices, sigs = quorum(indices=(0, 1, 2))
    refused("count mismatch", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, (0, 1, 2, 3), sigs, NOW)
    refused("count mismatch", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, (0, 1), sigs, NOW)


def test_m_minus_one_signers_refused() -> None:
    refused("below quorum", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, *quorum(indices=(0, 2)), NOW)
    big = Committee(3, ADDRESSES, 4)  # 4-of-5
    refused("below quorum", verify_quorum, DOMAIN, MESSAGE, big, *quorum(indices=(0, 2, 4)), NOW)
    assert verify_quorum(DOMAIN, MESSAGE, big, *quorum(indices=(0, 2, 3, 4)), NOW) == MESSAGE_ID


def test_signature_for_another_chain_id_refused() -> None:
    other = Domain(1, DOMAIN.verifying_contract)
    assert digest(other, MESSAGE) != MESSAGE_ID
    refused("signer outside the set", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, *quorum(domain=other), NOW)


def test_signature_for_another_contract_refused() -> None:
    other = Domain(DOMAIN.chain_id, bytes.fromhex("e7f1725e7734ce288f8367e1bb143e90bb3f0512"))
    assert digest(other, MESSAGE) != MESSAGE_ID
    refused("signer outside the set", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, *quorum(domain=other), NOW)


def test_signature_for_another_message_refused() -> None:
    indices, sigs = quorum(make_message(amount=MESSAGE.amount + 1))
    refused("signer outside the set", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, indices, sigs, NOW)


def test_expired_message_refused() -> None:
    indices, sigs = quorum()
    assert verify_quorum(DOMAIN, MESSAGE, COMMITTEE, indices, sigs, MESSAGE.expiry - 1) == MESSAGE_ID
    refused("expired", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, indices, sigs, MESSAGE.expiry)
    refused("expired", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, indices, sigs, MESSAGE.expiry + 10**6)


def test_zero_id_refused_nomad(monkeypatch: pytest.MonkeyPatch) -> None:
    # No message hashes to zero in practice; verify_quorum still refuses one that did.
    indices, sigs = quorum()
    monkeypatch.setattr(msgs, "digest", lambda domain, message: bytes(32))
    refused("zero id", verify_quorum, DOMAIN, MESSAGE, COMMITTEE, indices, sigs, NOW)


def test_carried_signer_set_must_match_stored_hash_wormhole() -> None:
    # A bundle carrying its own committee (here: the outsider's) verifies only against the stored hash.
    forged = Committee(COMMITTEE.epoch, tuple(sorted((*ADDRESSES[:2], address_of(OUTSIDER)))), 3)
    keys = {address_of(k): k for k in (*KEYS, OUTSIDER)}
    fkeys = [keys[a] for a in forged.signers]
    bundle = Bundle(MESSAGE, forged, *quorum(keys=fkeys))
    assert verify_quorum(DOMAIN, MESSAGE, forged, bundle.indices, bundle.signatures, NOW) == MESSAGE_ID
    refused("committee does not match the stored hash", bundle.verify, DOMAIN, COMMITTEE.hash, NOW)


# --- bundles ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(messages_st(), st.integers(1, 19), st.data())
def test_bundle_round_trip(message: Message, n: int, data: st.DataObject) -> None:
    signers = tuple(sorted(data.draw(st.lists(b20.filter(any), min_size=n, max_size=n, unique=True))))
    committee = Committee(data.draw(uint(64)), signers, data.draw(st.integers(Committee.min_threshold(n), n)))
    indices = tuple(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1))))
    sigs = tuple(sign(keccak256(bytes([i])), KEYS[0]) for i in indices)
    bundle = Bundle(message, committee, indices, sigs)
    encoded = encode_bundle(bundle)
    assert decode_bundle(encoded) == bundle
    assert decode_bundle(bytearray(encoded)) == bundle
    for cut in range(len(encoded)):
        with pytest.raises(BundleRefused):
            decode_bundle(encoded[:cut])
    refused("trailing bytes", decode_bundle, encoded + b"\x00", error=BundleRefused)


def test_bundle_refusals() -> None:
    indices, sigs = quorum()
    good = encode_bundle(Bundle(MESSAGE, COMMITTEE, indices, sigs))
    refused("format: unknown", decode_bundle, b"\x02" + good[1:], error=BundleRefused)
    refused("short: format", decode_bundle, b"", error=BundleRefused)
    refused("not bytes", decode_bundle, "00", error=BundleRefused)
    refused("empty", Bundle, MESSAGE, COMMITTEE, (), (), error=BundleRefused)
    refused("indices: not ascending within the set", Bundle, MESSAGE, COMMITTEE, (1, 0, 2), sigs, error=BundleRefused)
    refused("indices: not ascending within the set", Bundle, MESSAGE, COMMITTEE, (0, 1, 4), sigs, error=BundleRefused)
    refused("high s", Bundle, MESSAGE, COMMITTEE, indices, (sigs[0], _high_s(sigs[1]), sigs[2]), error=BundleRefused)
    refused("count mismatch", Bundle, MESSAGE, COMMITTEE, indices, sigs[:2], error=BundleRefused)
    bad_kind = bytearray(good)
    bad_kind[2] = 9
    refused("kind: unknown", decode_bundle, bytes(bad_kind), error=BundleRefused)


def _assert_decodes_canonically_or_refuses(data: bytes) -> None:
    try:
        bundle = decode_bundle(data)
    except BundleRefused:
        return
    assert encode_bundle(bundle) == data  # one encoding per bundle


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=1200))
def test_bundle_decoder_fuzz_random_bytes_bnb(data: bytes) -> None:
    _assert_decodes_canonically_or_refuses(data)
    _assert_decodes_canonically_or_refuses(encode_bundle(Bundle(MESSAGE, COMMITTEE, *quorum()))[:1] + data)


_VALID = encode_bundle(Bundle(MESSAGE, COMMITTEE, *quorum()))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.sampled_from(["set", "insert", "delete"]), st.integers(0, 255)), min_size=1, max_size=6))
def test_bundle_decoder_fuzz_mutations_bnb(edits: list[tuple[int, str, int]]) -> None:
    data = bytearray(_VALID)
    for pos, op, value in edits:
        pos %= len(data) + 1
        if op == "insert":
            data.insert(pos, value)
        elif pos < len(data):
            if op == "set":
                data[pos] = value
            else:
                del data[pos]
    _assert_decodes_canonically_or_refuses(bytes(data))
    if bytes(data) != _VALID:
        with pytest.raises(Refused):
            decode_bundle(bytes(data)).verify(DOMAIN, COMMITTEE.hash, NOW)


def test_domain_refusals() -> None:
    refused("chain_id: zero", Domain, 0, DOMAIN.verifying_contract)
    refused("verifying_contract: zero address", Domain, 1, bytes(20))
    refused("verifying_contract: not 20 bytes", Domain, 1, "0x" + "11" * 20)
    assert dataclasses.replace(DOMAIN).separator == DOMAIN.separator


def test_random_keys_sign_and_verify() -> None:
    keys = sorted((os.urandom(32) for _ in range(7)), key=address_of)
    committee = Committee(1, tuple(address_of(k) for k in keys), 5)
    indices, sigs = quorum(indices=(0, 2, 3, 5, 6), keys=keys)
    assert verify_quorum(DOMAIN, MESSAGE, committee, indices, sigs, NOW) == MESSAGE_ID
