"""`bridgectl devnet` as a user runs it: up, up again, status, down, reset."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from devnets.process import pid_alive

log = logging.getLogger("tests.devnet")


def bridgectl(data_dir, *args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "bridge", "--data-dir", str(data_dir), "devnet", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"bridgectl devnet {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def data_dir(tmp_path):
    yield tmp_path / "devnet"
    # Never leave nodes behind, whatever the test did.
    bridgectl(tmp_path / "devnet", "down", check=False)


def test_up_is_idempotent_and_down_stops_exactly_what_it_started(data_dir):
    log.info("phase: first up on free ports")
    first = json.loads(bridgectl(data_dir, "up", "--json", "--anvil-port", "0", "--bitcoin-port", "0").stdout)
    assert first["evm"]["chain_id"] == 31337
    assert first["bitcoin"]["network"] == "regtest"
    assert len(first["evm"]["accounts"]) == 10 and len(first["bitcoin"]["keys"]) == 5

    status = json.loads(bridgectl(data_dir, "status", "--json").stdout)
    assert status["evm"]["answers"] and status["bitcoin"]["answers"]
    evm_height = status["evm"]["height"]
    # Contracts are deployed and the test token minted to every test account.
    from devnets.anvil import rpc as evm_rpc
    from devnets.deploy import TOKEN_MINT_PER_ACCOUNT, TOKEN_SYMBOL

    contracts = first["contracts"]
    assert len(evm_rpc(first["evm"]["rpc_url"], "eth_getCode", [contracts["htlc"], "latest"])) > 1000
    token = contracts["tokens"][TOKEN_SYMBOL]["address"]
    holder = first["evm"]["accounts"][9]["address"]
    call = {"to": token, "data": "0x70a08231" + holder[2:].lower().rjust(64, "0")}  # balanceOf(holder)
    assert int(evm_rpc(first["evm"]["rpc_url"], "eth_call", [call, "latest"]), 16) == TOKEN_MINT_PER_ACCOUNT
    # Funding: 5 blocks per key + 100 to mature them.
    assert status["bitcoin"]["height"] == 5 * 5 + 100
    # Every test key holds mature coins the node can find without a wallet.
    for key in first["bitcoin"]["keys"]:
        scan = _btc(first, "scantxoutset", "start", [f"addr({key['address']})"])
        assert scan["total_amount"] > 0, key

    log.info("phase: second up changes nothing")
    second = json.loads(bridgectl(data_dir, "up", "--json").stdout)
    assert second["evm"]["pid"] == first["evm"]["pid"]
    assert second["bitcoin"]["pid"] == first["bitcoin"]["pid"]
    assert second["contracts"] == first["contracts"]
    assert json.loads(bridgectl(data_dir, "status", "--json").stdout)["bitcoin"]["height"] == 125

    log.info("phase: down stops both, by pid")
    evm_rpc(first["evm"]["rpc_url"], "anvil_mine", ["0x3"])
    bridgectl(data_dir, "down")
    assert not pid_alive(first["evm"]["pid"]) and not pid_alive(first["bitcoin"]["pid"])
    down_status = bridgectl(data_dir, "status", "--json", check=False)
    assert down_status.returncode == 3
    assert not json.loads(down_status.stdout)["bitcoin"]["answers"]

    log.info("phase: up again resumes both chains where they were")
    third = json.loads(bridgectl(data_dir, "up", "--json").stdout)
    assert third["evm"]["port"] == first["evm"]["port"]
    assert third["contracts"] == first["contracts"]  # still deployed: not deployed again
    resumed = json.loads(bridgectl(data_dir, "status", "--json").stdout)
    assert resumed["bitcoin"]["height"] == 125
    assert resumed["evm"]["height"] == evm_height + 3  # Anvil's state was dumped on stop and loaded on start

    log.info("phase: reset wipes both chains and starts fresh")
    _btc(third, "generatetoaddress", 3, first["bitcoin"]["keys"][0]["address"])
    bridgectl(data_dir, "reset", "--json")
    fresh = json.loads(bridgectl(data_dir, "status", "--json").stdout)
    assert fresh["bitcoin"]["height"] == 125 and fresh["evm"]["height"] == evm_height


def _btc(descriptor, method, *params):
    import base64
    import urllib.request

    b = descriptor["bitcoin"]
    body = json.dumps({"jsonrpc": "1.0", "id": 1, "method": method, "params": list(params)}).encode()
    auth = base64.b64encode(f"{b['rpc_user']}:{b['rpc_password']}".encode()).decode()
    if b.get("cookie_file"):
        user, _, pw = open(b["cookie_file"]).read().strip().partition(":")
        auth = base64.b64encode(f"{user}:{pw}".encode()).decode()
    req = urllib.request.Request(b["rpc_url"], data=body, headers={"Authorization": f"Basic {auth}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())["result"]
