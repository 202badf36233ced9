//! Tidy checks: the invariants ARCHITECTURE.md writes down about the code's shape, each a test that fails when
//! someone breaks it (in the style of rust-analyzer's `tidy`). They read the sources; nothing is built.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn all_sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "fuzz/fuzz_targets", "fuzz/src"] {
        rust_files(&root().join(dir), &mut files);
    }
    files
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn every_source_file_opens_with_a_module_doc() {
    let missing: Vec<_> = all_sources().into_iter().filter(|p| !read(p).trim_start().starts_with("//!")).collect();
    assert!(missing.is_empty(), "files without a `//!` paragraph saying what they own: {missing:#?}");
}

#[test]
fn only_the_clock_reads_the_system_time() {
    // The hub compares times only through `clock::Clock` (tests move it), so nothing else under
    // `crates/hub/src` may read the wall clock.
    let mut files = Vec::new();
    rust_files(&root().join("crates/hub/src"), &mut files);
    let offenders: Vec<_> = files
        .into_iter()
        .filter(|p| !p.ends_with("clock.rs"))
        .filter(|p| {
            read(p).lines().any(|l| {
                let code = l.trim_start();
                !code.starts_with("//")
                    && (code.contains("SystemTime::now") || code.contains("now_utc()") || code.contains("Utc::now"))
            })
        })
        .collect();
    assert!(offenders.is_empty(), "the hub reads the system time outside clock.rs: {offenders:#?}");
}

#[test]
fn only_the_store_writes_sql() {
    // Production code outside `crates/hub/src/store` never names sqlx (tests and the test-support crate may, to
    // fault-inject a database or make a PostgreSQL database per test).
    let mut offenders = Vec::new();
    let mut files = Vec::new();
    rust_files(&root().join("crates"), &mut files);
    for p in files {
        let s = p.to_string_lossy();
        if !s.contains("/src/") || s.contains("/crates/hub/src/store/") || s.contains("/crates/test-support/") {
            continue;
        }
        if read(&p).lines().any(|l| !l.trim_start().starts_with("//") && l.contains("sqlx::")) {
            offenders.push(p);
        }
    }
    assert!(offenders.is_empty(), "sqlx used outside the store: {offenders:#?}");
}

fn dependencies(krate: &str) -> String {
    let manifest = read(&root().join("crates").join(krate).join("Cargo.toml"));
    // Normal dependencies only: up to the next section.
    manifest.split("[dependencies]").nth(1).map(|s| s.split("\n[").next().unwrap_or("").to_owned()).unwrap_or_default()
}

#[test]
fn proto_does_no_io() {
    let deps = dependencies("proto");
    for banned in ["tokio", "sqlx", "reqwest", "rustls"] {
        assert!(!deps.contains(banned), "crates/proto depends on {banned}: proto must stay free of I/O");
    }
}

#[test]
fn agent_and_simulator_do_not_depend_on_the_hub() {
    for krate in ["agent", "simulator", "proto", "fsutil"] {
        assert!(!dependencies(krate).contains("hearth-hub"), "crates/{krate} depends on the hub");
    }
}

#[test]
fn every_crate_root_forbids_unsafe_code() {
    let manifest = read(&root().join("Cargo.toml"));
    assert!(manifest.contains("unsafe_code = \"forbid\""), "the workspace lint must forbid unsafe code");
    for entry in std::fs::read_dir(root().join("crates")).into_iter().flatten().flatten() {
        let krate = read(&entry.path().join("Cargo.toml"));
        assert!(
            krate.contains("[lints]") && krate.contains("workspace = true"),
            "{:?} must use the workspace lints",
            entry.path()
        );
    }
}
