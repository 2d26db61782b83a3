"""`make demo`: bring up both devnets, act on each chain, run three atomic swaps, then the committee
(margin deposits, a withdrawal released by a quorum, BTC margin, a liquidation after a price drop,
BTC payouts), print what happened, stop.

    python -m bridge.demo [--data-dir .devnet/demo] [--keep] [--no-swaps] [--no-committee]

The demo runs on its own data dir and free ports so it never collides with a
devnet you already run; ``--keep`` leaves its nodes running afterwards (stop
them with ``bridgectl --data-dir .devnet/demo devnet down``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from bridge.core.errors import BridgeError

ETH = 10**18
SAT = 10**8


@dataclass
class Timeline:
    started: float = field(default_factory=time.monotonic)
    rows: list[tuple[float, str]] = field(default_factory=list)

    def say(self, what: str) -> None:
        t = time.monotonic() - self.started
        self.rows.append((t, what))
        print(f"[{t:6.2f}s] {what}", flush=True)


def fmt_eth(wei: int) -> str:
    return f"{Decimal(wei) / ETH:.6f} ETH"


def fmt_btc(sats: int) -> str:
    return f"{Decimal(sats) / SAT:.8f} BTC"


async def evm_phase(descriptor: dict, tl: Timeline) -> dict:
    from chains.evm import EvmAdapter

    evm = descriptor["evm"]
    a, b = evm["accounts"][0], evm["accounts"][1]
    async with await EvmAdapter.connect(evm["rpc_url"]) as chain:
        before = await chain.balance(b["address"])
        txhash = await chain.transact(a["private_key"], b["address"], value=1 * ETH)
        status = await chain.wait_for_confirmations(txhash, 1, timeout=60)
        after = await chain.balance(b["address"])
        tl.say(f"EVM: account 0 sent 1 ETH to account 1 in tx {txhash[:18]}… (block {status.block.height}); account 1: {fmt_eth(before)} -> {fmt_eth(after)}")
        assert after - before == ETH, "the EVM transfer did not arrive"
        return {"txid": txhash, "block": status.block.height, "received_wei": after - before}


async def bitcoin_phase(descriptor: dict, tl: Timeline) -> dict:
    from chains.bitcoin import BitcoinAdapter
    from chains.bitcoin_rpc import BitcoinRpc
    from chains.bitcoin_wallet import BtcKey
    from devnets.controls import BitcoinDevnet

    btc = descriptor["bitcoin"]
    rpc = BitcoinRpc(
        btc["rpc_url"],
        user=btc["rpc_user"] if not btc.get("cookie_file") else None,
        password=btc["rpc_password"] if not btc.get("cookie_file") else None,
        cookie_file=btc.get("cookie_file"),
    )
    async with BitcoinAdapter(rpc, network="regtest") as chain:
        k0 = BtcKey.from_hex(btc["keys"][0]["private_key"])
        k1 = BtcKey.from_hex(btc["keys"][1]["private_key"])
        before = await chain.balance([k1.p2wpkh_script])
        signed = await chain.send_to([k0], [(k1.p2wpkh_address("regtest"), 1 * SAT)])
        tl.say(f"Bitcoin: key 0 sent 1 BTC to key 1 in tx {signed.txid[:16]}… ({signed.vsize} vB, fee {signed.fee_sats} sat); in the mempool")
        blocks = await BitcoinDevnet(chain).mine(1, k0.p2wpkh_address("regtest"))
        status = await chain.wait_for_confirmations(signed.txid, 1, timeout=60)
        after = await chain.balance([k1.p2wpkh_script])
        tl.say(f"Bitcoin: mined block {blocks[0][:16]}… at height {status.block.height}; key 1: {fmt_btc(before)} -> {fmt_btc(after)}")
        assert after - before == SAT, "the Bitcoin payment did not arrive"
        return {"txid": signed.txid, "block": status.block.height, "fee_sats": signed.fee_sats}


async def run(data_dir: Path, keep: bool, skip_swaps: bool = False, skip_committee: bool = False) -> int:
    from bridge.core.settings import load_settings
    from devnets.manager import Devnet

    tl = Timeline()
    # Free ports the first time; the ports recorded in devnet.json after that.
    devnet = Devnet.from_settings(load_settings(environ={}, data_dir=str(data_dir)), anvil_port=0, bitcoin_port=0)
    summary: dict = {}
    try:
        tl.say(f"starting devnets in {data_dir}")
        # The devnet manager is synchronous (it is also the CLI's); keep it off the event loop.
        descriptor = await asyncio.to_thread(devnet.up, tl.say)
        status = await asyncio.to_thread(devnet.status)
        tl.say(f"heights: EVM {status['evm']['height']}, Bitcoin {status['bitcoin']['height']}")
        for acct in descriptor["evm"]["accounts"][:2]:
            tl.say(f"funded EVM account {acct['index']}: {acct['address']}")
        for key in descriptor["bitcoin"]["keys"][:2]:
            tl.say(f"funded Bitcoin key {key['index']}: {key['address']}")
        summary["evm"] = await evm_phase(descriptor, tl)
        summary["bitcoin"] = await bitcoin_phase(descriptor, tl)
        if not skip_swaps:
            from bridge.demo_swaps import run_swaps

            tl.say("atomic swaps: an LP daemon and a trader, each with its own keys and database")
            summary["swaps"] = await run_swaps(descriptor, data_dir, tl.say, devnet.bitcoin.rpc)
        if not skip_committee:
            from bridge.demo_committee import run_committee

            tl.say("the committee: four attesters (each with its own replica of the margin ledger) and a deliverer, as processes")
            summary["committee"] = await run_committee(descriptor, data_dir, tl.say)
    finally:
        if not keep:
            await asyncio.to_thread(devnet.down, tl.say)
    print("\n=== demo summary ===")
    print(f"EVM     1 ETH transfer confirmed in block {summary['evm']['block']} (tx {summary['evm']['txid']})")
    print(
        f"Bitcoin 1 BTC payment confirmed at height {summary['bitcoin']['block']} (tx {summary['bitcoin']['txid']}, fee {summary['bitcoin']['fee_sats']} sat)"
    )
    for swap_id, swap in summary.get("swaps", {}).get("swaps", {}).items():
        print(f"\nswap {swap_id}: {swap['state']}\n{swap['timeline']}")
    for party, balances in summary.get("swaps", {}).get("balances", {}).items():
        print(f"\nledger of the {party} (bridgectl ledger balances):\n{balances}")
    committee = summary.get("committee")
    if committee:
        for d in committee["deposits"]:
            credited = ", ".join(f"{name} {time.strftime('%H:%M:%S', time.localtime(at))}.{int(at * 1000) % 1000:03d}" for name, at in d["credited_at"].items())
            print(f"\ndeposit of {d['amount']} {d['asset']}: tx {d['tx']} in block {d['block']}")
            print(f"  credited as margin (transfer {d['transfer']}) in each replica at: {credited}")
        w = committee["withdrawal"]
        print(f"\nwithdrawal request {w['request']} (bridgectl message show req:{w['request']}):\n{w['show']}")
        liq = committee.get("liquidation")
        if liq:
            q = liq["liquidation"]
            print(
                f"\nliquidation: BTC {liq['price']['before']:,} -> {liq['price']['after']:,} USD; account {liq['accounts'][0]} (borrowed "
                f"{liq['borrow']['amount']} TUSD against {liq['deposit']['amount']} BTC) liquidated in tx {q['tx']} (block {q['block']}) at health "
                f"{int(q['chain_health_bps']) / 100:.2f} % on chain, {int(q['replica_health_bps']) / 100:.2f} % in the service replica"
            )
            p = liq["payout"]
            print(f"  the liquidator (account {liq['accounts'][1]}) withdrew the seized BTC: request {p['request']}, {p['received']} BTC at {p['to']}")
        print(f"\n{committee['balances']}")
        print(f"  the replicas {'agree' if committee['agree'] else 'DISAGREE'}; their databases and logs: {committee['work']}")
    print(f"\ntook {time.monotonic() - tl.started:.1f}s; nodes {'left running' if keep else 'stopped'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bridge.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=".devnet/demo", type=Path)
    parser.add_argument("--keep", action="store_true", help="leave the demo's nodes running afterwards")
    parser.add_argument("--no-swaps", action="store_true", help="no atomic swaps")
    parser.add_argument("--no-committee", action="store_true", help="no committee (deposits and a withdrawal through the bridge contract)")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args.data_dir.resolve(), args.keep, args.no_swaps, args.no_committee))
    except BridgeError as exc:
        print(f"demo failed: {exc.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
