"""Builds TUF repositories that attack a client, with python-tuf's Metadata API, for the agent's TUF client tests.
Usage: scenarios.py OUT_DIR. Each OUT_DIR/<name>/ has metadata/ (1.root.json is the root to trust first) and
targets/firmware.bin. The client must accept `good` and `rotation`, and refuse every other one:

  wrong_key          the timestamp is signed by a key the root does not list
  below_threshold    the root wants 2 targets signatures; targets carries 1
  length_mismatch    targets lists the image one byte longer than it is (download must fail)
  hash_mismatch      targets lists another image's hash (download must fail)
  mix_and_match      the timestamp names snapshot version 2; the snapshot served is version 1
  rotation           root 1 -> 2 -> 3, each signed by the old and the new root key; root 3 replaces a
                     compromised targets key, and targets is signed by the new one (must be accepted)
  revoked_targets    as rotation, but targets is still signed by the key root 3 revoked
"""
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

OUT = Path(sys.argv[1])
pretty = JSONSerializer(compact=False)
IMAGE = b"firmware image\n" * 100


def in_days(days):
    return datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=days)


def keys():
    return {role: CryptoSigner.generate_ed25519() for role in ["root", "timestamp", "snapshot", "targets"]}


def make_root(k, version=1, targets_threshold=1, extra_targets=None):
    root = Root(expires=in_days(365), consistent_snapshot=False)
    root.version = version
    for role in ["root", "timestamp", "snapshot", "targets"]:
        root.add_key(k[role].public_key, role)
    if extra_targets is not None:
        root.add_key(extra_targets.public_key, "targets")
    root.roles["targets"].threshold = targets_threshold
    return root


def write(meta_dir, name, signed, *signers):
    md = Metadata(signed)
    for s in signers:
        md.sign(s, append=True)
    (meta_dir / name).write_bytes(md.to_bytes(pretty))


def publish(name, k, root_signers=None, root=None, target_file=None, ts_signer=None, targets_signers=None,
            snapshot_version_in_timestamp=1, extra_roots=()):
    """Writes one scenario: root (v1 unless extra_roots), targets, snapshot, timestamp."""
    base = OUT / name
    meta_dir = base / "metadata"
    meta_dir.mkdir(parents=True)
    (base / "targets").mkdir()
    (base / "targets" / "firmware.bin").write_bytes(IMAGE)
    root = root or make_root(k)
    write(meta_dir, "1.root.json", root, *(root_signers or [k["root"]]))
    write(meta_dir, "root.json", root, *(root_signers or [k["root"]]))
    for version, later_root, signers in extra_roots:
        write(meta_dir, f"{version}.root.json", later_root, *signers)
        write(meta_dir, "root.json", later_root, *signers)
    targets = Targets(expires=in_days(30))
    targets.targets["firmware.bin"] = target_file or TargetFile.from_data("firmware.bin", IMAGE, ["sha256"])
    write(meta_dir, "targets.json", targets, *(targets_signers or [k["targets"]]))
    snapshot = Snapshot(expires=in_days(7))
    snapshot.meta["targets.json"] = MetaFile(version=1)
    write(meta_dir, "snapshot.json", snapshot, k["snapshot"])
    timestamp = Timestamp(expires=in_days(1))
    timestamp.snapshot_meta = MetaFile(version=snapshot_version_in_timestamp)
    write(meta_dir, "timestamp.json", timestamp, ts_signer or k["timestamp"])


k = keys()
publish("good", k)

k = keys()
publish("wrong_key", k, ts_signer=CryptoSigner.generate_ed25519())

k = keys()
second = CryptoSigner.generate_ed25519()
publish("below_threshold", k, root=make_root(k, targets_threshold=2, extra_targets=second))

k = keys()
longer = TargetFile.from_data("firmware.bin", IMAGE, ["sha256"])
longer.length += 1
publish("length_mismatch", k, target_file=longer)

k = keys()
other = TargetFile.from_data("firmware.bin", IMAGE[:-1] + b"?", ["sha256"])
publish("hash_mismatch", k, target_file=TargetFile(len(IMAGE), other.hashes, "firmware.bin"))

k = keys()
publish("mix_and_match", k, snapshot_version_in_timestamp=2)


def rotation(name, sign_targets_with_revoked):
    k = keys()
    root2_key, root3_key, new_targets = (CryptoSigner.generate_ed25519() for _ in range(3))
    root1 = make_root(k)
    root2 = make_root(k, version=2)
    root2.revoke_key(k["root"].public_key.keyid, "root")
    root2.add_key(root2_key.public_key, "root")
    root3 = make_root(k, version=3)
    root3.revoke_key(k["root"].public_key.keyid, "root")
    root3.add_key(root3_key.public_key, "root")
    root3.revoke_key(k["targets"].public_key.keyid, "targets")
    root3.add_key(new_targets.public_key, "targets")
    publish(name, k, root=root1, extra_roots=[
        (2, root2, [k["root"], root2_key]),
        (3, root3, [root2_key, root3_key]),
    ], targets_signers=[k["targets"] if sign_targets_with_revoked else new_targets])


rotation("rotation", sign_targets_with_revoked=False)
rotation("revoked_targets", sign_targets_with_revoked=True)
