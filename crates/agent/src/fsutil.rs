//! Small file-system helpers the agent's state files share: atomic replacement with a chosen mode, so a crash
//! or power cut never leaves a half-written key, certificate or configuration behind.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file in the same directory (created with `mode`, so a
/// secret is never readable by others, not even briefly), fsync, rename over the target, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp"));
    // A leftover temporary from a crash may have the wrong mode; start over.
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    // The rename is durable only once the directory entry is.
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}
