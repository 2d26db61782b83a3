"""A BTC -> ETH swap through a liquidity provider's daemon, both parties driven by `bridgectl`
as their operators would, against the plugin's devnet."""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from bridge.core.testing import wait_until

ONE_ETH = 10**18
TIMELOCK = """[timelock]
safety_gap = 1800
initiator_lock = 7200
participant_lock = 3600
min_participant_lock = 600
claim_margin = 300
btc_seconds_per_block = 60
"""


def bridgectl() -> list[str]:
    found = shutil.which("bridgectl", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "bridge"]


def party(home: Path, devnet, n: int, lp_port: int | None = None) -> Path:
    """A party's data dir with its swaps.toml: devnet test key ``n`` on both chains."""
    home.mkdir()
    lines = [
        f'btc_key = "{devnet.btc_keys[n]["private_key"]}"',
        f'evm_key = "{devnet.evm_accounts[n]["private_key"]}"',
        f'htlc = "{devnet.htlc}"',
        "poll_interval = 0.1",
        TIMELOCK,
    ]
    if lp_port is not None:
        lines += ["[lp]", f"port = {lp_port}", '[lp.markets."btc/eth"]', 'rate = "150000000000/1"', "min_sell = 10000", "max_sell = 100000000"]
    (home / "swaps.toml").write_text("\n".join(lines) + "\n")
    return home


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_swap_btc_for_eth_through_an_lp_daemon(bridge_devnet, bridge_evm, tmp_path):
    env = {**os.environ, **bridge_devnet.cli_env()}
    port = free_port()
    lp = party(tmp_path / "lp", bridge_devnet, 2, lp_port=port)
    trader = party(tmp_path / "trader", bridge_devnet, 3)
    trader_eth = bridge_devnet.evm_accounts[3]["address"]
    before = await bridge_evm.balance(trader_eth)

    bridge_devnet.automine(True)  # every Bitcoin transaction mined as it is sent
    daemon = subprocess.Popen(
        [*bridgectl(), "--data-dir", str(lp), "relayer", "run", "lp"], env=env, stdout=open(lp / "lp.log", "wb"), stderr=subprocess.STDOUT
    )
    try:
        await wait_until(lambda: _answers(port), timeout=30, what="the LP daemon's HTTP endpoint")
        swap = await asyncio.create_subprocess_exec(
            *bridgectl(),
            "--data-dir",
            str(trader),
            "swap",
            "start",
            "--sell",
            "btc:0.01",
            "--buy",
            "eth:0.15",
            "--lp",
            f"http://127.0.0.1:{port}",
            "--timeout",
            "120",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output = (await swap.communicate())[0].decode()
        assert swap.returncode == 0, output
        assert "claimed" in output
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        bridge_devnet.automine(False)

    gained = await bridge_evm.balance(trader_eth) - before
    assert 15 * ONE_ETH // 100 - 10**16 < gained < 15 * ONE_ETH // 100  # 0.15 ETH less the claim's gas


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
