"""The utility, raw-transaction and (no-)wallet RPC families against bitcoind's documented answers:
Core's own test vectors where it has them (rpc_signmessagewithprivkey.py), real keys and
transactions the node then accepts otherwise."""

from __future__ import annotations


import pytest
from node_helpers import NodeError, Rpc, Wallet, fund, spend_p2wpkh

from chains.btc import keys
from chains.btc import primitives as p
from chains.btc.address import script_to_address
from chains.btc.script import p2pkh_script, p2sh_script, p2wsh_script
from devnets.regtest import RegtestNode
from devnets.regtest.descriptors import descsum_create

BURN = "bcrt1qfdes8c308vmyhjgl9wl7nkdsflfc8fupv5e20k"
K1 = "03789ed0bb717d88f7d321a368d905e7430207ebbd82bd342cf11ae157a7ace5fd"
K2 = "03dbc6764b8884a92e871274b87583e6d5c2a58819473e17e107ef3f6aa5a61626"


@pytest.fixture
async def node(tmp_path):
    n = RegtestNode(tmp_path / "node")
    await n.start()
    yield n
    await n.stop()


async def error_of(rpc: Rpc, method: str, *params) -> tuple[int, str]:
    with pytest.raises(NodeError) as err:
        await rpc(method, *params)
    return err.value.code, err.value.message


def wif_of(wallet: Wallet) -> str:
    return keys.encode_wif(wallet.key.private_byte, True, "regtest")


async def test_sign_and_verify_message_core_vector(node: RegtestNode) -> None:
    """rpc_signmessagewithprivkey.py: the exact signature bitcoind makes for this key and message."""
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    priv = "cUeKHd5orzT3mz8P9pxyREHfsWtVfgsfDjiZZBcjUBAaGk1BTj7N"
    address = "mpLQjfK79b7CCV4VMJWEWAj5Mpx8Up5zxB"
    message = "This is just a test message"
    expected = "INbVnW4e6PeRmsv2Qgu8NuopvrVjkcxob+sX8OcZG0SALhWybUjzMLPdAsXI46YZGb0KQTRii+wWIQzRpG/U+S0="
    assert await rpc("signmessagewithprivkey", priv, message) == expected
    assert await rpc("verifymessage", address, expected, message) is True
    assert await rpc("verifymessage", address, expected, message + "!") is False
    assert await error_of(rpc, "signmessagewithprivkey", "invalid_key", message) == (-5, "Invalid private key")
    assert await error_of(rpc, "verifymessage", "invalid_addr", expected, message) == (-5, "Invalid address")
    assert await error_of(rpc, "verifymessage", address, "invalid_sig", message) == (-3, "Malformed base64 encoding")
    assert await error_of(rpc, "verifymessage", BURN, expected, message) == (-3, "Address does not refer to key")
    # A mainnet WIF is no regtest key.
    main_wif = keys.encode_wif(keys.decode_wif(priv).secret, True, "main")
    assert await error_of(rpc, "signmessagewithprivkey", main_wif, message) == (-5, "Invalid private key")


async def test_createmultisig(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    redeem = bytes.fromhex("52" + "21" + K1 + "21" + K2 + "52ae")
    multi = f"multi(2,{K1},{K2})"
    assert await rpc("createmultisig", 2, [K1, K2]) == {
        "address": script_to_address(p2sh_script(redeem), "regtest"),
        "redeemScript": redeem.hex(),
        "descriptor": descsum_create(f"sh({multi})"),
    }
    got = await rpc("createmultisig", 2, [K1, K2], "bech32")
    assert got["address"] == script_to_address(p2wsh_script(redeem), "regtest") and got["descriptor"] == descsum_create(f"wsh({multi})")
    got = await rpc("createmultisig", 2, [K1, K2], "p2sh-segwit")
    assert got["address"] == script_to_address(p2sh_script(p2wsh_script(redeem)), "regtest")
    assert await error_of(rpc, "createmultisig", 2, [K1, "zz"]) == (-5, "Invalid public key: zz\n")
    assert await error_of(rpc, "createmultisig", 3, [K1, K2]) == (-8, "not enough keys supplied (got 2 keys, but need at least 3 to redeem)")
    assert await error_of(rpc, "createmultisig", 0, [K1]) == (-8, "a multisignature address must require at least one key to redeem")
    assert await error_of(rpc, "createmultisig", 1, [K1], "bech32m") == (-5, "createmultisig cannot create bech32m multisig addresses")
    assert await error_of(rpc, "createmultisig", 1, [K1], "foo") == (-5, "Unknown address type 'foo'")
    bad = "02" + "00" * 32
    assert await error_of(rpc, "createmultisig", 1, [bad]) == (-5, f'Pubkey "{bad}" must be cryptographically valid.')


async def test_descriptors_and_validateaddress(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    desc = f"wpkh({K1.upper()[:2]}{K1[2:]})"
    info = await rpc("getdescriptorinfo", desc)
    assert info == {
        "descriptor": descsum_create(f"wpkh({K1})"),
        "checksum": descsum_create(desc).split("#")[1],
        "isrange": False,
        "issolvable": True,
        "hasprivatekeys": False,
    }
    assert (await rpc("getdescriptorinfo", f"addr({BURN})"))["issolvable"] is False
    assert await error_of(rpc, "deriveaddresses", f"wpkh({K1})") == (-5, "Missing checksum")
    [address] = await rpc("deriveaddresses", descsum_create(f"wpkh({K1})"))
    assert address == script_to_address(b"\x00\x14" + p.hash160(bytes.fromhex(K1)), "regtest")
    assert len(await rpc("deriveaddresses", descsum_create(f"combo({K1})"))) == 3  # the P2PK output has none
    assert await error_of(rpc, "deriveaddresses", descsum_create(f"pk({K1})")) == (-5, "Descriptor does not have a corresponding address")
    assert await error_of(rpc, "deriveaddresses", descsum_create(f"wpkh({K1})"), [0, 2]) == (-8, "Range should not be specified for an un-ranged descriptor")
    valid = await rpc("validateaddress", BURN)
    assert valid["isvalid"] is True and valid["iswitness"] is True and valid["witness_version"] == 0
    assert (await rpc("validateaddress", "notanaddress"))["isvalid"] is False


async def test_create_sign_combine_and_send(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    owner = Wallet.new()
    coin = await fund(rpc, owner, BURN)
    # A P2PKH output of the same key too, to sign a legacy input.
    legacy_spk = p2pkh_script(p.hash160(owner.pubkey))
    split = spend_p2wpkh(owner, [coin], [(legacy_spk, 40_000_000), (owner.script, coin.value - 40_010_000)])
    await rpc("sendrawtransaction", split.serialize().hex())
    await rpc("generatetoaddress", 1, BURN)

    pay = coin.value - 20_000  # both outputs of ``split``, less a 10,000 sat fee
    raw = await rpc(
        "createrawtransaction",
        [{"txid": split.txid, "vout": 0}, {"txid": split.txid, "vout": 1}],
        [{BURN: f"{pay // p.COIN}.{pay % p.COIN:08d}"}, {"data": "cafe"}],
    )
    tx = p.Tx.from_hex(raw)
    assert tx.version == 2 and tx.locktime == 0 and [i.sequence for i in tx.vin] == [0xFFFFFFFD] * 2
    assert tx.vout[1].script_pubkey == bytes.fromhex("6a02cafe") and tx.vout[0].value == pay
    # Without keys: nothing signed, each input reported as bitcoind reports it.
    unsigned = await rpc("signrawtransactionwithkey", raw, [])
    assert unsigned["complete"] is False and [e["error"] for e in unsigned["errors"]] == [
        "Unable to sign input, invalid stack size (possibly missing key)",
        "Witness program was passed an empty witness",
    ]
    assert unsigned["errors"][0] == {
        "txid": split.txid,
        "vout": 0,
        "witness": [],
        "scriptSig": "",
        "sequence": 0xFFFFFFFD,
        "error": unsigned["errors"][0]["error"],
    }
    signed = await rpc("signrawtransactionwithkey", raw, [wif_of(owner)])
    assert signed == {"hex": signed["hex"], "complete": True}
    # combinerawtransaction takes each input's signature from whichever variant has it.
    assert await rpc("combinerawtransaction", [raw, signed["hex"]]) == signed["hex"]
    [accept] = await rpc("testmempoolaccept", [signed["hex"]])
    assert accept["allowed"] is True, accept
    assert await rpc("sendrawtransaction", signed["hex"]) == p.Tx.from_hex(signed["hex"]).txid

    # Errors, as bitcoind words them.
    assert await error_of(rpc, "signrawtransactionwithkey", "00", []) == (-22, "TX decode failed. Make sure the tx has at least one input.")
    assert await error_of(rpc, "signrawtransactionwithkey", raw, ["nope"]) == (-5, "Invalid private key")
    assert await error_of(rpc, "signrawtransactionwithkey", raw, [], None, "FOO") == (-8, "'FOO' is not a valid sighash parameter.")
    assert await error_of(rpc, "combinerawtransaction", []) == (-22, "Missing transactions")
    assert await error_of(rpc, "combinerawtransaction", ["zz"]) == (-22, "TX decode failed for tx 0. Make sure the tx has at least one input.")
    txid = split.txid
    assert await error_of(rpc, "createrawtransaction", [{"txid": txid}], {}) == (-8, "Invalid parameter, missing vout key")
    assert await error_of(rpc, "createrawtransaction", [{"txid": txid, "vout": -1}], {}) == (-8, "Invalid parameter, vout cannot be negative")
    assert await error_of(rpc, "createrawtransaction", [{"txid": txid, "vout": 0, "sequence": -1}], {}) == (
        -8,
        "Invalid parameter, sequence number is out of range",
    )
    assert await error_of(rpc, "createrawtransaction", [{"txid": "zz", "vout": 0}], {}) == (-8, "txid must be of length 64 (not 2, for 'zz')")
    assert await error_of(rpc, "createrawtransaction", [], {"foo": 1}) == (-5, "Invalid Bitcoin address: foo")
    assert await error_of(rpc, "createrawtransaction", [], [{BURN: 1}, {BURN: 1}]) == (-8, f"Invalid parameter, duplicated address: {BURN}")
    assert await error_of(rpc, "createrawtransaction", [], [{"data": "zz"}]) == (-8, "Data must be hexadecimal string (not 'zz')")
    assert await error_of(rpc, "createrawtransaction", [], [{"a": 1, "b": 2}]) == (-8, "Invalid parameter, key-value pair must contain exactly one key")
    assert await error_of(rpc, "createrawtransaction", [], {}, -1) == (-8, "Invalid parameter, locktime out of range")
    # Locktime set, not replaceable: sequences 0xfffffffe.
    tx = p.Tx.from_hex(await rpc("createrawtransaction", [{"txid": txid, "vout": 0}], {}, 100, False))
    assert tx.locktime == 100 and tx.vin[0].sequence == 0xFFFFFFFE


async def test_wallet_rpcs_answer_as_bitcoind_without_wallet(node: RegtestNode) -> None:
    rpc = Rpc(node.rpc_url, node.rpc_auth)
    for method in ("getbalance", "getnewaddress", "sendtoaddress", "listunspent", "getwalletinfo"):
        code, message = await error_of(rpc, method)
        assert code == -18 and message.startswith("No wallet is loaded. Load a wallet using loadwallet")
    code, message = await error_of(rpc, "loadwallet", "w")
    assert code == -18 and message.startswith("Wallet file verification failed. Failed to load database path '")
    assert (await error_of(rpc, "createwallet", "w"))[0] == -18
    assert await rpc("listwallets") == [] and await rpc("listwalletdir") == {"wallets": []}


@pytest.mark.parametrize("chain", ["main", "test", "testnet4", "signet", "regtest"])
def test_wif_for_every_key_io_chain_name(chain: str) -> None:
    """Core's key_io vectors name chains main, test, testnet4, signet and regtest: WIFs of each
    round-trip (prefix 128 on main, 239 elsewhere) and are refused on a chain of the other prefix."""
    secret = bytes.fromhex("0c28fca386c7a227600b2fe50b7cae11ec86d3bf1fbe471be89827e19d72aa1d")
    for compressed in (True, False):
        wif = keys.encode_wif(secret, compressed, chain)
        assert wif[0] in ("5KL" if chain == "main" else "9c") and keys.decode_wif(wif, chain) == (secret, compressed)
        other = "regtest" if chain == "main" else "main"
        with pytest.raises(keys.InvalidKey):
            keys.decode_wif(wif, other)
    assert keys.encode_wif(secret, False, "main") == "5HueCGU8rMjxEXxiPuD5BDku4MkFqeZyd4dZ1jvhTVqvbTLvyTJ"  # the wiki's example
