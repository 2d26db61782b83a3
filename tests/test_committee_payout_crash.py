"""BTC payouts land exactly once whatever crashes: SIGKILLs of attesters and the deliverer mid-payout.

A 3-of-4 bridge with Bitcoin custody, of the test's own, on the session Anvil and a regtest node
of this module's own; four attester processes (each its own replica, with its own Bitcoin fold)
and a deliverer process (the service replica, the deliveries, the custody payouts and sweeps),
one shared attestation store.  Users register their keys and deposit BTC to their deposit addresses (credited); then a
seeded random sequence of BTC withdrawals (some users withdraw several times, each to a fresh
payee) and a few more deposits (swept under fire), while the test mines a block every ~0.6 s
(the devnet has no miner of its own) and SIGKILLs a random attester or the deliverer at each of
``kills`` points, most of them timed on a payout of the deliverer's database reaching a state
(proposing, collecting, broadcast, confirmed), restarting each a moment later.  Mostly one
attester is down at a time, so three can sign; now and then two are, for a few seconds.

At the end, from the chain itself (every Bitcoin block since the bridge was made, and the bridge
contract's events) and from every replica:

* every request is closed exactly once on chain (one ``PaidOut`` per nonce, ``released``), by
  the one confirmed payout that pays its payee; every payee was paid by exactly one output on
  Bitcoin, ``amount - fee``; each payout takes from custody exactly the amount requested;
* 0 sats lost: deposits == committee coins unspent + paid to payees + every fee, each sweep's fee
  within the allowances of the deposits it swept, and the unspent committee coins hold every
  account's BTC margin plus what is left of the allowances;
* the committee's UTXO set in every replica's ``custody_coin`` table is the chain's (each unspent
  outpoint checked with ``gettxout``; the same rows in every replica), every replica at the
  same heights with the same BTC balances (as the test's model predicts) and request states, no
  anomalies, every ledger passes its audit.

The seed is printed (and logged); rerun one with ``COMMITTEE_PAYOUT_CRASH_SEED=<seed>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from sqlalchemy import text

from bridge.committee.replica import owner_of
from bridge.core.errors import ChainUnavailable
from bridge.core.testing import wait_until
from bridge.custody.scripts import deposit_script_pubkey, refund_pubkey_of_evm_key
from bridge.ledger.audit import audit
from bridge.runtime import Wait
from chains.bitcoin_wallet import BtcKey
from chains.btc.primitives import Tx
from devnets.controls import BitcoinDevnet
from support.committee import attesters, btc_cursor_height, custody_coin_rows, custody_ops, deliverer, fleet, ledger_totals, own_bridge, shared_store
from support.scenario import module_regtest

log = logging.getLogger("test.committee.payout_crash")
#: A node of this module's own: the runs mine hundreds of blocks (the long one over a thousand).
regtest = module_regtest("payout-crash")

ATTESTERS = ("attester-0", "attester-1", "attester-2", "attester-3")
REPLICAS = (*ATTESTERS, "service")
DAEMONS = (*ATTESTERS, "deliverer")
#: The payout states a kill is timed on ("any": a random moment).
MOMENTS = ("proposing", "collecting", "broadcast", "confirmed", "any")
MINE_EVERY = (0.4, 0.8)  # seconds between blocks, drawn uniformly
DOWN_FOR = (0.1, 1.5)  # seconds a killed daemon stays down (and a few more to start again)
REFUND_DELAY = 2_000  # blocks
SECOND_DOWN = 0.25  # how often an attester is killed while another one is down (two up: no quorum)


@dataclass
class Withdrawal:
    user: int
    amount: int
    payee: BtcKey
    at_kill: int  # issued before this kill
    nonce: int | None = None


@dataclass
class Deposit:
    user: int
    amount: int
    at_kill: int  # -1: before the first kill


def _seed() -> int:
    given = os.environ.get("COMMITTEE_PAYOUT_CRASH_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


def _hex(value) -> str:
    return value.hex() if isinstance(value, (bytes, bytearray)) else value.removeprefix("0x").lower()


async def test_payouts_land_exactly_once_through_sigkills(evm, btc, regtest, faucet, tmp_path):
    await _crash_run(evm, btc, regtest, faucet, tmp_path, users=4, payouts=10, kills=20)


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_payouts_land_exactly_once_through_sigkills_long(evm, btc, regtest, faucet, tmp_path):
    await _crash_run(evm, btc, regtest, faucet, tmp_path, users=8, payouts=80, kills=200)


async def _crash_run(evm, btc, regtest, faucet, tmp_path, *, users: int, payouts: int, kills: int) -> None:
    started = time.monotonic()
    seed = _seed()
    print(f"seed {seed} (COMMITTEE_PAYOUT_CRASH_SEED={seed} to rerun)")
    log.info("declare: seed %d, %d users, %d payouts, %d kills", seed, users, payouts, kills)
    rng = random.Random(seed)  # the plan: deposits, withdrawals, when each is made
    kills_rng = random.Random(seed + 1)  # when and whom to kill, how long it stays down
    mine_rng = random.Random(seed + 2)

    # --- the plan: initial deposits (credited before the first kill), withdrawals against them,
    # and a few more deposits made under fire (credited and swept while daemons die).
    deposits = [Deposit(u, rng.randint(5_000_000, 20_000_000), -1) for u in range(users) for _ in range(2)]
    deposits += [Deposit(rng.randrange(users), rng.randint(1_000_000, 5_000_000), rng.randrange(kills)) for _ in range(max(2, payouts // 5))]
    terms_allowance = 1_000  # BtcTerms.sweep_allowance, checked against the bridge's terms below
    spendable = Counter()
    for d in deposits:
        if d.at_kill < 0:
            spendable[d.user] += d.amount - terms_allowance
    withdrawals = []
    for i in range(payouts):
        user = rng.choice([u for u in range(users) if spendable[u] >= 400_000])
        amount = rng.randint(100_000, min(3_000_000, spendable[user] - 200_000))
        spendable[user] -= amount
        withdrawals.append(Withdrawal(user, amount, BtcKey.generate(), int(i * kills * 0.9 / payouts)))
    twice = [u for u, n in Counter(w.user for w in withdrawals).items() if n > 1]
    assert twice, "the plan has a user withdrawing twice"

    depositor = BtcKey.generate()
    await faucet.pay(btc, depositor, sum(d.amount for d in deposits) + 1_000_000)
    btc_start = await btc.height()
    # Deposits' refund paths far off (the devnet default is 20 blocks, ~12 s at this test's pace):
    # an attester refuses to credit a deposit close to its refund, and kills can delay a credit.
    bridge = await own_bridge(evm, tmp_path / "bridge", n=4, m=3, btc_start=btc_start, btc_refund_delay=REFUND_DELAY)
    terms = bridge.config.bitcoin
    assert terms.sweep_allowance == terms_allowance
    accounts = [await bridge.user(tusd=0) for _ in range(users)]
    scripts = [deposit_script_pubkey(terms.policy, a, refund_pubkey_of_evm_key(k)) for a, k in accounts]
    custody_spk = terms.custody_script_pubkey
    done_kills: Counter[str] = Counter()
    moments: Counter[str] = Counter()
    waits: Counter[str] = Counter()  # seconds spent waiting for a victim up, for the moment

    with shared_store(tmp_path / "store") as store_url, fleet(bridge, tmp_path / "fleet", store_url, regtest) as f:
        service = f.engine("service")
        down: dict[str, float] = {}  # killed daemon -> when it comes back (monotonic)
        next_block = 0.0

        def start(name: str) -> None:
            f.start_deliverer() if name == "deliverer" else f.start_attester(int(name.rsplit("-", 1)[1]))

        async def tick() -> None:
            """One beat of the world: a block when one is due, killed daemons back when due."""
            nonlocal next_block
            now = time.monotonic()
            if now >= next_block:
                await BitcoinDevnet(btc).mine(1)
                next_block = now + mine_rng.uniform(*MINE_EVERY)
            for name, at in list(down.items()):
                if now >= at:
                    start(name)
                    del down[name]
            f.check_alive()

        async def until(predicate, timeout: float, what: str):
            """``wait_until`` that keeps the world beating (mining, restarts) while it waits."""

            async def step():
                await tick()
                value = predicate()
                return (await value) if hasattr(value, "__await__") else value

            return await wait_until(step, timeout=timeout, interval=0.05, what=what)

        start(DAEMONS[0])
        await f.wait_up()  # the shared store's tables made once
        for name in DAEMONS[1:]:
            start(name)
        await f.wait_up()

        log.info("act: %d users register their keys and deposit %d times; credited in every replica", users, sum(d.at_kill < 0 for d in deposits))
        for _address, key in accounts:
            await bridge.contract.register_btc_key(key)
        await until(lambda: all(len(f.replica(n).btc_keys()) == users for n in REPLICAS), 30, "every key in every replica")
        credited = Counter()

        async def deposit(batch: list[Deposit]) -> None:
            await btc.send_to([depositor], [(scripts[d.user], d.amount) for d in batch], feerate=2)
            for d in batch:
                credited[d.user] += d.amount - terms.sweep_allowance

        def margins() -> dict[tuple[str, str], tuple[int, int]]:
            withdrawn = Counter()
            for w in withdrawals:
                if w.nonce is not None:
                    withdrawn[w.user] += w.amount
            return {(owner_of(accounts[u][0]), "BTC"): (credited[u] - withdrawn[u], 0) for u in range(users)}

        await deposit([d for d in deposits if d.at_kill < 0])
        await until(lambda: all(f.replica(n).balances() == margins() for n in REPLICAS), 60, "the deposits credited in every replica")
        log.info("act: setup done in %.1fs", time.monotonic() - started)

        async def up_attesters() -> list[str]:
            return [n for n in ATTESTERS if n not in down and await f.up(n)]

        async def pick_victim() -> str:
            """A daemon at work (up, not starting); an attester while the three others are up, or now
            and then (``SECOND_DOWN``) while one other is down: a few seconds without a quorum."""
            second = kills_rng.random() < SECOND_DOWN

            async def candidates() -> list[str]:
                up = await up_attesters()
                out = up if len(up) == len(ATTESTERS) or (second and len(up) == len(ATTESTERS) - 1) else []
                if "deliverer" not in down and await f.up("deliverer"):
                    out.append("deliverer")
                return out

            found = await until(candidates, 60, "a daemon to kill")
            if "deliverer" in found and (len(found) == 1 or kills_rng.random() < 0.4):
                return "deliverer"
            return kills_rng.choice([n for n in found if n != "deliverer"])

        def payout_states() -> set[str]:
            return {s for op, s in custody_ops(service).items() if op.startswith("payout:")}

        log.info("act: %d withdrawals, %d more deposits, %d SIGKILLs", payouts, len(deposits) - sum(d.at_kill < 0 for d in deposits), kills)
        for k in range(kills):
            for w in withdrawals:
                if w.at_kill == k and w.nonce is None:
                    receipt = await bridge.contract.request_btc_withdrawal(accounts[w.user][1], w.amount, w.payee.p2wpkh_script)
                    w.nonce = next(e["requestNonce"] for e in bridge.contract.events_in(receipt) if e.name == "WithdrawalRequested")
                    log.info("act: request %d: user %d withdraws %d sats", w.nonce, w.user, w.amount)
            batch = [d for d in deposits if d.at_kill == k]
            if batch:
                await deposit(batch)
            waited = time.monotonic()
            victim = await pick_victim()  # first the victim, then the moment: the kill lands on it
            waits["victim"] += time.monotonic() - waited
            waited = time.monotonic()
            moment = kills_rng.choice(MOMENTS)
            if moment != "any" and not any(s in MOMENTS for s in payout_states()):
                moment = "idle"  # no payout under way: a random moment
            if moment in ("any", "idle"):
                pause_until = time.monotonic() + kills_rng.uniform(0.1, 1.0)
                await until(lambda t=pause_until: time.monotonic() >= t, 5, "a random moment")
            else:
                try:
                    await until(lambda m=moment: m in payout_states(), 2.5, f"a payout {moment}")
                except AssertionError:
                    moment = "missed " + moment  # no payout got there in time: a kill at a random moment
            moments[moment] += 1
            waits["moment"] += time.monotonic() - waited
            f.stop(victim, kill=True)
            done_kills[victim] += 1
            down[victim] = time.monotonic() + kills_rng.uniform(*DOWN_FOR)
            log.info("act: kill %d (%s): SIGKILL %s", k + 1, moment, victim)
        assert all(w.nonce is not None for w in withdrawals)
        log.info(
            "act: kills done at %.1fs; kills %s, moments %s; waited %s",
            time.monotonic() - started,
            dict(done_kills),
            dict(moments),
            {k: round(v, 1) for k, v in waits.items()},
        )

        nonces = [w.nonce for w in withdrawals]

        async def settled() -> bool:
            if down or any(not f.running(n) for n in DAEMONS):
                return False
            if any(f.replica(n).request(nonce=nonce).state != "released" for n in REPLICAS for nonce in nonces):
                return False
            if f.replica("service").balances() != margins():
                return False
            ops = custody_ops(service)
            if sum(op.startswith("payout:") for op in ops) != payouts or any(s not in ("done", "failed") for s in ops.values()):
                return False
            with service.connect() as conn:  # every deposit swept (or spent by a payout)
                if conn.execute(text("SELECT 1 FROM custody_coin WHERE kind = 'deposit' AND spent_by IS NULL")).first():
                    return False
            return not await btc.rpc.call("getrawmempool")

        try:
            await until(settled, 120 + kills, "every payout done, every deposit swept, the mempool empty")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_stuck(f, nonces)}") from None
        tip, head = await btc.height(), await evm.height()
        await f.wait(lambda: all(btc_cursor_height(f, n) == tip and f.height(n) == head for n in REPLICAS), 30, "every replica at both tips")
        log.info("act: settled at %.1fs (Bitcoin %d, EVM %d)", time.monotonic() - started, tip, head)

        log.info("assert: the chain's own account of the committee's coins, from block %d to %d", btc_start + 1, tip)
        deposit_spks = set(scripts)
        by_payee = {w.payee.p2wpkh_script: w for w in withdrawals}
        coins: dict[str, tuple[int, bytes]] = {}  # the committee's unspent outputs, by the chain
        deposited = paid = fees = sweep_fees = 0
        payee_outputs: Counter[bytes] = Counter()
        payout_of: dict[int, tuple[str, int]] = {}  # nonce -> (txid, vout) of its payout
        payee_value: dict[bytes, int] = {}  # amount - fee of the one confirmed payout
        deposit_outpoints: list[str] = []
        for event in await btc.events(btc_start + 1, tip, selector=None):
            tx = Tx.parse(bytes(event.data["tx"].raw))
            ins = [f"{i.prevout.txid_hex}:{i.prevout.n}" for i in tx.vin]
            ours = [o for o in ins if o in coins]
            spent = sum(coins[o][0] for o in ours)
            if ours:
                assert len(ours) == len(ins), f"{tx.txid} spends committee coins together with others"
            kinds = {coins[o][1] == custody_spk for o in ours}
            for o in ours:
                del coins[o]
            to_payees = [(n, out) for n, out in enumerate(tx.vout) if out.script_pubkey in by_payee]
            for n, out in enumerate(tx.vout):
                spk = out.script_pubkey
                outpoint = f"{tx.txid}:{n}"
                if spk in deposit_spks:
                    assert not ours, f"committee spend {tx.txid} pays a deposit address"
                    coins[outpoint] = (out.value, spk)
                    deposited += out.value
                    deposit_outpoints.append(outpoint)
                elif spk == custody_spk:
                    assert ours, f"{tx.txid} pays custody from outside the committee"
                    coins[outpoint] = (out.value, spk)
                elif spk in by_payee:
                    assert ours, f"{tx.txid} pays a payee from outside the committee"
                    payee_outputs[spk] += 1
                else:
                    assert not ours, f"committee spend {tx.txid} pays a stranger: output {n}"
            if not ours:
                continue
            fee = spent - tx.total_out
            assert 0 < fee <= terms.max_fee, (tx.txid, fee)
            fees += fee
            if to_payees:
                assert len(to_payees) == 1 and len(tx.vout) == 2, f"payout {tx.txid} pays one payee plus change"
                n, out = to_payees[0]
                w = by_payee[out.script_pubkey]
                change = sum(o.value for o in tx.vout if o.script_pubkey == custody_spk)
                assert spent - change == w.amount, f"payout {tx.txid} takes {spent - change} sats from custody for a request of {w.amount}"
                assert out.value == w.amount - fee
                paid += out.value
                payee_value[out.script_pubkey] = out.value
                payout_of[w.nonce] = (tx.txid, n)
            else:
                assert kinds == {False} and len(tx.vout) == 1, f"sweep {tx.txid}: deposits into one custody output"
                assert fee <= len(ours) * terms.sweep_allowance, f"sweep {tx.txid}: fee {fee} above the allowances of its {len(ours)} deposits"
                sweep_fees += fee
        assert deposited == sum(d.amount for d in deposits), "every deposit made is on chain"
        assert payee_outputs == Counter({w.payee.p2wpkh_script: 1 for w in withdrawals}), "each payee paid by exactly one output"
        assert set(payout_of) == set(nonces)
        for w in withdrawals:  # the payee's coin is the payout's output, unspent
            assert await btc.balance([w.payee.p2wpkh_script]) == payee_value[w.payee.p2wpkh_script], w
        unspent = sum(a for a, _ in coins.values())
        assert deposited == unspent + paid + fees, "0 sats lost: deposits == unspent committee coins + payouts + fees"
        owed = sum(m for m, _ in margins().values())
        surplus = len(deposits) * terms.sweep_allowance - sweep_fees
        assert unspent == owed + surplus and surplus >= 0, (unspent, owed, surplus)

        log.info("assert: every replica's custody_coin table is the chain's committee UTXO set (gettxout), the same rows everywhere")
        rows = {n: custody_coin_rows(f.engine(n)) for n in REPLICAS}
        for name in REPLICAS:
            assert rows[name] == rows["service"], name
            mine = {o: a for o, a, _ws, _k, _acct, _h, spent_by, _sh in rows[name] if spent_by is None}
            assert mine == {o: a for o, (a, _) in coins.items()}, name
        for outpoint, (amount, spk) in coins.items():
            txid, vout = outpoint.split(":")
            out = await btc.txout(txid, int(vout), include_mempool=False)
            assert out is not None and out.value == amount and out.script_pubkey == spk, outpoint
        for outpoint, *_rest, spent_by, _sh in rows["service"]:
            if spent_by is not None:
                txid, vout = outpoint.split(":")
                assert await btc.txout(txid, int(vout), include_mempool=False) is None, outpoint
        assert sorted(o for o, *_ in rows["service"] if o in deposit_outpoints) == sorted(deposit_outpoints)

        log.info("assert: each request closed exactly once on chain by its payout; each deposit credited once")
        events = await bridge.contract.events(bridge.config.deploy_block)
        paid_out = [e for e in events if e.name == "PaidOut"]
        assert Counter(e["requestNonce"] for e in paid_out) == Counter(nonces), "one PaidOut per request"
        for e in paid_out:
            w = next(w for w in withdrawals if w.nonce == e["requestNonce"])
            assert (_hex(e["payoutTx"]), e["payoutIndex"]) == payout_of[w.nonce], e
            assert e["amount"] == w.amount and e["account"].lower() == accounts[w.user][0].lower()
        for nonce in nonces:
            assert await bridge.contract.released(nonce) and not await bridge.contract.request_open(nonce), nonce
        credits = Counter(f"{_hex(e['sourceTx'])}:{e['sourceIndex']}" for e in events if e.name == "Credited")
        assert credits == Counter(deposit_outpoints), "each deposit output credited once"

        log.info("assert: every replica at the same heights with the same BTC books as the model")
        want = margins()
        requests = {n: _rows(f.replica(n)) for n in REPLICAS}
        for name in REPLICAS:
            assert f.replica(name).balances() == want, name
            assert requests[name] == requests["service"], name
            assert [(r[0], r[1]) for r in requests[name]] == [(n, "released") for n in sorted(nonces)], name
            assert f.replica(name).anomalies() == [], name
            assert ledger_totals(f.engine(name))[("bridge", "custody", "BTC")] == (-owed, 0, 0), name
            report = audit(f.engine(name))
            assert report.ok, (name, report.problems)
        ops = custody_ops(service)
        assert all(s == "done" for s in ops.values()), {o: s for o, s in ops.items() if s != "done"}

        refusals = _refusals(f)
        f.check_alive()
        restarts = {n: f.starts[n] - 1 for n in f.starts}
    log.info(
        "done: seed %d, %d payouts, kills %s at %s, restarts %s, PSBT refusals %s, %.1fs",
        seed,
        payouts,
        dict(done_kills),
        dict(moments),
        restarts,
        refusals,
        time.monotonic() - started,
    )
    assert sum(done_kills.values()) == kills


def _stuck(f, nonces: list[int]) -> str:
    """What a run that did not settle left open: the deliverer's custody operations, the requests,
    the attesters' refusals (seed and logs aside, what to look at first)."""
    lines = []
    with f.engine("service").connect() as conn:
        for row in conn.execute(text("SELECT id, state, last_error, proposal_id, inputs FROM custody_payout WHERE state NOT IN ('done') ORDER BY id")):
            lines.append(f"open {row[0]}: {row[1]} ({row[2]}) proposal {row[3]} inputs {row[4]}")
    for name in REPLICAS:
        states = Counter(f.replica(name).request(nonce=n).state for n in nonces if f.replica(name).requests(limit=100_000))
        lines.append(f"{name}: requests {dict(states)}")
    for name in ATTESTERS:
        with f.engine(name).connect() as conn:
            for row in conn.execute(text("SELECT proposal_id, grp, inputs, reason FROM attester_psbt WHERE NOT signed")):
                lines.append(f"{name} refused {row[1]} {row[0][:16]} ({row[3][:120]}) inputs {row[2]}")
    return "\n".join(lines)


def _rows(replica) -> list[tuple]:
    return [(r.nonce, r.state, r.reason, r.message_id, r.amount, r.destination) for r in replica.requests(limit=100_000)]


def _refusals(f) -> dict[str, int]:
    """Why attesters refused custody proposals (a refusal is final for that proposal), for the log."""
    return _refusals_in([f.engine(name) for name in ATTESTERS])


def _refusals_in(engines) -> dict[str, int]:
    out: Counter[str] = Counter()
    for engine in engines:
        with engine.connect() as conn:
            for (reason,) in conn.execute(text("SELECT reason FROM attester_psbt WHERE NOT signed")):
                out[reason[:60]] += 1
    return dict(out)


@pytest.mark.slow  # ~15 s each; `make test-slow` (keeps `make test` under 15 min)
async def test_a_proposal_orphaned_by_a_crash_does_not_wedge_its_payout(evm, btc, regtest, faucet, tmp_path):
    """The deliverer dies between keeping a payout's PSBT in the proposal store and recording it on
    its operation (``Payouts._propose``: ``proposals.propose`` then ``_move``): the operation is
    still ``proposing``, its inputs unreserved.  Meanwhile the attesters signed that proposal, and
    custody gained a larger coin.  Back up, the deliverer proposes again from other coins; every
    attester that signed the first refuses the second ("not a replacement": it does not spend the
    first one's inputs), and the payout waits in ``collecting`` for signatures that never come.

    The crash is simulated in this process at exactly that point (the step ends with a ``Wait``
    after the proposal was stored, as a restart would find it); the larger coin is a payment
    straight to the custody address, so no sweep reserves it first."""
    bridge = await own_bridge(evm, tmp_path / "bridge", btc_start=await btc.height())
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=1)
    terms = bridge.config.bitcoin
    user, key = await bridge.user(tusd=0)
    depositor = BtcKey.generate()
    await faucet.pay(btc, depositor, 2 * 10**8)
    payee = BtcKey.generate()
    mine = BitcoinDevnet(btc)

    async def mined(predicate, what: str, timeout: float = 60.0):
        async def step():
            if predicate():
                return True
            await mine.mine(1)
            return False

        return await wait_until(step, timeout=timeout, interval=0.3, what=what)

    async with attesters(bridge, settings, [0, 1, 2]) as running, deliverer(bridge, settings) as delivery:
        payouts = delivery.payouts
        crashed: list[str] = []
        move = payouts._move

        def crash_once(op_id: str, expect: str, to: str, note: str, **fields) -> None:
            if (expect, to) == ("proposing", "collecting") and op_id.startswith("payout:") and not crashed:
                crashed.append(fields["proposal_id"])
                raise Wait("simulated SIGKILL after the proposal was stored, before the operation recorded it", delay=8)
            move(op_id, expect, to, note, **fields)

        payouts._move = crash_once
        await bridge.contract.register_btc_key(key)
        await wait_until(lambda: all(d.attester.replica.btc_keys(user) for d in running), timeout=20, what="the key")
        script = deposit_script_pubkey(terms.policy, user, refund_pubkey_of_evm_key(key))
        await btc.send_to([depositor], [(script, 30_000_000)], feerate=2)
        await mined(lambda: not payouts.watcher.coins(kind="deposit") and payouts.watcher.coins(kind="custody"), "the deposit credited and swept")
        await mined(lambda: delivery.deliverer.replica.balances().get((owner_of(user), "BTC"), (0, 0))[0] > 0, "the credit folded")

        receipt = await bridge.contract.request_btc_withdrawal(key, 10_000_000, payee.p2wpkh_script)
        nonce = next(e["requestNonce"] for e in bridge.contract.events_in(receipt) if e.name == "WithdrawalRequested")
        await wait_until(lambda: crashed and len(payouts.proposals.signed(crashed[0])) == 3, timeout=30, what="the orphaned proposal signed")
        await btc.send_to([depositor], [(terms.custody_script_pubkey, 100_000_000)], feerate=2)
        await mined(lambda: any(c.amount == 100_000_000 for c in payouts.watcher.coins(kind="custody")), "the larger custody coin folded")

        try:
            await mined(lambda: delivery.deliverer.replica.request(nonce=nonce).state == "released", "the payout paid and closed", timeout=12)
        finally:
            refusals = _refusals_in([d.attester.replica.engine for d in running])
            log.info("orphaned %s; attesters' refusals: %s; payout %s", crashed, refusals, payouts.view(f"payout:{nonce}")["state"])


async def test_a_deposit_refused_as_too_close_to_its_refund_stays_the_depositors(evm, btc, regtest, faucet, tmp_path):
    """Attesters refuse to credit a deposit whose refund path is about to open
    (``BtcDepositWatcher.creditable``: "too close to credit"), so the depositor is to take it back
    through that path.  But the deliverer's sweep (``Payouts.plan_sweep`` / ``_propose``) and
    payouts spend every deposit coin of the fold whatever its state, and the attesters sign them
    (``Attester._expected`` takes every coin of ``btc.coins()``): the coin goes into custody, never
    credited, and the refund path is gone with it.  Found by the crash test above with the
    devnet's 20-block refund delay, where kills delayed a credit past the margin.

    Here: the deposit is paid and buried 12 blocks deep while no daemon runs; the attesters and the
    deliverer start, refuse the credit, and the next sweeps must leave the coin alone."""
    bridge = await own_bridge(evm, tmp_path / "bridge", btc_start=await btc.height(), btc_refund_delay=20)
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=1)
    terms = bridge.config.bitcoin
    user, key = await bridge.user(tusd=0)
    depositor = BtcKey.generate()
    await faucet.pay(btc, depositor, 10**8)
    await bridge.contract.register_btc_key(key)
    script = deposit_script_pubkey(terms.policy, user, refund_pubkey_of_evm_key(key))
    paid = await btc.send_to([depositor], [(script, 30_000_000)], feerate=2)
    vout = next(n for n, o in enumerate(Tx.parse(bytes.fromhex(paid.raw_hex)).vout) if o.script_pubkey == script)
    await BitcoinDevnet(btc).mine(12)

    async with attesters(bridge, settings, [0, 1, 2]) as running, deliverer(bridge, settings) as delivery:

        def refused() -> bool:
            views = [d.attester.btc for d in running]
            return all(v.deposits(state="refused") for v in views)

        await wait_until(refused, timeout=30, what="the credit refused by every attester")
        reasons = {d.reason for r in running for d in r.attester.btc.deposits(state="refused")}
        log.info("refused: %s", reasons)
        for _ in range(20):  # ~10 s of blocks: sweeps are planned every second
            await BitcoinDevnet(btc).mine(1)
            await asyncio.sleep(0.5)  # the pace of blocks, not a wait for something
            spent = await btc.mempool_spender((paid.txid, vout)) is not None or await btc.txout(paid.txid, vout) is None
            assert not spent, f"the refused deposit {paid.txid}:{vout} was spent by the committee (custody operations {delivery.payouts.counts()})"
        assert delivery.deliverer.replica.balances().get((owner_of(user), "BTC"), (0, 0)) == (0, 0)


@pytest.mark.slow  # ~15 s each; `make test-slow` (keeps `make test` under 15 min)
async def test_an_attester_behind_on_bitcoin_does_not_wedge_a_payout(evm, btc, regtest, faucet, tmp_path):
    """An attester judges each custody proposal once (``Attester.sign_proposals``: ``attester_psbt``)
    and a refusal is final, also when its cause is passing: its Bitcoin fold is behind the
    proposer's ("unknown input": a coin confirmed in a block it has not folded yet), or its EVM
    fold is ("not owed": no such request yet).  By design its signing goes on while its Bitcoin
    node is away (``ReplicaFollower.run``).  With no other attester to make up the quorum, the
    payout waits in ``collecting`` for good: nothing proposes it again.  The crash test above saw
    an attester, just restarted, refuse a live proposal so ("unknown input"); the three others
    signed it.

    Here, a 3-of-4 committee with three attesters: attester 2's Bitcoin node is away while custody
    gains a coin and a withdrawal is proposed from it; then its node is back."""
    bridge = await own_bridge(evm, tmp_path / "bridge", btc_start=await btc.height())
    settings = bridge.settings(tmp_path / "service", regtest=regtest, btc_confirmations=1)
    terms = bridge.config.bitcoin
    user, key = await bridge.user(tusd=0)
    depositor = BtcKey.generate()
    await faucet.pay(btc, depositor, 2 * 10**8)
    payee = BtcKey.generate()
    mine = BitcoinDevnet(btc)

    async def mined(predicate, what: str, timeout: float = 60.0):
        async def step():
            if predicate():
                return True
            await mine.mine(1)
            return False

        return await wait_until(step, timeout=timeout, interval=0.3, what=what)

    async with attesters(bridge, settings, [0, 1, 2]) as running, deliverer(bridge, settings) as delivery:
        payouts = delivery.payouts
        await bridge.contract.register_btc_key(key)
        await wait_until(lambda: all(d.attester.replica.btc_keys(user) for d in running), timeout=20, what="the key")
        script = deposit_script_pubkey(terms.policy, user, refund_pubkey_of_evm_key(key))
        await btc.send_to([depositor], [(script, 30_000_000)], feerate=2)
        await mined(lambda: not payouts.watcher.coins(kind="deposit") and payouts.watcher.coins(kind="custody"), "the deposit credited and swept")
        await mined(lambda: delivery.deliverer.replica.balances().get((owner_of(user), "BTC"), (0, 0))[0] > 0, "the credit folded")

        log.info("act: attester 2's Bitcoin node goes away; custody gains a coin; a withdrawal is proposed from it")
        lagging = running[2].follower.indexers[-1]
        step = lagging.step

        async def away():
            raise ChainUnavailable("simulated: this attester's Bitcoin node is away")

        lagging.step = away
        await btc.send_to([depositor], [(terms.custody_script_pubkey, 100_000_000)], feerate=2)
        await mined(lambda: any(c.amount == 100_000_000 for c in payouts.watcher.coins(kind="custody")), "the new custody coin folded")
        receipt = await bridge.contract.request_btc_withdrawal(key, 10_000_000, payee.p2wpkh_script)
        nonce = next(e["requestNonce"] for e in bridge.contract.events_in(receipt) if e.name == "WithdrawalRequested")
        engine = running[2].attester.replica.engine
        await wait_until(lambda: _refusals_in([engine]), timeout=20, what="attester 2 judging the payout")
        log.info("attester 2: %s; its Bitcoin node is back", _refusals_in([engine]))
        lagging.step = step
        try:
            await mined(lambda: delivery.deliverer.replica.request(nonce=nonce).state == "released", "the payout paid and closed", timeout=12)
        finally:
            log.info("payout %s", payouts.view(f"payout:{nonce}")["state"])
