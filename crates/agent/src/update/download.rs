//! The image download: resumed with an HTTP range from what a partial file already holds, never past the
//! signed length (an endless answer is cut there), each read within an idle limit (slow retrieval), synced to
//! disk as it goes, and checked against the signed SHA-256 at the end (a mismatch deletes the file: the next try
//! starts over).

use std::io::Read as _;
use std::path::Path;
use std::time::Duration;

use aws_lc_rs::digest::{Context, SHA256};
use tokio::io::AsyncWriteExt as _;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The network or the server; resume later.
    #[error("{0}")]
    Network(String),
    /// The complete file does not hash to the signed SHA-256 (removed; it is fetched again from the start).
    #[error("the image's SHA-256 is {got}, not the signed {signed}")]
    HashMismatch {
        /// The signed hash.
        signed: String,
        /// What arrived.
        got: String,
    },
    /// Local disk.
    #[error("{0}")]
    Local(String),
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut digest = Context::new(&SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
    }
    Ok(digest.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// Downloads `url` into `part` until it holds `length` bytes, resuming from what it holds, then checks the
/// SHA-256. Every body byte received is counted into `fetched` (also when the download breaks off).
pub async fn resumable(
    client: &reqwest::Client,
    url: &str,
    part: &Path,
    length: u64,
    sha256: &str,
    idle: Duration,
    fetched: &std::sync::atomic::AtomicU64,
) -> Result<(), DownloadError> {
    let local = |e: std::io::Error| DownloadError::Local(format!("{}: {e}", part.display()));
    if let Some(dir) = part.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(local)?;
    }
    let mut have = tokio::fs::metadata(part).await.map(|m| m.len()).unwrap_or(0);
    if have > length {
        tokio::fs::remove_file(part).await.map_err(local)?;
        have = 0;
    }
    if have < length {
        let net = |e: reqwest::Error| DownloadError::Network(e.to_string());
        let mut request = client.get(url);
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut response = tokio::time::timeout(idle, request.send())
            .await
            .map_err(|_| DownloadError::Network(format!("no answer within {idle:?}")))?
            .map_err(net)?;
        let status = response.status().as_u16();
        let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(part).await.map_err(local)?;
        match status {
            206 if have > 0 => {}
            200 => {
                // The whole file (the server ignored the range, or there was nothing yet): start over.
                file.set_len(0).await.map_err(local)?;
                have = 0;
            }
            other => return Err(DownloadError::Network(format!("HTTP {other} for the image"))),
        }
        let mut since_sync = 0u64;
        while have < length {
            let chunk = tokio::time::timeout(idle, response.chunk())
                .await
                .map_err(|_| DownloadError::Network(format!("no data for {idle:?} (slow retrieval)")))?
                .map_err(net)?;
            let Some(chunk) = chunk else {
                file.sync_data().await.map_err(local)?;
                return Err(DownloadError::Network(format!("the answer ended at {have} of {length} bytes")));
            };
            // Never past the signed length: an endless answer is cut here.
            let take = (chunk.len() as u64).min(length - have) as usize;
            file.write_all(&chunk[..take]).await.map_err(local)?;
            have += take as u64;
            fetched.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            since_sync += take as u64;
            if since_sync >= 4 << 20 {
                file.sync_data().await.map_err(local)?;
                since_sync = 0;
            }
        }
        file.sync_all().await.map_err(local)?;
    }
    let path = part.to_owned();
    let got = tokio::task::spawn_blocking(move || sha256_file(&path))
        .await
        .map_err(|e| DownloadError::Local(e.to_string()))?
        .map_err(local)?;
    if got != sha256 {
        let _ = tokio::fs::remove_file(part).await;
        return Err(DownloadError::HashMismatch { signed: sha256.into(), got });
    }
    Ok(())
}
