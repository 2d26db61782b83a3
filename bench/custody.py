"""Committee custody on Bitcoin: deposit address derivations per second, and the vsize of sweeps and payouts.

    python bench/custody.py [--seconds 2]

* derivations: ``deposit_address`` for distinct accounts on one core (script, key check, bech32),
  and ``deposit_script_pubkey`` alone (what an attester matches deposits by);
* vsize, for M-of-N = 2-of-3, 3-of-4, 5-of-7: a sweep of 100 deposits into custody (one output)
  and a payout (one custody input, one P2WPKH payout output plus change to custody).  Every
  figure is a really signed (M members, ``add_signature``) and finalized transaction spending
  real coins of an embedded regtest node (in process, in a temp dir), which accepts it
  (testmempoolaccept's check).  A signature is 71 or, rarely, 70 bytes, so a figure can move by 1 vB.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

# Run as `python bench/custody.py`, this folder is first on sys.path and bench/htlc.py would
# shadow the `htlc` package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from bridge.custody import (
    CustodyCoin,
    CustodyPolicy,
    add_signature,
    build_payout,
    build_sweep,
    custody_script,
    deposit_address,
    deposit_script,
    deposit_script_pubkey,
    finalize,
)  # noqa: E402
from chains.bitcoin_wallet import BtcKey, Utxo, build_payment  # noqa: E402
from chains.btc.primitives import Tx  # noqa: E402
from chains.btc.script import p2wsh_script  # noqa: E402
from devnets.regtest import RegtestNode  # noqa: E402
from devnets.regtest.methods.rawtransactions import testmempoolaccept  # noqa: E402

COMMITTEES = [(2, 3), (3, 4), (5, 7)]
SWEEP_DEPOSITS = 100
DEPOSIT = 200_000
CUSTODY_COIN = 5_000_000
FEERATE = 1  # sat/vB: vsize is what is measured


def keys(tag: str, n: int) -> list[BtcKey]:
    return [BtcKey(hashlib.sha256(f"bench-custody-{tag}-{i}".encode()).digest()) for i in range(n)]


def derivations_per_second(seconds: float, derive=deposit_address) -> float:
    policy = CustodyPolicy.of([k.pubkey for k in keys("derive", 4)], 3, 4320)
    refund = keys("refund", 1)[0].pubkey
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for i in range(done, done + 500):
            derive(policy, i.to_bytes(20, "big"), refund)
        done += 500
    return done / elapsed


def _signed(psbt, signers: list[BtcKey]) -> Tx:
    for key in signers:
        add_signature(psbt, key)
    return finalize(psbt)


def _accepted(node: RegtestNode, tx: Tx) -> None:
    [verdict] = testmempoolaccept(node, [tx.serialize().hex()], 0)
    assert verdict["allowed"], verdict


def vsizes() -> dict[str, int]:
    """Fund each committee's deposits and one custody coin on a fresh node, then measure."""
    funder = BtcKey(hashlib.sha256(b"bench-custody-funder").digest())
    figures: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-custody-") as tmp:
        node = RegtestNode(tmp)
        node.open()
        try:
            coinbases = [node.mine(funder.p2wpkh_script)[0].txs[0] for _ in COMMITTEES]
            for _ in range(100):
                node.mine(b"\x51")
            for (m, n), coinbase in zip(COMMITTEES, coinbases):
                members = keys(f"{m}of{n}", n)
                policy = CustodyPolicy.of([k.pubkey for k in members], m, 4320)
                refund = keys("refund", 1)[0].pubkey
                scripts = [deposit_script(policy, i.to_bytes(20, "big"), refund) for i in range(SWEEP_DEPOSITS)] + [custody_script(policy)]
                amounts = [DEPOSIT] * SWEEP_DEPOSITS + [CUSTODY_COIN]
                utxo = Utxo(coinbase.txid, 0, coinbase.vout[0].value, funder.p2wpkh_script, 1, True)
                funding = build_payment([funder], [utxo], [(p2wsh_script(s), a) for s, a in zip(scripts, amounts)], 2, max_fee=10**6)
                node.accept_tx(Tx.from_hex(funding.raw_hex))
                node.mine(b"\x51")
                coins = [CustodyCoin(funding.txid, i, a, s) for i, (s, a) in enumerate(zip(scripts, amounts))]
                signers = members[:m]

                sweep = _signed(build_sweep(coins[:SWEEP_DEPOSITS], policy, FEERATE), signers)
                _accepted(node, sweep)
                figures[f"sweep of {SWEEP_DEPOSITS} deposits, {m}-of-{n}"] = sweep.vsize
                payout = _signed(build_payout(coins[-1:], [(keys("user", 1)[0].p2wpkh_script, 1_000_000)], policy, FEERATE), signers)
                _accepted(node, payout)
                figures[f"payout 1 in, 1 out + change, {m}-of-{n}"] = payout.vsize
        finally:
            node.close()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="how long to derive addresses (default 2)")
    args = parser.parse_args()
    print("Deposit addresses (one core)")
    print(f"  {'address derivations per second, 3-of-4':44} {derivations_per_second(args.seconds):>10,.0f}")
    rate = derivations_per_second(args.seconds, deposit_script_pubkey)
    print(f"  {'  output scripts alone (no bech32) per second':44} {rate:>10,.0f}")
    print("\nCustody transactions, signed, finalized, accepted by the embedded regtest node (vsize, vB)")
    figures = vsizes()
    for label, vsize in figures.items():
        print(f"  {label:44} {vsize:>10,}")
    for m, n in COMMITTEES:
        sweep = figures[f"sweep of {SWEEP_DEPOSITS} deposits, {m}-of-{n}"]
        print(f"  {f'  per swept deposit, {m}-of-{n}':44} {sweep / SWEEP_DEPOSITS:>10,.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
