//! The agent's TUF client (`hearth-tuf`, over `tough`) against repositories that python-tuf's `Metadata` API (the
//! reference implementation, from PyPI) produced, served over HTTP by a small server here: accepted and
//! downloaded; and the attacks it must refuse with its trusted metadata unchanged (a tampered target, an expired
//! timestamp, a rollback to older metadata, endless data, slow retrieval).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TEST: &str = "tuf (python-tuf interop)";

fn venv_python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tuf-venv/bin/python")
}

/// python-tuf, or the skip reported (a failure with `HEARTH_REQUIRE_ALL=1`).
fn python_tuf() -> Option<PathBuf> {
    let python = venv_python();
    if python.exists() {
        return Some(python);
    }
    let hint = "python3 -m venv target/tuf-venv && target/tuf-venv/bin/pip install --require-hashes -r ci/requirements-tuf.txt";
    // As hearth-test-support's tool checks (the agent does not depend on the hub's test crate).
    if std::env::var("HEARTH_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("{TEST}: {} does not exist, and HEARTH_REQUIRE_ALL=1 makes that a failure ({hint})", python.display());
    }
    eprintln!("SKIPPED {TEST}: {} does not exist ({hint})", python.display());
    None
}

/// Builds (or with `--bump`, advances) a repository in `out` with python-tuf.
fn make_repo(python: &Path, out: &Path, flags: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tuf/make_repo.py");
    let status = Command::new(python).arg(script).arg(out).args(flags).status().expect("python runs");
    assert!(status.success(), "make_repo.py {flags:?}");
}

/// How the server misbehaves on one path.
#[derive(Clone, Copy)]
enum Trick {
    /// Headers, then nothing.
    Stall,
    /// An answer that never ends.
    Endless,
}

/// Serves `root` over HTTP/1.0 on 127.0.0.1 (404 for what is not there), with `trick` on the path it names.
async fn serve(root: PathBuf, trick: Option<(&'static str, Trick)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { return };
            let root = root.clone();
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let n = tcp.read(&mut request).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&request[..n]).lines().next().unwrap_or("").to_owned();
                let path = line.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_owned();
                match trick.filter(|(p, _)| *p == path) {
                    Some((_, Trick::Stall)) => {
                        let _ = tcp.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n{").await;
                        tokio::time::sleep(Duration::from_secs(600)).await;
                    }
                    Some((_, Trick::Endless)) => {
                        let _ = tcp.write_all(b"HTTP/1.0 200 OK\r\n\r\n").await;
                        let chunk = vec![b' '; 64 * 1024];
                        while tcp.write_all(&chunk).await.is_ok() {}
                    }
                    None => match std::fs::read(root.join(&path)) {
                        Ok(body) => {
                            let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                            let _ = tcp.write_all(head.as_bytes()).await;
                            let _ = tcp.write_all(&body).await;
                        }
                        Err(_) => {
                            let _ = tcp.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
                        }
                    },
                }
            });
        }
    });
    format!("http://{addr}")
}

fn hearth_tuf(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hearth-tuf")).args(args).output().expect("hearth-tuf runs");
    assert!(out.status.code() == Some(0) || out.status.code() == Some(1), "exit 0 or 1: {out:?}");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The trusted metadata in `dir`: file name and content (as JSON: tough rewrites `root.json` on each load, with
/// its keys in another order).
fn trusted(dir: &Path) -> Vec<(String, serde_json::Value)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "latest_known_time.json"))
        .map(|p| {
            let json = serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
            (p.file_name().expect("name").to_string_lossy().into_owned(), json)
        })
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn python_tuf_repositories_are_accepted_and_attacks_refused_with_trusted_state_unchanged() {
    let Some(python) = python_tuf() else { return };
    let work = tempfile::tempdir().expect("dir");
    let repo = work.path().join("repo");
    make_repo(&python, &repo, &[]);
    let base = serve(repo.clone(), None).await;
    let (meta, targets) = (format!("{base}/metadata"), format!("{base}/targets"));
    let d = work.path().join("trusted");
    let d_str = d.to_str().expect("utf8");
    let root = repo.join("metadata/root.json");
    assert!(hearth_tuf(&["--metadata-dir", d_str, "init", root.to_str().expect("utf8")]).0);
    let (ok, err) = tokio::task::spawn_blocking({
        let (d, meta) = (d_str.to_owned(), meta.clone());
        move || hearth_tuf(&["--metadata-url", &meta, "--metadata-dir", &d, "refresh"])
    })
    .await
    .expect("join");
    assert!(ok, "{err}");
    let names: Vec<String> = trusted(&d).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["root.json", "snapshot.json", "targets.json", "timestamp.json"]);

    let download = |out: PathBuf| {
        let (d, meta, targets) = (d_str.to_owned(), meta.clone(), targets.clone());
        tokio::task::spawn_blocking(move || {
            hearth_tuf(&[
                "--metadata-url",
                &meta,
                "--metadata-dir",
                &d,
                "--target-name",
                "firmware.bin",
                "--target-base-url",
                &targets,
                "--target-dir",
                out.to_str().expect("utf8"),
                "download",
            ])
        })
    };
    let out = work.path().join("out");
    let (ok, err) = download(out.clone()).await.expect("join");
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(out.join("firmware.bin")).expect("target"),
        std::fs::read(repo.join("targets/firmware.bin")).expect("source")
    );

    // A tampered target (same length): refused, and no file left under its name.
    let mut image = std::fs::read(repo.join("targets/firmware.bin")).expect("read");
    image[3] ^= 0x55;
    std::fs::write(repo.join("targets/firmware.bin"), &image).expect("tamper");
    let tampered = work.path().join("tampered");
    let (ok, err) = download(tampered.clone()).await.expect("join");
    assert!(!ok && err.contains("Hash mismatch"), "{err}");
    assert!(!tampered.join("firmware.bin").exists());

    // Version 2 is trusted; then the repository serves version 1 again (a rollback): refused, trust unchanged.
    let v1 = work.path().join("v1");
    copy_dir(&repo.join("metadata"), &v1);
    make_repo(&python, &repo, &["--bump"]);
    let refresh = |meta: String| {
        let d = d_str.to_owned();
        tokio::task::spawn_blocking(move || hearth_tuf(&["--metadata-url", &meta, "--metadata-dir", &d, "refresh"]))
    };
    assert!(refresh(meta.clone()).await.expect("join").0);
    let before = trusted(&d);
    let old = serve(v1, None).await;
    let (ok, err) = refresh(old).await.expect("join");
    assert!(!ok, "a rollback was accepted");
    assert!(err.to_lowercase().contains("version") || err.contains("older"), "{err}");
    assert_eq!(trusted(&d), before, "trusted metadata unchanged after a rollback");

    // An expired timestamp: refused, trust unchanged.
    let expired = work.path().join("expired");
    make_repo(&python, &expired, &["--expired"]);
    let e = work.path().join("trusted-expired");
    let e_str = e.to_str().expect("utf8").to_owned();
    assert!(
        hearth_tuf(&["--metadata-dir", &e_str, "init", expired.join("metadata/root.json").to_str().expect("utf8")]).0
    );
    let before = trusted(&e);
    let served = serve(expired.clone(), None).await;
    let (ok, err) = tokio::task::spawn_blocking(move || {
        hearth_tuf(&["--metadata-url", &format!("{served}/metadata"), "--metadata-dir", &e_str, "refresh"])
    })
    .await
    .expect("join");
    assert!(!ok && err.to_lowercase().contains("expired"), "{err}");
    assert_eq!(trusted(&e), before);

    // Endless data and slow retrieval, through the library with a short idle limit: both fail, quickly.
    for trick in [Trick::Endless, Trick::Stall] {
        let f = work.path().join(match trick {
            Trick::Endless => "endless",
            Trick::Stall => "stall",
        });
        hearth_agent::tuf::init(&f, &repo.join("metadata/root.json")).expect("init");
        let before = trusted(&f);
        let bad = serve(repo.clone(), Some(("metadata/timestamp.json", trick))).await;
        let fetcher = hearth_agent::tuf::Fetcher::new(reqwest::Client::new()).with_idle_timeout(Duration::from_secs(1));
        let started = Instant::now();
        let result = hearth_agent::tuf::refresh(&fetcher, &f, &format!("{bad}/metadata"), None).await;
        assert!(result.is_err(), "refused");
        assert!(started.elapsed() < Duration::from_secs(10), "gave up in {:?}", started.elapsed());
        assert_eq!(trusted(&f), before);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// Attacks built with python-tuf (`tests/tuf/scenarios.py`), each refused with the trusted metadata unchanged and
/// no target written; and root rotation 1 → 2 → 3 followed, including the rotation that revokes a compromised
/// targets key (targets still signed by that key are then refused).
#[tokio::test(flavor = "multi_thread")]
async fn tuf_attacks_are_refused_and_root_rotation_is_followed() {
    let Some(python) = python_tuf() else { return };
    let work = tempfile::tempdir().expect("dir");
    let scenarios = work.path().join("scenarios");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tuf/scenarios.py");
    assert!(Command::new(&python).arg(script).arg(&scenarios).status().expect("python").success());
    let base = serve(scenarios.clone(), None).await;
    // (scenario, accepted, the refusal's words, the role whose metadata must not become trusted)
    for (name, accepted, reason, refused_role) in [
        ("good", true, "", None),
        ("rotation", true, "", None),
        ("wrong_key", false, "threshold", Some("timestamp.json")),
        ("below_threshold", false, "threshold of 2", Some("targets.json")),
        ("length_mismatch", false, "signed length", None),
        ("hash_mismatch", false, "hash mismatch", None),
        ("mix_and_match", false, "version mismatch", Some("snapshot.json")),
        ("revoked_targets", false, "threshold", Some("targets.json")),
    ] {
        let d = work.path().join(format!("trusted-{name}"));
        let out = work.path().join(format!("out-{name}"));
        let root = scenarios.join(name).join("metadata/1.root.json");
        assert!(hearth_tuf(&["--metadata-dir", d.to_str().expect("utf8"), "init", root.to_str().expect("utf8")]).0);
        let before = trusted(&d);
        let args: Vec<String> = [
            "--metadata-url",
            &format!("{base}/{name}/metadata"),
            "--metadata-dir",
            d.to_str().expect("utf8"),
            "--target-name",
            "firmware.bin",
            "--target-base-url",
            &format!("{base}/{name}/targets"),
            "--target-dir",
            out.to_str().expect("utf8"),
            "download",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (ok, err) =
            tokio::task::spawn_blocking(move || hearth_tuf(&args.iter().map(String::as_str).collect::<Vec<_>>()))
                .await
                .expect("join");
        assert_eq!(ok, accepted, "{name}: {err}");
        if accepted {
            assert!(out.join("firmware.bin").exists(), "{name}");
        } else {
            assert!(err.to_lowercase().contains(reason), "{name}: {err}");
            assert!(!out.join("firmware.bin").exists(), "{name}: no target written");
            // The refused role never becomes trusted (the roles before it, which verified, may: TUF keeps each
            // role as it verifies); a refused target is not written.
            if let Some(role) = refused_role {
                let now = trusted(&d);
                assert!(now.iter().all(|(file, _)| file != role), "{name}: {role} became trusted");
                assert_eq!(before.len(), 1, "only the initial root before");
            }
        }
        if name == "rotation" {
            let root: serde_json::Value =
                serde_json::from_slice(&std::fs::read(d.join("root.json")).expect("root")).expect("json");
            assert_eq!(root["signed"]["version"], 3, "root 1 -> 2 -> 3 followed");
        }
    }
}

/// A validly signed release is still refused below the device's security floor (a rollback to a vulnerable
/// image) or for other hardware: the release metadata is read from the signed targets metadata.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_release_below_the_floor_or_for_other_hardware_is_refused() {
    use hearth_proto::release::{DeviceFacts, InstallRefusal, may_install};
    let Some(python) = python_tuf() else { return };
    let work = tempfile::tempdir().expect("dir");
    let repo = work.path().join("repo");
    make_repo(&python, &repo, &["--security-version=3", "--hardware=rev-b"]);
    let base = serve(repo.clone(), None).await;
    let d = work.path().join("trusted");
    hearth_agent::tuf::init(&d, &repo.join("metadata/root.json")).expect("init");
    let fetcher = hearth_agent::tuf::Fetcher::new(reqwest::Client::new());
    let repository =
        hearth_agent::tuf::refresh(&fetcher, &d, &format!("{base}/metadata"), None).await.expect("signed and valid");
    let release = hearth_agent::tuf::release_info(&repository, "firmware.bin").expect("release metadata");
    assert_eq!((release.security_version, release.hardware.as_slice()), (3, ["rev-b".to_owned()].as_slice()));
    let floor = hearth_agent::floor::SecurityFloor::in_dir(work.path());
    floor.raise(5).expect("floor");
    let device = |hardware: &str| DeviceFacts {
        model: hearth_proto::ModelId::parse("plug-2").expect("model"),
        hardware: hardware.into(),
        security_floor: floor.get().expect("floor"),
        installed_version: Some("1.0.0".into()),
    };
    assert_eq!(may_install(&release, &device("rev-b")), Err(InstallRefusal::BelowFloor { release: 3, floor: 5 }));
    let floor_low = hearth_agent::floor::SecurityFloor::in_dir(&work.path().join("fresh"));
    std::fs::create_dir_all(work.path().join("fresh")).expect("dir");
    let mut fresh = device("rev-c");
    fresh.security_floor = floor_low.get().expect("0");
    assert_eq!(may_install(&release, &fresh), Err(InstallRefusal::WrongHardware("rev-c".into())));
    fresh.hardware = "rev-b".into();
    assert_eq!(may_install(&release, &fresh), Ok(()), "the same release on the right hardware above the floor");
    assert!(hearth_agent::tuf::release_info(&repository, "no-such-image").is_err());
}
