"""Typed settings: defaults, then a TOML file, then environment variables.

File: ``--config PATH``, else ``$BRIDGE_CONFIG``, else ``./bridge.toml`` when present.
Environment: ``BRIDGE_<SECTION>__<KEY>`` (e.g. ``BRIDGE_EVM__RPC_URL``), and
``BRIDGE_<KEY>`` for top-level keys (e.g. ``BRIDGE_DATABASE_URL``).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bridge.core.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BitcoinSettings(_Section):
    #: "embedded" runs devnets.regtest; "bitcoind" runs a real bitcoind -regtest.
    backend: Literal["embedded", "bitcoind"] = "embedded"
    bitcoind_path: str | None = None
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 18443
    rpc_user: str | None = None
    rpc_password: str | None = None
    #: Cookie file; default is ``<devnet data dir>/bitcoin/regtest/.cookie``.
    cookie_file: str | None = None
    network: Literal["regtest", "testnet", "signet", "mainnet"] = "regtest"
    confirmations: int = Field(default=1, ge=0)
    #: Feerate (sat/vB) used when the node cannot estimate (always the case on a fresh regtest).
    fallback_feerate: int = Field(default=2, ge=1)
    rpc_timeout: float = 30.0
    #: Learn of new blocks at once through the ``waitforblockheight`` long poll (false: poll).
    push_blocks: bool = True

    @property
    def rpc_url(self) -> str:
        return f"http://{self.rpc_host}:{self.rpc_port}/"


class EvmSettings(_Section):
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 8545
    #: Full URL; overrides host/port (point it at any EVM node).
    url: str | None = None
    chain_id: int = 31337
    hardfork: str = "prague"
    #: Use ``anvil`` from PATH instead of the pinned one in node_modules.
    anvil_from_path: bool = False
    anvil_path: str | None = None
    confirmations: int = Field(default=1, ge=0)
    log_chunk_size: int = Field(default=2000, ge=1)
    rpc_timeout: float = 30.0
    #: Learn of new blocks at once through ``eth_subscribe("newHeads")`` on ``ws_url`` (false: poll).
    push_blocks: bool = True
    #: The node's websocket; default: the RPC URL with ``ws://`` (Anvil serves both on one port).
    ws_url: str | None = None

    @property
    def rpc_url(self) -> str:
        return self.url or f"http://{self.rpc_host}:{self.rpc_port}"


class IndexerSettings(_Section):
    poll_interval: float = Field(default=0.5, gt=0)
    batch_blocks: int = Field(default=500, ge=1)


class CommitteeSettings(_Section):
    """The margin bridge's committee side (``bridge.committee``)."""

    #: The bridge's description (``committee.json``); default: the one in the data dir.
    config: str | None = None
    #: Where attesters leave signatures; default: the bridge database.  A shared PostgreSQL
    #: when attesters run on several machines.
    store_url: str | None = None
    #: How often a daemon looks at the attestation store for new signatures (seconds).
    poll_interval: float = Field(default=0.25, gt=0)


class Settings(_Section):
    #: Where devnets keep chains, logs, pid files and the devnet descriptor.
    data_dir: str = ".devnet"
    #: Any SQLAlchemy URL; default is a SQLite file in the data dir.
    database_url: str | None = None
    log_level: str = "INFO"
    bitcoin: BitcoinSettings = Field(default_factory=BitcoinSettings)
    evm: EvmSettings = Field(default_factory=EvmSettings)
    indexer: IndexerSettings = Field(default_factory=IndexerSettings)
    committee: CommitteeSettings = Field(default_factory=CommitteeSettings)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_path / 'bridge.sqlite'}"

    @property
    def committee_config(self) -> Path:
        return Path(self.committee.config).expanduser() if self.committee.config else self.data_path / "committee.json"

    @property
    def store_url(self) -> str:
        return self.committee.store_url or self.db_url


_SECTIONS = {"bitcoin", "evm", "indexer", "committee"}


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith("BRIDGE_") or key == "BRIDGE_CONFIG":
            continue
        rest = key[len("BRIDGE_") :].lower()
        if "__" in rest:
            section, field = rest.split("__", 1)
            if section in _SECTIONS:
                out.setdefault(section, {})[field] = value
        elif rest in Settings.model_fields:
            out[rest] = value
        # Other BRIDGE_* names (BRIDGE_EVM_KEY, BRIDGE_DELIVERER_KEY, ...) are keys and the like
        # that commands read themselves: not settings, and no reason to refuse to start.
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = _merge(merged[k], v)
        else:
            merged[k] = v
    return merged


def load_settings(config: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Load settings; raise ``ConfigError`` naming the bad key on any problem."""
    environ = dict(os.environ if environ is None else environ)
    path = config or environ.get("BRIDGE_CONFIG")
    data: dict[str, Any] = {}
    if path is None and Path("bridge.toml").exists():
        path = "bridge.toml"
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    data = _merge(data, _env_overrides(environ))
    data = _merge(data, {k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from None
