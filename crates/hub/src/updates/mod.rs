//! Signed updates, the hub's side: the TUF repository devices fetch from, its target files, device check-ins
//! and (in `rollouts`) who gets which release when.
//!
//! The hub holds only the *online* TUF keys: snapshot and timestamp (Ed25519, sealed under the master key in the
//! store, like the CA keys). The root and the targets metadata arrive signed by the maker's offline keys
//! (`hearth release`); the hub checks them against the root it trusts and can neither forge nor change a
//! release. Publishing stores the maker's metadata, a new snapshot and a new timestamp in one transaction; a
//! background task signs a fresh timestamp (and snapshot) well before the current one expires. Any node serves
//! any version from the store, so nodes never disagree on what a version says.
//!
//! Target files are stored in the database in chunks (the store is the record every node shares) and served from
//! a verified copy each node keeps under `{data_dir}/updates/files/`.

pub mod rollouts;

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::digest::{Context, SHA256};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use serde::Serialize;
use tokio::io::AsyncWriteExt as _;
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::{Hashes, KeyHolder, Metafile, Role, RoleType, Root, Signed, Snapshot, Targets, Timestamp};
use zeroize::Zeroizing;

use hearth_proto::release::ReleaseInfo;
use hearth_proto::update::{CheckIn, CheckInAnswer, Goal};
use hearth_proto::{DeviceId, ModelId};

use crate::clock::Clock;
use crate::monitoring::{Monitor, SecurityEvent};
use crate::secrets::MasterKey;
use crate::store::{ReleaseRow, Store, StoreError, TufMetadataRow};

/// Sealed-key names in the store.
const SNAPSHOT_KEY: &str = "tuf-snapshot";
const TIMESTAMP_KEY: &str = "tuf-timestamp";
/// How long a timestamp is valid; a new one is signed when less than half is left.
pub const TIMESTAMP_LIFETIME_MS: i64 = 24 * 3600 * 1000;
/// How long a snapshot is valid; a new one is signed when less than half is left.
pub const SNAPSHOT_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;
/// Largest metadata file accepted from a maker.
pub const MAX_METADATA: usize = 16 << 20;
/// Chunk size of stored target files.
pub const CHUNK: usize = 1 << 20;

/// Why an update operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The request is wrong; the message says how (nothing changed).
    #[error("{0}")]
    Refused(String),
    /// There is no such thing.
    #[error("{0}")]
    NotFound(String),
    /// The state does not allow it now (another rollout runs, a limit is reached…).
    #[error("{0}")]
    Conflict(String),
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing or the file cache.
    #[error("{0}")]
    Internal(String),
    /// The device checks in too often; it may again after this many seconds.
    #[error("too many check-ins from this device; try again in {0} s")]
    Throttled(u64),
}

/// Check-ins a device may make at once, and how many per second it earns back: far more than the agent needs (a
/// whole update is about ten), so that a device (or a stolen certificate) cannot make the hub write for it at
/// will. Counted per node.
pub const CHECK_IN_BURST: f64 = 60.0;
/// See [`CHECK_IN_BURST`].
pub const CHECK_IN_PER_SECOND: f64 = 1.0;

/// A device's check-in allowance.
#[derive(Debug, Clone, Copy)]
struct Allowance {
    tokens: f64,
    at: std::time::Instant,
}

type Result<T> = std::result::Result<T, UpdateError>;

fn refused(msg: impl Into<String>) -> UpdateError {
    UpdateError::Refused(msg.into())
}

fn internal(e: impl std::fmt::Display) -> UpdateError {
    UpdateError::Internal(e.to_string())
}

/// Settings of the update capability (`[updates]`).
#[derive(Debug, Clone)]
pub struct UpdateSettings {
    /// Largest target file, bytes.
    pub max_file_bytes: u64,
    /// Latest check-in interval, seconds.
    pub check_seconds: u64,
    /// How often one update may be postponed.
    pub max_postpones: u32,
    /// Longest single postponement, ms.
    pub max_postpone_ms: i64,
    /// Security releases are installed at the latest this long after publication, ms.
    pub security_deadline_ms: i64,
}

/// The hub's online TUF key pair (PKCS#8, in memory only while the hub runs).
struct OnlineKey(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for OnlineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnlineKey(…)")
    }
}

#[async_trait::async_trait]
impl KeySource for OnlineKey {
    async fn as_sign(
        &self,
    ) -> std::result::Result<Box<dyn tough::sign::Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(Box::new(tough::sign::parse_keypair(&self.0)?))
    }

    async fn write(&self, _: &str, _: &str) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err("the hub's online keys are not written this way".into())
    }
}

impl OnlineKey {
    fn public(&self) -> Result<Key> {
        use tough::sign::Sign as _;
        Ok(tough::sign::parse_keypair(&self.0).map_err(internal)?.tuf_key())
    }
}

/// The public keys of the hub's online roles, for the maker's root.
#[derive(Debug, Clone, Serialize)]
pub struct HubKeys {
    /// The snapshot key.
    pub snapshot: Key,
    /// The timestamp key.
    pub timestamp: Key,
}

/// What the repository holds now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepositoryStatus {
    /// Versions of each role (0: none yet).
    pub root_version: i64,
    /// The targets metadata's version.
    pub targets_version: i64,
    /// The snapshot's version.
    pub snapshot_version: i64,
    /// The timestamp's version.
    pub timestamp_version: i64,
    /// When the root expires, Unix ms (0: none).
    pub root_expires_at: i64,
    /// When the targets metadata expires, Unix ms: the maker must sign it again before then.
    pub targets_expires_at: i64,
    /// When the timestamp expires, Unix ms (the hub renews it).
    pub timestamp_expires_at: i64,
}

/// A publication: root versions (each the next) and/or new targets metadata.
#[derive(Debug, Default)]
pub struct Publication {
    /// New root versions, in order.
    pub roots: Vec<serde_json::Value>,
    /// New targets metadata.
    pub targets: Option<serde_json::Value>,
}

/// The update capability. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Updates {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    clock: Clock,
    monitor: Monitor,
    commands: crate::commands::Commands,
    snapshot: OnlineKey,
    timestamp: OnlineKey,
    files_dir: PathBuf,
    settings: UpdateSettings,
    /// One materialisation per file at a time.
    materialising: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Check-in allowances by device.
    check_ins: std::sync::Mutex<HashMap<DeviceId, Allowance>>,
}

impl Updates {
    /// Loads the online keys (creating and sealing them on first start; two nodes starting at once agree on one).
    pub async fn load_or_create(
        store: Store,
        master: &MasterKey,
        clock: Clock,
        monitor: Monitor,
        commands: crate::commands::Commands,
        data_dir: &Path,
        settings: UpdateSettings,
    ) -> Result<Updates> {
        let snapshot = online_key(&store, master, SNAPSHOT_KEY, clock.now_ms()).await?;
        let timestamp = online_key(&store, master, TIMESTAMP_KEY, clock.now_ms()).await?;
        let files_dir = data_dir.join("updates").join("files");
        tokio::fs::create_dir_all(&files_dir).await.map_err(internal)?;
        Ok(Updates {
            inner: Arc::new(Inner {
                store,
                clock,
                monitor,
                commands,
                snapshot,
                timestamp,
                files_dir,
                settings,
                materialising: tokio::sync::Mutex::new(HashMap::new()),
                check_ins: std::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &UpdateSettings {
        &self.inner.settings
    }

    /// The public halves of the hub's snapshot and timestamp keys.
    pub fn hub_keys(&self) -> Result<HubKeys> {
        Ok(HubKeys { snapshot: self.inner.snapshot.public()?, timestamp: self.inner.timestamp.public()? })
    }

    /// What the repository holds.
    pub async fn status(&self) -> Result<RepositoryStatus> {
        let store = &self.inner.store;
        let mut status = RepositoryStatus::default();
        if let Some(r) = store.tuf_latest("root").await? {
            (status.root_version, status.root_expires_at) = (r.version, r.expires_at);
        }
        if let Some(r) = store.tuf_latest("targets").await? {
            (status.targets_version, status.targets_expires_at) = (r.version, r.expires_at);
        }
        if let Some(r) = store.tuf_latest("snapshot").await? {
            status.snapshot_version = r.version;
        }
        if let Some(r) = store.tuf_latest("timestamp").await? {
            (status.timestamp_version, status.timestamp_expires_at) = (r.version, r.expires_at);
        }
        Ok(status)
    }

    /// Publishes new root versions and/or targets metadata: each root version must be the next and be signed
    /// by the threshold of the previous root's keys and of its own; the targets metadata must be signed by the
    /// targets keys of the (new) root, be newer, unexpired, and list only uploaded files with valid release
    /// metadata. Then a new snapshot and timestamp are signed, and all of it is stored at once. Nothing changes
    /// on a refusal.
    pub async fn publish(&self, publication: Publication) -> Result<RepositoryStatus> {
        let now = self.inner.clock.now_ms();
        let store = &self.inner.store;
        let hub = self.hub_keys()?;
        let mut rows = Vec::new();
        let mut trusted: Option<Signed<Root>> = match store.tuf_latest("root").await? {
            Some(row) => Some(parse(&row.body, "stored root")?),
            None => None,
        };
        for (i, value) in publication.roots.into_iter().enumerate() {
            let new: Signed<Root> = serde_json::from_value(value)
                .map_err(|e| refused(format!("root {}: not TUF root metadata: {e}", i + 1)))?;
            check_root(trusted.as_ref(), &new, &hub, now)?;
            rows.push(row_of("root", &new, new.signed.version.get(), expiry_ms(new.signed.expires))?);
            trusted = Some(new);
        }
        let root = trusted.ok_or_else(|| refused("the hub has no root yet: publish the maker's root first"))?;
        let current_targets = store.tuf_latest("targets").await?;
        let mut releases = Vec::new();
        let targets_row = match publication.targets {
            Some(value) => {
                let targets: Signed<Targets> =
                    serde_json::from_value(value).map_err(|e| refused(format!("not TUF targets metadata: {e}")))?;
                root.signed.verify_role(&targets).map_err(|e| {
                    refused(format!("the targets metadata is not signed by the root's targets keys: {e}"))
                })?;
                let version = targets.signed.version.get() as i64;
                if let Some(current) = &current_targets
                    && version <= current.version
                {
                    return Err(refused(format!(
                        "targets version {version} is not newer than the published version {}",
                        current.version
                    )));
                }
                if expiry_ms(targets.signed.expires) <= now {
                    return Err(refused("the targets metadata has expired"));
                }
                if targets.signed.delegations.as_ref().is_some_and(|d| !d.roles.is_empty()) {
                    return Err(refused("delegated targets are not supported"));
                }
                releases = self.check_targets(&targets.signed, now).await?;
                Some(row_of("targets", &targets, version as u64, expiry_ms(targets.signed.expires))?)
            }
            None => None,
        };
        let targets_row = match (targets_row, current_targets) {
            (Some(new), _) => {
                rows.push(new.clone());
                new
            }
            (None, Some(current)) => {
                // Only the root changed: the published targets must still verify under it.
                let targets: Signed<Targets> = parse(&current.body, "stored targets")?;
                root.signed.verify_role(&targets).map_err(|e| {
                    refused(format!(
                        "under the new root the published targets metadata no longer verifies ({e}): publish it \
                         signed again with the new targets keys in the same request"
                    ))
                })?;
                current
            }
            (None, None) => {
                // A root alone, before any release: stored; snapshot and timestamp follow the first targets.
                if rows.is_empty() {
                    return Err(refused("nothing to publish"));
                }
                if !store.tuf_publish(&rows, &[], None, now).await? {
                    return Err(UpdateError::Conflict("another publication came first; try again".into()));
                }
                return self.status().await;
            }
        };
        let (snapshot, timestamp) = self.sign_online(&root.signed, &targets_row, now).await?;
        rows.push(snapshot);
        rows.push(timestamp);
        if !store.tuf_publish(&rows, &releases, Some(targets_row.version), now).await? {
            return Err(UpdateError::Conflict("another publication came first; try again".into()));
        }
        tracing::info!(targets = targets_row.version, releases = releases.len(), "update repository published");
        self.status().await
    }

    /// Checks each target of new targets metadata: a name Hearth accepts, an uploaded file of that length, and
    /// valid release metadata for images (whose SBOM must be listed too). The releases it adds.
    async fn check_targets(&self, targets: &Targets, now: i64) -> Result<Vec<ReleaseRow>> {
        let mut releases = Vec::new();
        let mut seen_versions = HashMap::new();
        for (name, target) in &targets.targets {
            let name = name.raw();
            hearth_proto::release::check_target_name(name).map_err(|e| refused(e.to_string()))?;
            let sha = hex(&target.hashes.sha256);
            match self.inner.store.update_file(&sha).await? {
                Some((length, _)) if length as u64 == target.length => {}
                Some((length, _)) => {
                    return Err(refused(format!(
                        "target {name}: signed length {} but the uploaded file is {length} bytes",
                        target.length
                    )));
                }
                None => return Err(refused(format!("target {name}: upload its file (SHA-256 {sha}) first"))),
            }
            if !target.custom.contains_key("hearth") {
                continue;
            }
            let custom = serde_json::Value::Object(target.custom.clone().into_iter().collect());
            let info = ReleaseInfo::from_custom(&custom).map_err(|e| refused(format!("target {name}: {e}")))?;
            if let Some(sbom) = &info.sbom
                && !targets.targets.keys().any(|n| n.raw() == sbom)
            {
                return Err(refused(format!("target {name}: its SBOM {sbom} is not a target")));
            }
            if let Some(other) = seen_versions.insert((info.model.to_string(), info.version.clone()), name.to_owned()) {
                return Err(refused(format!("{other} and {name} are both {} {}", info.model, info.version)));
            }
            if let Some(existing) = self.inner.store.release(name).await? {
                if existing.sha256 != sha {
                    return Err(refused(format!("target {name} was released with other content")));
                }
                continue;
            }
            releases.push(ReleaseRow {
                target_name: name.to_owned(),
                model: info.model.to_string(),
                version: info.version.clone(),
                security_version: info.security_version as i64,
                kind: match info.kind {
                    hearth_proto::release::ReleaseKind::Security => "security".into(),
                    hearth_proto::release::ReleaseKind::Feature => "feature".into(),
                },
                info_json: serde_json::to_string(&info).map_err(internal)?,
                sha256: sha,
                length: target.length as i64,
                targets_version: targets.version.get() as i64,
                published_at: now,
            });
        }
        Ok(releases)
    }

    /// Signs a new snapshot (over `targets`) and timestamp (over that snapshot), each one version above the
    /// stored ones.
    async fn sign_online(
        &self,
        root: &Root,
        targets: &TufMetadataRow,
        now: i64,
    ) -> Result<(TufMetadataRow, TufMetadataRow)> {
        let store = &self.inner.store;
        let next = |row: Option<TufMetadataRow>| row.map_or(1, |r| r.version + 1);
        let snapshot_version = next(store.tuf_latest("snapshot").await?);
        let timestamp_version = next(store.tuf_latest("timestamp").await?);
        let holder = KeyHolder::Root(root.clone());
        let mut snapshot =
            Snapshot::new(hearth_release_spec(), nonzero(snapshot_version)?, timestamp_of(now + SNAPSHOT_LIFETIME_MS)?);
        snapshot.meta.insert("targets.json".into(), metafile(&targets.body, targets.version)?);
        let snapshot = sign(snapshot, &holder, &self.inner.snapshot).await?;
        let snapshot_row = TufMetadataRow {
            role: "snapshot".into(),
            version: snapshot_version,
            body: snapshot.buffer().clone(),
            expires_at: expiry_ms(snapshot.signed().signed.expires),
        };
        let mut timestamp = Timestamp::new(
            hearth_release_spec(),
            nonzero(timestamp_version)?,
            timestamp_of(now + TIMESTAMP_LIFETIME_MS)?,
        );
        timestamp.meta.insert("snapshot.json".into(), metafile(&snapshot_row.body, snapshot_version)?);
        let timestamp = sign(timestamp, &holder, &self.inner.timestamp).await?;
        let timestamp_row = TufMetadataRow {
            role: "timestamp".into(),
            version: timestamp_version,
            body: timestamp.buffer().clone(),
            expires_at: expiry_ms(timestamp.signed().signed.expires),
        };
        Ok((snapshot_row, timestamp_row))
    }

    /// Signs a new snapshot and timestamp when less than half of the current timestamp's or snapshot's life is
    /// left (several nodes may try; the store keeps one of each version). True if it signed.
    pub async fn refresh(&self) -> Result<bool> {
        let now = self.inner.clock.now_ms();
        let store = &self.inner.store;
        let (Some(targets), Some(timestamp), Some(snapshot)) = (
            store.tuf_latest("targets").await?,
            store.tuf_latest("timestamp").await?,
            store.tuf_latest("snapshot").await?,
        ) else {
            return Ok(false);
        };
        let due = timestamp.expires_at - now < TIMESTAMP_LIFETIME_MS / 2
            || snapshot.expires_at - now < SNAPSHOT_LIFETIME_MS / 2;
        if !due {
            return Ok(false);
        }
        let root: Signed<Root> =
            parse(&store.tuf_latest("root").await?.ok_or_else(|| internal("no root"))?.body, "stored root")?;
        let (snapshot, timestamp) = self.sign_online(&root.signed, &targets, now).await?;
        let signed = store.tuf_publish(&[snapshot, timestamp], &[], Some(targets.version), now).await?;
        if signed {
            tracing::info!("update repository: timestamp renewed");
        }
        Ok(signed)
    }

    /// Renews the timestamp every minute when due.
    pub fn spawn_refresh(&self) -> tokio::task::JoinHandle<()> {
        let updates = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                if let Err(e) = updates.refresh().await {
                    tracing::warn!(error = %e, "renewing the update repository's timestamp failed");
                }
            }
        })
    }

    /// A metadata file as TUF clients ask for it: `timestamp.json`, `N.root.json`, `N.snapshot.json`,
    /// `N.targets.json` (consistent snapshots), and `root.json`/`snapshot.json`/`targets.json` for the newest.
    pub async fn metadata(&self, file: &str) -> Result<Option<Vec<u8>>> {
        let Some(stem) = file.strip_suffix(".json") else { return Ok(None) };
        let (version, role) = match stem.split_once('.') {
            Some((v, role)) => match v.parse::<i64>() {
                Ok(v) if v > 0 => (Some(v), role),
                _ => return Ok(None),
            },
            None => (None, stem),
        };
        if !matches!(role, "root" | "timestamp" | "snapshot" | "targets") || (role == "timestamp" && version.is_some())
        {
            return Ok(None);
        }
        let row = match version {
            Some(v) => self.inner.store.tuf_version(role, v).await?,
            None => self.inner.store.tuf_latest(role).await?,
        };
        Ok(row.map(|r| r.body))
    }

    /// Stores an uploaded target file: `body` is written to a temporary file while hashed, refused past the
    /// size limit or if its SHA-256 is not `sha256`, then stored in the database and kept as this node's copy.
    pub async fn put_file<S>(&self, sha256: &str, mut body: S) -> Result<bool>
    where
        S: futures_util::Stream<Item = std::result::Result<bytes::Bytes, axum::Error>> + Unpin,
    {
        use futures_util::StreamExt as _;
        check_sha(sha256)?;
        if self.inner.store.update_file(sha256).await?.is_some() {
            return Ok(false);
        }
        let tmp = tempfile_in(&self.inner.files_dir)?;
        let mut file = tokio::fs::File::create(&tmp.0).await.map_err(internal)?;
        let mut digest = Context::new(&SHA256);
        let mut length = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| refused(format!("the upload broke off: {e}")))?;
            length += chunk.len() as u64;
            if length > self.inner.settings.max_file_bytes {
                return Err(refused(format!(
                    "the file is larger than updates.max_file_mb ({} MiB)",
                    self.inner.settings.max_file_bytes >> 20
                )));
            }
            digest.update(&chunk);
            file.write_all(&chunk).await.map_err(internal)?;
        }
        file.sync_all().await.map_err(internal)?;
        drop(file);
        let got = hex_bytes(digest.finish().as_ref());
        if got != sha256 {
            return Err(refused(format!("the file's SHA-256 is {got}, not {sha256}")));
        }
        let mut reader = tokio::fs::File::open(&tmp.0).await.map_err(internal)?;
        let now = self.inner.clock.now_ms();
        let inserted = self.inner.store.insert_update_file(sha256, length as i64, &mut reader, CHUNK, now).await?;
        let _ = tokio::fs::rename(&tmp.0, self.inner.files_dir.join(sha256)).await;
        Ok(inserted)
    }

    /// Whether a target file is stored, and its length.
    pub async fn file_length(&self, sha256: &str) -> Result<Option<u64>> {
        check_sha(sha256)?;
        Ok(self.inner.store.update_file(sha256).await?.map(|(l, _)| l as u64))
    }

    /// This node's verified copy of a stored target file, made from the store on first use.
    pub async fn local_file(&self, sha256: &str) -> Result<Option<(PathBuf, u64)>> {
        if check_sha(sha256).is_err() {
            return Ok(None);
        }
        let path = self.inner.files_dir.join(sha256);
        let Some((length, chunks)) = self.inner.store.update_file(sha256).await? else { return Ok(None) };
        if let Ok(meta) = tokio::fs::metadata(&path).await
            && meta.len() == length as u64
        {
            return Ok(Some((path, length as u64)));
        }
        let lock = {
            let mut map = self.inner.materialising.lock().await;
            map.entry(sha256.to_owned()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if let Ok(meta) = tokio::fs::metadata(&path).await
            && meta.len() == length as u64
        {
            return Ok(Some((path, length as u64)));
        }
        let tmp = tempfile_in(&self.inner.files_dir)?;
        let mut file = tokio::fs::File::create(&tmp.0).await.map_err(internal)?;
        let mut digest = Context::new(&SHA256);
        for idx in 0..chunks {
            let data = self
                .inner
                .store
                .update_file_chunk(sha256, idx)
                .await?
                .ok_or_else(|| internal(format!("chunk {idx} of {sha256} is missing")))?;
            digest.update(&data);
            file.write_all(&data).await.map_err(internal)?;
        }
        file.sync_all().await.map_err(internal)?;
        if hex_bytes(digest.finish().as_ref()) != sha256 {
            return Err(internal(format!("the stored file {sha256} does not match its hash")));
        }
        tokio::fs::rename(&tmp.0, &path).await.map_err(internal)?;
        self.inner.materialising.lock().await.remove(sha256);
        Ok(Some((path, length as u64)))
    }

    /// A device checks in: what it runs is recorded (an image the hub never released for its model raises a
    /// security event), its update steps move its rollouts, and the answer is its goal.
    pub async fn check_in(
        &self,
        device: &DeviceId,
        model: &ModelId,
        source: Option<std::net::IpAddr>,
        report: &CheckIn,
    ) -> Result<CheckInAnswer> {
        if let Err(wait) = self.take_check_in(device) {
            self.inner.monitor.record(SecurityEvent {
                device: Some(device.to_string()),
                source,
                kind: "check_in_throttled",
                detail: format!("more than {CHECK_IN_BURST} check-ins at once"),
            });
            return Err(UpdateError::Throttled(wait));
        }
        report.validate().map_err(|e| refused(e.to_string()))?;
        let now = self.inner.clock.now_ms();
        let store = &self.inner.store;
        let mut version = None;
        if let Some(image) = &report.image {
            match store.release_by_image(model.as_str(), &image.sha256).await? {
                Some(release) => version = Some(release.version),
                None => self.inner.monitor.record(SecurityEvent {
                    device: Some(device.to_string()),
                    source,
                    kind: "unknown_image",
                    detail: format!(
                        "the device runs an image this hub never released for model {model} (SHA-256 {})",
                        image.sha256
                    ),
                }),
            }
        }
        store
            .record_check_in(
                device,
                report.image.as_ref().map(|i| i.sha256.as_str()),
                version.as_deref(),
                &report.hardware,
                report.security_floor.min(i64::MAX as u64) as i64,
                now,
            )
            .await?;
        for step in &report.steps {
            let (mut state, mut detail) = (step.state.as_str(), step.detail.clone());
            if step.state == hearth_proto::update::UpdateStep::Succeeded {
                // Success counts only from a device that runs the release's image (the gates open waves on it).
                let release = match store.rollout(&step.rollout).await? {
                    Some(r) => store.release(&r.release).await?,
                    None => None,
                };
                let runs_it = release.is_some_and(|r| report.image.as_ref().is_some_and(|i| i.sha256 == r.sha256));
                if !runs_it {
                    state = "failed";
                    detail = "reported success but does not run the release's image".into();
                }
            }
            store.record_update_step(&step.rollout, device, state, &detail, now).await?;
        }
        let goal = store.device_goal(device, now).await?.map(|g| Goal { rollout: g.rollout_id, target: g.release });
        Ok(CheckInAnswer { goal, check_after_seconds: self.inner.settings.check_seconds })
    }
}

impl Updates {
    /// Takes one check-in from the device's allowance, or says how many seconds until it has one.
    fn take_check_in(&self, device: &DeviceId) -> std::result::Result<(), u64> {
        let now = std::time::Instant::now();
        let mut all = self.inner.check_ins.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() >= 100_000 {
            // Forget devices whose allowance is whole again (they would start full anyway).
            all.retain(|_, a| a.tokens + now.duration_since(a.at).as_secs_f64() * CHECK_IN_PER_SECOND < CHECK_IN_BURST);
        }
        let a = all.entry(device.clone()).or_insert(Allowance { tokens: CHECK_IN_BURST, at: now });
        a.tokens = (a.tokens + now.duration_since(a.at).as_secs_f64() * CHECK_IN_PER_SECOND).min(CHECK_IN_BURST);
        a.at = now;
        if a.tokens >= 1.0 {
            a.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - a.tokens) / CHECK_IN_PER_SECOND).ceil() as u64)
        }
    }
}

/// Checks a root against the one trusted before it (or against itself, for the first).
fn check_root(trusted: Option<&Signed<Root>>, new: &Signed<Root>, hub: &HubKeys, now: i64) -> Result<()> {
    let v = new.signed.version.get();
    match trusted {
        Some(old) => {
            if v != old.signed.version.get() + 1 {
                return Err(refused(format!("root version {v} is not the next after {}", old.signed.version)));
            }
            old.signed.verify_role(new).map_err(|e| {
                refused(format!("root {v} is not signed by the threshold of root {}'s keys: {e}", old.signed.version))
            })?;
        }
        None if v != 1 => {
            return Err(refused(format!(
                "the first root the hub trusts must be version 1 (got {v}); publish every version in order"
            )));
        }
        None => {}
    }
    new.signed
        .verify_role(new)
        .map_err(|e| refused(format!("root {v} is not signed by its own root keys' threshold: {e}")))?;
    if expiry_ms(new.signed.expires) <= now {
        return Err(refused(format!("root {v} has expired")));
    }
    if !new.signed.consistent_snapshot {
        return Err(refused("the root must set consistent_snapshot (the hub serves versioned metadata)"));
    }
    let only = |role: RoleType, key: &Key| -> Result<()> {
        let keys: Vec<&Key> = new.signed.keys(role).collect();
        if keys.len() != 1 || keys[0] != key {
            return Err(refused(format!(
                "the root's {role} role must be exactly the hub's {role} key (from GET /api/v1/updates/keys)"
            )));
        }
        Ok(())
    };
    only(RoleType::Snapshot, &hub.snapshot)?;
    only(RoleType::Timestamp, &hub.timestamp)?;
    for role in [RoleType::Root, RoleType::Targets] {
        if new.signed.keys(role).any(|k| k == &hub.snapshot || k == &hub.timestamp) {
            return Err(refused(format!("the {role} role must not use a key the hub holds")));
        }
    }
    Ok(())
}

async fn online_key(store: &Store, master: &MasterKey, name: &str, now: i64) -> Result<OnlineKey> {
    if store.key(name).await?.is_none() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(internal)?;
        let sealed = master.seal(name, pkcs8.as_ref()).map_err(internal)?;
        store.insert_key(name, "", &sealed, now).await?;
    }
    let (_, sealed) = store.key(name).await?.ok_or_else(|| internal(format!("{name} vanished")))?;
    Ok(OnlineKey(master.unseal(name, &sealed).map_err(internal)?))
}

async fn sign<T: Role + Serialize>(role: T, holder: &KeyHolder, key: &OnlineKey) -> Result<SignedRole<T>> {
    let key: Box<dyn KeySource> = Box::new(OnlineKey(key.0.clone()));
    SignedRole::new(role, holder, &[key], &SystemRandom::new()).await.map_err(|e| {
        internal(format!("signing with the hub's key failed ({e}); is the published root made with its keys?"))
    })
}

fn row_of<T: Serialize>(role: &str, signed: &Signed<T>, version: u64, expires_at: i64) -> Result<TufMetadataRow> {
    let mut body = serde_json::to_vec_pretty(signed).map_err(internal)?;
    body.push(b'\n');
    if body.len() > MAX_METADATA {
        return Err(refused(format!("the {role} metadata is larger than {MAX_METADATA} bytes")));
    }
    Ok(TufMetadataRow { role: role.into(), version: version as i64, body, expires_at })
}

fn metafile(body: &[u8], version: i64) -> Result<Metafile> {
    let digest = aws_lc_rs::digest::digest(&SHA256, body);
    Ok(Metafile {
        length: Some(body.len() as u64),
        hashes: Some(Hashes { sha256: Decoded::from(digest.as_ref().to_vec()), _extra: HashMap::new() }),
        version: nonzero(version)?,
        _extra: HashMap::new(),
    })
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| internal(format!("{what}: {e}")))
}

fn nonzero(v: i64) -> Result<NonZeroU64> {
    NonZeroU64::new(v as u64).ok_or_else(|| internal("version 0"))
}

/// A timestamp in whole seconds (TUF writes `YYYY-MM-DDTHH:MM:SSZ`; python-tuf refuses fractions).
fn timestamp_of(ms: i64) -> Result<jiff::Timestamp> {
    jiff::Timestamp::from_second(ms.div_euclid(1000)).map_err(internal)
}

fn expiry_ms(t: jiff::Timestamp) -> i64 {
    t.as_millisecond()
}

fn hearth_release_spec() -> String {
    "1.0.31".into()
}

fn hex(bytes: &Decoded<Hex>) -> String {
    hex_bytes(bytes)
}

fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check_sha(sha256: &str) -> Result<()> {
    if hearth_proto::update::is_sha256_hex(sha256) {
        Ok(())
    } else {
        Err(refused("a file is named by its SHA-256: 64 lowercase hex digits"))
    }
}

/// A temporary file in `dir`, removed when dropped.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn tempfile_in(dir: &Path) -> Result<TempPath> {
    let name = crate::secrets::random_base32(16).map_err(internal)?;
    Ok(TempPath(dir.join(format!(".tmp-{name}"))))
}
