"""The utility RPCs (Core's ``rpc/output_script.cpp``, ``rpc/signmessage.cpp``): ``validateaddress``,
``createmultisig``, ``getdescriptorinfo``, ``deriveaddresses``, ``verifymessage``,
``signmessagewithprivkey``, with bitcoind's error codes and texts.

Descriptors are those ``devnets.regtest.descriptors`` parses (hex public keys, no ranges), so
``isrange`` and ``hasprivatekeys`` are always false here."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from chains.btc import keys
from chains.btc.address import decode_destination, script_to_address
from chains.btc.rpc_errors import RPC_INVALID_ADDRESS_OR_KEY, RPC_INVALID_PARAMETER, RPC_TYPE_ERROR
from chains.btc.script import MAX_PUBKEYS_PER_MULTISIG, MAX_SCRIPT_ELEMENT_SIZE, p2sh_script, p2wsh_script
from devnets.regtest.methods import Arg, RpcFailure, json_type, rpc
from devnets.regtest.methods.common import MAX_ADDRESS_CHARS, NETWORK, int_arg

if TYPE_CHECKING:
    from devnets.regtest.node import RegtestNode

_HEX = re.compile(r"^[0-9a-fA-F]*$")


@rpc(
    "validateaddress",
    "Util",
    "Return information about the given bitcoin address.",
    [Arg("address", "string", "The bitcoin address to validate")],
    result='{\n  "isvalid" : true|false,  (boolean) If the address is valid or not\n  "address" : "str",  '
    "(string, optional) The bitcoin address validated\n  ...\n}",
    examples=['"bcrt1q09vm5lfy0j5reeulh4x5752q25uqqvz34hufdl"'],
)
def validateaddress(node: "RegtestNode", address: str) -> dict[str, Any]:
    from devnets.regtest.decode import validate_address_json

    if len(address) > MAX_ADDRESS_CHARS:
        return {"isvalid": False, "error_locations": [], "error": "Invalid or unsupported Segwit (Bech32) or Base58 encoding."}
    return validate_address_json(address, NETWORK)


def hex_to_pubkey(text: str) -> bytes:
    """``HexToPubKey``."""
    if not _HEX.match(text):
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, f'Pubkey "{text}" must be a hex string')
    if len(text) not in (66, 130):
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, f'Pubkey "{text}" must have a length of either 33 or 65 bytes')
    key = bytes.fromhex(text)
    if not keys.is_valid_pubkey(key):
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, f'Pubkey "{text}" must be cryptographically valid.')
    return key


def multisig_redeemscript(required: int, pubkeys: list[bytes]) -> bytes:
    """``CreateMultisigRedeemscript``."""
    from chains.btc.primitives import push_int

    if required < 1:
        raise RpcFailure(RPC_INVALID_PARAMETER, "a multisignature address must require at least one key to redeem")
    if len(pubkeys) < required:
        raise RpcFailure(RPC_INVALID_PARAMETER, f"not enough keys supplied (got {len(pubkeys)} keys, but need at least {required} to redeem)")
    if len(pubkeys) > MAX_PUBKEYS_PER_MULTISIG:
        raise RpcFailure(
            RPC_INVALID_PARAMETER, f"Number of keys involved in the multisignature address creation > {MAX_PUBKEYS_PER_MULTISIG}\nReduce the number"
        )
    script = push_int(required) + b"".join(bytes((len(k),)) + k for k in pubkeys) + push_int(len(pubkeys)) + b"\xae"
    if len(script) > MAX_SCRIPT_ELEMENT_SIZE:
        raise RpcFailure(RPC_INVALID_PARAMETER, f"redeemScript exceeds size limit: {len(script)} > {MAX_SCRIPT_ELEMENT_SIZE}")
    return script


_OUTPUT_TYPES = ("legacy", "p2sh-segwit", "bech32", "bech32m")


@rpc(
    "createmultisig",
    "Util",
    "Creates a multi-signature address with n signature of m keys required.\nIt returns a json object with the address and redeemScript.",
    [
        Arg("nrequired", "numeric", "The number of required signatures out of the n keys."),
        Arg("keys", "json array", "The hex-encoded public keys."),
        Arg("address_type", "string", 'The address type to use. Options are "legacy", "p2sh-segwit", and "bech32".', "legacy"),
    ],
    result='{\n  "address" : "str",  (string) The value of the new multisig address.\n  "redeemScript" : "hex",  '
    '(string) The string value of the hex-encoded redemption script.\n  "descriptor" : "str",  (string) The descriptor for this multisig\n}',
    examples=[
        '2 "[\\"03789ed0bb717d88f7d321a368d905e7430207ebbd82bd342cf11ae157a7ace5fd\\",'
        '\\"03dbc6764b8884a92e871274b87583e6d5c2a58819473e17e107ef3f6aa5a61626\\"]"'
    ],
)
def createmultisig(node: "RegtestNode", nrequired: Any, key_list: list, address_type: str) -> dict[str, Any]:
    from devnets.regtest.descriptors import descsum_create

    required = int_arg(nrequired)
    pubkeys = []
    for item in key_list:
        if not isinstance(item, str):
            raise RpcFailure(RPC_TYPE_ERROR, f"JSON value of type {json_type(item)} is not of expected type string")
        if _HEX.match(item) and len(item) in (66, 130):
            pubkeys.append(hex_to_pubkey(item))
        else:
            raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, f"Invalid public key: {item}\n")
    if address_type not in _OUTPUT_TYPES:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, f"Unknown address type '{address_type}'")
    if address_type == "bech32m":
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "createmultisig cannot create bech32m multisig addresses")
    inner = multisig_redeemscript(required, pubkeys)
    chosen = address_type
    if any(len(k) == 65 for k in pubkeys):
        chosen = "legacy"  # AddAndGetMultisigDestination: uncompressed keys only in legacy P2SH
    multi = f"multi({required},{','.join(k.hex() for k in pubkeys)})"
    if chosen == "legacy":
        spk, desc = p2sh_script(inner), f"sh({multi})"
    elif chosen == "p2sh-segwit":
        spk, desc = p2sh_script(p2wsh_script(inner)), f"sh(wsh({multi}))"
    else:
        spk, desc = p2wsh_script(inner), f"wsh({multi})"
    result: dict[str, Any] = {"address": script_to_address(spk, NETWORK), "redeemScript": inner.hex(), "descriptor": descsum_create(desc)}
    if chosen != address_type:
        result["warnings"] = ["Unable to make chosen address type, please ensure no uncompressed public keys are present."]
    return result


def _parse_descriptor(desc: str, require_checksum: bool) -> tuple[str, list[bytes]]:
    """The descriptor without checksum and its scripts; errors are -5 with the parser's text."""
    from devnets.regtest.descriptors import InvalidDescriptor, descsum_check, parse_descriptor

    try:
        bare = descsum_check(desc, require=require_checksum)
        return bare, parse_descriptor(desc, NETWORK)
    except InvalidDescriptor as exc:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, exc.message) from None


def _normalize(bare: str) -> str:
    """``Descriptor::ToString``: hex in lower case, ``addr()`` in its canonical encoding."""
    out, pos = [], 0
    for m in re.finditer(r"addr\(([^()]*)\)", bare):
        out.append(bare[pos : m.start()].lower())
        script = decode_destination(m.group(1), NETWORK)[0]
        out.append(f"addr({script_to_address(script, NETWORK) if script else m.group(1)})")
        pos = m.end()
    out.append(bare[pos:].lower())
    return "".join(out)


@rpc(
    "getdescriptorinfo",
    "Util",
    "Analyses a descriptor.",
    [Arg("descriptor", "string", "The descriptor.")],
    result='{\n  "descriptor" : "str",  (string) The descriptor in canonical form, without private keys. '
    'For a multipath descriptor, only the first will be returned.\n  "checksum" : "str",  '
    '(string) The checksum for the input descriptor\n  "isrange" : true|false,  '
    '(boolean) Whether the descriptor is ranged\n  "issolvable" : true|false,  (boolean) Whether the '
    'descriptor is solvable\n  "hasprivatekeys" : true|false,  (boolean) Whether the input descriptor contained at least one private key\n}',
    examples=['"wpkh([d34db33f/84h/0h/0h]0279be667ef9dcbbac55a06295Ce870b07029bfcdb2dce28d959f2815b16f81798)"'],
)
def getdescriptorinfo(node: "RegtestNode", descriptor: str) -> dict[str, Any]:
    from devnets.regtest.descriptors import descriptor_checksum, descsum_create

    bare, _ = _parse_descriptor(descriptor, require_checksum=False)
    solvable = not re.match(r"^(addr|raw|rawtr)\(", bare)
    return {
        "descriptor": descsum_create(_normalize(bare)),
        "checksum": descriptor_checksum(descriptor),
        "isrange": False,
        "issolvable": solvable,
        "hasprivatekeys": False,
    }


@rpc(
    "deriveaddresses",
    "Util",
    "Derives one or more addresses corresponding to an output descriptor.\nExamples of output descriptors are:\n"
    "    pkh(<pubkey>)                                     P2PKH outputs for the given pubkey\n"
    "    wpkh(<pubkey>)                                    Native segwit P2PKH outputs for the given pubkey\n"
    "    sh(multi(<n>,<pubkey>,<pubkey>,...))              P2SH-multisig outputs for the given threshold and pubkeys\n"
    "    raw(<hex script>)                                 Outputs whose output script equals the specified hex-encoded bytes\n"
    "    tr(<pubkey>,multi_a(<n>,<pubkey>,<pubkey>,...))   P2TR-multisig outputs for the given threshold and pubkeys\n\n"
    "In the above, <pubkey> either refers to a fixed public key in hexadecimal notation, or to an xpub/xprv optionally followed by one\n"
    'or more path elements separated by "/", where "h" represents a hardened child key.\n'
    "For more information on output descriptors, see the documentation in the doc/descriptors.md file.",
    [
        Arg("descriptor", "string", "The descriptor."),
        Arg("range", "range", "If a ranged descriptor is used, this specifies the end or the range (in [begin,end] notation) to derive.", None, default_doc=""),
    ],
    result='[\n  "str",  (string) the derived addresses\n  ...\n]',
    examples=[
        '"wpkh([d34db33f/84h/0h/0h]xpub6DJ2dNUysrn5Vt36jH2KLBT2i1auw1tTSSomg8PhqNiUtx8QX2SvC9nrHu81fT41fv'
        'DUnhMjEzQgXnQjKEu3oaqMSzhSrHMxyyoEAmUHQbY/0/*)#cjjspncu" "[0,2]"'
    ],
)
def deriveaddresses(node: "RegtestNode", descriptor: str, range_arg: Any) -> list[str]:
    _, scripts = _parse_descriptor(descriptor, require_checksum=True)
    if range_arg is not None:
        raise RpcFailure(RPC_INVALID_PARAMETER, "Range should not be specified for an un-ranged descriptor")
    addresses = []
    for script in scripts:
        address = script_to_address(script, NETWORK)
        if address is None:
            if len(scripts) > 1 and script[-1:] == b"\xac" and len(script) in (35, 67):
                continue  # combo()'s P2PK output has no address
            raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Descriptor does not have a corresponding address")
        addresses.append(address)
    return addresses


@rpc(
    "verifymessage",
    "Util",
    "Verify a signed message.",
    [
        Arg("address", "string", "The bitcoin address to use for the signature."),
        Arg("signature", "string", "The signature provided by the signer in base 64 encoding (see signmessage)."),
        Arg("message", "string", "The message that was signed."),
    ],
    result="true|false    (boolean) If the signature is verified or not.",
    examples=['"1D1ZrZNe3JUo7ZycKEYQQiQAWd9y54F4XX" "signature" "my message"'],
)
def verifymessage(node: "RegtestNode", address: str, signature: str, message: str) -> bool:
    from chains.btc.script import is_p2pkh

    script = decode_destination(address, NETWORK)[0] if len(address) <= MAX_ADDRESS_CHARS else None
    if script is None:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Invalid address")
    if not is_p2pkh(script):
        raise RpcFailure(RPC_TYPE_ERROR, "Address does not refer to key")
    try:
        pubkey = keys.recover_message_pubkey(signature, message)
    except keys.MalformedSignature:
        raise RpcFailure(RPC_TYPE_ERROR, "Malformed base64 encoding") from None
    return pubkey is not None and keys.pubkey_hash(pubkey) == script[3:23]


@rpc(
    "signmessagewithprivkey",
    "Util",
    "Sign a message with the private key of an address",
    [Arg("privkey", "string", "The private key to sign the message with."), Arg("message", "string", "The message to create a signature of.")],
    result='"str"    (string) The signature of the message encoded in base 64',
    examples=['"privkey" "my message"'],
)
def signmessagewithprivkey(node: "RegtestNode", privkey: str, message: str) -> str:
    try:
        key = keys.decode_wif(privkey, NETWORK)
    except keys.InvalidKey:
        raise RpcFailure(RPC_INVALID_ADDRESS_OR_KEY, "Invalid private key") from None
    return keys.sign_message(key, message)
