"""Bitcoin facts on the bridge contract: DEPOSIT_CREDIT messages and the accounts' refund keys.

A Bitcoin output is credited once, whatever messages name it (another expiry, another amount);
only a quorum credits; only BTC, only from the Bitcoin source chain; nothing while paused.  An
account registers only its own key.  The replicas fold ``Credited`` into BTC margin.
"""

from __future__ import annotations

from eth_account import Account
from eth_utils import keccak, to_canonical_address

from bridge.committee.contract import evm_public_key
from bridge.committee.messages import BTC_ASSET, Kind
from bridge.committee.replica import owner_of
from bridge.core.db import make_engine
from bridge.ledger.assets import btc
from test_committee_contract import ETH, env, refused  # noqa: F401 - the fixture

SATS = 100_000


async def credit(env, m, **kw):
    indices, sigs = kw.pop("quorum", None) or env.sign(m)
    return await env.bridge.credit_deposit(env.key("relayer"), m, env.committee, indices, sigs)


async def credit_message(env, vout: int = 0, amount: int = SATS, txid: bytes | None = None, **kw):
    kw.setdefault("source_chain_id", 0)
    source = txid or keccak(b"btc deposit")
    return await env.message(kind=Kind.DEPOSIT_CREDIT, asset=BTC_ASSET, amount=amount, source_tx=source, source_index=vout, nonce=0, **kw)


async def test_an_output_is_credited_once_whatever_message_names_it(env):
    m = await credit_message(env)
    receipt = await credit(env, m)
    (event,) = env.bridge.events_in(receipt)
    assert (event.name, event["amount"], event["sourceTx"], event["sourceIndex"]) == ("Credited", SATS, m.source_tx, 0)
    assert await env.bridge.credited_output(m.source_tx, 0)
    await refused("AlreadyConsumed", credit(env, m))
    # Same output, another expiry or amount: still that output, still refused.
    await refused("AlreadyConsumed", credit(env, await credit_message(env, ttl=900)))
    await refused("AlreadyConsumed", credit(env, await credit_message(env, amount=2 * SATS)))
    # Another output of the same transaction is its own deposit.
    assert env.bridge.events_in(await credit(env, await credit_message(env, vout=1)))[0]["sourceIndex"] == 1


async def test_credit_needs_a_quorum_btc_and_the_bitcoin_source(env):
    m = await credit_message(env, txid=keccak(b"other"))
    await refused("NotEnoughSignatures", credit(env, m, quorum=env.sign(m, count=2)))
    await refused("WrongAsset", credit(env, await env.message(kind=Kind.DEPOSIT_CREDIT, asset=ETH, source_chain_id=0)))
    await refused("WrongChain", credit(env, await credit_message(env, source_chain_id=1)))
    await refused("WrongKind", credit(env, await env.message(kind=Kind.RELEASE, asset=BTC_ASSET)))
    assert not await env.bridge.credited_output(m.source_tx, 0)


async def test_no_credit_while_paused(env):
    await env.bridge.pause(env.key("guardian"))
    await refused("IsPaused", credit(env, await credit_message(env, txid=keccak(b"paused"))))


async def test_an_account_registers_only_its_own_key(env):
    user = env.parties["user"]
    receipt = await env.bridge.register_btc_key(env.key("user"))
    (event,) = env.bridge.events_in(receipt)
    assert event.name == "BtcKeyRegistered" and event["pubkey"] == evm_public_key(env.key("user"))
    stranger_key = evm_public_key(Account.create().key.to_0x_hex())
    await refused("NotYourKey", env.bridge._transact(user.key.to_0x_hex(), "registerBtcKey", stranger_key))
    await refused("NotYourKey", env.bridge._transact(user.key.to_0x_hex(), "registerBtcKey", evm_public_key(env.key("user"))[:63]))


async def test_replica_folds_credits_and_keys(env, tmp_path):
    from bridge.committee.messages import Domain
    from bridge.committee.replica import Replica, ReplicaConfig
    from bridge.ledger.assets import eth

    m = await credit_message(env, txid=keccak(b"folded"))
    r1 = await credit(env, m)
    r2 = await env.bridge.register_btc_key(env.key("user"))
    config = ReplicaConfig(Domain(env.chain_id, to_canonical_address(env.bridge.address)), {BTC_ASSET: btc(), bytes(20): eth()}, env.committee, 3600)
    replica = Replica(make_engine(f"sqlite:///{tmp_path / 'replica.sqlite'}"), config)
    for receipt in (r1, r2):
        block = await env.evm.block_by_height(receipt.block_number)
        with replica.engine.begin() as conn:
            replica.fold(conn, env.bridge.events_in(receipt), block)
    user = owner_of(env.parties["user"].address)
    assert replica.balances() == {(user, "BTC"): (SATS, 0)}
    ((account, pubkey),) = replica.btc_keys()
    assert account == user and pubkey[1:] == evm_public_key(env.key("user"))[:32]


async def test_a_payout_done_closes_its_btc_request_once_and_only_with_its_destination(env):
    script = bytes.fromhex("0014" + "33" * 20)
    await env.credit_btc("user", SATS)  # BTC margin first: a request is taken from it at once
    (event, _dest) = env.bridge.events_in(await env.bridge.request_btc_withdrawal(env.key("user"), SATS, script))
    n = event["requestNonce"]

    async def done(payload: bytes, amount: int = SATS, **kw):
        m = await env.message(
            kind=Kind.PAYOUT_DONE, asset=BTC_ASSET, amount=amount, nonce=n, source_chain_id=0, source_tx=keccak(b"payout"), payload_hash=payload, **kw
        )
        indices, sigs = kw.pop("quorum", None) or env.sign(m)
        return await env.bridge.payout_done(env.key("relayer"), m, env.committee, indices, sigs)

    def cancel():
        return env.bridge.cancel_withdrawal(env.key("relayer"), n, env.parties["user"].address, BTC_ASSET, SATS)

    # A BTC request is never cancelled (its payout may be in flight): it commits to its destination.
    assert await env.bridge.balance_of(env.parties["user"].address, BTC_ASSET) == 0
    await refused("RequestMismatch", cancel())
    await refused("RequestMismatch", done(keccak(bytes.fromhex("0014" + "44" * 20))))  # another destination
    await refused("RequestMismatch", done(keccak(script), amount=SATS + 1))
    receipt = await done(keccak(script))
    (paid,) = env.bridge.events_in(receipt)
    assert (paid.name, paid["requestNonce"], paid["amount"], paid["payoutTx"]) == ("PaidOut", n, SATS, keccak(b"payout"))
    assert not await env.bridge.request_open(n)
    await refused("AlreadyConsumed", done(keccak(script), ttl=900))  # another message for it: closed
    # Paid on Bitcoin: the margin stays taken, and a closed request cannot be cancelled.
    assert await env.bridge.balance_of(env.parties["user"].address, BTC_ASSET) == 0
    await refused("AlreadyConsumed", cancel())
    await refused("NoSuchRequest", env.bridge.payout_done(env.key("relayer"), *(await _payout_for(env, 999, script))))


async def _payout_for(env, nonce: int, script: bytes):
    fields = dict(asset=BTC_ASSET, amount=SATS, nonce=nonce, source_chain_id=0, source_tx=keccak(b"x"), payload_hash=keccak(script))
    m = await env.message(kind=Kind.PAYOUT_DONE, **fields)
    indices, sigs = env.sign(m)
    return m, env.committee, indices, sigs
