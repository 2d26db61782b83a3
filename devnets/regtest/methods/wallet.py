"""Wallet RPCs, answered as a bitcoind with wallet support and no wallet loaded: -18 with bitcoind's
text (``GetWalletForJSONRPCRequest``), or, on a ``/wallet/<name>`` path, -18 "Requested wallet does
not exist or is not loaded".  ``loadwallet`` finds no wallet file; ``createwallet`` cannot be served
(the node has no wallet: the project signs with its own keys), also as -18."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from chains.btc.rpc_errors import RPC_WALLET_NOT_FOUND
from devnets.regtest.methods import REQUEST_URI, Arg, RpcFailure, rpc

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode

NO_WALLET = (
    "No wallet is loaded. Load a wallet using loadwallet or create a new one with createwallet. (Note: A default wallet is no longer automatically created)"
)
WALLET_NOT_LOADED = "Requested wallet does not exist or is not loaded"


def wallet_name_from_uri() -> str | None:
    uri = REQUEST_URI.get()
    return unquote(uri[len("/wallet/") :]) if uri.startswith("/wallet/") else None


def no_wallet() -> RpcFailure:
    if wallet_name_from_uri() is not None:
        return RpcFailure(RPC_WALLET_NOT_FOUND, WALLET_NOT_LOADED)
    return RpcFailure(RPC_WALLET_NOT_FOUND, NO_WALLET)


_ANY_ARGS = [Arg(f"arg{i}", "any", "", None, default_doc="") for i in range(1, 9)]


def _no_wallet(name: str, description: str) -> None:
    def fn(node: "RegtestNode", *args: Any) -> None:
        raise no_wallet()

    rpc(name, "Wallet", description, list(_ANY_ARGS))(fn)


for _name, _desc in [
    ("abandontransaction", "Mark in-wallet transaction <txid> as abandoned"),
    ("backupwallet", "Safely copies the current wallet file to the specified destination."),
    ("bumpfee", "Bumps the fee of an opt-in-RBF transaction T, replacing it with a new transaction B."),
    ("encryptwallet", "Encrypts the wallet with 'passphrase'."),
    ("fundrawtransaction", "Add inputs to a transaction until it has enough in value to meet its out value."),
    ("getaddressesbylabel", "Returns the list of addresses assigned the specified label."),
    ("getaddressinfo", "Return information about the given bitcoin address."),
    ("getbalance", "Returns the total available balance."),
    ("getbalances", "Returns an object with all balances in BTC."),
    ("gethdkeys", "List all BIP 32 HD keys in the wallet and which descriptors use them."),
    ("getnewaddress", "Returns a new Bitcoin address for receiving payments."),
    ("getrawchangeaddress", "Returns a new Bitcoin address, for receiving change."),
    ("getreceivedbyaddress", "Returns the total amount received by the given address in transactions with at least minconf confirmations."),
    ("getreceivedbylabel", "Returns the total amount received by addresses with <label> in transactions with at least [minconf] confirmations."),
    ("gettransaction", "Get detailed information about in-wallet transaction <txid>"),
    ("getwalletinfo", "Returns an object containing various wallet state info."),
    ("importdescriptors", "Import descriptors."),
    ("keypoolrefill", "Fills the keypool."),
    ("listaddressgroupings", "Lists groups of addresses which have had their common ownership made public."),
    ("listdescriptors", "List descriptors imported into a descriptor-enabled wallet."),
    ("listlabels", "Returns the list of all labels, or labels that are assigned to addresses with a specific purpose."),
    ("listlockunspent", "Returns list of temporarily unspendable outputs."),
    ("listreceivedbyaddress", "List balances by receiving address."),
    ("listreceivedbylabel", "List received transactions by label."),
    ("listsinceblock", "Get all transactions in blocks since block [blockhash], or all transactions if omitted."),
    ("listtransactions", "Returns up to 'count' most recent transactions."),
    ("listunspent", "Returns array of unspent transaction outputs."),
    ("lockunspent", "Updates list of temporarily unspendable outputs."),
    ("psbtbumpfee", "Bumps the fee of an opt-in-RBF transaction T, replacing it with a new transaction B."),
    ("rescanblockchain", "Rescan the local blockchain for wallet related transactions."),
    ("send", "EXPERIMENTAL warning: this call may be changed in future releases.\n\nSend a transaction."),
    (
        "sendall",
        "EXPERIMENTAL warning: this call may be changed in future releases.\n\nSpend the value of all (or specific) confirmed UTXOs and "
        "unconfirmed change in the wallet to one or more recipients.",
    ),
    ("sendmany", "Send multiple times."),
    ("sendtoaddress", "Send an amount to a given address."),
    ("setlabel", "Sets the label associated with the given address."),
    ("settxfee", "Set the transaction fee rate in BTC/kvB for this wallet."),
    ("signmessage", "Sign a message with the private key of an address"),
    ("signrawtransactionwithwallet", "Sign inputs for raw transaction (serialized, hex-encoded)."),
    ("unloadwallet", "Unloads the wallet referenced by the request endpoint or the wallet_name argument."),
    ("walletcreatefundedpsbt", "Creates and funds a transaction in the Partially Signed Transaction format."),
    ("walletlock", "Removes the wallet encryption key from memory, locking the wallet."),
    ("walletpassphrase", "Stores the wallet decryption key in memory for 'timeout' seconds."),
    ("walletprocesspsbt", "Update a PSBT with input information from our wallet and then sign inputs."),
]:
    _no_wallet(_name, _desc)


@rpc("listwalletdir", "Wallet", "Returns a list of wallets in the wallet directory.", result='{\n  "wallets" : [ ]\n}')
def listwalletdir(node: "RegtestNode") -> dict[str, Any]:
    return {"wallets": []}


@rpc(
    "loadwallet",
    "Wallet",
    "Loads a wallet from a wallet file or directory.\nNote that all wallet command-line options used when "
    "starting bitcoind will be\napplied to the new wallet.",
    [
        Arg(
            "filename",
            "string",
            'The path to the directory of the wallet to be loaded, either absolute or relative to the "wallets" directory. The '
            '"wallets" directory is set by the -walletdir option and defaults to the "wallets" folder within the data directory.',
        ),
        Arg(
            "load_on_startup",
            "boolean",
            "Save wallet name to persistent settings and load on startup. True to add wallet to startup list, false to remove, null to leave unchanged.",
            None,
            default_doc="null",
        ),
    ],
    result='{\n  "name" : "str",  (string) The wallet name if loaded successfully.\n  ...\n}',
    examples=['"test.dat"'],
)
def loadwallet(node: "RegtestNode", filename: str, load_on_startup: Any) -> None:
    # What bitcoind answers for a wallet that is not on disk (DatabaseStatus::FAILED_NOT_FOUND).
    path = node.netdir / "wallets" / filename
    raise RpcFailure(RPC_WALLET_NOT_FOUND, f"Wallet file verification failed. Failed to load database path '{path}'. Path does not exist.")


@rpc(
    "createwallet",
    "Wallet",
    "Creates and loads a new wallet.",
    [
        Arg("wallet_name", "string", "The name for the new wallet. If this is a path, the wallet will be created at the path location."),
        *[Arg(f"arg{i}", "any", "", None, default_doc="") for i in range(2, 10)],
    ],
    result='{\n  "name" : "str",  (string) The wallet name if created successfully.\n  ...\n}',
    examples=['"testwallet"'],
)
def createwallet(node: "RegtestNode", wallet_name: str, *rest: Any) -> None:
    raise RpcFailure(
        RPC_WALLET_NOT_FOUND,
        "Wallet creation is not available: the embedded regtest node has no wallet (sign with your own keys: signrawtransactionwithkey, descriptorprocesspsbt)",
    )
