//! Developer tasks. `cargo xtask ci` runs `.ci/run`, the one definition of what CI checks, so a green local run
//! means a green CI run.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "ci" => {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let status = Command::new("bash").arg(root.join(".ci/run")).status().context("while running .ci/run")?;
            if !status.success() {
                bail!(".ci/run failed: {status}");
            }
            Ok(())
        }
        _ => {
            eprintln!("usage: cargo xtask ci    run what CI runs (format, lint, tests, fuzz build, bench smoke)");
            bail!("unknown task {task:?}")
        }
    }
}
