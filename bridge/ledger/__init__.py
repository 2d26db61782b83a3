"""The unified cross-chain margin ledger: double-entry, multi-asset, idempotent."""

from bridge.ledger.assets import Asset, btc, erc20, eth
from bridge.ledger.core import ACCOUNT_KINDS, Account, CommitResult, Ledger, Transfer

__all__ = ["ACCOUNT_KINDS", "Account", "Asset", "CommitResult", "Ledger", "Transfer", "btc", "erc20", "eth"]
