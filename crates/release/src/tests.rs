//! The maker's repository end to end: keys, root thresholds, signed releases and their refusals, root rotation
//! that replaces a targets key.

use std::path::Path;

use hearth_proto::ModelId;
use hearth_proto::release::{Disruption, ReleaseInfo, ReleaseKind};
use tough::key_source::KeySource;

use super::*;
use crate::keys::KeyFile;

fn boxed(keys: &[&KeyFile]) -> Vec<Box<dyn KeySource>> {
    keys.iter().map(|k| Box::new((*k).clone()) as Box<dyn KeySource>).collect()
}

fn key(dir: &Path, name: &str) -> (KeyFile, Key) {
    let path = dir.join(name);
    let public = KeyFile::generate(&path).expect("keygen");
    (KeyFile::new(&path), public)
}

fn info(version: &str) -> ReleaseInfo {
    ReleaseInfo {
        model: ModelId::parse("plug-2").expect("model"),
        version: version.into(),
        hardware: vec!["rev-a".into()],
        security_version: 1,
        kind: ReleaseKind::Feature,
        disruption: Disruption { restarts: true, seconds: 30 },
        fixes: String::new(),
        notes: "First".into(),
        sbom: None,
    }
}

fn in_a_year() -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)
}

#[tokio::test]
async fn a_repository_is_made_signed_and_rotated_with_thresholds() {
    let dir = tempfile::tempdir().expect("tmp");
    let keys = dir.path().join("keys");
    let (r1, r1p) = key(&keys, "root-1.pem");
    let (r2, r2p) = key(&keys, "root-2.pem");
    let (t1, t1p) = key(&keys, "targets-1.pem");
    let (_s, sp) = key(&keys, "snapshot.pem");
    let (_ts, tsp) = key(&keys, "timestamp.pem");
    assert!(matches!(KeyFile::generate(&keys.join("root-1.pem")), Err(keys::KeyError::Exists(_))), "never overwritten");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(keys.join("root-1.pem")).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let hub = HubKeys { snapshot: sp.clone(), timestamp: tsp.clone() };
    let plan = RootPlan {
        root: vec![r1p.clone(), r2p.clone()],
        root_threshold: 2,
        targets: vec![t1p.clone()],
        targets_threshold: 1,
        hub: hub.clone(),
        expires: in_a_year(),
    };
    let repo_dir = dir.path().join("repo");
    // One of two root keys is below the threshold: nothing is written.
    let err = Repo::init(&repo_dir, &plan, &boxed(&[&r1])).await.expect_err("threshold");
    assert!(matches!(err, ReleaseError::Threshold(_)), "{err}");
    assert!(!repo_dir.join("root.json").exists());
    let repo = Repo::init(&repo_dir, &plan, &boxed(&[&r1, &r2])).await.expect("init");
    assert!(Repo::init(&repo_dir, &plan, &boxed(&[&r1, &r2])).await.is_err(), "a second init is refused");
    let root = repo.root().expect("root").signed;
    assert!(root.consistent_snapshot);
    let text = std::fs::read_to_string(repo_dir.join("root.json")).expect("root");
    let expires = text.split("\"expires\": \"").nth(1).and_then(|r| r.split('"').next()).expect("expires");
    assert_eq!(expires.len(), "2027-11-25T22:58:19Z".len(), "TUF's date format, no fraction: {expires}");
    assert_eq!(root.version.get(), 1);

    // A release, signed by the targets key; the root key cannot sign targets.
    let image = dir.path().join("image.bin");
    std::fs::write(&image, b"firmware 1.0").expect("image");
    let release = |version: &'static str| NewRelease {
        image: &image,
        name: if version == "1.0.0" { "plug-2-1.0.0.img" } else { "plug-2-1.1.0.img" },
        info: info(version),
        sbom: None,
        expires: in_a_year(),
    };
    assert!(matches!(repo.add_release(release("1.0.0"), &boxed(&[&r1])).await, Err(ReleaseError::Threshold(_))));
    let targets = repo.add_release(release("1.0.0"), &boxed(&[&t1])).await.expect("release");
    assert_eq!(targets.signed.version.get(), 1);
    assert!(repo.add_release(release("1.0.0"), &boxed(&[&t1])).await.is_err(), "the same version twice");
    let mut bad = release("1.1.0");
    bad.info.kind = ReleaseKind::Security;
    assert!(matches!(repo.add_release(bad, &boxed(&[&t1])).await, Err(ReleaseError::Release(_))), "says what it fixes");
    let mut bad = release("1.1.0");
    bad.name = "../escape";
    assert!(matches!(repo.add_release(bad, &boxed(&[&t1])).await, Err(ReleaseError::Release(_))), "target name");
    assert_eq!(repo.targets().expect("targets").expect("some").signed.version.get(), 1, "refusals write nothing");

    // Rotation to a new targets key, signed by the old root's threshold and the new one's.
    let (t2, t2p) = key(&keys, "targets-2.pem");
    let (r3, r3p) = key(&keys, "root-3.pem");
    let plan2 = RootPlan { root: vec![r2p.clone(), r3p.clone()], root_threshold: 1, targets: vec![t2p], ..plan };
    let err =
        repo.rotate_root(&plan2, &boxed(&[&r2]), &boxed(&[&r3]), &boxed(&[&t2])).await.expect_err("old threshold");
    assert!(err.to_string().contains("current root"), "{err}");
    let rotated = repo.rotate_root(&plan2, &boxed(&[&r1, &r2]), &boxed(&[&r3]), &boxed(&[&t2])).await.expect("rotate");
    assert_eq!(rotated.signed.version.get(), 2);
    root.verify_role(&rotated).expect("version 1 trusts version 2");
    let targets = repo.targets().expect("targets").expect("some");
    assert_eq!(targets.signed.version.get(), 2, "re-signed with the new targets key");
    rotated.signed.verify_role(&targets).expect("the new root trusts the re-signed targets");
    assert_eq!(repo.root_files().expect("files").len(), 2);
    assert!(
        matches!(repo.add_release(release("1.1.0"), &boxed(&[&t1])).await, Err(ReleaseError::Threshold(_))),
        "the old targets key is revoked"
    );
    repo.add_release(release("1.1.0"), &boxed(&[&t2])).await.expect("the new targets key signs");
}
