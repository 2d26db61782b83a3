"""The documented devnet test keys.  NEVER use them anywhere but a devnet.

EVM: the first accounts of Anvil's well-known dev mnemonic
("test test … junk", path m/44'/60'/0'/0/i), each funded with 10,000 ETH.

Committee: attester key i is sha256("bridge-devnet-attester-<i>") (``committee_test_keys``).

Bitcoin: private key i is sha256("bridge-devnet-btc-<i>"); each one receives
BTC_BLOCKS_PER_KEY coinbase outputs (mined straight to its P2WPKH address, so no
signing is needed to fund it), matured by mining 100 more blocks to the miner
key (index 0).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from eth_account import Account

from devnets.anvil import DEV_MNEMONIC

EVM_KEY_COUNT = 10
#: The devnet's bridge committee: 4 attesters, 3 of them a quorum.
COMMITTEE_SIZE = 4
COMMITTEE_THRESHOLD = 3
BTC_KEY_COUNT = 5
BTC_BLOCKS_PER_KEY = 5
COINBASE_MATURITY = 100

_WIF_PREFIX = {"regtest": b"\xef", "testnet": b"\xef", "signet": b"\xef", "mainnet": b"\x80"}


@dataclass(frozen=True)
class EvmTestKey:
    index: int
    address: str
    private_key: str  # 0x-hex


@dataclass(frozen=True)
class BtcTestKey:
    index: int
    private_key: str  # hex
    wif: str
    pubkey: str  # compressed, hex
    address: str  # P2WPKH


def evm_test_keys(count: int = EVM_KEY_COUNT) -> list[EvmTestKey]:
    Account.enable_unaudited_hdwallet_features()
    keys = []
    for i in range(count):
        acct = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        keys.append(EvmTestKey(i, acct.address, "0x" + acct.key.hex().removeprefix("0x")))
    return keys


def btc_test_keys(count: int = BTC_KEY_COUNT, network: str = "regtest") -> list[BtcTestKey]:
    from bitcoinlib.keys import Key

    keys = []
    for i in range(count):
        secret = hashlib.sha256(f"bridge-devnet-btc-{i}".encode()).digest()
        key = Key(secret.hex(), network="regtest" if network == "regtest" else network, compressed=True)
        keys.append(
            BtcTestKey(
                index=i,
                private_key=secret.hex(),
                wif=key.wif(prefix=_WIF_PREFIX[network]),
                pubkey=key.public_hex,
                address=key.address(encoding="bech32", script_type="p2wpkh"),
            )
        )
    return keys


def committee_test_keys(count: int = COMMITTEE_SIZE) -> list[EvmTestKey]:
    """The devnet attesters' keys: key i is sha256("bridge-devnet-attester-<i>"), in the order of
    their addresses (the committee's signer order)."""
    keys = []
    for i in range(count):
        secret = hashlib.sha256(f"bridge-devnet-attester-{i}".encode()).digest()
        keys.append((Account.from_key(secret).address, secret))
    keys.sort(key=lambda k: k[0].lower())
    return [EvmTestKey(i, address, "0x" + secret.hex()) for i, (address, secret) in enumerate(keys)]


def as_dicts(keys) -> list[dict]:
    return [asdict(k) for k in keys]
