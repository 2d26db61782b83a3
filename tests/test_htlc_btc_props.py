"""Property tests of the Bitcoin HTLC audit.

1. build -> audit round-trips for random parameters, on both templates.
2. audit never accepts a script that is not exactly a template's output: for a
   mutated script (any byte replaced, inserted or deleted) it either refuses, or
   the terms it reports rebuild exactly the mutated script (the byte was a
   parameter: a hash, key or lock byte), and it never accepts a change to a
   structural byte.  The replacement case is exhaustive (every structural
   position, every byte value) for one script of each template.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from htlc.audit import AuditError, HtlcTerms, audit
from htlc.bitcoin_script import (
    LOCKTIME_THRESHOLD,
    MAX_LOCKTIME,
    TEMPLATE_P2WSH,
    htlc_address,
    is_compressed_pubkey,
    p2sh_htlc_script,
    p2wsh_htlc_script,
)
from chains.btc.primitives import push_int

pubkeys = st.tuples(st.sampled_from([b"\x02", b"\x03"]), st.binary(min_size=32, max_size=32)).map(b"".join).filter(is_compressed_pubkey)
hashes = st.binary(min_size=32, max_size=32)
pkhs = st.binary(min_size=20, max_size=20)
heights = st.integers(1, LOCKTIME_THRESHOLD - 1) | st.integers(1, 20_000)
locks = heights | st.integers(LOCKTIME_THRESHOLD, MAX_LOCKTIME)
networks = st.sampled_from(["regtest", "testnet", "mainnet"])


def rebuild(t: HtlcTerms) -> bytes:
    if t.template == TEMPLATE_P2WSH:
        return p2wsh_htlc_script(t.hashlock, t.claim_pubkey, t.refund_pubkey, t.locktime)
    return p2sh_htlc_script(t.hashlock, t.claim_pubkey_hash, t.refund_pubkey_hash, t.locktime)


@given(hashes, pubkeys, pubkeys, heights, networks)
def test_p2wsh_round_trip(h, claim, refund, height, network):
    script = p2wsh_htlc_script(h, claim, refund, height)
    t = audit(script, network=network)
    assert (t.template, t.hashlock, t.claim_pubkey, t.refund_pubkey, t.locktime) == ("p2wsh", h, claim, refund, height)
    assert t.lock_kind == "height" and t.address == htlc_address("p2wsh", script, network)


@given(hashes, pkhs, pkhs, locks, networks)
def test_p2sh_round_trip(h, claim, refund, lock, network):
    script = p2sh_htlc_script(h, claim, refund, lock)
    t = audit(script, network=network)
    assert (t.template, t.hashlock, t.claim_pubkey_hash, t.refund_pubkey_hash, t.locktime) == ("p2sh-bip199", h, claim, refund, lock)
    assert t.lock_kind == ("height" if lock < LOCKTIME_THRESHOLD else "time")


def assert_not_wrongly_accepted(script: bytes) -> HtlcTerms | None:
    try:
        terms = audit(script)
    except AuditError:
        return None
    assert rebuild(terms) == script, f"audit accepted a non-canonical script {script.hex()}"
    return terms


def parameter_positions(script: bytes, terms: HtlcTerms) -> set[int]:
    """Byte positions holding the hash, key/key-hash and lock bytes (not their push opcodes),
    from the templates' layouts (searching for the values would confuse equal keys)."""
    p2wsh = terms.template == TEMPLATE_P2WSH
    key_size = 33 if p2wsh else 20
    claim_at = 41 if p2wsh else 43
    lock_at = claim_at + key_size + 1
    lock_size = len(push_int(terms.locktime))
    refund_at = lock_at + lock_size + (3 if p2wsh else 5)
    positions = set(range(7, 39)) | set(range(claim_at, claim_at + key_size)) | set(range(refund_at, refund_at + key_size))
    positions |= set(range(lock_at + (lock_size > 1), lock_at + lock_size))
    assert script[claim_at - 1] == key_size and script[refund_at - 1] == key_size
    return positions


def exhaustive_replacements(script: bytes) -> None:
    terms = audit(script)
    params = parameter_positions(script, terms)
    for pos in range(len(script)):
        # Every value for the bytes that matter; a sample for parameter bytes, whose
        # changes are meant to be accepted as other terms (rebuilding is the slow part).
        values = range(256) if pos not in params else (0x00, 0x01, 0x7F, 0x80, 0xFF, script[pos] ^ 0x01)
        for value in values:
            if value == script[pos]:
                continue
            mutated = script[:pos] + bytes([value]) + script[pos + 1 :]
            accepted = assert_not_wrongly_accepted(mutated)
            if accepted is not None:
                assert pos in params, f"accepted a change of structural byte {pos} to 0x{value:02x}"


def test_every_single_byte_replacement_p2wsh():
    claim = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
    refund = bytes.fromhex("02c6047f9441ed7d6d3045406e95c07cd85c778e4b8cef3ca7abac09b95c709ee5")
    exhaustive_replacements(p2wsh_htlc_script(bytes(range(32)), claim, refund, 4242))


def test_every_single_byte_replacement_p2sh():
    exhaustive_replacements(p2sh_htlc_script(bytes(range(32)), b"\x11" * 20, b"\x22" * 20, 1_700_000_000))


@st.composite
def scripts(draw):
    if draw(st.booleans()):
        return p2wsh_htlc_script(draw(hashes), draw(pubkeys), draw(pubkeys), draw(heights))
    return p2sh_htlc_script(draw(hashes), draw(pkhs), draw(pkhs), draw(locks))


@settings(max_examples=300)
@given(scripts(), st.data())
def test_insertions_and_deletions_are_never_accepted_unless_canonical(script, data):
    pos = data.draw(st.integers(0, len(script)))
    inserted = data.draw(st.binary(min_size=1, max_size=3))
    assert_not_wrongly_accepted(script[:pos] + inserted + script[pos:])
    if pos < len(script):
        width = data.draw(st.integers(1, 3))
        assert_not_wrongly_accepted(script[:pos] + script[pos + width :])


@settings(max_examples=300)
@given(scripts(), st.data())
def test_structural_byte_changes_are_always_refused(script, data):
    params = parameter_positions(script, audit(script))
    structural = [i for i in range(len(script)) if i not in params]
    pos = data.draw(st.sampled_from(structural))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != script[pos]))
    mutated = script[:pos] + bytes([value]) + script[pos + 1 :]
    try:
        terms = audit(mutated)
    except AuditError:
        return
    raise AssertionError(f"structural byte {pos} changed to 0x{value:02x} and audit accepted {terms}")
