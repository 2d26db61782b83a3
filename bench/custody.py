"""Committee custody on Bitcoin: deposit address derivations per second, vsize of sweeps and payouts, deposit and payout latency.

    python bench/custody.py [--seconds 2] [--deposits 10] [--payouts 5]

* derivations: ``deposit_address`` for distinct accounts on one core (script, key check, bech32),
  and ``deposit_script_pubkey`` alone (what an attester matches deposits by);
* vsize, for M-of-N = 2-of-3, 3-of-4, 5-of-7: a sweep of 100 deposits into custody (one output)
  and a payout (one custody input, one P2WPKH payout output plus change to custody).  Every
  figure is a really signed (M members, ``add_signature``) and finalized transaction spending
  real coins of an embedded regtest node (in process, in a temp dir), which accepts it
  (testmempoolaccept's check).  A signature is 71 or, rarely, 70 bytes, so a figure can move by 1 vB.
* latency, with the committee's daemons as ``bridgectl relayer run`` assembles them
  (``relayers.committee``), in this process: four attesters (3-of-4, each its own replica in its
  own SQLite file) and a deliverer (the service replica, the attestation store, the payouts), on
  default settings (Bitcoin depth 1, blocks pushed, default poll intervals), on an Anvil and an
  embedded regtest node the bench starts as child processes (free ports, temp dir), the bridge
  deployed as ``tests/support/committee.own_bridge`` does:

  - **deposit at depth -> credit**: a BTC deposit to the trader's own deposit address, from the
    moment the block that gives it its depth is mined (the ``generatetoaddress`` reply) until the
    Credited event is on chain (``creditedOutput`` true) and until the credit is in all five
    replicas; ``--deposits`` sequential deposits (default 10), after an untimed warm-up one;
  - **payout request -> broadcast**: from the withdrawal request's receipt (``requestBtcWithdrawal``)
    until the payout's operation is in state ``broadcast`` (``Payouts.view``) with its transaction
    in the node's mempool; ``--payouts`` sequential payouts (default 5), each confirmed and closed
    (PAYOUT_DONE) before the next.  Goal: within one Bitcoin block on the devnet; the bench mines
    nothing while it waits, and prints what a block is here (mined on demand: the seconds one
    ``generatetoaddress`` takes), beside the anchors (sBTC up to 6 Bitcoin blocks, tBTC hours).

  A probe thread looks every 5 ms (``bench/attest_latency.py``'s ``Probe``) at the chain and the
  replicas' SQLite files and stamps when each condition first holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib.util
import statistics
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

REPO = Path(__file__).resolve().parent.parent

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


# --- latency of the committee on the devnet -----------------------------------------------------

LATENCY_DEPOSIT = 50_000_000  # sats per timed deposit
WARMUP_DEPOSIT = 200_000_000  # the untimed first deposit: it funds the payouts
PAYOUT = 10_000_000  # sats per timed payout
MAINNET_BLOCK = 600  # seconds, Bitcoin's target spacing
ANCHORS = "sBTC up to 6 Bitcoin blocks (~60 min), tBTC hours"


def _attest_latency():
    """``bench/attest_latency.py`` (its ``Probe``, ``Stamped`` and ``_summary``), loaded by path."""
    spec = importlib.util.spec_from_file_location("attest_latency", Path(__file__).with_name("attest_latency.py"))
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _support_committee():
    """``tests/support/committee.py`` (``own_bridge``): plain Python, no pytest needed."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.append(tests)
    import support.committee as committee

    return committee


class _DepositCheck:
    """Stamps, from the probe thread, when the output is credited on chain and when the credit is
    in every replica (the account's BTC balance reached ``total``)."""

    def __init__(self, evm_url: str, contract: str, calldata: bytes, engines: list, owner: str, total: int) -> None:
        from sqlalchemy import text

        self.evm_url, self.contract, self.calldata = evm_url, contract, "0x" + calldata.hex()
        self.pending, self.owner, self.total = list(engines), owner, total
        self.sql = text(
            "SELECT b.credits_posted - b.debits_posted FROM ledger_accounts a JOIN ledger_balances b ON b.account_id = a.id "
            "WHERE a.owner = :o AND a.kind = 'user' AND a.asset = 'BTC'"
        )
        self.on_chain: float | None = None
        self.everywhere: float | None = None

    def __call__(self) -> bool:
        from devnets.anvil import rpc

        if self.on_chain is None and int(rpc(self.evm_url, "eth_call", [{"to": self.contract, "data": self.calldata}, "latest"]), 16) == 1:
            self.on_chain = time.perf_counter()
        for engine in list(self.pending):
            with engine.connect() as conn:
                value = conn.execute(self.sql, {"o": self.owner}).scalar()
            if value is None or int(value) < self.total:
                break
            self.pending.remove(engine)
        if not self.pending and self.everywhere is None:
            self.everywhere = time.perf_counter()
        return self.on_chain is not None and self.everywhere is not None


def _broadcast(engine, op_id: str, btc_url: str, auth: tuple[str, str]):
    """The payout ``op_id`` is in state ``broadcast`` (or later) and its transaction in the mempool."""
    from sqlalchemy import text

    from devnets.jsonrpc import call

    def check(_receipt: dict) -> bool:
        with engine.connect() as conn:
            row = conn.execute(text("SELECT state, txid FROM custody_payout WHERE id = :id"), {"id": op_id}).first()
        if row is None or row[0] not in ("broadcast", "confirmed", "done") or not row[1]:
            return False
        call(btc_url, "getmempoolentry", [row[1]], auth=auth)  # raises until the node has it
        return True

    return check


async def latency(deposits: int = 10, payouts: int = 5) -> dict:
    """Start Anvil, a regtest node and the committee; time ``deposits`` deposits and ``payouts``
    payouts (seconds).  ``{"credit_on_chain", "credit_everywhere", "payout_broadcast", "block", "settings"}``."""
    from eth_account import Account

    from bridge.committee.messages import bitcoin_source
    from bridge.committee.replica import owner_of
    from bridge.core.db import make_engine
    from bridge.core.settings import BitcoinSettings, CommitteeSettings, EvmSettings, Settings
    from bridge.core.testing import wait_until
    from bridge.custody.scripts import deposit_script_pubkey, refund_pubkey_of_evm_key
    from chains.bitcoin import BitcoinAdapter
    from chains.bitcoin_rpc import BitcoinRpc
    from chains.evm import EvmAdapter
    from devnets.anvil import Anvil
    from devnets.bitcoin_node import BitcoinNode
    from devnets.controls import AnvilControls, BitcoinDevnet
    from htlc.evm import encode_call
    from relayers.committee import AttesterDaemon, DelivererDaemon

    lat = _attest_latency()
    support = _support_committee()
    with tempfile.TemporaryDirectory(prefix="bench-custody-latency-") as tmp:
        root = Path(tmp)
        anvil = Anvil(root / "anvil")
        bitcoin = BitcoinNode(root / "bitcoin", rpc_user="bench", rpc_password="bench")
        anvil.start()
        evm = btc = probe = None
        stop = asyncio.Event()
        tasks: list[asyncio.Task] = []
        try:
            bitcoin.start()
            evm = await EvmAdapter.connect(anvil.url)
            btc = BitcoinAdapter(BitcoinRpc(bitcoin.rpc_url, user="bench", password="bench"))
            devnet = BitcoinDevnet(btc)
            faucet = BtcKey(hashlib.sha256(b"bench-custody-latency-faucet").digest())
            await devnet.mine(1, faucet.p2wpkh_address())
            await devnet.mine(100)
            bridge = await support.own_bridge(evm, root / "service", btc_start=await btc.height())
            host, port = bitcoin.rpc_url.removeprefix("http://").rstrip("/").split(":")
            settings = Settings(
                data_dir=str(root / "service"),
                bitcoin=BitcoinSettings(rpc_host=host, rpc_port=int(port), rpc_user="bench", rpc_password="bench"),
                evm=EvmSettings(url=anvil.url),
                committee=CommitteeSettings(config=str(bridge.config_path)),
            )
            urls = [f"sqlite:///{root / 'service' / f'attester-{i}.sqlite'}" for i in range(len(bridge.keys))]
            attesters = [await AttesterDaemon.from_settings(settings, key, db_url=url) for key, url in zip(bridge.keys, urls)]
            service = await DelivererDaemon.from_settings(settings, bridge.relayer_key)
            tasks = [asyncio.create_task(d.run(stop), name=d.name) for d in [*attesters, service]]
            replicas = [d.attester.replica for d in attesters] + [service.deliverer.replica]
            engines = [make_engine(url) for url in [*urls, settings.db_url]]
            probe = lat.Probe()

            trader = Account.create()
            key = trader.key.to_0x_hex()
            await AnvilControls(evm).set_balance(trader.address, 10**19)
            await bridge.contract.register_btc_key(key)
            await wait_until(lambda: all(r.btc_keys(trader.address) for r in replicas), timeout=30, what="the trader's key in every replica")
            script = deposit_script_pubkey(bridge.config.bitcoin.policy, trader.address, refund_pubkey_of_evm_key(key))
            sweep = bridge.config.bitcoin.sweep_allowance
            depth = settings.bitcoin.confirmations
            blocks: list[float] = []

            async def mine(n: int) -> float:
                for _ in range(n):
                    start = time.perf_counter()
                    await devnet.mine(1)
                    blocks.append(time.perf_counter() - start)
                return time.perf_counter()

            total = 0

            async def deposit(amount: int) -> tuple[float, float]:
                nonlocal total
                paid = await btc.send_to([faucet], [(script, amount)], 2)
                vout = next(i for i, o in enumerate(Tx.from_hex(paid.raw_hex).vout) if o.script_pubkey == script)
                total += amount - sweep
                source_tx, index = bitcoin_source(paid.txid, vout)
                calldata = encode_call(bridge.contract.abi, "creditedOutput", source_tx, index)
                check = _DepositCheck(anvil.url, bridge.contract.address, calldata, engines, owner_of(trader.address), total)
                if depth > 1:
                    await mine(depth - 1)
                at_depth = await mine(1)
                await probe.until(check)
                return check.on_chain - at_depth, check.everywhere - at_depth

            await deposit(WARMUP_DEPOSIT)
            on_chain, everywhere = [], []
            for _ in range(deposits):
                chain_s, all_s = await deposit(LATENCY_DEPOSIT)
                on_chain.append(chain_s)
                everywhere.append(all_s)

            payouts_store = service.payouts
            watcher = payouts_store.watcher

            def idle() -> bool:
                counts = payouts_store.counts()
                return not watcher.coins(kind="deposit") and all(counts.get(s, 0) == 0 for s in ("proposing", "collecting", "broadcast", "confirmed"))

            async def mined_until(predicate, what: str) -> None:
                async def step() -> bool:
                    if predicate():
                        return True
                    await mine(1)
                    return False

                await wait_until(step, timeout=120, interval=0.5, what=what)

            await mined_until(idle, "every deposit swept into custody, nothing in flight")
            payee = BtcKey.generate().p2wpkh_script
            broadcast: list[float] = []
            blocks_meanwhile: list[int] = []
            service_engine = engines[-1]
            for _ in range(payouts):
                nonce = await bridge.contract.request_nonce()
                op_id = f"payout:{nonce}"
                height = await btc.height()
                tx = await evm.transact(key, bridge.contract.address, 0, encode_call(bridge.contract.abi, "requestBtcWithdrawal", PAYOUT, payee))
                stamped = lat.Stamped(anvil.url, tx, _broadcast(service_engine, op_id, bitcoin.rpc_url, ("bench", "bench")))
                seen = await probe.until(stamped)
                broadcast.append(seen - stamped.block_seen)
                blocks_meanwhile.append(await btc.height() - height)
                await mined_until(lambda op_id=op_id: payouts_store.view(op_id)["state"] == "done" and idle(), f"{op_id} confirmed and closed")
            return {
                "credit_on_chain": lat._summary(on_chain),
                "credit_everywhere": lat._summary(everywhere),
                "payout_broadcast": lat._summary(broadcast),
                "blocks_meanwhile": max(blocks_meanwhile, default=0),
                "block": statistics.median(blocks) if blocks else None,
                "settings": {
                    "replicas": len(engines),
                    "committee": f"{bridge.committee.threshold}-of-{len(bridge.keys)}",
                    "depth": depth,
                    "indexer_poll": settings.indexer.poll_interval,
                    "store_poll": settings.committee.poll_interval,
                },
            }
        finally:
            stop.set()
            if tasks:
                done, pending = await asyncio.wait(tasks, timeout=15)
                for t in pending:
                    t.cancel()
                for t in done:
                    if not t.cancelled() and t.exception() is not None:
                        print(f"daemon {t.get_name()} failed: {t.exception()!r}", file=sys.stderr)
            if probe is not None:
                probe.close()
            for adapter in (evm, btc):
                if adapter is not None:
                    with contextlib.suppress(Exception):
                        await adapter.close()
            bitcoin.stop()
            anvil.stop()


def report_latency(figures: dict) -> None:
    s = figures["settings"]
    block = figures["block"]
    print(
        f"\nCommittee latency on the devnet: {s['committee']} committee, {s['replicas']} replicas (4 attesters + the service), "
        f"Bitcoin depth {s['depth']}, indexer poll {s['indexer_poll']} s, store poll {s['store_poll']} s"
    )
    print(f"  anchors: {ANCHORS}")
    rows = [
        ("deposit at depth -> Credited on chain", figures["credit_on_chain"]),
        ("deposit at depth -> credit in every replica", figures["credit_everywhere"]),
        ("payout request -> broadcast", figures["payout_broadcast"]),
    ]
    for label, fig in rows:
        if not fig:
            continue
        print(f"  {label + ', n':52} {fig['n']:>8}")
        for p in ("p50", "p90"):
            print(f"  {label + ', ' + p:52} {fig[p]:>8.2f} s   anchor: {ANCHORS}")
    if figures["payout_broadcast"]:
        p90 = figures["payout_broadcast"]["p90"]
        meanwhile = figures["blocks_meanwhile"]
        verdict = "ok" if meanwhile == 0 else "OVER"
        print(f"  {'payout goal: within one Bitcoin block on the devnet':52} {verdict}: broadcast with {meanwhile} blocks mined meanwhile")
        if block is not None:
            print(
                f"  {'one Bitcoin block on this devnet':52} {block:>8.3f} s   mined on demand (the generatetoaddress call), so a block "
                f"has no fixed length here; mainnet's is ~{MAINNET_BLOCK} s, and the p90 broadcast ({p90:.2f} s) is {p90 / MAINNET_BLOCK:.2%} of it"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="how long to derive addresses (default 2)")
    parser.add_argument("--deposits", type=int, default=10, help="deposits timed from depth to credit (default 10; 0 skips)")
    parser.add_argument("--payouts", type=int, default=5, help="payouts timed from request to broadcast (default 5; 0 skips)")
    args = parser.parse_args()
    if args.deposits < 0 or args.payouts < 0:
        parser.error("counts must be >= 0")
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
    if args.deposits or args.payouts:
        report_latency(asyncio.run(latency(args.deposits, args.payouts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
