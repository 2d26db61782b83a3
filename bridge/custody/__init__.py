"""Bitcoin custody of the committee bridge (DESIGN.md, "Attested messages and the committee").

* ``scripts``: the committee's ``CustodyPolicy``, the main custody multisig and the per-account
  deposit scripts and addresses (derivable by anyone from the committee keys and the account),
  their strict parser, and the EVM-key refund key of an account.
* ``spend``: sweeps and payouts as BIP-174 PSBTs, partial signatures, combining, finalizing; the
  depositor's refund after the relative delay.
* ``policy``: what every attester checks before it signs a PSBT, against its replica.
"""

from bridge.custody.policy import ExpectedPayout, PayoutCheck, PayoutRefused, check_payout, sign_payout
from bridge.custody.scripts import (
    AddressCheck,
    CustodyPolicy,
    CustodyRefused,
    DepositTerms,
    custody_address,
    custody_script,
    custody_script_pubkey,
    deposit_address,
    deposit_script,
    deposit_script_pubkey,
    parse_deposit_script,
    pubkey_matches_evm_address,
    refund_pubkey_of_evm_key,
    verify_deposit_address,
)
from bridge.custody.spend import CustodyCoin, add_signature, build_payout, build_refund, build_spend, build_sweep, combine, finalize, spend_vsize

__all__ = [
    "AddressCheck",
    "CustodyCoin",
    "CustodyPolicy",
    "CustodyRefused",
    "DepositTerms",
    "ExpectedPayout",
    "PayoutCheck",
    "PayoutRefused",
    "add_signature",
    "build_payout",
    "build_refund",
    "build_spend",
    "build_sweep",
    "check_payout",
    "combine",
    "custody_address",
    "custody_script",
    "custody_script_pubkey",
    "deposit_address",
    "deposit_script",
    "deposit_script_pubkey",
    "finalize",
    "parse_deposit_script",
    "pubkey_matches_evm_address",
    "refund_pubkey_of_evm_key",
    "sign_payout",
    "spend_vsize",
    "verify_deposit_address",
]
