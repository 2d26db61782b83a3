"""The demo's committee act: four attesters and a deliverer as processes, margin in and out.

Everything goes through the commands a user and an operator run: `bridgectl relayer run
attester --key <data dir>/committee/attester-<i>.key` (each attester with its own replica
database) and `bridgectl relayer run deliverer` (the service replica, in its own database; gas
from devnet account 9), then `bridgectl deposit evm` twice (ETH, then TUSD: approve and
deposit) and `bridgectl withdraw evm`, all signing with devnet account 4.  While a deposit
command runs, the demo watches the five replicas and notes when each one credits it; after the
withdrawal it shows the release as `bridgectl message show` does, and every replica's books.

Then Bitcoin: `bridgectl deposit btc --account 4` registers the account's key on the bridge and
prints its deposit address and script; `deposit btc --fund 0.5` pays 0.5 BTC to it from devnet
BTC key 1 and follows it until credited as margin; `bridgectl withdraw btc --amount 0.2 --to
<a fresh Bitcoin address>` follows the payout the committee co-signs (PSBT), broadcasts and
confirms, and the PAYOUT_DONE that posts it.  Nothing mines on the devnet by itself: the demo
mines a block whenever a transaction waits in the mempool (as Anvil does), so the deposit, the
sweep into custody and the payout confirm.

The replicas' databases live in ``<data dir>/committee-<bridge address>/``: the devnet keeps
its chain between demo runs, so the replicas continue where they stopped, and a new bridge (a
reset devnet) gets fresh ones.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bridge.core.errors import DevnetError
from bridge.core.testing import wait_until
from bridge.demo_swaps import _toml

#: The demo's depositor (devnet test account 4) and what it moves.
USER_ACCOUNT = 4
DEPOSITS = (("ETH", "1.5"), ("TUSD", "2500"))
WITHDRAWAL = ("ETH", "0.4")
ATTESTERS = (0, 1, 2, 3)
#: The Bitcoin act: what the depositor pays (from devnet BTC key ``BTC_FUNDER``) and withdraws.
BTC_DEPOSIT = "0.5"
BTC_WITHDRAWAL = "0.2"
BTC_FUNDER = 1


@dataclass
class Daemon:
    """A daemon process; ``ready`` says when it has folded its first blocks (its HTTP port is any
    free one: a port chosen here could be taken by another process before the daemon binds it)."""

    name: str
    argv: list[str]
    log: Path
    ready: Callable[[], bool]
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([*self.argv, "--port", "0"], stdout=out, stderr=subprocess.STDOUT)

    def up(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise DevnetError(f"{self.name} exited ({self.proc.returncode if self.proc else '?'}); end of {self.log}:\n{tail}")
        return self.ready()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class CommitteeAct:
    """The act's settings, daemons and replica readers."""

    data_dir: Path
    descriptor: dict
    say: Callable[[str], None]
    work: Path = field(init=False)
    config: object = field(init=False)
    daemons: list[Daemon] = field(default_factory=list)
    statuses: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from bridge.committee.config import load_bridge_config

        self.config = load_bridge_config(self.data_dir / "committee.json")
        self.work = self.data_dir / f"committee-{self.config.bridge[2:10].lower()}"
        self.work.mkdir(parents=True, exist_ok=True)

    @property
    def settings_file(self) -> Path:
        return self.work / "bridge.toml"

    def replica_url(self, name: str) -> str:
        return f"sqlite:///{self.work / (name + '.sqlite')}"

    def write_settings(self) -> None:
        """Settings every process of the act shares: the devnet's nodes, the service database."""
        btc, evm = self.descriptor["bitcoin"], self.descriptor["evm"]
        lines = [f"data_dir = {_toml(str(self.data_dir))}", f"database_url = {_toml(self.replica_url('service'))}", "[bitcoin]", f"rpc_port = {btc['port']}"]
        if btc.get("cookie_file"):
            lines.append(f"cookie_file = {_toml(btc['cookie_file'])}")
        else:
            lines += [f"rpc_user = {_toml(btc['rpc_user'])}", f"rpc_password = {_toml(btc['rpc_password'])}"]
        lines += ["[evm]", f"url = {_toml(evm['rpc_url'])}", "[indexer]", "poll_interval = 0.1", "[committee]", "poll_interval = 0.1"]
        self.settings_file.write_text("\n".join(lines) + "\n")

    def bridgectl(self, *args: str, log_level: str = "WARNING") -> list[str]:
        return [sys.executable, "-m", "bridge", "--config", str(self.settings_file), "--log-level", log_level, *args]

    async def start(self) -> None:
        self.write_settings()
        keys = self.data_dir / "committee"
        for i in ATTESTERS:
            name = f"attester-{i}"
            argv = self.bridgectl("relayer", "run", "attester", "--key", str(keys / f"attester-{i}.key"), "--db", self.replica_url(name), log_level="INFO")
            self.daemons.append(Daemon(name, argv, self.work / f"{name}.log", lambda n=name: self.status(n).replica_height() is not None))
        env_key = os.environ.get("BRIDGE_DELIVERER_KEY")
        service = self.status("service")
        argv = self.bridgectl("relayer", "run", "deliverer", log_level="INFO")
        self.daemons.append(Daemon("deliverer", argv, self.work / "deliverer.log", lambda: service.store is not None and service.replica_height() is not None))
        # The deliverer first: it creates the attestation store's tables in the service database,
        # which the attesters then share (five processes creating them at once would race).
        deliverer, attesters = self.daemons[-1], self.daemons[:-1]
        deliverer.start()
        await wait_until(deliverer.up, timeout=90, interval=0.1, what="the deliverer to fold its first blocks")
        for daemon in attesters:
            daemon.start()
        for daemon in attesters:
            await wait_until(daemon.up, timeout=90, interval=0.1, what=f"{daemon.name} to fold its first blocks")
        gas = "$BRIDGE_DELIVERER_KEY" if env_key else "devnet account 9"
        committee = self.config.committee
        signers = ", ".join(f"{i} 0x{s.hex()[:8]}…" for i, s in enumerate(committee.signers))
        size = len(committee.signers)
        self.say(f"bridge {self.config.bridge} (committee.json): committee epoch {committee.epoch}, {committee.threshold} of {size}: {signers}")
        self.say(f"committee: attesters {', '.join(map(str, ATTESTERS))} (3 of 4 sign) and a deliverer (gas from {gas}) up; logs and replicas in {self.work}")

    def check_alive(self) -> None:
        """``DevnetError`` with the end of its log for a daemon that exited."""
        for daemon in self.daemons:
            if daemon.proc is not None and daemon.proc.poll() is not None:
                tail = daemon.log.read_text(errors="replace")[-2500:]
                raise DevnetError(f"{daemon.name} exited ({daemon.proc.returncode}); end of {daemon.log}:\n{tail}")

    def stop(self) -> None:
        for daemon in self.daemons:  # all at once: each stops gracefully in parallel
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.proc.send_signal(signal.SIGTERM)
        for daemon in self.daemons:
            daemon.stop()
        for status in self.statuses.values():
            status.close()

    def status(self, name: str):
        """Views of replica ``name`` (``attester-<i>`` or ``service``; the store is the service DB)."""
        from bridge.committee.status import CommitteeStatus

        if name not in self.statuses:
            self.statuses[name] = CommitteeStatus.open(self.config, self.replica_url(name), self.replica_url("service"))
        return self.statuses[name]

    @property
    def replicas(self) -> list[str]:
        return [f"attester-{i}" for i in ATTESTERS] + ["service"]


def stream(argv: list[str], say_prefix: str, started: list[subprocess.Popen]) -> tuple[int, list[tuple[float, str]]]:
    """Run a command, echoing its output as it comes; ``(exit code, [(time, line)])``.
    The process goes into ``started`` (so that it can be stopped from outside)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started.append(proc)
    lines: list[tuple[float, str]] = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append((time.time(), line.rstrip()))
        print(f"    {say_prefix} | {line.rstrip()}", flush=True)
    return proc.wait(), lines


async def run_command(c: CommitteeAct, *args: str) -> list[tuple[float, str]]:
    """`bridgectl ARGS` as the user, streamed; stopped (and the act failed) if a daemon dies meanwhile."""
    started: list[subprocess.Popen] = []
    task = asyncio.create_task(asyncio.to_thread(stream, c.bridgectl(*args), "user", started))
    try:
        while not task.done():
            c.check_alive()
            await asyncio.wait({task}, timeout=0.3)
    finally:
        if not task.done():
            for proc in started:
                proc.kill()
        code, lines = await task
    if code != 0:
        raise DevnetError(f"bridgectl {' '.join(args[:2])} failed ({code}):\n" + "\n".join(line for _t, line in lines))
    return lines


async def deposit(c: CommitteeAct, user: str, asset: str, amount: str) -> dict:
    """`bridgectl deposit evm` while watching every replica for the new credit."""
    c.say(f"user: bridgectl deposit evm --asset {asset} --amount {amount} --account {USER_ACCOUNT}")
    args = ("deposit", "evm", "--asset", asset, "--amount", amount, "--account", str(USER_ACCOUNT))
    return await _credited_everywhere(c, user, asset, args, _tx_block)


async def _credited_everywhere(c: CommitteeAct, user: str, asset: str, args: tuple[str, ...], tx_block) -> dict:
    """Run a deposit command while watching every replica for the new credit; when each credited it."""
    known = {name: {d["transfer"] for d in c.status(name).deposit_credits(user)} for name in c.replicas}
    seen: dict[str, tuple[float, dict]] = {}

    async def watch() -> None:
        while len(seen) < len(c.replicas):
            for name in c.replicas:
                if name not in seen:
                    new = [d for d in await asyncio.to_thread(c.status(name).deposit_credits, user) if d["transfer"] not in known[name]]
                    if new:
                        seen[name] = (time.time(), new[0])
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        lines = await run_command(c, *args)
        try:
            await asyncio.wait_for(asyncio.shield(watcher), timeout=30)
        except asyncio.TimeoutError:
            raise DevnetError(f"the deposit was not credited in every replica within 30s (credited in: {', '.join(seen) or 'none'})") from None
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    tx, block = tx_block(lines)
    credited = dict(sorted(((name, at) for name, (at, _credit) in seen.items()), key=lambda item: item[1]))
    first = next(iter(seen.values()))[1]
    if any(credit["transfer"] != first["transfer"] for _at, credit in seen.values()):
        raise DevnetError(f"the replicas credited different deposits: {seen}")
    spread = max(credited.values()) - min(credited.values())
    c.say(f"{first['amount']} {first['asset']} credited as margin in all {len(credited)} replicas within {spread:.2f}s: " + ", ".join(credited))
    return {"asset": asset, "amount": first["amount"], "tx": tx, "block": block, "transfer": first["transfer"], "credited_at": credited}


def _tx_block(lines: list[tuple[float, str]]) -> tuple[str, int]:
    for _t, line in lines:
        if line.startswith("deposited ") and " tx " in line:
            words = line.split()
            return words[words.index("tx") + 1], int(words[words.index("block") + 1])
    raise DevnetError("the deposit command printed no transaction")


async def withdraw(c: CommitteeAct, user: str, asset: str, amount: str) -> dict:
    from bridge.cli.committee import render_message

    c.say(f"user: bridgectl withdraw evm --asset {asset} --amount {amount} --account {USER_ACCOUNT}")
    lines = await run_command(c, "withdraw", "evm", "--asset", asset, "--amount", amount, "--account", str(USER_ACCOUNT), "--timeout", "60")
    nonce = int(next(line for _t, line in lines if line.startswith("withdrawal request ")).split()[2].rstrip(":"))
    await wait_until(lambda: all(_request_state(c, name, nonce) == "released" for name in c.replicas), timeout=30, what="the release posted in every replica")
    view = c.status("service").message(f"req:{nonce}")
    c.say(f"request {nonce}: released by a quorum and paid; every replica posted it")
    return {"request": nonce, "state": view["state"], "show": render_message(view)}


def _request_state(c: CommitteeAct, name: str, nonce: int) -> str | None:
    from bridge.core.errors import NotFound

    try:
        return c.status(name).request(nonce)["state"]
    except NotFound:
        return None


# --- Bitcoin: a deposit to the account's own address, a withdrawal paid on Bitcoin -----------------


def _btc_adapter(descriptor: dict):
    from chains.bitcoin import BitcoinAdapter
    from chains.bitcoin_rpc import BitcoinRpc

    btc = descriptor["bitcoin"]
    cookie = btc.get("cookie_file")
    rpc = BitcoinRpc(btc["rpc_url"], user=None if cookie else btc["rpc_user"], password=None if cookie else btc["rpc_password"], cookie_file=cookie)
    return BitcoinAdapter(rpc, network="regtest", push_blocks=False)


async def mine_mempool(btc, address: str, mined: list[str]) -> None:
    """Mine a block whenever a transaction waits in the mempool (nothing else mines the devnet)."""
    from devnets.controls import BitcoinDevnet

    while True:
        if await btc.rpc.call("getrawmempool"):
            mined += await BitcoinDevnet(btc).mine(1, address)
        await asyncio.sleep(0.1)


def _btc_tx_block(lines: list[tuple[float, str]]) -> tuple[str, int]:
    tx = block = None
    for _t, line in lines:
        words = line.split()
        if "bitcoin: paid" in line and " tx " in line:
            tx = words[words.index("tx") + 1]
        elif tx and f"tx {tx} mined in block" in line:
            block = int(words[words.index("block") + 1])
    if tx is None or block is None:
        raise DevnetError("the deposit command printed no Bitcoin transaction and block")
    return tx, block


def _printed(lines: list[tuple[float, str]], prefix: str) -> str:
    for _t, line in lines:
        if line.startswith(prefix):
            return line[len(prefix) :].split()[0]
    raise DevnetError(f"the command printed no {prefix.strip()!r}")


class Miner:
    """The devnet's Bitcoin miner for the act: a block whenever a transaction waits."""

    def __init__(self, c: CommitteeAct) -> None:
        self.c = c
        self.btc = _btc_adapter(c.descriptor)
        self.mined: list[str] = []
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "Miner":
        self.task = asyncio.create_task(mine_mempool(self.btc, self.c.descriptor["bitcoin"]["keys"][0]["address"], self.mined))
        return self

    async def __aexit__(self, *exc) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.btc.close()


async def btc_deposit(c: CommitteeAct, miner: Miner, account: int, amount: str) -> dict:
    """`deposit btc` for devnet account ``account``: its address (registering its key), then a
    payment of ``amount`` BTC from devnet BTC key ``BTC_FUNDER`` followed until credited everywhere."""
    say = c.say
    user = c.descriptor["evm"]["accounts"][account]["address"]
    say(f"user: bridgectl deposit btc --account {account}   (its deposit address: registers the account's key first)")
    lines = await run_command(c, "deposit", "btc", "--account", str(account))
    address = _printed(lines, "deposit address")
    await wait_until(lambda: all(c.status(n).btc_keys(user) for n in c.replicas), timeout=30, what="the key in every replica")
    say(f"the key of account {account} is registered in all {len(c.replicas)} replicas: every attester watches {address}")
    say(f"user: bridgectl deposit btc --account {account} --fund {amount} --btc-key {BTC_FUNDER}")
    args = ("deposit", "btc", "--account", str(account), "--fund", amount, "--btc-key", str(BTC_FUNDER), "--timeout", "60")
    return await _credited_everywhere(c, user, "BTC", args, _btc_tx_block)


async def btc_withdraw(c: CommitteeAct, miner: Miner, account: int, amount: str) -> dict:
    """`withdraw btc` of ``amount`` BTC for devnet account ``account`` to a fresh Bitcoin address,
    followed until paid, confirmed and posted in every replica."""
    from bridge.cli.committee import render_withdrawal
    from chains.bitcoin_wallet import BtcKey

    payee = BtcKey.generate()
    to = payee.p2wpkh_address("regtest")
    c.say(f"user: bridgectl withdraw btc --amount {amount} --to {to} --account {account}   (a fresh Bitcoin address)")
    lines = await run_command(c, "withdraw", "btc", "--amount", amount, "--to", to, "--account", str(account), "--timeout", "90")
    nonce = int(_printed(lines, "withdrawal request ").rstrip(":"))
    await wait_until(lambda: all(_request_state(c, name, nonce) == "released" for name in c.replicas), timeout=30, what="the payout posted everywhere")
    view = c.status("service").withdrawal(nonce)
    received = await miner.btc.balance([payee.p2wpkh_script])
    payout = view["payout"] or {}
    c.say(
        f"request {nonce}: paid on Bitcoin in {payout.get('txid')} (block {(payout.get('confirmed') or {}).get('block')}); "
        f"{to} holds {_btc(received)} BTC on chain; every replica posted the hold"
    )
    return {"request": nonce, "to": to, "received": _btc(received), "status": render_withdrawal(view)}


def _btc(sats: int) -> str:
    from bridge.swaps.assets import BTC

    return BTC.to_whole(sats)


def balances(c: CommitteeAct, user: str, account: int = USER_ACCOUNT) -> str:
    """Each replica's positions of ``user`` (negative: owed), with what its requests hold."""
    rows = []
    for name in c.replicas:
        held = {b["asset"]: b["held"] for b in c.status(name).balances(user) if b["held_base"] != "0"}
        entries = c.status(name).positions(user)
        books = ", ".join(f"{b['amount']} {b['asset']}" + (f" ({held[b['asset']]} held)" if b["asset"] in held else "") for b in entries) or "nothing"
        rows.append(f"  {name:10} {books}")
    return f"margin of {user} (account {account}) in each replica:\n" + "\n".join(rows)


async def run_committee(descriptor: dict, data_dir: Path, say) -> dict:
    """The committee act; returns what happened for the summary."""
    from bridge.demo_liquidation import liquidation_act

    c = CommitteeAct(data_dir, descriptor, say)
    user = descriptor["evm"]["accounts"][USER_ACCOUNT]["address"]
    try:
        await c.start()
        deposits = [await deposit(c, user, asset, amount) for asset, amount in DEPOSITS]
        withdrawal = await withdraw(c, user, *WITHDRAWAL)
        started = time.monotonic()
        async with Miner(c) as miner:
            height = await miner.btc.height()
            say(f"Bitcoin: the demo mines a block whenever a transaction waits (height {height}); custody {c.config.bitcoin.policy.descriptor[:40]}…")
            say(f"Bitcoin collateral: account {USER_ACCOUNT} deposits {BTC_DEPOSIT} BTC to its own deposit address")
            deposits.append(await btc_deposit(c, miner, USER_ACCOUNT, BTC_DEPOSIT))
            liquidation = await liquidation_act(c, miner)
            say(f"the second trader (account {USER_ACCOUNT}) withdraws {BTC_WITHDRAWAL} BTC of its own to a Bitcoin address")
            btc = await btc_withdraw(c, miner, USER_ACCOUNT, BTC_WITHDRAWAL)
            say(f"Bitcoin: the demo mined {len(miner.mined)} blocks in these acts (height {await miner.btc.height()})")
        print(f"\nBTC withdrawal request {btc['request']} (bridgectl withdraw status {btc['request']}):\n{btc['status']}\n", flush=True)
        say(f"the Bitcoin acts took {time.monotonic() - started:.1f}s")
        books = "\n".join(balances(c, descriptor["evm"]["accounts"][i]["address"], i) for i in (USER_ACCOUNT, *liquidation["accounts"]))
        agree = all(
            len({tuple(sorted((b["asset"], b["amount_base"]) for b in c.status(n).positions(a))) for n in c.replicas}) == 1
            for a in (user, *liquidation["addresses"])
        )
        say(f"the {len(c.replicas)} replicas {'agree' if agree else 'DISAGREE'} on the margin of every account of the demo (BTC included)")
        return {"deposits": deposits, "withdrawal": withdrawal, "btc": btc, "liquidation": liquidation, "balances": books, "agree": agree, "work": str(c.work)}
    finally:
        c.stop()
