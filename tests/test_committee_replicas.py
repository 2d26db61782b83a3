"""Replicas agree whatever crashes: a randomized run with SIGKILLs.

A 3-of-4 bridge of the test's own on the session Anvil; four attester processes (each its own
replica) and a deliverer process (the service replica and the deliveries), one shared attestation
store (a fresh PostgreSQL schema, or one SQLite file where no PostgreSQL answers).  Users make a
seeded random sequence of deposits and withdrawals of ETH and TUSD, some above their margin (so
refused by the contract: nothing to fold, no nonce taken); meanwhile a random attester or the deliverer is killed with SIGKILL at random points
and restarted a few operations later.

At the end every replica is at the same height and holds the same books: the same balances, the
same requests in the same states, as the test's own model predicts; every request the contract
took was held and released on chain exactly once; the contract's margin book (``balanceOf``) is the
model's; the bridge contract holds what the replicas' custody accounts say (deposits minus
releases); no anomalies; every ledger passes its audit.

The seed is printed (and logged); rerun one with ``COMMITTEE_REPLICAS_SEED=<seed>``.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass

import pytest

from bridge.committee.config import ETH_ADDRESS
from bridge.committee.replica import owner_of
from bridge.core.testing import wait_until
from bridge.ledger.audit import audit
from devnets.presets import ONE_ETH
from support.committee import TUSD, chain_refuses, fleet, ledger_totals, own_bridge, shared_store

log = logging.getLogger("test.committee.replicas")

ATTESTERS = ("attester-0", "attester-1", "attester-2", "attester-3")
REPLICAS = (*ATTESTERS, "service")
DAEMONS = (*ATTESTERS, "deliverer")
SYMBOLS = ("ETH", "TUSD")


@dataclass
class Expected:
    """One withdrawal request as the model predicts it."""

    nonce: int
    user: str
    symbol: str
    amount: int
    state: str  # released (held, then paid): a request the margin does not cover is never made


def _seed() -> int:
    given = os.environ.get("COMMITTEE_REPLICAS_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


def _id(value) -> bytes:
    return value if isinstance(value, bytes) else bytes.fromhex(value.removeprefix("0x"))


async def test_replicas_agree_after_random_kills(evm, btc, regtest, tmp_path):
    await _random_run(evm, btc, regtest, tmp_path, ops=200, kills=12)


@pytest.mark.slow
@pytest.mark.timeout(1200)
async def test_replicas_agree_after_random_kills_long(evm, btc, regtest, tmp_path):
    await _random_run(evm, btc, regtest, tmp_path, ops=1000, kills=50)


async def _random_run(evm, btc, regtest, tmp_path, *, ops: int, kills: int) -> None:
    started = time.monotonic()
    seed = _seed()
    print(f"seed {seed} (COMMITTEE_REPLICAS_SEED={seed} to rerun)")
    log.info("declare: seed %d, %d operations, %d kills", seed, ops, kills)
    rng = random.Random(seed)  # the operations: the same for one seed, whatever the timing
    kills_rng = random.Random(seed + 1)  # whom to kill among the daemons up at that moment
    bridge = await own_bridge(evm, tmp_path / "bridge", n=4, m=3, btc_start=await btc.height())
    tokens = {"ETH": ETH_ADDRESS, "TUSD": bridge.config.assets["TUSD"][0]}
    codes = {s: bridge.config.ledger_asset(s).code for s in SYMBOLS}
    units = {"ETH": ONE_ETH // 100, "TUSD": TUSD}
    users = [await bridge.user(wei=1_000 * ONE_ETH, tusd=10_000_000 * TUSD) for _ in range(5)]
    tusd_start = {u: await bridge.token.balance(u) for u, _ in users}

    margin: dict[tuple[str, str], int] = {}  # available margin, as every replica must book it
    deposited: Counter[str] = Counter()
    deposited_by: Counter[tuple[str, str]] = Counter()
    requests: dict[int, Expected] = {}
    refused = 0  # requests beyond the margin, refused by the contract
    kill_at = set(rng.sample(range(3, ops - 3), kills))
    done_kills: Counter[str] = Counter()

    with shared_store(tmp_path / "store") as store_url, fleet(bridge, tmp_path / "fleet", store_url, regtest) as f:

        async def start(name: str) -> None:
            f.start_deliverer() if name == "deliverer" else f.start_attester(int(name.rsplit("-", 1)[1]))

        await start(DAEMONS[0])
        await f.wait_up()  # the shared store's tables made once (see the report: racing CREATE TABLEs)
        for name in DAEMONS[1:]:
            await start(name)
        await f.wait_up()
        down: tuple[str, int] | None = None  # the daemon killed, and the operation at which it comes back

        async def pick_victim() -> str:
            """A daemon at work (up, not starting): the kill lands in its work, not in its imports."""

            async def at_work() -> list[str]:
                return [n for n in DAEMONS if await f.up(n)]

            return kills_rng.choice(await wait_until(at_work, timeout=60, interval=0.1, what="a daemon up"))

        log.info("act: %d random deposits and withdrawals, SIGKILLs at operations %s", ops, sorted(kill_at))
        for op in range(ops):
            if down is not None and op >= down[1]:
                await start(down[0])
                down = None
            if op in kill_at:
                if down is not None:
                    await start(down[0])
                victim = await pick_victim()
                f.stop(victim, kill=True)
                done_kills[victim] += 1
                down = (victim, op + kills_rng.randint(0, 8))
                log.info("act: op %d: SIGKILL %s (back at op %d)", op, victim, down[1])
            f.check_alive()
            user, key = rng.choice(users)
            symbol = rng.choice(SYMBOLS)
            available = margin.get((user, symbol), 0)
            if available == 0 or rng.random() < 0.45:
                amount = rng.randint(1, 300) * units[symbol] + rng.randint(0, 999)
                if symbol == "ETH":
                    await bridge.contract.deposit_eth(key, amount)
                else:
                    await bridge.contract.deposit_erc20(key, tokens[symbol], amount)
                margin[(user, symbol)] = available + amount
                deposited[symbol] += amount
                deposited_by[(user, symbol)] += amount
                continue
            if rng.random() < 0.2:
                amount = available + rng.randint(1, 50 * units[symbol])  # more than the margin: the chain refuses it
                await chain_refuses(bridge, bridge.contract.request_withdrawal(key, tokens[symbol], amount))
                refused += 1
                continue
            amount = rng.randint(1, available)
            receipt = await bridge.contract.request_withdrawal(key, tokens[symbol], amount)
            (event,) = [e for e in bridge.contract.events_in(receipt) if e.name == "WithdrawalRequested"]
            requests[event["requestNonce"]] = Expected(event["requestNonce"], user, symbol, amount, "released")
            margin[(user, symbol)] = available - amount
        if down is not None:
            await start(down[0])
        log.info(
            "act: done in %.1fs; kills %s; %d requests, %d more refused by the chain", time.monotonic() - started, dict(done_kills), len(requests), refused
        )

        async def settled() -> bool:
            head = await evm.height()
            if any(f.height(n) != head for n in REPLICAS):
                return False
            return all(not f.replica(n).requests(state="held") for n in REPLICAS) and await evm.height() == head

        await f.wait(settled, timeout=120, what="every replica at the chain's head with every held request released")
        head = await evm.height()

        log.info("assert: the replicas agree with each other and with the model (height %d)", head)
        want_balances = {(owner_of(u), codes[s]): (m, 0) for (u, s), m in margin.items()}
        want_requests = [(e.nonce, e.state) for e in sorted(requests.values(), key=lambda e: e.nonce)]
        books = {n: (f.replica(n).balances(), _rows(f.replica(n))) for n in REPLICAS}
        for name in REPLICAS:
            assert f.height(name) == head, name
            balances, rows = books[name]
            assert balances == want_balances, name
            assert rows == books["service"][1], name
            assert [(nonce, state) for nonce, state, *_ in rows] == want_requests, name
            assert f.replica(name).anomalies() == [], name
            report = audit(f.engine(name))
            assert report.ok, (name, report.problems)

        log.info("assert: each request released exactly once on chain; the contract's margin book is the model's")
        by_id = {mid: nonce for nonce, _state, _reason, mid, *_ in books["service"][1] if mid is not None}
        released = Counter(_id(e["id"]) for e in await bridge.contract.events(bridge.config.deploy_block) if e.name == "Released")
        assert set(released) <= set(by_id), "a release of a message no replica held"
        assert all(n == 1 for n in released.values()), released.most_common(3)
        paid = {by_id[mid] for mid in released}
        assert paid == set(requests) and await bridge.contract.request_nonce() == len(requests)
        for e in requests.values():
            assert await bridge.contract.released(e.nonce) and not await bridge.contract.request_open(e.nonce), e
        for (user, symbol), m in margin.items():
            assert await bridge.contract.balance_of(user, tokens[symbol]) == m, (user, symbol)

        log.info("assert: the contract holds deposits minus releases, as every replica's custody books it")
        paid_out = Counter()
        for e in requests.values():
            if e.state == "released":
                paid_out[e.symbol] += e.amount
        holdings = {"ETH": await evm.balance(bridge.contract.address), "TUSD": await bridge.token.balance(bridge.contract.address)}
        for symbol in SYMBOLS:
            assert holdings[symbol] == deposited[symbol] - paid_out[symbol], symbol
            for name in REPLICAS:
                assert ledger_totals(f.engine(name))[("bridge", "custody", codes[symbol])] == (-holdings[symbol], 0, 0), (name, symbol)
        for user, _key in users:
            out = sum(e.amount for e in requests.values() if e.user == user and e.symbol == "TUSD" and e.state == "released")
            assert await bridge.token.balance(user) == tusd_start[user] - deposited_by[(user, "TUSD")] + out, user

        assert sum(done_kills.values()) == kills
        f.check_alive()
        restarts = {n: f.starts[n] - 1 for n in f.starts}
    log.info("done: seed %d, %d ops, kills %s, restarts %s, %.1fs", seed, ops, dict(done_kills), restarts, time.monotonic() - started)


def _rows(replica) -> list[tuple]:
    return [(r.nonce, r.state, r.reason, r.message_id, r.amount, r.expiry) for r in replica.requests(limit=100_000)]
