"""The EVM adapter against a real Anvil: sends, nonces, reverts, logs, idempotent
broadcast, fee bumps, devnet controls, and a node that is down.

Each test works with fresh keys funded by ``anvil_setBalance``, so tests never
share a sender.  Tests that stop automining or rewind the chain use their own
Anvil (``own_anvil``) so they cannot disturb anyone else's session node.
"""

from __future__ import annotations

import asyncio

import pytest
from eth_account import Account
from eth_utils import function_signature_to_4byte_selector

from bridge.core.errors import (
    AlreadyInChain,
    ChainUnavailable,
    ContractReverted,
    InputError,
    InsufficientFunds,
    NotFound,
)
from bridge.core.retry import RetryPolicy
from chains.evm import EvmAdapter, EvmLogFilter
from chains.evm_rpc import LogRangeTooLarge
from devnets.anvil import Anvil
from devnets.process import free_port
from devnets.controls import AnvilControls


ETH = 10**18
EXPIRED_ABI = [{"type": "error", "name": "Expired", "inputs": [{"name": "deadline", "type": "uint256"}]}]


def init_code(runtime: bytes) -> bytes:
    """Creation code that just returns ``runtime`` (CODECOPY it to memory, RETURN it)."""
    assert len(runtime) < 256
    return bytes([0x60, len(runtime), 0x60, 0x0C, 0x60, 0x00, 0x39, 0x60, len(runtime), 0x60, 0x00, 0xF3]) + runtime


def reverter_runtime() -> bytes:
    """Always reverts with the custom error ``Expired(42)``."""
    selector = function_signature_to_4byte_selector("Expired(uint256)")
    # PUSH4 sel, PUSH1 224, SHL, PUSH1 0, MSTORE; PUSH1 42, PUSH1 4, MSTORE; PUSH1 36, PUSH1 0, REVERT
    return b"\x63" + selector + bytes.fromhex("60e01b600052602a60045260246000fd")


#: Emits one log whose only topic is the first calldata word (PUSH1 0 CALLDATALOAD, PUSH1 0, PUSH1 0, LOG1, STOP).
LOGGER_RUNTIME = bytes.fromhex("60003560006000a100")


def topic(i: int) -> str:
    return "0x" + i.to_bytes(32, "big").hex()


@pytest.fixture
async def evm(anvil):
    adapter = await EvmAdapter.connect(anvil.url, log_chunk_size=4)
    yield adapter
    await adapter.close()


@pytest.fixture(scope="module")
def own_anvil(tmp_path_factory):
    node = Anvil(tmp_path_factory.mktemp("evm-own-anvil"))
    node.start()
    yield node
    node.stop()


@pytest.fixture
async def own_evm(own_anvil):
    adapter = await EvmAdapter.connect(own_anvil.url)
    yield adapter
    await AnvilControls(adapter).set_automine(True)
    await adapter.close()


async def funded(adapter: EvmAdapter, wei: int = 10 * ETH):
    key = Account.create()
    await AnvilControls(adapter).set_balance(key.address, wei)
    return key


async def nonce_of(adapter: EvmAdapter, txhash: str) -> int:
    return int((await adapter.rpc.call("eth_getTransactionByHash", [txhash]))["nonce"], 16)


# --- sending ------------------------------------------------------------------


async def test_send_eth_and_wait_for_confirmations(evm):
    sender, receiver = await funded(evm), Account.create()
    start = await evm.balance(sender.address)

    txhash = await evm.transact(sender.key, receiver.address, value=ETH // 3)
    status = await evm.wait_for_confirmations(txhash, 1, timeout=30)
    assert status.block is not None and status.confirmations >= 1

    receipt = await evm.receipt(txhash)
    assert receipt.status == 1 and receipt.block_hash == status.block.hash
    assert await evm.balance(receiver.address) == ETH // 3
    assert await evm.balance(sender.address) == start - ETH // 3 - receipt.gas_used * receipt.effective_gas_price

    # The transaction is type 2 and its tip is what the fee logic chose.
    tx = await evm.rpc.call("eth_getTransactionByHash", [txhash])
    assert tx["type"] == "0x2" and int(tx["maxPriorityFeePerGas"], 16) >= 1

    await AnvilControls(evm).mine(2)
    deeper = await evm.wait_for_confirmations(txhash, 3, timeout=30)
    assert deeper.confirmations >= 3 and deeper.block == status.block


async def test_twenty_concurrent_senders_from_one_key_get_nonces_0_to_19(evm):
    sender, receiver = await funded(evm), Account.create()

    hashes = await asyncio.gather(*(evm.transact(sender.key, receiver.address, value=1000 + i) for i in range(20)))

    assert len(set(hashes)) == 20
    for txhash in hashes:
        await evm.wait_for_confirmations(txhash, 1, timeout=30)
    assert sorted([await nonce_of(evm, h) for h in hashes]) == list(range(20))
    assert await evm.balance(receiver.address) == sum(1000 + i for i in range(20))
    assert int(await evm.rpc.call("eth_getTransactionCount", [sender.address, "latest"]), 16) == 20


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_soak_many_concurrent_senders_on_several_keys(evm):
    keys, receiver = [await funded(evm) for _ in range(5)], Account.create()

    hashes = await asyncio.gather(*(evm.transact(k.key, receiver.address, value=1) for k in keys for _ in range(60)))

    for txhash in hashes:
        await evm.wait_for_confirmations(txhash, 1, timeout=60)
    assert await evm.balance(receiver.address) == 300
    for k in keys:
        assert int(await evm.rpc.call("eth_getTransactionCount", [k.address, "latest"]), 16) == 60


async def test_a_broadcast_whose_answer_was_lost_is_looked_up_not_resent(evm):
    sender, receiver = await funded(evm), Account.create()
    broadcasts = []
    real_call = evm.rpc.call

    async def answer_lost_once(method, params=()):
        result = await real_call(method, params)
        if method == "eth_sendRawTransaction":
            broadcasts.append(result)
            if len(broadcasts) == 1:
                raise ChainUnavailable("connection reset after the node took the transaction")
        return result

    evm.rpc.call = answer_lost_once
    first = await evm.transact(sender.key, receiver.address, value=500)
    second = await evm.transact(sender.key, receiver.address, value=5)

    assert broadcasts == [first, second]  # the lost one was found on chain, not broadcast again
    for txhash in (first, second):
        await evm.wait_for_confirmations(txhash, 1, timeout=30)
    assert [await nonce_of(evm, h) for h in (first, second)] == [0, 1]
    assert await evm.balance(receiver.address) == 505


async def test_a_refused_send_leaves_no_nonce_gap(evm):
    sender, receiver = await funded(evm, ETH), Account.create()

    # Explicit gas skips estimation, so the node itself refuses the broadcast.
    with pytest.raises(InsufficientFunds):
        await evm.transact(sender.key, receiver.address, value=5 * ETH, gas=21000)
    txhash = await evm.transact(sender.key, receiver.address, value=1)

    await evm.wait_for_confirmations(txhash, 1, timeout=30)
    assert await nonce_of(evm, txhash) == 0
    assert await evm.balance(receiver.address) == 1


async def test_nonce_used_behind_the_managers_back_is_resynchronised(evm, anvil):
    sender, receiver = await funded(evm), Account.create()
    first = await evm.transact(sender.key, receiver.address, value=1)  # the manager now expects nonce 1
    # Another process with the same key takes nonce 1.
    async with EvmAdapter(anvil.url) as other:
        outside = await other.transact(sender.key, receiver.address, value=10)

    again = await evm.transact(sender.key, receiver.address, value=100)

    for txhash in (first, outside, again):
        await evm.wait_for_confirmations(txhash, 1, timeout=30)
    assert [await nonce_of(evm, h) for h in (first, outside, again)] == [0, 1, 2]
    assert await evm.balance(receiver.address) == 111


async def test_sending_the_same_raw_transaction_twice_spends_once(evm):
    sender, receiver = await funded(evm), Account.create()
    fees = await evm.suggest_fees()
    signed = sender.sign_transaction(
        {
            "type": 2,
            "chainId": 31337,
            "nonce": 0,
            "to": receiver.address,
            "value": 777,
            "gas": 21000,
            "maxFeePerGas": fees.max_fee,
            "maxPriorityFeePerGas": fees.priority_fee,
        }
    )

    first = await evm.send(signed.raw_transaction)
    await evm.wait_for_confirmations(first, 1, timeout=30)
    # Mined already: the node answers "nonce too low", the adapter finds the tx and returns its hash.
    second = await evm.send("0x" + signed.raw_transaction.hex())

    assert first == second == "0x" + signed.hash.hex()
    assert await evm.balance(receiver.address) == 777


# --- reverts ------------------------------------------------------------------


async def test_a_revert_surfaces_with_its_custom_error_data(evm):
    deployer = await funded(evm)
    contract = await evm.deploy(deployer.key, [], init_code(reverter_runtime()))
    assert await evm.code(contract) == reverter_runtime()
    expected = "0x" + function_signature_to_4byte_selector("Expired(uint256)").hex() + (42).to_bytes(32, "big").hex()

    # During estimation: nothing is sent.
    with pytest.raises(ContractReverted) as estimated:
        await evm.transact(deployer.key, contract, data=b"\x01")
    assert estimated.value.data == expected
    assert await evm.rpc.call("eth_getTransactionCount", [deployer.address, "pending"]) == "0x1"

    # On a read.
    with pytest.raises(ContractReverted) as called:
        await evm.call(contract, b"")
    assert called.value.data == expected

    # Mined with explicit gas: the receipt says status 0 and the replay recovers the error.
    txhash = await evm.transact(deployer.key, contract, gas=60_000)
    await evm.wait_for_confirmations(txhash, 1, timeout=30)
    with pytest.raises(ContractReverted) as mined:
        await evm.receipt(txhash, abi=EXPIRED_ABI)
    assert mined.value.data == expected
    assert mined.value.reason == "Expired(42)"


# --- logs ---------------------------------------------------------------------


async def test_chunked_log_fetch_over_many_chunks(evm):
    key = await funded(evm)
    emitter = await evm.deploy(key, [], init_code(LOGGER_RUNTIME))
    other = await evm.deploy(key, [], init_code(LOGGER_RUNTIME))
    start = (await evm.head()).height + 1
    sent = []
    for i in range(6):
        sent.append(await evm.transact(key.key, emitter, data=bytes.fromhex(topic(i)[2:])))
        await evm.transact(key.key, other, data=bytes.fromhex(topic(100 + i)[2:]))  # filtered out
        await AnvilControls(evm).mine(3)  # spread the logs over several 4-block chunks
    end = (await evm.head()).height

    calls = []
    real_call = evm.rpc.call

    async def counting(method, params=()):
        calls.append(method)
        return await real_call(method, params)

    evm.rpc.call = counting
    events = await evm.events(start, end, EvmLogFilter(address=emitter))

    assert calls.count("eth_getLogs") == -(-(end - start + 1) // 4)
    assert [e.data["topics"][0] for e in events] == [topic(i) for i in range(6)]
    assert [e.key for e in events] == [f"{h}:{e.data['log_index']}" for h, e in zip(sent, events)]
    assert all(e.data["address"] == emitter.lower() for e in events)
    heights = [e.block.height for e in events]
    assert heights == sorted(heights) and len(set(heights)) == 6
    for event in events:
        assert event.block == await evm.block_by_height(event.block.height)
        assert event.block.parent_hash == (await evm.block_by_height(event.block.height - 1)).hash

    by_topic = await evm.events(start, end, EvmLogFilter(topics=[[topic(2), topic(102)]]))
    assert [e.data["topics"][0] for e in by_topic] == [topic(2), topic(102)]


async def test_log_chunks_halve_when_the_node_says_too_large(evm):
    """A node-side limit (faked at the RPC edge: Anvil has none) makes the adapter halve its chunks."""
    key = await funded(evm)
    emitter = await evm.deploy(key, [], init_code(LOGGER_RUNTIME))
    start = (await evm.head()).height + 1
    for i in range(5):
        last = await evm.transact(key.key, emitter, data=bytes.fromhex(topic(i)[2:]))
    end = (await evm.wait_for_receipt(last)).block_number
    evm.log_chunk_size = 1000
    refused, answered = [], []
    real_call = evm.rpc.call

    async def limited(method, params=()):
        if method == "eth_getLogs":
            low, high = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            if high - low + 1 > 2:
                refused.append((low, high))
                raise LogRangeTooLarge("eth_getLogs: query exceeds max block range 2", code=-32005, method=method)
            answered.append((low, high))
        return await real_call(method, params)

    evm.rpc.call = limited
    events = await evm.events(start, end, EvmLogFilter(address=emitter))

    assert [e.data["topics"][0] for e in events] == [topic(i) for i in range(5)]
    assert refused[0] == (start, end)
    # The answered chunks tile the range exactly, none larger than the node allows.
    assert answered[0][0] == start and answered[-1][1] == end
    assert all(a[1] + 1 == b[0] for a, b in zip(answered, answered[1:]))
    assert all(high - low + 1 <= 2 for low, high in answered)


# --- devnet controls: own Anvil -------------------------------------------------


async def test_fee_bump_replaces_a_pending_transaction(own_evm):
    sender, receiver = await funded(own_evm), Account.create()
    await AnvilControls(own_evm).set_automine(False)

    original = await own_evm.transact(sender.key, receiver.address, value=5000)
    assert (await own_evm.tx_status(original)).confirmations == 0
    # A pending transaction sent again is "already known": same hash back.
    raw = await own_evm.rpc.call("eth_getRawTransactionByHash", [original])
    assert await own_evm.send(raw) == original

    before = await own_evm.rpc.call("eth_getTransactionByHash", [original])
    bumped = await own_evm.replace(sender.key, original, 1.25)
    after = await own_evm.rpc.call("eth_getTransactionByHash", [bumped])
    assert bumped != original and after["nonce"] == "0x0" and after["value"] == hex(5000)
    for field in ("maxFeePerGas", "maxPriorityFeePerGas"):
        assert int(after[field], 16) * 100 >= int(before[field], 16) * 110

    await AnvilControls(own_evm).mine(1)
    receipt = await own_evm.receipt(bumped)
    assert receipt.status == 1
    assert (await own_evm.tx_status(original)).confirmations == -1
    with pytest.raises(NotFound):
        await own_evm.receipt(original)
    assert await own_evm.balance(receiver.address) == 5000
    with pytest.raises(AlreadyInChain):
        await own_evm.replace(sender.key, bumped, 1.5)


async def test_snapshot_revert_and_reorg(own_evm):
    sender, receiver = await funded(own_evm), Account.create()
    snap = await AnvilControls(own_evm).snapshot()
    await own_evm.transact(sender.key, receiver.address, value=1)
    assert await own_evm.balance(receiver.address) == 1
    await AnvilControls(own_evm).revert(snap)
    assert await own_evm.balance(receiver.address) == 0
    with pytest.raises(NotFound):
        await AnvilControls(own_evm).revert(snap)  # used up

    # After the revert the nonce manager re-reads the node: nonce 0 again.
    txhash = await own_evm.transact(sender.key, receiver.address, value=2)
    assert await nonce_of(own_evm, txhash) == 0
    await AnvilControls(own_evm).mine(3)
    head = await own_evm.head()
    replaced = await own_evm.block_by_height(head.height - 1)

    new_head = await AnvilControls(own_evm).reorg(2)

    assert new_head.height == head.height and new_head.hash != head.hash
    assert (await own_evm.block_by_height(head.height - 1)).hash != replaced.hash
    assert (await own_evm.block_by_height(head.height - 2)).hash == replaced.parent_hash


# --- failures -------------------------------------------------------------------


async def test_node_down_is_chain_unavailable():
    adapter = EvmAdapter(f"http://127.0.0.1:{free_port()}", chain_id=31337, retry=RetryPolicy(attempts=2, base_delay=0.01))
    async with adapter:
        assert adapter.chain_id == "evm:31337"
        with pytest.raises(ChainUnavailable) as caught:
            await adapter.head()
        assert caught.value.retryable
        with pytest.raises(ChainUnavailable):
            await adapter.transact(Account.create().key, Account.create().address, value=1)


async def test_bad_input_is_refused_precisely(evm):
    with pytest.raises(InputError, match="not an EVM address"):
        await evm.balance("0x1234")
    with pytest.raises(InputError, match="non-negative int"):
        await evm.transact(Account.create().key, Account.create().address, value=-1)
    with pytest.raises(InputError, match="bad block range"):
        await evm.events(10, 5)
    with pytest.raises(InputError, match="EvmLogFilter"):
        await evm.events(0, 1, {"address": "0x00"})
