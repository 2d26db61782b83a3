"""A committee rotation with withdrawals in flight, end to end on the devnet (``bridge/committee``).

Each test deploys a 3-of-4 bridge of its own with a 10-minute grace window, runs attester and
deliverer daemons in this process (``tests/support/committee.py``), and rotates to an epoch-1
committee that keeps two members and seats two new keys.  What a user checks: every request paid
once on chain, the books of every replica, and the committees each replica holds valid.
"""

from __future__ import annotations

import logging
from collections import Counter

from sqlalchemy import text

from bridge.committee.attester import RotationPlan
from bridge.committee.config import ETH_ADDRESS
from bridge.committee.crypto import address_of
from bridge.committee.messages import Committee, digest
from bridge.committee.replica import Replica, owner_of
from bridge.committee.store import AttestationStore
from bridge.core.db import make_engine
from bridge.core.errors import ContractReverted, NotFound
from bridge.core.testing import wait_until
from devnets.controls import AnvilControls
from devnets.presets import ONE_ETH
from support.committee import attesters, committee_keys, deliverer, own_bridge

log = logging.getLogger("test.committee.rotation")

GRACE = 600


class Scene:
    """One bridge, its old (epoch 0) and new (epoch 1) committees, the shared attestation store."""

    def __init__(self, bridge, settings, tmp_path) -> None:
        self.bridge, self.settings, self.dir = bridge, settings, tmp_path
        self.store = AttestationStore(make_engine(settings.store_url))
        self.domain = bridge.config.domain
        self.old = bridge.committee
        # Keys 0 and 1 stay, keys 2 and 3 leave, two new keys (attester indices 4 and 5) join.
        new_keys = committee_keys(2, f"{tmp_path.name}-epoch-1")
        bridge.keys.extend(new_keys)
        self.new = Committee(1, tuple(sorted(address_of(k) for k in [*bridge.keys[:2], *new_keys])), 3)
        self.plan: RotationPlan | None = None
        self.gas = 0
        self.nonces: dict[bytes, int] = {}  # RELEASE id -> request nonce

    @classmethod
    async def make(cls, evm, btc, regtest, tmp_path) -> "Scene":
        # The bridge has BTC custody too: its attesters follow the session's regtest node from its tip.
        bridge = await own_bridge(evm, tmp_path / "bridge", n=4, m=3, grace=GRACE, release_ttl=3600, btc_start=await btc.height())
        scene = cls(bridge, bridge.settings(tmp_path / "service", regtest=regtest), tmp_path)
        scene.plan = RotationPlan(scene.new, (await evm.head()).timestamp + 3600)
        return scene

    @property
    def rotation_id(self) -> bytes:
        return digest(self.domain, self.plan.message(self.domain.chain_id))

    def address(self, index: int) -> bytes:
        return address_of(self.bridge.keys[index])

    def signers(self, mid: bytes) -> set[bytes]:
        try:
            return set(self.store.get(mid).signatures)
        except NotFound:
            return set()

    def has_quorum(self, mid: bytes, committee: Committee, now: int) -> bool:
        try:
            return self.store.quorum(mid, committee, self.domain, now).quorum is not None
        except NotFound:
            return False

    def replica(self, name: str) -> Replica:
        return self.bridge.replica(f"sqlite:///{self.dir / 'service' / name}")

    async def request(self, key: str, amount: int, replica: Replica) -> bytes:
        """Request a withdrawal; the RELEASE id once ``replica`` holds it."""
        receipt = await self.bridge.contract.request_withdrawal(key, ETH_ADDRESS, amount)
        self.gas += receipt.gas_used * receipt.effective_gas_price
        (event,) = self.bridge.contract.events_in(receipt)
        nonce = event["requestNonce"]

        def held():
            try:
                request = replica.request(nonce=nonce)
            except NotFound:
                return None
            assert request.state == "held", f"request {nonce} is {request.state}: {request.reason}"
            return request.message_id

        mid = await wait_until(held, timeout=20, what=f"request {nonce} held by the replica")
        self.nonces[mid] = nonce
        return mid

    async def released(self, mid: bytes) -> bool:
        return await self.bridge.contract.released(self.nonces[mid])


async def test_rotation_while_messages_are_in_flight_loses_none(evm, btc, regtest, tmp_path):
    log.info("declare: a 3-of-4 bridge, grace 600 s; a user with 10 ETH of margin")
    scene = await Scene.make(evm, btc, regtest, tmp_path)
    bridge, settings, contract = scene.bridge, scene.settings, scene.bridge.contract
    user, key = await bridge.user()
    await contract.deposit_eth(key, 10 * ONE_ETH)
    start = await evm.balance(user)
    amounts: dict[bytes, int] = {}

    log.info("act: attesters 0, 1, 2 of epoch 0 sign two requests; no deliverer runs")
    async with attesters(bridge, settings, [0, 1, 2]) as running:
        replica = running[0].attester.replica
        for amount in (ONE_ETH, 2 * ONE_ETH):
            mid = await scene.request(key, amount, replica)
            amounts[mid] = amount
        early = list(amounts)
        now = (await evm.head()).timestamp
        await wait_until(lambda: all(scene.has_quorum(m, scene.old, now) for m in early), timeout=20, what="epoch-0 quorums of both requests")

    log.info("act: the same three sign the ROTATION to epoch 1 (keys 0, 1 stay; 2, 3 leave; two new keys join)")
    async with attesters(bridge, settings, [0, 1, 2], rotation=scene.plan):
        await wait_until(lambda: scene.has_quorum(scene.rotation_id, scene.old, now), timeout=20, what="the rotation's epoch-0 quorum")
    assert scene.store.payload(scene.new.hash) == scene.new.packed

    log.info("act: a third request, signed only by keys 0 and 1 (attester 2 is down): no quorum of either epoch")
    async with attesters(bridge, settings, [0, 1], rotation=scene.plan) as keepers:
        late = await scene.request(key, 3 * ONE_ETH, keepers[0].attester.replica)
        amounts[late] = 3 * ONE_ETH
        await wait_until(lambda: scene.signers(late) == {scene.address(0), scene.address(1)}, timeout=20, what="keys 0 and 1 sign the third request")
        assert not scene.has_quorum(late, scene.old, now) and not scene.has_quorum(late, scene.new, now)

        log.info("act: a deliverer starts: the rotation and the two signed requests land")
        async with deliverer(bridge, settings) as delivery:
            service = delivery.deliverer.replica
            await wait_until(contract.epoch, timeout=30, what="the rotation delivered")
            assert await contract.committee_hash() == scene.new.hash
            replicas = [k.attester.replica for k in keepers] + [service]
            await wait_until(lambda: all(r.current_committee() == scene.new for r in replicas), timeout=20, what="every replica at epoch 1")
            for mid in early:
                await wait_until(lambda mid=mid: scene.released(mid), timeout=30, what="an early request released")
            view = delivery.deliverer.view(late.hex())
            assert view.state == "waiting_quorum" and not await scene.released(late)

            log.info("act: attester 2 (no seat in epoch 1) signs the third request within the grace window: it lands")
            async with attesters(bridge, settings, [2]):
                await wait_until(lambda: scene.released(late), timeout=30, what="the third request released")
            view = await wait_until(lambda: _delivered(delivery.deliverer, late), timeout=20, what="the third delivery confirmed")
            assert view.epoch == 0 and set(view.signers) == {"0x" + scene.address(i).hex() for i in (0, 1, 2)}

            log.info("act: two requests after the rotation; the new members 4 and 5 start and sign them")
            after = [await scene.request(key, amount, service) for amount in (ONE_ETH // 2, ONE_ETH // 4)]
            amounts.update(zip(after, (ONE_ETH // 2, ONE_ETH // 4)))
            async with attesters(bridge, settings, [4, 5]) as newcomers:
                for mid in after:
                    await wait_until(lambda mid=mid: scene.released(mid), timeout=30, what="a request after the rotation released")
                new_members = {"0x" + s.hex() for s in scene.new.signers}
                for mid in after:
                    view = await wait_until(lambda mid=mid: _delivered(delivery.deliverer, mid), timeout=20, what="the delivery confirmed")
                    assert view.epoch == 1 and set(view.signers) <= new_members, view

                log.info("check: every request released exactly once, in the books of every replica (attester 2 catches up)")
                async with attesters(bridge, settings, [2]) as leaver:
                    replicas += [d.attester.replica for d in (*newcomers, *leaver)]
                    total = sum(amounts.values())
                    want = {(owner_of(user), "ETH"): (10 * ONE_ETH - total, 0)}
                    await wait_until(lambda: all(r.balances() == want for r in replicas), timeout=20, what="every replica's books")
            for mid in amounts:
                await wait_until(lambda mid=mid: _delivered(delivery.deliverer, mid), timeout=20, what="every delivery confirmed")
            assert delivery.deliverer.counts() == {"delivered": 6}  # five releases and the rotation

    events = await contract.events(bridge.config.deploy_block)
    released = Counter(bytes(e["id"]) for e in events if e.name == "Released")
    assert released == Counter(list(amounts)), "each request released once, nothing else released"
    (rotated,) = [e for e in events if e.name == "Rotated"]
    (late_release,) = [e for e in events if e.name == "Released" and bytes(e["id"]) == late]
    assert late_release.where.block_number > rotated.where.block_number, "the old set's quorum acted after the rotation"
    assert await evm.balance(user) == start - scene.gas + total
    for name in ["bridge.sqlite", *(f"attester-{i}.sqlite" for i in (0, 1, 2, 4, 5))]:
        r = scene.replica(name)
        assert r.balances() == want, name
        assert [q.state for q in r.requests()] == ["released"] * 5, name
        assert r.anomalies() == [], name

    log.info("check: the replicas hold epoch 1 current and epoch 0 valid until the grace window's end, as the contract")
    previous_hash, valid_until = await contract.previous_committee()
    rotated_at = (await evm.block_by_height(rotated.where.block_number)).timestamp
    assert (previous_hash, valid_until) == (scene.old.hash, rotated_at + GRACE)
    for name in ("bridge.sqlite", "attester-0.sqlite", "attester-5.sqlite"):
        r = scene.replica(name)
        assert r.current_committee() == scene.new
        assert r.committees(valid_until - 1) == [scene.new, scene.old]
        assert r.committees(valid_until) == [scene.new]
        with r.engine.connect() as conn:
            rows = conn.execute(text("SELECT epoch, valid_until, since_height FROM replica_committee ORDER BY epoch")).all()
        assert [tuple(row) for row in rows] == [(0, valid_until, 0), (1, None, rotated.where.block_number)]


async def test_after_the_grace_window_an_old_quorum_is_refused_and_the_new_committee_delivers(evm, btc, regtest, tmp_path):
    log.info("declare: a 3-of-4 bridge, grace 600 s, rotated to epoch 1 by attesters 0, 1, 2 and a deliverer")
    scene = await Scene.make(evm, btc, regtest, tmp_path)
    bridge, settings, contract = scene.bridge, scene.settings, scene.bridge.contract
    user, key = await bridge.user()
    await contract.deposit_eth(key, 5 * ONE_ETH)
    async with attesters(bridge, settings, [0, 1, 2], rotation=scene.plan) as running:
        async with deliverer(bridge, settings):
            await wait_until(contract.epoch, timeout=30, what="the rotation delivered")

        log.info("act: with no deliverer running, a request is signed by keys 0, 1, 2: a quorum of epoch 0 only")
        mid = await scene.request(key, ONE_ETH, running[0].attester.replica)
        await wait_until(lambda: len(scene.signers(mid)) == 3, timeout=20, what="three signatures")
    _, valid_until = await contract.previous_committee()
    assert scene.has_quorum(mid, scene.old, valid_until - 1) and not scene.has_quorum(mid, scene.new, valid_until - 1)
    old_quorum = scene.store.quorum(mid, scene.old, scene.domain, valid_until - 1).quorum

    log.info("act: the next block is the first after the grace window; a deliverer starts before it is mined")
    head = await evm.head()
    assert head.timestamp < valid_until
    await AnvilControls(evm).set_next_block_timestamp(valid_until)
    async with deliverer(bridge, settings) as delivery:

        def refused_once():
            try:
                history = delivery.deliverer.view(mid.hex()).history
            except NotFound:  # not discovered yet
                return False
            return any("CommitteeExpired" in h["note"] for h in history if h["to_state"] == "waiting_quorum")

        await wait_until(refused_once, timeout=30, what="the old quorum refused, back to waiting_quorum")
        if (await evm.head()).timestamp < valid_until:  # refused at the estimate: nothing was mined yet
            await AnvilControls(evm).mine(1)
        assert (await evm.head()).timestamp >= valid_until

        log.info("check: sent by hand, the epoch-0 quorum is refused by the contract too")
        try:
            await contract.release(bridge.deployer, old_quorum.message, scene.old, old_quorum.indices, old_quorum.signatures)
        except ContractReverted as exc:
            assert exc.reason in ("CommitteeExpired", "UnknownCommittee"), exc
        else:
            raise AssertionError("an expired committee's quorum was accepted")
        service = delivery.deliverer.replica
        await wait_until(lambda: service.committees(valid_until) == [scene.new], timeout=10, what="the service's replica")
        view = await wait_until(lambda: _waiting(delivery.deliverer, mid), timeout=10, what="the delivery waiting for epoch 1")
        assert not await scene.released(mid)

        log.info("act: new member 4 starts and signs: keys 0, 1, 4 are a quorum of epoch 1, which the deliverer sends")
        async with attesters(bridge, settings, [4]):
            await wait_until(lambda: scene.released(mid), timeout=30, what="the release by epoch 1")
        view = await wait_until(lambda: _delivered(delivery.deliverer, mid), timeout=20, what="the delivery confirmed")
        assert view.epoch == 1
        assert set(view.signers) == {"0x" + scene.address(i).hex() for i in (0, 1, 4)}
        states = [h["to_state"] for h in view.history]
        log.info("delivery history: %s", [(h["to_state"], h["note"][:90]) for h in view.history])
        assert states[0] == "waiting_quorum" and states[-2:] == ["submitted", "delivered"] and states.count("submitting") >= 2, states
        await wait_until(lambda: service.balances() == {(owner_of(user), "ETH"): (4 * ONE_ETH, 0)}, timeout=20, what="the release in the books")
    events = await contract.events(bridge.config.deploy_block)
    assert [bytes(e["id"]) for e in events if e.name == "Released"] == [mid]


def _waiting(deliverer, mid: bytes):
    view = deliverer.view(mid.hex())
    return view if view.state == "waiting_quorum" and view.last_error and "epoch 1: 2 of 3" in view.last_error else None


def _delivered(deliverer, mid: bytes):
    view = deliverer.view(mid.hex())
    return view if view.state == "delivered" else None
