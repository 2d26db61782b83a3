"""The demo's liquidation story, through the commands a user and an operator run.

A liquidator (devnet account 5) runs `bridgectl relayer run liquidator` and keeps TUSD margin of
its own; a trader (account 6) deposits BTC to its own deposit address, which becomes margin on
the EVM side, and borrows TUSD against it (`withdraw evm` beyond its TUSD balance: the contract
allows it while the account stays 125 % healthy).  `bridgectl devnet price BTC` moves the devnet
feed; the attesters report the new price, a quorum of reports moves the oracle, and the account
falls below the 110 % threshold: the liquidator's daemon calls `liquidate`, taking over the
trader's BTC and its TUSD debt.  The liquidator then withdraws the seized BTC to a Bitcoin
address, as any margin is withdrawn.  `bridgectl ledger health` shows each account's health as
the contract and the service replica compute it, side by side.

The BTC price is set back to where the story starts first, so the demo can run again on the
same devnet.
"""

from __future__ import annotations

import time
from typing import Any

from bridge.core.testing import wait_until
from bridge.demo_committee import (
    CommitteeAct,
    Daemon,
    Miner,
    _credited_everywhere,
    _request_state,
    _tx_block,
    btc_deposit,
    btc_withdraw,
    run_command,
)

LIQUIDATOR_ACCOUNT = 5
TRADER_ACCOUNT = 6
LIQUIDATOR_TUSD = "40000"
TRADER_BTC = "0.5"
BORROW_TUSD = "30000"
#: Within the devnet breaker's 20 % step: the drop is one move of the oracle.
PRICE_BEFORE = 95_000
PRICE_AFTER = 80_000


async def set_price(c: CommitteeAct, symbol: str, usd: int) -> float:
    """`bridgectl devnet price`, then wait until every replica folded the oracle's new price (the
    attesters report it at their next slot, and a quorum of reports is posted); seconds taken."""
    from bridge.committee.messages import BTC_ASSET

    started = time.monotonic()
    c.say(f"operator: bridgectl devnet price {symbol} {usd}")
    await run_command(c, "devnet", "price", symbol, str(usd))
    key, want = "0x" + BTC_ASSET.hex(), usd * 10**8

    def folded() -> bool:
        for name in c.replicas:
            price = c.status(name).replica.prices().get(key) if c.status(name).replica is not None else None
            if price is None or price.price != want:
                return False
        return True

    await wait_until(folded, timeout=120, interval=0.2, what=f"the oracle's {symbol} price at {usd} USD in every replica")
    took = time.monotonic() - started
    c.say(f"the attesters reported {symbol} at {usd:,} USD, a quorum of reports moved the oracle, and every replica folded it ({took:.1f}s)")
    return took


def _key_file(c: CommitteeAct, account: int) -> str:
    path = c.work / f"account-{account}.key"
    if not path.exists():
        path.write_text(c.descriptor["evm"]["accounts"][account]["private_key"] + "\n")
        path.chmod(0o600)
    return str(path)


async def start_liquidator(c: CommitteeAct) -> Daemon:
    key = _key_file(c, LIQUIDATOR_ACCOUNT)
    url = c.replica_url("liquidator")
    argv = c.bridgectl("relayer", "run", "liquidator", "--key", key, "--db", url, log_level="INFO")

    def up() -> bool:
        from sqlalchemy import create_engine, text

        try:
            engine = create_engine(url)
            with engine.connect() as conn:
                row = conn.execute(text("SELECT 1 FROM indexer_cursor LIMIT 1")).first()
            engine.dispose()
            return row is not None
        except Exception:
            return False

    daemon = Daemon("liquidator", argv, c.work / "liquidator.log", up)
    c.daemons.append(daemon)
    daemon.start()
    await wait_until(daemon.up, timeout=90, interval=0.1, what="the liquidator to fold its first blocks")
    return daemon


async def liquidation_act(c: CommitteeAct, miner: Miner) -> dict[str, Any]:
    """The story; returns what happened for the summary."""
    say = c.say
    accounts = c.descriptor["evm"]["accounts"]
    trader, liquidator = accounts[TRADER_ACCOUNT]["address"], accounts[LIQUIDATOR_ACCOUNT]["address"]
    service = c.status("service")
    say(f"liquidation: a trader (account {TRADER_ACCOUNT}) borrows against BTC, the BTC price drops, a liquidator (account {LIQUIDATOR_ACCOUNT}) takes over")
    await set_price(c, "BTC", PRICE_BEFORE)
    await start_liquidator(c)
    say(f"operator: bridgectl relayer run liquidator --key {_key_file(c, LIQUIDATOR_ACCOUNT)}   (devnet account {LIQUIDATOR_ACCOUNT}) up")

    say(f"liquidator: bridgectl deposit evm --asset TUSD --amount {LIQUIDATOR_TUSD} --account {LIQUIDATOR_ACCOUNT}   (margin to carry the debts it takes over)")
    args = ("deposit", "evm", "--asset", "TUSD", "--amount", LIQUIDATOR_TUSD, "--account", str(LIQUIDATOR_ACCOUNT))
    await _credited_everywhere(c, liquidator, "TUSD", args, _tx_block)

    say("trader: a BTC deposit to its own address becomes margin on the EVM side")
    credit = await btc_deposit(c, miner, TRADER_ACCOUNT, TRADER_BTC)

    say(f"trader: bridgectl withdraw evm --asset TUSD --amount {BORROW_TUSD} --account {TRADER_ACCOUNT}   (it has no TUSD: a borrow against its BTC)")
    lines = await run_command(c, "withdraw", "evm", "--asset", "TUSD", "--amount", BORROW_TUSD, "--account", str(TRADER_ACCOUNT), "--timeout", "60")
    nonce = int(next(line for _t, line in lines if line.startswith("withdrawal request ")).split()[2].rstrip(":"))
    await wait_until(lambda: all(_request_state(c, name, nonce) == "released" for name in c.replicas), timeout=30, what="the borrow posted in every replica")
    say(f"request {nonce}: {BORROW_TUSD} TUSD paid to the trader; it owes them, against its BTC")
    await run_command(c, "ledger", "health", trader)

    known = {name: len(c.status(name).replica.liquidations(trader)) for name in c.replicas}
    started = time.monotonic()
    drop = await set_price(c, "BTC", PRICE_AFTER)
    await wait_until(
        lambda: all(len(c.status(name).replica.liquidations(trader)) > known[name] for name in c.replicas),
        timeout=90,
        interval=0.1,
        what="the trader's liquidation in every replica",
    )
    row = service.replica.liquidations(trader)[-1]
    tx = row["key"].split(":")[0]
    say(
        f"the liquidator's daemon liquidated the trader in tx {tx} (block {row['block_height']}), {time.monotonic() - started:.1f}s after `devnet price`: "
        f"health {int(row['chain_health_bps']) / 100:.2f} % on chain, {int(row['health_bps']) / 100:.2f} % in the service replica (threshold 110 %)"
    )
    await run_command(c, "ledger", "health", trader)
    await run_command(c, "ledger", "health", liquidator)

    seized = next((p for p in service.positions(liquidator) if p["asset"] == "BTC" and int(p["amount_base"]) > 0), None)
    if seized is None:
        raise RuntimeError("the liquidator holds no BTC after the liquidation")
    say(f"liquidator: withdraws the seized {seized['amount']} BTC to a Bitcoin address, as any margin is withdrawn")
    payout = await btc_withdraw(c, miner, LIQUIDATOR_ACCOUNT, seized["amount"])
    return {
        "accounts": (TRADER_ACCOUNT, LIQUIDATOR_ACCOUNT),
        "addresses": (trader, liquidator),
        "deposit": credit,
        "borrow": {"request": nonce, "amount": BORROW_TUSD},
        "price": {"before": PRICE_BEFORE, "after": PRICE_AFTER, "seconds": round(drop, 1)},
        "liquidation": {"tx": tx, "block": row["block_height"], "chain_health_bps": row["chain_health_bps"], "replica_health_bps": row["health_bps"]},
        "payout": payout,
    }
