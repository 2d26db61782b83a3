"""Block announcements: each adapter's ``wait_for_block`` ends when the node announces a block
(bitcoind's ``waitforblockheight`` long poll, Anvil's ``newHeads`` over its websocket), times out
quietly otherwise, and falls back to sleeping when the node cannot announce."""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge.core.errors import Unsupported
from chains.base import BlockRef
from chains.bitcoin import BitcoinAdapter
from chains.bitcoin_rpc import BitcoinRpc
from chains.bitcoin_wallet import BtcKey
from chains.evm import EvmAdapter
from chains.heads import HeadFollower
from devnets.controls import AnvilControls, BitcoinDevnet
from devnets.process import free_port


async def _mine(adapter) -> None:
    if isinstance(adapter, BitcoinAdapter):
        await BitcoinDevnet(adapter).mine(1, BtcKey.generate().p2wpkh_address())
    else:
        await AnvilControls(adapter).mine(1)


@pytest.mark.parametrize("chain", ["bitcoin", "evm"])
async def test_a_mined_block_ends_the_wait_at_once(chain, btc, evm):
    adapter = btc if chain == "bitcoin" else evm
    height = await adapter.height()
    # Nothing mined: the wait lasts its timeout and reports the tip it knows.
    started = time.monotonic()
    assert await adapter.wait_for_block(height, 0.3) == height
    assert time.monotonic() - started >= 0.25
    assert adapter.heads.live
    waiting = asyncio.create_task(adapter.wait_for_block(height, 30.0))
    mined_at = time.monotonic()
    await _mine(adapter)
    assert await asyncio.wait_for(waiting, 10) == height + 1
    assert time.monotonic() - mined_at < 2.0  # announced, not found by a 30 s poll
    # Already past: no waiting at all.
    assert await adapter.wait_for_block(height, 30.0) == height + 1


@pytest.mark.parametrize("chain", ["bitcoin", "evm"])
async def test_the_announced_head_is_the_node_s_head_without_asking(chain, btc, evm):
    """Indexers and clocks woken by an announcement read the head from it (``announced_head``)."""
    adapter = btc if chain == "bitcoin" else evm
    height = await adapter.wait_for_block(-1, 5.0)  # the follower is running and has the tip
    assert adapter.announced_head() == await adapter.head()
    await _mine(adapter)
    assert await adapter.wait_for_block(height, 10.0) == height + 1
    announced = adapter.announced_head()
    assert announced == await adapter.head() and announced.height == height + 1
    assert announced.parent_hash == (await adapter.block_by_height(height)).hash


async def test_a_tip_replaced_at_the_same_height_is_announced_and_only_a_live_source_counts():
    publish = []

    async def follow(p):
        publish.append(p)
        await asyncio.Event().wait()

    heads = HeadFollower("test", follow)
    assert await heads.wait(5, 0.05) is None and publish  # started; nothing announced yet
    first, other = BlockRef(6, "aa", "00", 1), BlockRef(6, "bb", "00", 2)
    publish[0](first)
    assert heads.head == first and heads.height == 6
    changed = heads._changed
    publish[0](first)  # the same tip told again (a long poll's timeout) wakes nobody
    assert not changed.is_set()
    publish[0](other)  # a reorg to a sibling of the same height
    assert heads.head == other and changed.is_set()
    publish[0](BlockRef(7, "cc", "bb", 3))
    assert await heads.wait(6, 1.0) == 7
    await heads.close()
    assert not heads.live and heads.head is None


async def test_without_announcements_a_wait_is_a_sleep(regtest, anvil):
    quiet_btc = BitcoinAdapter(BitcoinRpc(regtest.rpc_url, *regtest.rpc_auth), push_blocks=False)
    quiet_evm = EvmAdapter(anvil.url, push_blocks=False)
    try:
        for adapter in (quiet_btc, quiet_evm):
            started = time.monotonic()
            assert await adapter.wait_for_block(-1, 0.2) is None  # even though the chain is above -1
            assert time.monotonic() - started >= 0.15
    finally:
        await quiet_btc.close()
        await quiet_evm.close()


async def test_an_unreachable_websocket_falls_back_to_polling(anvil):
    """A node whose websocket cannot be reached: waits time out (callers poll), calls still work."""
    adapter = EvmAdapter(anvil.url, ws_url=f"ws://127.0.0.1:{free_port()}")
    try:
        height = await adapter.height()
        started = time.monotonic()
        assert await adapter.wait_for_block(height, 0.3) is None
        assert time.monotonic() - started >= 0.25 and not adapter.heads.live
        await AnvilControls(adapter).mine(1)
        assert await adapter.height() == height + 1
    finally:
        await adapter.close()


async def test_a_source_that_is_not_offered_stops_following():
    calls = []

    async def follow(publish):
        calls.append(1)
        raise Unsupported("no subscriptions here")

    heads = HeadFollower("test", follow)
    assert await heads.wait(0, 0.2) is None
    assert await heads.wait(0, 0.1) is None
    assert heads.unsupported == "no subscriptions here" and calls == [1]  # not retried
    await heads.close()


async def test_a_failing_source_is_retried_and_its_heights_delivered():
    attempts = []

    async def follow(publish):
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionResetError("node restarting")
        publish(BlockRef(7, "07", "06", 0))
        await asyncio.Event().wait()  # connected until closed

    heads = HeadFollower("test", follow, max_backoff=0.05)
    assert await heads.wait(5, 10.0) == 7
    assert len(attempts) == 3 and heads.live
    await heads.close()
    assert not heads.live


async def test_cancelled_evm_requests_leave_the_client_working(evm):
    """Regression: web3's HTTP provider took a process-wide lock per request and kept it held
    when a request was cancelled while waiting for it; every later request then hung."""
    for _ in range(5):
        calls = [asyncio.create_task(evm.rpc.call("eth_blockNumber")) for _ in range(20)]
        # Cancel the rest while they are in flight: as soon as the first one has its answer.
        await asyncio.wait_for(asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED), 10)
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    assert int(await asyncio.wait_for(evm.rpc.call("eth_blockNumber"), 5), 16) >= 0
