"""Swaps as users run them, as real OS processes, for the crash tests and ``bench/swaps.py``.

The LP is ``bridgectl relayer run lp`` and each trader ``bridgectl swap start`` (resumed
after a crash with ``bridgectl swap status ID --watch``), each with its own data dir,
keys and SQLite database, against a regtest node and an Anvil.  ``Books`` snapshots
every party's balances and, at the end, checks them against what the swaps say, fee
by fee, read back from the chains.

Run through this file (``python tests/swap_harness.py [--crash-at POINT[#N]] -- ARGS``)
a bridgectl process SIGKILLs itself the N-th time it reaches a named point of the swap
(``CRASH_POINTS``); the bridge code itself knows nothing about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Where a process can be told to die.  ``recorded.<state>``: just after a state change
#: committed; ``*.before/after_broadcast``: around sending a lock or a claim/refund, so
#: after-broadcast means "on chain (or in the mempool) but not yet recorded";
#: ``evm.sent``: an EVM transaction accepted by the node (``EvmAdapter.send``), not yet looked at;
#: ``notify.sent``: the LP was told of the trader's lock, the trader did not record it.
CRASH_POINTS = (
    "recorded.initiator_lock_intended",
    "recorded.initiator_locked",
    "recorded.participant_lock_intended",
    "recorded.participant_locked",
    "recorded.claim_intended",
    "recorded.refund_intended",
    "recorded.claimed",
    "lock.before_broadcast",
    "lock.after_broadcast",
    "spend.before_broadcast",
    "spend.after_broadcast",
    "evm.sent",
    "notify.sent",
)
CRASH_MARK = "CRASH POINT REACHED:"

from devnets.presets import MARKETS, ONE_BTC, ONE_ETH, TIMELOCK  # noqa: E402, F401 - the scenario's presets, defined once


# --- crash points, inside the bridgectl process ----------------------------------------------


def install_crash_point(spec: str) -> None:
    """Make this process SIGKILL itself at the N-th hit of ``POINT`` (``spec`` = ``POINT[#N]``)."""
    from bridge.swaps import legs
    from bridge.swaps.protocol import LpClient
    from bridge.swaps.store import SwapStore
    from chains.evm import EvmAdapter

    point, _, nth = spec.partition("#")
    if point not in CRASH_POINTS:
        raise SystemExit(f"unknown crash point {point!r}; known: {', '.join(CRASH_POINTS)}")
    wanted, hits = int(nth or 1), 0

    def hit(name: str) -> None:
        nonlocal hits
        if name != point:
            return
        hits += 1
        if hits == wanted:
            sys.stderr.write(f"{CRASH_MARK} {spec}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def around(cls: type, method: str, before: str | None, after: str | None) -> None:
        original = getattr(cls, method)

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            if before:
                hit(before)
            result = await original(*args, **kwargs)
            if after:
                hit(after)
            return result

        setattr(cls, method, wrapped)

    for leg_cls in (legs.BitcoinLeg, legs.EvmLeg):
        around(leg_cls, "broadcast_lock", "lock.before_broadcast", "lock.after_broadcast")
        around(leg_cls, "broadcast_spend", "spend.before_broadcast", "spend.after_broadcast")
    around(EvmAdapter, "send", None, "evm.sent")
    around(LpClient, "notify_locked", None, "notify.sent")
    transition = SwapStore.transition

    def recorded(self: SwapStore, swap_id: str, expect: Any, to: str, *args: Any, **kwargs: Any) -> Any:
        view = transition(self, swap_id, expect, to, *args, **kwargs)
        if to not in ({expect} if isinstance(expect, str) else set(expect)):
            hit(f"recorded.{to}")
        return view

    SwapStore.transition = recorded  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    crash = None
    if argv[:1] == ["--crash-at"]:
        crash, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if crash:
        install_crash_point(crash)
    from bridge.cli import main as bridgectl

    return bridgectl(argv)


# --- devnets, keys, configs ---------------------------------------------------------------------


NODE_AUTH = ("bridge", "bridge")


def bitcoin_node(data_dir: Path) -> Any:
    """A private embedded regtest node (``devnets.bitcoin_node.BitcoinNode``) with known RPC credentials."""
    from devnets.bitcoin_node import BitcoinNode

    return BitcoinNode(data_dir, rpc_user=NODE_AUTH[0], rpc_password=NODE_AUTH[1])


@dataclass
class Chains:
    """Adapters on the two devnets plus the contracts deployed for the swaps."""

    btc: Any  # chains.bitcoin.BitcoinAdapter
    evm: Any  # chains.evm.EvmAdapter
    btc_url: str
    btc_auth: tuple[str, str]
    evm_url: str
    htlc: str = ""
    tusd: str = ""
    deployer: str = ""

    @classmethod
    async def open(cls, btc_url: str, btc_auth: tuple[str, str], evm_url: str) -> "Chains":
        from eth_account import Account

        from chains.bitcoin import BitcoinAdapter
        from chains.bitcoin_rpc import BitcoinRpc
        from chains.evm import EvmAdapter
        from devnets.controls import AnvilControls
        from htlc.evm import Erc20, EvmHtlc

        btc = BitcoinAdapter(BitcoinRpc(btc_url, user=btc_auth[0], password=btc_auth[1]))
        evm = await EvmAdapter.connect(evm_url)
        chains = cls(btc, evm, btc_url, btc_auth, evm_url)
        deployer = Account.create()
        await AnvilControls(evm).set_balance(deployer.address, 10 * ONE_ETH)
        chains.deployer = deployer.key.to_0x_hex()
        chains.htlc = (await EvmHtlc.deploy(evm, chains.deployer)).address
        chains.tusd = (await Erc20.deploy(evm, chains.deployer, "TestToken", "Test USD", "TUSD", 6)).address
        return chains

    async def close(self) -> None:
        await self.btc.close()
        await self.evm.close()

    def env(self, data_dir: Path) -> dict[str, str]:
        host, port = self.btc_url.removeprefix("http://").rstrip("/").split(":")
        return {
            "BRIDGE_BITCOIN__RPC_HOST": host,
            "BRIDGE_BITCOIN__RPC_PORT": port,
            "BRIDGE_BITCOIN__RPC_USER": self.btc_auth[0],
            "BRIDGE_BITCOIN__RPC_PASSWORD": self.btc_auth[1],
            "BRIDGE_EVM__URL": self.evm_url,
            "BRIDGE_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }

    async def fund_btc(self, payments: list[tuple[bytes, int]]) -> None:
        """Pay each (scriptPubKey, sats) from fresh coinbases, confirmed (a private node: 50 BTC a block early on)."""
        from chains.bitcoin import COINBASE_MATURITY
        from chains.bitcoin_wallet import BtcKey
        from devnets.controls import BitcoinDevnet

        funder = BtcKey.generate()
        need = sum(s for _, s in payments) + ONE_BTC
        while await self.btc.balance([funder.p2wpkh_script]) < need:
            await BitcoinDevnet(self.btc).mine(1, funder.p2wpkh_address())
            await BitcoinDevnet(self.btc).mine(COINBASE_MATURITY)
        await self.btc.send_to([funder], payments, 2)
        await BitcoinDevnet(self.btc).mine(1)

    async def increase_evm_time(self, seconds: int) -> None:
        from devnets.controls import AnvilControls

        await AnvilControls(self.evm).increase_time(seconds)


def automine(btc: Any, interval: float = 0.05) -> contextlib.AbstractAsyncContextManager[None]:
    """Mine a Bitcoin block whenever the mempool is not empty (Anvil automines by itself)."""
    from devnets.controls import BitcoinDevnet

    return BitcoinDevnet(btc).mining_mempool(interval)


@dataclass
class Identity:
    btc: Any  # chains.bitcoin_wallet.BtcKey
    evm_key: str
    address: str

    @classmethod
    def new(cls) -> "Identity":
        from eth_account import Account

        from chains.bitcoin_wallet import BtcKey

        acct = Account.create()
        return cls(BtcKey.generate(), acct.key.to_0x_hex(), acct.address)


def swap_toml(who: Identity, chains: Chains, port: int = 0, poll_interval: float = 0.1) -> str:
    timelock = "\n".join(f"{k} = {v}" for k, v in TIMELOCK.items())
    markets = "\n".join(f'[lp.markets."{name}"]\nrate = "{m["rate"]}"\nmin_sell = {m["min_sell"]}\nmax_sell = {m["max_sell"]}' for name, m in MARKETS.items())
    return f"""btc_key = "{who.btc.secret.hex()}"
evm_key = "{who.evm_key}"
htlc = "{chains.htlc}"
btc_feerate = 2
poll_interval = {poll_interval}
[tokens.tusd]
address = "{chains.tusd}"
decimals = 6
[timelock]
{timelock}
[lp]
port = {port}
# The bench and the concurrent tests start many swaps at once from one address.
max_open_per_client = 5000
{markets}
"""


async def open_party(home: Path, chains: Chains, who: Identity, lp: Any = None, poll_interval: float = 0.1) -> Any:
    """A ``bridge.swaps.party.Party`` in this process (what ``bridgectl swap start`` runs), own SQLite file."""
    import tomllib

    from bridge.core.settings import BitcoinSettings, EvmSettings, Settings
    from bridge.swaps.config import SwapConfig
    from bridge.swaps.party import Party as SwapParty

    home.mkdir(parents=True, exist_ok=True)
    host, port = chains.btc_url.removeprefix("http://").rstrip("/").split(":")
    settings = Settings(
        data_dir=str(home),
        database_url=f"sqlite:///{home / 'bridge.sqlite'}",
        bitcoin=BitcoinSettings(rpc_host=host, rpc_port=int(port), rpc_user=chains.btc_auth[0], rpc_password=chains.btc_auth[1]),
        evm=EvmSettings(url=chains.evm_url),
    )
    config = SwapConfig.model_validate(tomllib.loads(swap_toml(who, chains, poll_interval=poll_interval)))
    return await SwapParty.open(settings, config, lp)


# --- processes -------------------------------------------------------------------------------------


@dataclass
class Proc:
    """One bridgectl process whose output goes to a log file kept in its data dir."""

    popen: asyncio.subprocess.Process
    log: Path
    crash_at: str | None
    started: float

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def crashed_at_point(self) -> bool:
        return self.returncode == -signal.SIGKILL and self.crash_at is not None and CRASH_MARK in self.log.read_text(errors="replace")[-4000:]


async def spawn(args: list[str], env: dict[str, str], log: Path, crash_at: str | None = None) -> Proc:
    prefix = ["--crash-at", crash_at] if crash_at else []
    with open(log, "ab") as out:
        out.write(f"\n=== {time.strftime('%H:%M:%S')} bridgectl {' '.join(args)} (crash at {crash_at})\n".encode())
        popen = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            *prefix,
            "--",
            *args,
            env={**os.environ, **env},
            cwd=REPO_ROOT,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    return Proc(popen, log, crash_at, time.monotonic())


def sigkill(proc: Proc) -> bool:
    """SIGKILL ``proc`` (only this pid); False if it had already ended."""
    if proc.returncode is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.popen.pid, signal.SIGKILL)
    return True


async def reap(proc: Proc, timeout: float = 20.0) -> int:
    from bridge.core.testing import wait_until

    await wait_until(lambda: proc.returncode is not None, timeout=timeout, what=f"pid {proc.popen.pid} to end")
    return proc.returncode  # type: ignore[return-value]


async def http_ok(url: str) -> bool:
    import aiohttp

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http, http.get(f"{url}/health") as resp:
            return resp.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return False


@dataclass
class Party:
    """A trader or the LP: keys, data dir, swap config, and its current process."""

    name: str
    who: Identity
    home: Path
    chains: Chains
    port: int = 0
    proc: Proc | None = None
    _store: Any = None

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.config.write_text(swap_toml(self.who, self.chains, self.port))

    @property
    def config(self) -> Path:
        return self.home / "swaps.toml"

    @property
    def log(self) -> Path:
        return self.home / "process.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def store(self) -> Any:
        """The party's swap database, read from this process (SQLite WAL: the party's commits are visible)."""
        from bridge.core.db import make_engine
        from bridge.swaps.store import SwapStore

        if self._store is None:
            self._store = SwapStore(make_engine(f"sqlite:///{self.home / 'bridge.sqlite'}"))
        return self._store

    async def run(self, args: list[str], crash_at: str | None = None) -> Proc:
        self.proc = await spawn([*args, "--swap-config", str(self.config)], self.chains.env(self.home), self.log, crash_at)
        return self.proc

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


async def start_lp(party: Party, crash_at: str | None = None) -> Proc:
    from bridge.core.testing import wait_until

    proc = await party.run(["relayer", "run", "lp", "--port", str(party.port)], crash_at)
    # A crash point may fire before the HTTP endpoint is up only if the engine resumes a swap first.
    await wait_until(lambda: _up_or_dead(party), timeout=60, what=f"LP daemon up on {party.url} (log {party.log})")
    return proc


async def _up_or_dead(party: Party) -> bool:
    return not party.alive() or await http_ok(party.url)


# --- the books: balances before and after, fees from the chains -------------------------------


@dataclass
class Snapshot:
    btc_height: int
    evm_block: int
    balances: dict[str, dict[str, int]]  # party -> asset -> base units


class Books:
    """Every party's BTC, ETH and TUSD, and the fees each paid, read from the chains."""

    def __init__(self, chains: Chains, parties: list[Party]) -> None:
        self.chains = chains
        self.parties = parties

    async def balances(self) -> dict[str, dict[str, int]]:
        from htlc.evm import Erc20

        token = Erc20(self.chains.evm, self.chains.tusd)
        out = {}
        for p in self.parties:
            out[p.name] = {
                "btc": await self.chains.btc.balance([p.who.btc.p2wpkh_script]),
                "eth": await self.chains.evm.balance(p.who.address),
                "tusd": await token.balance(p.who.address),
            }
        return out

    async def snapshot(self) -> Snapshot:
        return Snapshot(await self.chains.btc.height(), await self.chains.evm.height(), await self.balances())

    async def btc_txs(self, start: Snapshot) -> list[dict[str, Any]]:
        """Non-coinbase transactions mined after ``start``, with prevouts (getblock verbosity 3)."""
        rpc = self.chains.btc.rpc
        txs = []
        for height in range(start.btc_height + 1, await self.chains.btc.height() + 1):
            block = await rpc.call("getblock", await rpc.call("getblockhash", height), 3)
            txs += block["tx"][1:]
        return txs

    async def evm_txs(self, start: Snapshot) -> list[dict[str, Any]]:
        """Transactions mined after ``start`` with their receipts' gas used and effective gas price."""
        evm = self.chains.evm
        out = []
        for number in range(start.evm_block + 1, await evm.height() + 1):
            block = await evm.rpc.call("eth_getBlockByNumber", [hex(number), True])
            for tx in block["transactions"]:
                receipt = await evm.rpc.call("eth_getTransactionReceipt", [tx["hash"]])
                out.append({"from": tx["from"].lower(), "hash": tx["hash"], "fee": int(receipt["gasUsed"], 16) * int(receipt["effectiveGasPrice"], 16)})
        return out


def sats(value: Any) -> int:
    from chains.bitcoin_tx import btc_to_sats

    return btc_to_sats(value)


def btc_fees(txs: list[dict[str, Any]], scripts: dict[str, str]) -> dict[str, int]:
    """Fee paid per party: a tx spending a party's P2WPKH coins is that party's (a lock or a
    funding), a tx spending only HTLC outputs is paid by whoever its outputs go to (claim/refund)."""
    owner_of = {spk: name for name, spk in scripts.items()}
    fees = {name: 0 for name in scripts}
    for tx in txs:
        fee = sum(sats(v["prevout"]["value"]) for v in tx["vin"]) - sum(sats(o["value"]) for o in tx["vout"])
        payers = {owner_of.get(v["prevout"]["scriptPubKey"]["hex"]) for v in tx["vin"]} - {None}
        if not payers:
            payers = {owner_of.get(o["scriptPubKey"]["hex"]) for o in tx["vout"]} - {None}
        if len(payers) != 1:
            raise AssertionError(f"bitcoin tx {tx['txid']} has no single paying party: {payers}")
        fees[payers.pop()] += fee
    return fees


def htlc_outputs(txs: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(tx["txid"], o["n"]) for tx in txs for o in tx["vout"] if o["scriptPubKey"].get("type") == "witness_v0_scripthash"]


def preimage_in(tx: dict[str, Any], outpoint: tuple[str, int], hashlock: str) -> bool:
    for vin in tx["vin"]:
        if (vin.get("txid"), vin.get("vout")) == outpoint:
            return any(len(w) == 64 and sha256(bytes.fromhex(w)).hexdigest() == hashlock for w in vin.get("txinwitness", []))
    return False


def spender(txs: list[dict[str, Any]], outpoint: tuple[str, int]) -> dict[str, Any] | None:
    return next((tx for tx in txs if any((v.get("txid"), v.get("vout")) == outpoint for v in tx["vin"])), None)


async def reconcile(books: Books, start: Snapshot, lp: Party, traders: list[Party]) -> dict[str, Any]:
    """Check every swap against both chains and both parties' records; raise AssertionError naming
    each difference.  Returns the figures (swaps by outcome, fees, per-asset loss, which is 0)."""
    from bridge.core.errors import NotFound
    from bridge.swaps import models as m
    from bridge.swaps.books import leg_outcome as recorded_outcome
    from htlc.evm import EvmHtlc, Locked, SwapStatus

    chains = books.chains
    htlc = EvmHtlc(chains.evm, chains.htlc)
    btc_txs = await books.btc_txs(start)
    problems: list[str] = []
    expected = {p.name: {"btc": 0, "eth": 0, "tusd": 0} for p in [lp, *traders]}
    outcomes: dict[str, int] = {}
    lp_store = lp.store()
    fates: dict[str, dict[str, tuple[Any, str]]] = {}  # swap id -> leg -> (leg row, fate on chain)

    async def leg_outcome(leg: Any, hashlock: str) -> str:
        """What the chain says happened to one leg's lock: none, locked, claimed or refunded."""
        if not leg.lock_ref:
            return "none"
        if leg.chain == "bitcoin":
            txid, vout = leg.lock_ref.split(":")
            tx = spender(btc_txs, (txid, int(vout)))
            if tx is None:
                return "locked"
            return "claimed" if preimage_in(tx, (txid, int(vout)), hashlock) else "refunded"
        status = await htlc.swap(leg.lock_ref)
        return {SwapStatus.NONE: "none", SwapStatus.LOCKED: "locked", SwapStatus.CLAIMED: "claimed", SwapStatus.REFUNDED: "refunded"}[status]

    for trader in traders:
        for view in trader.store().list():
            sid, ts = view.swap.id, view.swap.state
            try:
                lview = lp_store.get(sid)
            except NotFound:
                lview = None
            ls = lview.swap.state if lview else "absent"
            outcomes[f"{ts}/{ls}"] = outcomes.get(f"{ts}/{ls}", 0) + 1
            where = f"swap {sid} ({trader.name} {ts}, LP {ls})"
            if ts not in m.TERMINAL or ls not in (*m.TERMINAL, "absent"):
                problems.append(f"{where}: not finished")
            ileg = view.leg(m.INITIATOR)
            pleg = lview.leg(m.PARTICIPANT) if lview else view.leg(m.PARTICIPANT)
            i_out = await leg_outcome(ileg, view.swap.hashlock)
            p_out = await leg_outcome(pleg, view.swap.hashlock)
            # Each leg as the parties recorded it ended (the state, for rows without an outcome);
            # a leg neither party saw settled must never have been locked.
            recorded = {}
            for name in m.LEGS:
                mine = recorded_outcome(view, view.leg(name))
                theirs = recorded_outcome(lview, lview.leg(name)) if lview else None
                if mine and theirs and mine != theirs:
                    problems.append(f"{where}: the trader records the {name} leg {mine}, the LP {theirs}")
                recorded[name] = mine or theirs or "none"
            want_i, want_p = recorded[m.INITIATOR], recorded[m.PARTICIPANT]
            if ls == m.CLAIM_LOST and (i_out, p_out) != ("refunded", "claimed"):
                problems.append(f"{where}: the LP lost its claim, but on chain the trader's lock is {i_out}, the LP's {p_out}")
            if i_out != want_i:
                problems.append(f"{where}: trader's lock {ileg.lock_ref} is {i_out} on chain, the records say {want_i}")
            if p_out != want_p:
                problems.append(f"{where}: LP's lock {pleg.lock_ref} is {p_out} on chain, the records say {want_p}")
            if lview and ileg.lock_ref and lview.leg(m.INITIATOR).lock_ref not in (None, ileg.lock_ref):
                problems.append(f"{where}: the LP recorded the trader's lock as {lview.leg(m.INITIATOR).lock_ref}, the trader {ileg.lock_ref}")
            fates[sid] = {m.INITIATOR: (ileg, i_out), m.PARTICIPANT: (pleg, p_out)}
            if i_out == "claimed":
                expected[trader.name][ileg.asset] -= ileg.value
                expected[lp.name][ileg.asset] += ileg.value
            if p_out == "claimed":
                expected[lp.name][pleg.asset] -= pleg.value
                expected[trader.name][pleg.asset] += pleg.value

    # Nothing left in any HTLC: every P2WSH output made since the start is spent, every EVM lock settled.
    for txid, vout in htlc_outputs(btc_txs):
        if await chains.btc.rpc.call("gettxout", txid, vout, True) is not None:
            problems.append(f"bitcoin HTLC output {txid}:{vout} is still unspent")
    evm_events = await htlc.events(start.evm_block + 1) if await chains.evm.height() > start.evm_block else []
    for event in evm_events:
        if isinstance(event, Locked) and await htlc.swap(event.id) == SwapStatus.LOCKED:
            problems.append(f"EVM HTLC swap 0x{event.id.hex()} is still locked ({event.swap.amount} of {event.swap.token})")

    for party in [lp, *traders]:
        problems += ledger_differences(party, party is lp, fates)

    end = await books.balances()
    parties = [lp, *traders]
    fees_btc = btc_fees(btc_txs, {p.name: p.who.btc.p2wpkh_script.hex() for p in parties})
    evm_txs = await books.evm_txs(start)
    fees_eth = {p.name: sum(t["fee"] for t in evm_txs if t["from"] == p.who.address.lower()) for p in parties}
    lost = {"btc": 0, "eth": 0, "tusd": 0}
    for p in parties:
        fees = {"btc": fees_btc[p.name], "eth": fees_eth[p.name], "tusd": 0}
        for asset in lost:
            delta = end[p.name][asset] - start.balances[p.name][asset]
            if delta != expected[p.name][asset] - fees[asset]:
                problems.append(f"{p.name} {asset}: balance moved by {delta}, the swaps say {expected[p.name][asset]} minus fees {fees[asset]}")
            lost[asset] -= delta + fees[asset]
    if problems:
        raise AssertionError("swap books do not balance:\n  " + "\n  ".join(problems))
    return {
        "outcomes": outcomes,
        "lost": lost,
        "btc_fees": sum(fees_btc.values()),
        "eth_fees": sum(fees_eth.values()),
        "btc_txs": len(btc_txs),
        "evm_txs": len(evm_txs),
    }


def ledger_differences(party: Party, is_lp: bool, fates: dict[str, dict[str, tuple[Any, str]]]) -> list[str]:
    """Where a party's ledger (``bridge.swaps.books``, in its own database) contradicts the chains.

    A party books a leg's lock once it saw it confirmed (and audited), and its claim or
    refund when it made it or learnt of it (and whatever outcome it recorded on the leg);
    it is never told when the counterparty claims the trader's lock or refunds its own, so
    those legs may stay escrowed in that party's books, but must never show the opposite outcome.
    """
    from bridge.ledger.queries import transfer
    from bridge.swaps import models as m
    from bridge.swaps.books import leg_outcome

    engine = party.store().engine
    out = []
    for view in party.store().list():
        for leg_name, (leg, fate) in fates.get(view.swap.id, {}).items():
            booked = {}
            for step in ("lock", "claim", "refund"):
                with contextlib.suppress(Exception):
                    booked[step] = transfer(engine, f"swap:{view.swap.id}:{leg_name}:{step}")
            where = f"{party.name}'s ledger, swap {view.swap.id} {leg_name} leg (chain: {fate})"
            own = leg_name == (m.PARTICIPANT if is_lp else m.INITIATOR)
            knows = {"claimed": not own or is_lp, "refunded": own}.get(fate, False)
            mine = leg_outcome(view, view.leg(leg_name))
            if mine is not None and mine != fate:
                out.append(f"{where}: recorded as {mine}")
            knows = knows or mine is not None
            if fate == "none" and "lock" in booked:
                out.append(f"{where}: books a lock the chain never saw")
            if "claim" in booked and fate != "claimed" or "refund" in booked and fate != "refunded":
                out.append(f"{where}: books {', '.join(sorted(booked))}")
            if knows and not {"lock", fate.removesuffix("ed")} <= set(booked):
                out.append(f"{where}: books only {', '.join(sorted(booked)) or 'nothing'}")
            lock = booked.get("lock")
            if lock is not None and (lock.amount != leg.value or lock.cause != f"{leg.chain}:{leg.lock_ref}"):
                out.append(f"{where}: lock booked as {lock.amount} for {lock.cause}, the chain has {leg.value} at {leg.lock_ref}")
    return out


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
