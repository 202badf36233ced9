"""Builds a TUF repository with python-tuf's Metadata API (the reference implementation), for the interop tests of
the agent's TUF client. Usage: make_repo.py OUT_DIR [--expired] [--bump]

OUT_DIR/metadata/: 1.root.json, root.json, timestamp.json, snapshot.json, targets.json (no consistent snapshots)
OUT_DIR/targets/firmware.bin: the one target
OUT_DIR/keys.json: the private keys, so --bump can publish a new version of every role later.
With --expired the timestamp has already expired; --security-version=N and --hardware=H set the release
metadata (hearth_proto::release) signed with the target. With --bump, OUT_DIR must exist: every role's version goes up
and the target changes.
"""
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from cryptography.hazmat.primitives import serialization
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

out = Path(sys.argv[1])
expired = "--expired" in sys.argv
flag = lambda name, default: next((a.split("=", 1)[1] for a in sys.argv if a.startswith(f"--{name}=")), default)
security_version = int(flag("security-version", "1"))
hardware = flag("hardware", "rev-b")
bump = "--bump" in sys.argv
meta_dir = out / "metadata"
target_dir = out / "targets"
meta_dir.mkdir(parents=True, exist_ok=True)
target_dir.mkdir(parents=True, exist_ok=True)
ROLES = ["root", "timestamp", "snapshot", "targets"]
pretty = JSONSerializer(compact=False)


def in_days(days):
    return datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=days)


if bump:
    pems = json.loads((out / "keys.json").read_text())
    signers = {
        role: CryptoSigner(serialization.load_pem_private_key(pems[role].encode(), password=None))
        for role in ROLES
    }
    version = json.loads((meta_dir / "targets.json").read_text())["signed"]["version"] + 1
else:
    signers = {role: CryptoSigner.generate_ed25519() for role in ROLES}
    (out / "keys.json").write_text(json.dumps({
        role: s.private_bytes.decode() for role, s in signers.items()
    }))
    version = 1

payload = f"firmware image version {version}\n".encode() * 64
(target_dir / "firmware.bin").write_bytes(payload)

root = Root(expires=in_days(365), consistent_snapshot=False)
root.version = 1
for role in ROLES:
    root.add_key(signers[role].public_key, role)
targets = Targets(expires=in_days(30))
targets.version = version
image = TargetFile.from_data("firmware.bin", payload, ["sha256"])
# The release metadata Hearth reads (hearth_proto::release), signed with the targets metadata.
image.unrecognized_fields["custom"] = {"hearth": {
    "model": "plug-2", "version": f"1.{version}.0", "hardware": [hardware], "security_version": security_version,
    "kind": "security", "disruption": {"restarts": True, "seconds": 40},
    "fixes": "Closes a way to crash the plug over the local network.", "notes": "", "sbom": None,
}}
targets.targets["firmware.bin"] = image
snapshot = Snapshot(expires=in_days(7))
snapshot.version = version
snapshot.meta["targets.json"] = MetaFile(version=version)
timestamp = Timestamp(expires=in_days(-1) if expired else in_days(1))
timestamp.version = version
timestamp.snapshot_meta = MetaFile(version=version)

for role, signed in [("root", root), ("targets", targets), ("snapshot", snapshot), ("timestamp", timestamp)]:
    if role == "root" and bump:
        continue
    md = Metadata(signed)
    md.sign(signers[role])
    data = md.to_bytes(pretty)
    (meta_dir / f"{role}.json").write_bytes(data)
    if role == "root":
        (meta_dir / "1.root.json").write_bytes(data)
