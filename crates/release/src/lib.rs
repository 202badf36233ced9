//! The maker's side of signed updates (TUF, through `tough`): the keys that stay offline with the maker, the root
//! metadata and its rotation, and the targets metadata that signs each release. The hub never sees any of these
//! keys; it holds only the snapshot and timestamp keys, whose public halves the maker puts into the root
//! (`hub-keys.json`, from `hearth release hub-keys`).
//!
//! A maker's repository is a directory:
//!
//! ```text
//! repo/root.json            the newest root (also as 1.root.json, 2.root.json, …: every version, for upload)
//! repo/targets.json         the newest signed targets metadata (also as N.targets.json)
//! repo/targets/NAME         each target file (images and SBOMs), as the signed metadata names them
//! ```
//!
//! Nothing here talks to the hub: `hearth release upload` (in the CLI) sends what this module wrote. So the
//! signing can happen on a machine that is never online.

#![forbid(unsafe_code)]

pub mod keys;
pub mod pkcs11;

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use hearth_proto::release::ReleaseInfo;
use serde::Serialize;
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{Hashes, KeyHolder, Role, RoleKeys, RoleType, Root, Signed, Target, Targets};

/// The TUF specification version written into metadata.
pub const SPEC_VERSION: &str = "1.0.31";

/// Why a release step failed. Nothing is written when one fails.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Reading or writing a file.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// A metadata file is not what it should be.
    #[error("{0}")]
    Metadata(String),
    /// TUF (signing, serialising).
    #[error(transparent)]
    Tuf(#[from] Box<tough::error::Error>),
    /// A key file or token.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// The release metadata is invalid.
    #[error("release metadata: {0}")]
    Release(String),
    /// Not enough of the right keys were given.
    #[error("{0}")]
    Threshold(String),
}

type Result<T> = std::result::Result<T, ReleaseError>;

/// The public keys of the hub's online roles, as `GET /api/v1/updates/keys` gives them.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct HubKeys {
    /// The snapshot key.
    pub snapshot: Key,
    /// The timestamp key.
    pub timestamp: Key,
}

/// Who signs which role, for a new root.
#[derive(Debug)]
pub struct RootPlan {
    /// The root keys (public halves) and how many must sign.
    pub root: Vec<Key>,
    /// Signatures needed on the root.
    pub root_threshold: u64,
    /// The targets keys (public halves).
    pub targets: Vec<Key>,
    /// Signatures needed on targets metadata.
    pub targets_threshold: u64,
    /// The hub's snapshot and timestamp keys.
    pub hub: HubKeys,
    /// When the root expires.
    pub expires: jiff::Timestamp,
}

/// One release to add to the targets metadata.
#[derive(Debug)]
pub struct NewRelease<'a> {
    /// The image file.
    pub image: &'a Path,
    /// Its target name (`plug-2-1.4.0.img`).
    pub name: &'a str,
    /// What the release says about itself (checked before anything is signed).
    pub info: ReleaseInfo,
    /// Its CycloneDX SBOM, added as the target `{name}.cdx.json` and named in `info.sbom`.
    pub sbom: Option<&'a Path>,
    /// When the targets metadata expires.
    pub expires: jiff::Timestamp,
}

/// A maker's repository directory.
#[derive(Debug, Clone)]
pub struct Repo {
    dir: PathBuf,
}

impl Repo {
    /// The repository in `dir`.
    pub fn open(dir: &Path) -> Repo {
        Repo { dir: dir.to_owned() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The newest root.
    pub fn root(&self) -> Result<Signed<Root>> {
        read_json(&self.dir.join("root.json"))
    }

    /// The newest targets metadata, if any was signed yet.
    pub fn targets(&self) -> Result<Option<Signed<Targets>>> {
        let path = self.dir.join("targets.json");
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Every root version, oldest first (`1.root.json`, …), as files.
    pub fn root_files(&self) -> Result<Vec<(u64, PathBuf)>> {
        let newest = self.root()?.signed.version.get();
        (1..=newest)
            .map(|v| {
                let path = self.dir.join(format!("{v}.root.json"));
                if path.exists() {
                    Ok((v, path))
                } else {
                    Err(ReleaseError::Metadata(format!("{} is missing", path.display())))
                }
            })
            .collect()
    }

    /// The file of target `name`.
    pub fn target_file(&self, name: &str) -> PathBuf {
        self.dir.join("targets").join(name)
    }

    /// Creates the repository with root version 1, signed by `root_keys` (their threshold at least). Refuses
    /// if the directory already has a root.
    pub async fn init(dir: &Path, plan: &RootPlan, root_keys: &[Box<dyn KeySource>]) -> Result<Repo> {
        let repo = Repo::open(dir);
        if dir.join("root.json").exists() {
            return Err(ReleaseError::Metadata(format!("{} already has a root.json", dir.display())));
        }
        let root = build_root(plan, NonZeroU64::MIN)?;
        let signed = sign(root.clone(), &KeyHolder::Root(root.clone()), root_keys).await?;
        root.verify_role(signed.signed()).map_err(|e| {
            ReleaseError::Threshold(format!("the root needs {} root key signatures: {e}", plan.root_threshold))
        })?;
        repo.write_role(signed.buffer(), "root", 1)?;
        Ok(repo)
    }

    /// Writes root version N+1 following `plan`: signed by the current root's keys (their threshold) and by the
    /// new root's keys (theirs), so that clients that trust version N follow it. When the targets keys change,
    /// the current targets metadata is signed again (a new version) with `new_targets_keys`.
    pub async fn rotate_root(
        &self,
        plan: &RootPlan,
        old_root_keys: &[Box<dyn KeySource>],
        new_root_keys: &[Box<dyn KeySource>],
        new_targets_keys: &[Box<dyn KeySource>],
    ) -> Result<Signed<Root>> {
        let old = self.root()?;
        let version = old.signed.version.checked_add(1).ok_or_else(|| ReleaseError::Metadata("root version".into()))?;
        let new = build_root(plan, version)?;
        let by_new = sign(new.clone(), &KeyHolder::Root(new.clone()), new_root_keys).await?;
        let by_old = sign(new.clone(), &KeyHolder::Root(old.signed.clone()), old_root_keys).await?;
        let mut signatures = by_new.signed().signatures.clone();
        for s in &by_old.signed().signatures {
            if !signatures.iter().any(|have| have.keyid == s.keyid) {
                signatures.push(s.clone());
            }
        }
        let combined = Signed { signed: new.clone(), signatures };
        old.signed.verify_role(&combined).map_err(|e| {
            ReleaseError::Threshold(format!("the new root needs the threshold of the current root's keys: {e}"))
        })?;
        new.verify_role(&combined).map_err(|e| {
            ReleaseError::Threshold(format!("the new root needs the threshold of its own root keys: {e}"))
        })?;
        let buffer = pretty(&combined)?;
        let targets_changed = old.signed.roles.get(&RoleType::Targets) != new.roles.get(&RoleType::Targets)
            || new.keys(RoleType::Targets).collect::<Vec<_>>()
                != old.signed.keys(RoleType::Targets).collect::<Vec<_>>();
        let resigned = match (targets_changed, self.targets()?) {
            (true, Some(current)) => {
                let mut targets = current.signed.clone();
                targets.version =
                    targets.version.checked_add(1).ok_or_else(|| ReleaseError::Metadata("targets version".into()))?;
                let signed = sign(targets, &KeyHolder::Root(new.clone()), new_targets_keys).await?;
                new.verify_role(signed.signed()).map_err(|e| {
                    ReleaseError::Threshold(format!("the new targets keys must sign the targets metadata again: {e}"))
                })?;
                Some(signed)
            }
            _ => None,
        };
        self.write_role(&buffer, "root", version.get())?;
        if let Some(signed) = resigned {
            self.write_role(signed.buffer(), "targets", signed.signed().signed.version.get())?;
        }
        Ok(combined)
    }

    /// Adds a release (its image, and its SBOM as a second target) to the targets metadata, signed with
    /// `targets_keys` as a new version; earlier releases stay listed.
    pub async fn add_release(
        &self,
        release: NewRelease<'_>,
        targets_keys: &[Box<dyn KeySource>],
    ) -> Result<Signed<Targets>> {
        let root = self.root()?.signed;
        let mut info = release.info;
        check_target_name(release.name)?;
        let sbom_name = release.sbom.map(|_| format!("{}.cdx.json", release.name));
        info.sbom = sbom_name.clone();
        info.validate().map_err(|e| ReleaseError::Release(e.to_string()))?;
        let mut targets = match self.targets()? {
            Some(current) => {
                let mut t = current.signed;
                t.version = t.version.checked_add(1).ok_or_else(|| ReleaseError::Metadata("targets version".into()))?;
                t
            }
            None => {
                let mut t = Targets::new(SPEC_VERSION.into(), NonZeroU64::MIN, whole_seconds(release.expires));
                t.delegations = None;
                t
            }
        };
        targets.expires = whole_seconds(release.expires);
        if let Some(existing) = targets.targets.keys().find(|n| n.raw() == release.name) {
            return Err(ReleaseError::Release(format!("a target named {} is released already", existing.raw())));
        }
        let same_version =
            targets.targets.values().filter_map(release_of).any(|r| r.model == info.model && r.version == info.version);
        if same_version {
            return Err(ReleaseError::Release(format!("{} {} is released already", info.model, info.version)));
        }
        let mut image = target_of(release.image).await?;
        image
            .custom
            .insert("hearth".into(), serde_json::to_value(&info).map_err(|e| ReleaseError::Release(e.to_string()))?);
        let mut files = vec![(release.name.to_owned(), release.image.to_owned(), image)];
        if let (Some(name), Some(path)) = (sbom_name, release.sbom) {
            let sbom: serde_json::Value = read_json(path)?;
            if sbom.get("bomFormat").and_then(|v| v.as_str()) != Some("CycloneDX") {
                return Err(ReleaseError::Release(format!("{} is not a CycloneDX SBOM", path.display())));
            }
            files.push((name, path.to_owned(), target_of(path).await?));
        }
        for (name, _, target) in &files {
            let name = tough::TargetName::new(name.clone()).map_err(Box::new)?;
            targets.targets.insert(name, target.clone());
        }
        let signed = sign(targets, &KeyHolder::Root(root.clone()), targets_keys).await?;
        root.verify_role(signed.signed()).map_err(|e| {
            ReleaseError::Threshold(format!("the targets metadata needs the targets keys' threshold: {e}"))
        })?;
        let dir = self.dir.join("targets");
        std::fs::create_dir_all(&dir).map_err(|e| ReleaseError::Io(dir.display().to_string(), e))?;
        for (name, from, _) in &files {
            let to = self.target_file(name);
            std::fs::copy(from, &to).map_err(|e| ReleaseError::Io(to.display().to_string(), e))?;
        }
        self.write_role(signed.buffer(), "targets", signed.signed().signed.version.get())?;
        Ok(signed.signed().clone())
    }

    /// Writes `N.{role}.json` and `{role}.json`.
    fn write_role(&self, buffer: &[u8], role: &str, version: u64) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|e| ReleaseError::Io(self.dir.display().to_string(), e))?;
        for name in [format!("{version}.{role}.json"), format!("{role}.json")] {
            let path = self.dir.join(name);
            hearth_fsutil::write_atomic(&path, buffer, 0o644)
                .map_err(|e| ReleaseError::Io(path.display().to_string(), e))?;
        }
        Ok(())
    }
}

/// The release metadata of a target, if it has valid metadata.
pub fn release_of(target: &Target) -> Option<ReleaseInfo> {
    let custom = serde_json::Value::Object(target.custom.clone().into_iter().collect());
    ReleaseInfo::from_custom(&custom).ok()
}

/// Refuses a target name Hearth does not accept ([`hearth_proto::release::check_target_name`]).
fn check_target_name(name: &str) -> Result<()> {
    hearth_proto::release::check_target_name(name).map_err(|e| ReleaseError::Release(e.to_string()))
}

/// The root metadata of `plan` at `version`.
fn build_root(plan: &RootPlan, version: NonZeroU64) -> Result<Root> {
    let mut keys = HashMap::new();
    let mut roles = HashMap::new();
    let mut add = |role: RoleType, role_keys: &[Key], threshold: u64| -> Result<()> {
        let threshold = NonZeroU64::new(threshold)
            .ok_or_else(|| ReleaseError::Threshold(format!("the {role} threshold must be at least 1")))?;
        if (role_keys.len() as u64) < threshold.get() {
            return Err(ReleaseError::Threshold(format!(
                "the {role} role has {} keys but a threshold of {threshold}",
                role_keys.len()
            )));
        }
        let mut keyids = Vec::new();
        for key in role_keys {
            let id = key.key_id().map_err(|e| ReleaseError::Metadata(e.to_string()))?;
            if keyids.contains(&id) {
                return Err(ReleaseError::Threshold(format!("the {role} role lists one key twice")));
            }
            keys.insert(id.clone(), key.clone());
            keyids.push(id);
        }
        roles.insert(role, RoleKeys { keyids, threshold, _extra: HashMap::new() });
        Ok(())
    };
    add(RoleType::Root, &plan.root, plan.root_threshold)?;
    add(RoleType::Targets, &plan.targets, plan.targets_threshold)?;
    add(RoleType::Snapshot, std::slice::from_ref(&plan.hub.snapshot), 1)?;
    add(RoleType::Timestamp, std::slice::from_ref(&plan.hub.timestamp), 1)?;
    // An offline key must not double as an online one: the hub would then hold a root or targets key.
    let online: Vec<_> = [&plan.hub.snapshot, &plan.hub.timestamp].iter().filter_map(|k| k.key_id().ok()).collect();
    for offline in plan.root.iter().chain(&plan.targets) {
        if online.contains(&offline.key_id().map_err(|e| ReleaseError::Metadata(e.to_string()))?) {
            return Err(ReleaseError::Threshold("a root or targets key must not be one of the hub's keys".into()));
        }
    }
    Ok(Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version,
        expires: whole_seconds(plan.expires),
        keys,
        roles,
        _extra: HashMap::new(),
    })
}

/// `t` without its fraction of a second: TUF writes expiry as `YYYY-MM-DDTHH:MM:SSZ`, and clients such as
/// python-tuf refuse anything else.
pub fn whole_seconds(t: jiff::Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Signs `role` with those of `keys` that `holder` names for it.
async fn sign<T: Role + Serialize>(role: T, holder: &KeyHolder, keys: &[Box<dyn KeySource>]) -> Result<SignedRole<T>> {
    SignedRole::new(role, holder, keys, &SystemRandom::new())
        .await
        .map_err(|e| ReleaseError::Threshold(format!("{e} (give the keys this role's metadata names)")))
}

/// A target for the file at `path` (length and SHA-256).
async fn target_of(path: &Path) -> Result<Target> {
    Target::from_path(path)
        .await
        .map_err(|e| ReleaseError::Io(path.display().to_string(), std::io::Error::other(e.to_string())))
}

/// Pretty JSON with a final newline, as tough writes metadata.
fn pretty<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut buffer = serde_json::to_vec_pretty(value).map_err(|e| ReleaseError::Metadata(e.to_string()))?;
    buffer.push(b'\n');
    Ok(buffer)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| ReleaseError::Io(path.display().to_string(), e))?;
    serde_json::from_slice(&bytes).map_err(|e| ReleaseError::Metadata(format!("{}: {e}", path.display())))
}

/// The SHA-256 of a target, as hex.
pub fn sha256_hex(hashes: &Hashes) -> String {
    hex(&hashes.sha256)
}

fn hex(bytes: &Decoded<Hex>) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
