"""Compile the HTLC and devnet-token contracts with the pinned solc-js, and check artifacts.

``python -m htlc.compile`` writes ``htlc/artifacts/<Contract>.json``;
``python -m htlc.compile --check`` recompiles in memory and exits 1 if any committed
artifact differs (or is missing, or is left over from a removed contract).

The compiler is the npm ``solc`` pinned in package.json, run through node in
standard-JSON mode with fixed settings, so the same sources always give the same
bytes on every machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bridge.core.errors import ConfigError

HTLC_DIR = Path(__file__).resolve().parent
REPO_ROOT = HTLC_DIR.parent
CONTRACTS_DIR = HTLC_DIR / "contracts"
ARTIFACTS_DIR = HTLC_DIR / "artifacts"
SOLCJS = REPO_ROOT / "node_modules" / "solc" / "solc.js"

SOLC_VERSION = "0.8.37"
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 10_000},
    # Anvil runs prague; transient storage (the reentrancy guard) needs cancun or later.
    "evmVersion": "prague",
    "viaIR": False,
    "metadata": {"bytecodeHash": "ipfs"},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


def read_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(CONTRACTS_DIR.glob("*.sol"))}


def sources_sha256(sources: dict[str, str]) -> str:
    """One hash over every file name and content, so a rename or edit anywhere shows."""
    h = hashlib.sha256()
    for name in sorted(sources):
        data = sources[name].encode()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


#: Compile the standard-JSON input on stdin with the pinned solc-js (argv[1] = its package dir)
#: and write the answer to the file argv[2].
_COMPILE_JS = "const fs = require('fs');const solc = require(process.argv[1]);fs.writeFileSync(process.argv[2], solc.compile(fs.readFileSync(0, 'utf8')));"


def run_solc(sources: dict[str, str]) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        raise ConfigError("node is not on PATH; it is needed to run the pinned solc-js")
    if not SOLCJS.exists():
        raise ConfigError(f"pinned solc-js not found at {SOLCJS}; run `npm ci`")
    std_input = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in sources.items()},
        "settings": SETTINGS,
    }
    # solc-js's own CLI exits while a large answer may still sit in a full stdout pipe, which
    # cut the JSON at 64 KiB under load; have node write the answer to a file synchronously.
    with tempfile.TemporaryDirectory() as tmp:
        answer = Path(tmp) / "solc-output.json"
        proc = subprocess.run(
            [node, "-e", _COMPILE_JS, str(SOLCJS.parent), str(answer)],
            input=json.dumps(std_input),
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            check=False,
        )
        if proc.returncode != 0:
            raise ConfigError(f"solc-js failed (exit {proc.returncode}): {proc.stderr.strip()}")
        out = json.loads(answer.read_text())
    errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
    for warning in (e for e in out.get("errors", []) if e.get("severity") != "error"):
        print(warning["formattedMessage"], file=sys.stderr)
    if errors:
        raise ConfigError("solc reported errors:\n" + "\n".join(e["formattedMessage"] for e in errors))
    return out


def build_artifacts() -> dict[str, str]:
    """Artifact file name -> exact JSON text, for every deployable contract."""
    sources = read_sources()
    out = run_solc(sources)
    digest = sources_sha256(sources)
    version = _compiler_version()
    artifacts: dict[str, str] = {}
    for source_name, contracts in sorted(out["contracts"].items()):
        for name, c in sorted(contracts.items()):
            bytecode = c["evm"]["bytecode"]["object"]
            if not bytecode:  # abstract contracts and interfaces cannot be deployed
                continue
            doc = {
                "contractName": name,
                "sourceName": source_name,
                "abi": c["abi"],
                "bytecode": "0x" + bytecode,
                "deployedBytecode": "0x" + c["evm"]["deployedBytecode"]["object"],
                "compiler": {"name": "solc-js", "version": version},
                "settings": {k: v for k, v in SETTINGS.items() if k != "outputSelection"},
                "sourcesSha256": digest,
            }
            artifacts[f"{name}.json"] = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    return artifacts


def _compiler_version() -> str:
    node = shutil.which("node") or "node"
    proc = subprocess.run(
        [node, "-e", "process.stdout.write(require('solc').version())"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        check=True,
    )
    version = proc.stdout.strip()
    if not version.startswith(SOLC_VERSION + "+"):
        raise ConfigError(f"node_modules has solc {version}, the project pins {SOLC_VERSION}; run `npm ci`")
    return version


def differences(artifacts: dict[str, str]) -> list[str]:
    problems = []
    committed = {p.name for p in ARTIFACTS_DIR.glob("*.json")}
    for name, text in artifacts.items():
        path = ARTIFACTS_DIR / name
        if not path.exists():
            problems.append(f"{name}: missing")
        elif path.read_text() != text:
            problems.append(f"{name}: differs from a fresh compile")
    problems += [f"{name}: no contract of that name in the sources" for name in sorted(committed - set(artifacts))]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m htlc.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed artifacts differ from the sources")
    args = parser.parse_args(argv)
    artifacts = build_artifacts()
    if args.check:
        problems = differences(artifacts)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("artifacts are stale: run `python -m htlc.compile`", file=sys.stderr)
            return 1
        print(f"{len(artifacts)} artifacts match the sources")
        return 0
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    for name in sorted({p.name for p in ARTIFACTS_DIR.glob("*.json")} - set(artifacts)):
        (ARTIFACTS_DIR / name).unlink()
    for name, text in artifacts.items():
        (ARTIFACTS_DIR / name).write_text(text)
        print(f"wrote {ARTIFACTS_DIR.relative_to(REPO_ROOT) / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
