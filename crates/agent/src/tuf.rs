//! The agent's TUF client (The Update Framework, through `tough`): trusted metadata kept in a directory
//! (`root.json`, `timestamp.json`, `snapshot.json`, `targets.json`), refreshed from a repository, and targets
//! downloaded only once their length and hashes match what the signed metadata says. Everything TUF checks
//! (signatures and thresholds, expiry, version rollback, snapshot consistency, root rotation) is `tough`'s; this
//! module adds the transport: HTTP(S) streamed with a cap on idle time (slow retrieval) and backpressure, so an
//! endless or stalled answer can neither fill memory nor hang the agent.
//!
//! `hearth-tuf` (the `bin/tuf.rs` command) exposes it with the command line that independent TUF client test
//! suites drive.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tough::{
    DefaultTransport, ExpirationEnforcement, Limits, Prefix, Repository, RepositoryLoader, TargetName, Transport,
    TransportError, TransportErrorKind, TransportStream,
};
use url::Url;

/// Longest wait for the next bytes of an answer before the fetch fails (slow retrieval).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Size limits on metadata whose length the signed metadata does not give.
pub const LIMITS: Limits = Limits {
    max_root_size: 1 << 20,
    max_targets_size: 16 << 20,
    max_timestamp_size: 64 << 10,
    max_snapshot_size: 4 << 20,
    max_root_updates: 1024,
};

/// Why a TUF step failed.
#[derive(Debug, thiserror::Error)]
pub enum TufError {
    /// Reading or writing the metadata or target directory.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The trusted root is not TUF root metadata.
    #[error("not a TUF root: {0}")]
    BadRoot(String),
    /// TUF refused the repository or a target (the trusted metadata is unchanged).
    #[error(transparent)]
    Tuf(#[from] Box<tough::error::Error>),
    /// The target's length is not the signed one (the file is removed).
    #[error("the target is {got} bytes, but its signed length is {signed}")]
    LengthMismatch {
        /// The signed length.
        signed: u64,
        /// What arrived.
        got: u64,
    },
    /// The signed metadata has no such target.
    #[error("no release named {0}")]
    NoRelease(String),
    /// The target's release metadata is missing or invalid.
    #[error("release metadata: {0}")]
    BadRelease(String),
    /// A URL does not parse.
    #[error("bad URL {0}: {1}")]
    Url(String, url::ParseError),
}

/// Fetches `http(s)://` with reqwest (streamed, each chunk within [`IDLE_TIMEOUT`]) and `file://` from disk.
#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    idle: Duration,
}

impl Fetcher {
    /// A fetcher over `client` (which carries the CA and, towards the hub, the device certificate).
    pub fn new(client: reqwest::Client) -> Fetcher {
        Fetcher { client, idle: IDLE_TIMEOUT }
    }

    /// The same with another idle limit (tests of slow retrieval).
    pub fn with_idle_timeout(mut self, idle: Duration) -> Fetcher {
        self.idle = idle;
        self
    }
}

#[async_trait::async_trait]
impl Transport for Fetcher {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        if url.scheme() == "file" {
            return DefaultTransport::default().fetch(url).await;
        }
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(TransportError::new(TransportErrorKind::UnsupportedUrlScheme, url));
        }
        let other = |e: reqwest::Error| TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), e);
        let response = tokio::time::timeout(self.idle, self.client.get(url.clone()).send()).await.map_err(|_| {
            TransportError::new_with_cause(TransportErrorKind::Other, url.as_str(), "no answer in time")
        })?;
        let mut response = response.map_err(other)?;
        match response.status().as_u16() {
            200..=299 => {}
            403 | 404 | 410 => return Err(TransportError::new(TransportErrorKind::FileNotFound, url)),
            status => {
                return Err(TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    url.as_str(),
                    format!("HTTP {status}"),
                ));
            }
        }
        // A reader task hands chunks over a small channel: the consumer (tough, which stops at the signed length
        // or its limits) sets the pace, and dropping the stream ends the download.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, TransportError>>(4);
        let idle = self.idle;
        let at = url.to_string();
        tokio::spawn(async move {
            loop {
                let next = match tokio::time::timeout(idle, response.chunk()).await {
                    Ok(Ok(Some(chunk))) => Ok(chunk),
                    Ok(Ok(None)) => return,
                    Ok(Err(e)) => Err(TransportError::new_with_cause(TransportErrorKind::Other, &at, e)),
                    Err(_) => Err(TransportError::new_with_cause(
                        TransportErrorKind::Other,
                        &at,
                        format!("no data for {} s (slow retrieval)", idle.as_secs()),
                    )),
                };
                let failed = next.is_err();
                if tx.send(next).await.is_err() || failed {
                    return;
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Box::pin(stream))
    }
}

/// Makes `root_file` the trusted root in `metadata_dir` (created if need be). It must parse as TUF root metadata;
/// its signatures are checked against itself when the repository is first loaded.
pub fn init(metadata_dir: &Path, root_file: &Path) -> Result<(), TufError> {
    let bytes = std::fs::read(root_file).map_err(|e| TufError::Io(root_file.display().to_string(), e))?;
    serde_json::from_slice::<tough::schema::Signed<tough::schema::Root>>(&bytes)
        .map_err(|e| TufError::BadRoot(e.to_string()))?;
    std::fs::create_dir_all(metadata_dir).map_err(|e| TufError::Io(metadata_dir.display().to_string(), e))?;
    let path = metadata_dir.join("root.json");
    hearth_fsutil::write_atomic(&path, &bytes, 0o644).map_err(|e| TufError::Io(path.display().to_string(), e))
}

/// Loads the repository at `metadata_url` starting from the trusted metadata in `metadata_dir`, which is updated
/// (root rotations followed, newer timestamp, snapshot and targets kept) only when everything verifies.
pub async fn refresh(
    fetcher: &Fetcher,
    metadata_dir: &Path,
    metadata_url: &str,
    targets_url: Option<&str>,
) -> Result<Repository, TufError> {
    let root_path = metadata_dir.join("root.json");
    let root = std::fs::read(&root_path).map_err(|e| TufError::Io(root_path.display().to_string(), e))?;
    let metadata = dir_url(metadata_url)?;
    let targets = dir_url(targets_url.unwrap_or(metadata_url))?;
    // tough rewrites its datastore in place (root.json is deleted and written again, without fsync). A power cut
    // there could leave no trusted root, or a torn timestamp that tough then ignores (losing rollback
    // protection). So tough works on a scratch copy, and only a refresh that verified is written back, file by
    // file, each atomically and durably.
    // Beside the directory, not in it (the directory holds exactly the trusted files); kept until the next
    // refresh, since tough still writes its clock record there while a target downloads.
    let scratch = scratch_dir(metadata_dir);
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| TufError::Io(scratch.display().to_string(), e))?;
    for name in TRUSTED_FILES {
        let from = metadata_dir.join(name);
        if from.exists() {
            std::fs::copy(&from, scratch.join(name)).map_err(|e| TufError::Io(from.display().to_string(), e))?;
        }
    }
    let loaded = RepositoryLoader::new(&root, metadata, targets)
        .transport(fetcher.clone())
        .limits(LIMITS)
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .datastore(&scratch)
        .load()
        .await;
    let repository = match loaded {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(Box::new(e).into());
        }
    };
    for name in TRUSTED_FILES {
        let from = scratch.join(name);
        if let Ok(bytes) = std::fs::read(&from) {
            let to = metadata_dir.join(name);
            hearth_fsutil::write_atomic(&to, &bytes, 0o644).map_err(|e| TufError::Io(to.display().to_string(), e))?;
        }
    }
    Ok(repository)
}

/// `{dir}.refresh`, beside the trusted metadata directory.
fn scratch_dir(metadata_dir: &Path) -> std::path::PathBuf {
    let mut name = metadata_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "tuf".into());
    name.push(".refresh");
    metadata_dir.with_file_name(name)
}

/// The files of trusted metadata tough keeps (and its record of the latest time it saw).
const TRUSTED_FILES: [&str; 5] =
    ["root.json", "timestamp.json", "snapshot.json", "targets.json", "latest_known_time.json"];

/// Refreshes, then downloads target `name` into `target_dir` (as the file `name`), verified against the signed
/// length and hashes; a partial or wrong file is never left under that name.
pub async fn download(
    fetcher: &Fetcher,
    metadata_dir: &Path,
    metadata_url: &str,
    name: &str,
    target_base_url: &str,
    target_dir: &Path,
) -> Result<(), TufError> {
    let repository = refresh(fetcher, metadata_dir, metadata_url, Some(target_base_url)).await?;
    std::fs::create_dir_all(target_dir).map_err(|e| TufError::Io(target_dir.display().to_string(), e))?;
    let name = TargetName::new(name).map_err(Box::new)?;
    repository.save_target(&name, target_dir, Prefix::None).await.map_err(Box::new)?;
    // tough reads at most the signed length and checks the hashes; TUF also wants the length exact (a file one
    // byte short with a matching hash means the signed length is wrong: refuse, as python-tuf does).
    let signed_length = repository.targets().signed.targets.get(&name).map(|t| t.length);
    let path = target_dir.join(name.raw());
    let got = std::fs::metadata(&path).map_err(|e| TufError::Io(path.display().to_string(), e))?.len();
    if signed_length != Some(got) {
        let _ = std::fs::remove_file(&path);
        return Err(TufError::LengthMismatch { signed: signed_length.unwrap_or(0), got });
    }
    Ok(())
}

/// The release metadata of target `name` (its signed `custom.hearth` object), checked.
pub fn release_info(repository: &Repository, name: &str) -> Result<hearth_proto::release::ReleaseInfo, TufError> {
    let name = TargetName::new(name).map_err(Box::new)?;
    let target =
        repository.targets().signed.targets.get(&name).ok_or_else(|| TufError::NoRelease(name.raw().into()))?;
    let custom = serde_json::Value::Object(target.custom.clone().into_iter().collect());
    hearth_proto::release::ReleaseInfo::from_custom(&custom).map_err(|e| TufError::BadRelease(e.to_string()))
}

/// A base URL with a trailing slash, so names join under it.
fn dir_url(raw: &str) -> Result<Url, TufError> {
    let with_slash = if raw.ends_with('/') { raw.to_owned() } else { format!("{raw}/") };
    Url::parse(&with_slash).map_err(|e| TufError::Url(raw.to_owned(), e))
}
