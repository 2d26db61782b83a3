"""Gas of a quorum release on the bridge contract (``htlc/contracts/CollateralBridge.sol``).

    python bench/attest_gas.py

Starts its own Anvil (free port, temp dir) and stops it afterwards.  For M = 2..13 it releases
ETH on an M-of-N committee with the smallest N the quorum rule allows (M >= ceil(2N/3), so
N = floor(3M/2)), then a 13-of-19 release.  Each release pays a withdrawal request its account
made first, from margin it deposited before (a request is taken from the contract's margin book
at once); the release's gas is its own receipt's ``gasUsed`` (the whole transaction: 21,000
base, calldata, verification, closing the request net of its refund, the cap, the payment).  The
requests' gas, paid by the account, is printed apart: the contract's first request (its counter
slot written from zero) and a later one, the one released (each also takes from the account's
balance and records the request's expiry).  The recipient already holds ETH, as
a margin account withdrawing does.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak, to_canonical_address, to_checksum_address

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from bridge.committee.contract import CollateralBridge  # noqa: E402
from bridge.committee.messages import ETH_ASSET, MESSAGE_VERSION, Committee, Kind, Message  # noqa: E402
from chains.evm import EvmAdapter  # noqa: E402
from devnets.anvil import Anvil  # noqa: E402
from devnets.controls import AnvilControls  # noqa: E402
from htlc.evm import ETH  # noqa: E402

ONE_ETH = 10**18
GOAL_PER_SIGNER = 5_000  # Wormhole pays about 8.9k, Hyperlane 6.5-7.4k
GOAL_13_OF_19 = 130_000  # Wormhole's verification alone is about 135k
_FIELDS = [
    ("version", "uint8"),
    ("kind", "uint8"),
    ("sourceChainId", "uint64"),
    ("sourceTx", "bytes32"),
    ("sourceIndex", "uint32"),
    ("destChainId", "uint64"),
    ("account", "address"),
    ("asset", "address"),
    ("amount", "uint256"),
    ("nonce", "uint64"),
    ("expiry", "uint64"),
    ("payloadHash", "bytes32"),
]
_DOMAIN = [("name", "string"), ("version", "string"), ("chainId", "uint256"), ("verifyingContract", "address")]


def _digest(m: Message, chain_id: int, contract: str) -> bytes:
    values = [
        m.version,
        m.kind,
        m.source_chain_id,
        m.source_tx,
        m.source_index,
        m.dest_chain_id,
        to_checksum_address(m.account),
        to_checksum_address(m.asset),
        m.amount,
        m.nonce,
        m.expiry,
        m.payload_hash,
    ]
    signable = encode_typed_data(
        full_message={
            "types": {"EIP712Domain": [{"name": n, "type": t} for n, t in _DOMAIN], "Message": [{"name": n, "type": t} for n, t in _FIELDS]},
            "primaryType": "Message",
            "domain": {"name": "CollateralBridge", "version": "1", "chainId": chain_id, "verifyingContract": contract},
            "message": {name: value for (name, _), value in zip(_FIELDS, values)},
        }
    )
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


async def _release_gas(chain: EvmAdapter, m_of: int, n: int) -> tuple[tuple[int, int], int]:
    """``((first request gas, later request gas), release gas)`` of an ETH withdrawal on a fresh
    M-of-N bridge: the account deposits 2 ETH of margin, requests twice and the second request is released."""
    keys = {to_canonical_address(Account.from_key(k).address): k for k in (keccak(f"bench-signer-{i}".encode()) for i in range(n))}
    committee = Committee(0, tuple(sorted(keys)), m_of)
    party = Account.create()
    user = Account.create()
    controls = AnvilControls(chain)
    await controls.set_balance(party.address, 100 * ONE_ETH)
    await controls.set_balance(user.address, 3 * ONE_ETH)
    key = party.key.to_0x_hex()
    bridge = await CollateralBridge.deploy(chain, key, committee, [party.address], {ETH: 100 * ONE_ETH})
    await bridge.deposit_eth(user.key.to_0x_hex(), 2 * ONE_ETH)
    first = await bridge.request_withdrawal(user.key.to_0x_hex(), ETH, ONE_ETH)
    request = await bridge.request_withdrawal(user.key.to_0x_hex(), ETH, ONE_ETH)
    (requested,) = bridge.events_in(request)
    chain_id = await chain.chain_id_int()
    expiry = (await chain.head()).timestamp + 3600
    m = Message(
        version=MESSAGE_VERSION,
        kind=Kind.RELEASE,
        source_chain_id=0,
        source_tx=keccak(b"tx"),
        source_index=0,
        dest_chain_id=chain_id,
        account=to_canonical_address(user.address),
        asset=ETH_ASSET,
        amount=ONE_ETH,
        nonce=requested["requestNonce"],
        expiry=expiry,
        payload_hash=bytes(32),
    )
    h = _digest(m, chain_id, bridge.address)
    indices = list(range(m_of))
    sigs = [bytes(Account.unsafe_sign_hash(h, keys[committee.signers[i]]).signature) for i in indices]
    return (first.gas_used, request.gas_used), (await bridge.release(key, m, committee, indices, sigs)).gas_used


Table = dict[tuple[int, int], int]


async def _measure(url: str) -> tuple[Table, Table, tuple[int, int]]:
    """``(M = 2..13 at the smallest N, M = 13..19 at N = 19)``, release gas by (M, N), and the
    largest (first, later) request gas seen (it does not depend on the committee)."""
    chain = await EvmAdapter.connect(url)
    tables: tuple[Table, Table] = ({}, {})
    request_gas = (0, 0)
    try:
        for table, sizes in zip(tables, ([(m, 3 * m // 2) for m in range(2, 14)], [(m, 19) for m in range(13, 20)])):
            for m, n in sizes:
                requested, table[(m, n)] = await _release_gas(chain, m, n)
                request_gas = (max(request_gas[0], requested[0]), max(request_gas[1], requested[1]))
        return *tables, request_gas
    finally:
        await chain.close()


def _slope(gas: Table) -> float:
    """Least-squares gas per extra signer M."""
    ms = [m for m, _ in gas]
    mean_m, mean_g = sum(ms) / len(ms), sum(gas.values()) / len(gas)
    return sum((m - mean_m) * (g - mean_g) for (m, _), g in gas.items()) / sum((m - mean_m) ** 2 for m in ms)


def figures() -> tuple[Table, Table, tuple[int, int]]:
    with tempfile.TemporaryDirectory(prefix="bench-anvil-") as tmp:
        node = Anvil(Path(tmp))
        node.start()
        try:
            return asyncio.run(_measure(node.url))
        finally:
            node.stop()


def report(by_m: Table, fixed_n: Table, request_gas: tuple[int, int]) -> None:
    """Print ``figures()`` beside their goals and anchors."""
    print("Bridge release gas (receipt gasUsed, ETH, whole release transaction; its request apart)")
    for label, table in (("M = 2..13, N = floor(3M/2)", by_m), ("N = 19, M = 13..19", fixed_n)):
        print(f"  {label}")
        previous = None
        for (m, n), gas in table.items():
            step = "" if previous is None else f"  +{gas - previous:,}"
            print(f"    {m:>2}-of-{n:<2} {gas:>9,}{step}")
            previous = gas
    for label, slope in (("per extra signer, N growing with M", _slope(by_m)), ("per extra signer at fixed N = 19", _slope(fixed_n))):
        verdict = "ok" if slope <= GOAL_PER_SIGNER else "OVER"
        print(f"  {label:40} {slope:>9,.0f}  goal <= {GOAL_PER_SIGNER:,}: {verdict}  (Wormhole ~8.9k, Hyperlane 6.5-7.4k)")
    whole = fixed_n[(13, 19)]
    verdict = "ok" if whole <= GOAL_13_OF_19 else "OVER"
    print(f"  {'13-of-19 whole release':40} {whole:>9,}  goal <= {GOAL_13_OF_19:,}: {verdict}  (Wormhole's verification alone ~135k)")
    first, later = request_gas
    print(f"  {'withdrawal request, the account pays':40} {later:>9,}  (the contract's first: {first:,})")


def main() -> int:
    report(*figures())
    return 0


if __name__ == "__main__":
    sys.exit(main())
