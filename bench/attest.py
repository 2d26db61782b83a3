"""Committee attestations: what signing and checking them costs (issue 14, "What must show").

    python bench/attest.py

Each section prints its figures beside their goal or anchor.  Signatures run on one core (the
process is pinned to one CPU where the OS allows it); each figure is the best of a few runs of
about half a second, so other load on the machine lowers it rather than inflating it.
"""

from __future__ import annotations

import asyncio

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from eth_account import Account
from eth_account.messages import encode_typed_data

# Run as `python bench/attest.py`, this folder is first on sys.path and its `htlc.py` would
# shadow the `htlc` package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from bridge.committee.crypto import keccak256, private_key  # noqa: E402
from bridge.committee.messages import Committee, Domain, Kind, Message, address_of, digest, recover, sign, typed_data, verify_quorum  # noqa: E402

#: Issue 14's goal: attestations signed and verified per second on one core.
PAIRS_GOAL = 5_000
DOMAIN = Domain(31337, bytes.fromhex("5fbdb2315678afecb367f032d93f642f64180aa3"))
NOW = 1_700_000_000


def _message(nonce: int) -> Message:
    return Message(
        version=1,
        kind=Kind.RELEASE,
        source_chain_id=31337,
        source_tx=keccak256(nonce.to_bytes(8, "big")),
        source_index=0,
        dest_chain_id=31337,
        account=bytes.fromhex("22" * 20),
        asset=bytes(20),
        amount=10**18 + nonce,
        nonce=nonce,
        expiry=NOW + 3600,
        payload_hash=bytes(32),
    )


def _rate(run: Callable[[int], None], batch: int, repeats: int = 3, seconds: float = 0.5) -> float:
    """Operations per second of ``run(i)``, best of ``repeats`` runs of at least ``seconds``."""
    best = 0.0
    for _ in range(repeats):
        done, start = 0, time.perf_counter()
        while True:
            for i in range(done, done + batch):
                run(i)
            done += batch
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        best = max(best, done / elapsed)
    return best


def _pin_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return f"pinned to CPU {cpu}"


def signatures() -> None:
    print(f"== Attestations signed and verified per second, one core ({_pin_one_core()}) ==")
    secret = keccak256(b"bench attester")
    key = private_key(secret)
    signer = address_of(key)
    messages = [_message(i) for i in range(2048)]
    ids = [digest(DOMAIN, m) for m in messages]
    sigs = [sign(d, key) for d in ids]

    def ours_sign(i: int) -> None:
        sign(digest(DOMAIN, messages[i & 2047]), key)

    def ours_verify(i: int) -> None:
        assert recover(digest(DOMAIN, messages[i & 2047]), sigs[i & 2047]) == signer

    def ours_pair(i: int) -> None:
        m = messages[i & 2047]
        assert recover(digest(DOMAIN, m), sign(digest(DOMAIN, m), key)) == signer

    account = Account.from_key(secret)
    full = [typed_data(DOMAIN, m) for m in messages[:256]]
    theirs = [account.sign_message(encode_typed_data(full_message=f)).signature for f in full]

    def eth_sign(i: int) -> None:
        account.sign_message(encode_typed_data(full_message=full[i & 255]))

    def eth_verify(i: int) -> None:
        assert Account.recover_message(encode_typed_data(full_message=full[i & 255]), signature=theirs[i & 255]) == account.address

    def eth_pair(i: int) -> None:
        signable = encode_typed_data(full_message=full[i & 255])
        assert Account.recover_message(signable, signature=account.sign_message(signable).signature) == account.address

    ours = {name: _rate(fn, 200) for name, fn in (("sign", ours_sign), ("verify", ours_verify), ("pair", ours_pair))}
    eth = {name: _rate(fn, 20) for name, fn in (("sign", eth_sign), ("verify", eth_verify), ("pair", eth_pair))}
    print("  (sign = EIP-712 digest + signature; verify = digest + recovery + comparison; pair = both on one message)")
    print(f"  {'':<40} {'sign/s':>9} {'verify/s':>9} {'pairs/s':>9}")
    print(f"  {'ours (libsecp256k1 + C keccak)':<40} {ours['sign']:>9,.0f} {ours['verify']:>9,.0f} {ours['pair']:>9,.0f}   goal >= {PAIRS_GOAL:,} pairs/s")
    print(
        f"  {'eth_account (encode_typed_data)':<40} {eth['sign']:>9,.0f} {eth['verify']:>9,.0f} {eth['pair']:>9,.0f}   x{ours['pair'] / eth['pair']:.1f} ours"
    )

    # A whole quorum check as a deliverer or a replica runs it: 13 signatures of a 13-of-19 set.
    keys = sorted((private_key(keccak256(b"bench committee %d" % i)) for i in range(19)), key=address_of)
    committee = Committee(1, tuple(address_of(k) for k in keys), 13)
    indices = tuple(range(13))
    quorum_sigs = [tuple(sign(d, keys[j]) for j in indices) for d in ids[:64]]

    def quorum(i: int) -> None:
        verify_quorum(DOMAIN, messages[i & 63], committee, indices, quorum_sigs[i & 63], NOW)

    per_s = _rate(quorum, 20)
    print(f"  verify_quorum 13-of-19: {per_s:,.0f} quorums/s ({13 * per_s:,.0f} signatures/s)")


def contract_gas() -> None:
    """The bridge contract's release gas, from ``bench/attest_gas.py`` (its own Anvil)."""
    print("\n== Bridge contract: gas of a quorum release, M-of-N (bench/attest_gas.py) ==")
    gas = _load("attest_gas")
    gas.report(*gas.figures())


def _load(name: str):
    # Loaded by path: this folder is off sys.path (see above), and it is no package.
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def latency() -> None:
    """Deposit at depth -> credit in every replica, and withdrawal -> paid (``bench/attest_latency.py``)."""
    print("\n== Committee latency on the devnet (bench/attest_latency.py: 4 attesters, a deliverer, its own Anvil) ==")
    bench = _load("attest_latency")
    bench.report(asyncio.run(bench.measure(50, 20)))


def main() -> None:
    print("bench/attest.py: committee attestations\n")
    # Before ``signatures`` pins this process to one core: the daemons and Anvil need the machine.
    contract_gas()
    latency()
    signatures()


if __name__ == "__main__":
    main()
