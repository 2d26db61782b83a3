"""Every honest attester refuses a custody PSBT its replica does not owe: an extra output, a higher
fee, change elsewhere, an unknown input, a second payout of a request.  A hostile proposer puts
them straight into the proposal store (what any relayer may do); no attester signs, and the
reason each one recorded names the rule.
"""

from __future__ import annotations

import logging

from sqlalchemy import text

from bridge.committee.proposals import ProposalStore
from bridge.committee.replica import owner_of
from bridge.core.db import make_engine
from bridge.core.errors import NotFound
from bridge.core.testing import wait_until
from bridge.custody.spend import CustodyCoin, build_spend, build_withdrawal_payout
from bridge.custody.scripts import custody_script, deposit_script_pubkey, refund_pubkey_of_evm_key
from chains.bitcoin_wallet import BtcKey
from chains.btc.primitives import TxOut
from chains.btc.script import p2wsh_script
from devnets.controls import BitcoinDevnet
from support.committee import attesters, deliverer, own_bridge
from support.scenario import FAUCET, fund_btc

log = logging.getLogger("test.committee.psbt")
WITHDRAW = 5_000_000


def _judgements(daemon) -> dict[str, tuple[bool, str]]:
    with daemon.attester.replica.engine.connect() as conn:
        return {p: (bool(s), r) for p, s, r in conn.execute(text("SELECT proposal_id, signed, reason FROM attester_psbt"))}


async def test_hostile_psbts_are_refused_by_every_honest_attester(evm, btc, regtest, tmp_path):
    bridge = await own_bridge(evm, tmp_path / "bridge", btc_start=await btc.height())
    settings = bridge.settings(tmp_path / "service", regtest=regtest)
    user, key = await bridge.user(tusd=0)
    await fund_btc(btc, FAUCET, 2 * 10**8)
    payee, thief = BtcKey.generate(), BtcKey.generate()
    policy = bridge.config.bitcoin.policy
    async with attesters(bridge, settings, [0, 1, 2, 3]) as running:
        async with deliverer(bridge, settings) as delivery:
            service = delivery.deliverer.replica
            await bridge.contract.register_btc_key(key)
            await wait_until(lambda: all(d.attester.replica.btc_keys(user) for d in running), timeout=20, what="the key everywhere")
            await btc.send_to([FAUCET], [(deposit_script_pubkey(policy, user, refund_pubkey_of_evm_key(key)), 20_000_000)], 2)

            async def credited_and_swept() -> bool:
                if service.balances().get((owner_of(user), "BTC"), (0, 0))[0] and not running[0].attester.btc.coins(kind="deposit"):
                    return bool(running[0].attester.btc.coins(kind="custody"))
                await BitcoinDevnet(btc).mine(1)
                return False

            await wait_until(credited_and_swept, timeout=60, interval=0.3, what="the deposit credited and swept")
        log.info("the deliverer is stopped: only the hostile proposer proposes from here")
        coins = running[0].attester.btc.coins()
        store = ProposalStore(make_engine(settings.store_url))
        receipt = await bridge.contract.request_btc_withdrawal(key, WITHDRAW, payee.p2wpkh_script)
        nonce = bridge.contract.events_in(receipt)[0]["requestNonce"]
        await wait_until(lambda: all(_held(d, nonce) for d in running), timeout=20, what="the hold in every replica")

        group = f"payout:{nonce}"
        custody = p2wsh_script(custody_script(policy))
        honest = build_withdrawal_payout(coins, payee.p2wpkh_script, WITHDRAW, policy, 2)
        total = sum(c.amount for c in coins)
        hostile = {
            "extra output": _with_outputs(honest, [*honest.tx.vout[:1], TxOut(10_000, thief.p2wpkh_script), TxOut(honest.tx.vout[1].value - 10_000, custody)]),
            "fee": build_spend(coins, [(payee.p2wpkh_script, WITHDRAW - 60_000)], custody, 2, change_witness_script=custody_script(policy)),
            "change elsewhere": _with_outputs(honest, [honest.tx.vout[0], TxOut(honest.tx.vout[1].value, thief.p2wpkh_script)]),
            "unknown input": build_withdrawal_payout(
                [*coins, CustodyCoin("ab" * 32, 0, 1_000_000, custody_script(policy))], payee.p2wpkh_script, WITHDRAW, policy, 2
            ),
            "owed amount": build_withdrawal_payout(coins, payee.p2wpkh_script, WITHDRAW * 2, policy, 2),
            "higher fee": build_withdrawal_payout(coins, payee.p2wpkh_script, WITHDRAW, policy, 400, max_fee=10**6),  # cap: 250 sat/vB
        }
        assert total > WITHDRAW * 2
        ids = {name: store.propose(group, psbt) for name, psbt in hostile.items()}
        await BitcoinDevnet(btc).mine(1)  # a block: every attester looks again
        await wait_until(lambda: all(set(ids.values()) <= set(_judgements(d)) for d in running), timeout=30, what="every attester judged every hostile PSBT")
        for d in running:
            verdicts = _judgements(d)
            for name, pid in ids.items():
                signed, reason = verdicts[pid]
                assert not signed, (name, reason)
                log.info("attester %s refused %s: %s", d.attester.address.hex()[:8], name, reason)
        for pid in ids.values():
            assert store.signed(pid) == {}
        reasons = {name: _judgements(running[0])[pid][1] for name, pid in ids.items()}
        assert reasons == {
            "extra output": "extra output",
            "fee": "owed amount mismatch",  # the fee taken from custody, not from the payee's output
            "change elsewhere": "change not to custody",
            "unknown input": "unknown input",
            "owed amount": "owed amount mismatch",
            "higher fee": "feerate above cap",
        }, reasons


def _held(daemon, nonce: int) -> bool:
    try:
        return daemon.attester.replica.request(nonce=nonce).state == "held"
    except NotFound:
        return False


def _with_outputs(psbt, outputs):
    from chains.btc import psbt as P
    from chains.btc.primitives import Tx

    tx = psbt.tx
    out = P.Psbt.from_tx(Tx(tx.version, tx.vin, outputs, tx.locktime))
    for mine, theirs in zip(out.inputs, psbt.inputs):
        mine.update(theirs)
    return out
