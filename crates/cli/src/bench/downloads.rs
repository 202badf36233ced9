//! `hearth bench downloads`: many devices fetch one update image at once over mutual TLS on loopback, from the
//! hub's `/tuf/targets/…` route and, in the same run, from nginx serving the same file with the same TLS demands
//! (TLS 1.3, a device certificate required). Reports the aggregate throughput (bytes of every download over the
//! wall time from the common start to the last byte), per-download times, failures, and the server's peak RSS
//! (sampled every 100 ms) and CPU time.
//!
//! The release is published the real way: offline keys, a signed root and targets metadata, uploaded through the
//! API; the devices are enrolled through the API, so the hub checks each one's current certificate as it would
//! for a real device. Each device is one client with one connection, from one of 250 loopback source addresses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use tokio::time::Instant;

use super::stats::{cpu_us, histogram, ms, summary};
use super::target::{Deployment, DeviceCred, Kind, Lab, Target};
use hearth_release::keys::KeyFile;
use hearth_release::{HubKeys, NewRelease, Repo, RootPlan};

/// What to measure.
pub struct DownloadBench {
    /// Concurrent devices.
    pub devices: usize,
    /// Image size, MiB.
    pub image_mib: usize,
    /// Rounds (medians reported).
    pub repeat: usize,
    /// Also measure nginx.
    pub peer: bool,
    /// JSON output.
    pub out: PathBuf,
}

/// The process and its children (nginx's master and workers).
fn with_children(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        // The parent pid is the second field after the command name's closing parenthesis.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn tree_rss_kib(pid: u32) -> u64 {
    with_children(pid).into_iter().map(super::stats::rss_kib).sum()
}

fn tree_cpu_us(pid: u32) -> u64 {
    with_children(pid).into_iter().map(cpu_us).sum()
}

/// Publishes a release of `image` on the lab's hub; returns the image's URL under `/tuf/targets/`.
async fn publish(lab: &Lab, image: &Path, work: &Path) -> Result<String> {
    let client = crate::client::HubClient::new(&crate::HubArgs {
        hub: lab.hub_url.clone(),
        ca: lab.server_ca.clone(),
        token: Some(lab.token.clone()),
    })?;
    let hub: HubKeys = serde_json::from_value(client.get("/api/v1/updates/keys").await?)?;
    let (root, targets) = (work.join("keys/root.pem"), work.join("keys/targets.pem"));
    let plan = RootPlan {
        root: vec![KeyFile::generate(&root)?],
        root_threshold: 1,
        targets: vec![KeyFile::generate(&targets)?],
        targets_threshold: 1,
        hub,
        expires: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24),
    };
    let repo_dir = work.join("repo");
    let repo = Repo::init(&repo_dir, &plan, &[Box::new(KeyFile::new(&root))]).await?;
    let info = hearth_proto::release::ReleaseInfo {
        model: hearth_proto::ModelId::parse("bench")?,
        version: "2.0.0".into(),
        hardware: vec!["rev-a".into()],
        security_version: 1,
        kind: hearth_proto::release::ReleaseKind::Feature,
        disruption: hearth_proto::release::Disruption { restarts: true, seconds: 30 },
        fixes: String::new(),
        notes: "benchmark image".into(),
        sbom: None,
    };
    let name = "bench-2.0.0.img";
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let signed = repo
        .add_release(NewRelease { image, name, info, sbom: None, expires }, &[Box::new(KeyFile::new(&targets))])
        .await?;
    crate::release::upload(&client, &repo).await?;
    let target = signed.signed.targets.iter().find(|(n, _)| n.raw() == name).context("the image is not listed")?.1;
    Ok(format!("{}/tuf/targets/{}.{name}", lab.hub_url, hearth_release::sha256_hex(&target.hashes)))
}

/// One round against one server: every device downloads `url` at once.
async fn round(
    target: &Target,
    url: &str,
    creds: &[DeviceCred],
    expected: u64,
) -> Result<(BTreeMap<String, f64>, serde_json::Value)> {
    // Clients first (their TLS set-up is not the server's work), then one common start.
    let mut clients = Vec::with_capacity(creds.len());
    for (i, cred) in creds.iter().enumerate() {
        let source = std::net::IpAddr::from([127, 0, 0, 2 + (i % 250) as u8]);
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*cred.tls).clone())
            .local_address(source)
            .pool_max_idle_per_host(1)
            .timeout(Duration::from_secs(300))
            .build()
            .context("a download client")?;
        clients.push(client);
    }
    let start = Arc::new(tokio::sync::Barrier::new(clients.len() + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let (start, url) = (start.clone(), url.to_owned());
        tasks.spawn(async move {
            start.wait().await;
            let began = Instant::now();
            let mut response = client.get(&url).send().await?;
            if !response.status().is_success() {
                bail!("{}", response.status());
            }
            let mut got = 0u64;
            while let Some(chunk) = response.chunk().await? {
                got += chunk.len() as u64;
            }
            anyhow::Ok((got, began.elapsed()))
        });
    }
    let pids = target.pids();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, pids) = (sampling.clone(), pids.clone());
        tokio::spawn(async move {
            let mut peak = 0u64;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(pids.iter().map(|p| tree_rss_kib(*p)).sum());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let rss_before: u64 = pids.iter().map(|p| tree_rss_kib(*p)).sum();
    let cpu_before: u64 = pids.iter().map(|p| tree_cpu_us(*p)).sum();
    start.wait().await;
    let began = Instant::now();
    let mut times = histogram();
    let (mut bytes, mut ok, mut failed, mut short) = (0u64, 0u64, 0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok((got, took)) => {
                bytes += got;
                if got == expected {
                    ok += 1;
                } else {
                    short += 1;
                }
                times.record(took.as_micros() as u64).ok();
            }
            Err(e) => {
                failed += 1;
                *errors.entry(e.to_string().chars().take(120).collect()).or_default() += 1;
            }
        }
    }
    let wall = began.elapsed();
    let cpu = pids.iter().map(|p| tree_cpu_us(*p)).sum::<u64>().saturating_sub(cpu_before);
    sampling.store(false, Ordering::Relaxed);
    let peak = sampler.await.unwrap_or(0);
    let mut m = BTreeMap::new();
    m.insert("aggregate_mb_per_s".into(), bytes as f64 / 1e6 / wall.as_secs_f64());
    m.insert("wall_s".into(), wall.as_secs_f64());
    m.insert("downloads_ok".into(), ok as f64);
    m.insert("downloads_failed".into(), failed as f64);
    m.insert("downloads_short".into(), short as f64);
    m.insert("download_p50_ms".into(), ms(times.value_at_quantile(0.5)));
    m.insert("download_p99_ms".into(), ms(times.value_at_quantile(0.99)));
    m.insert("server_rss_before_kib".into(), rss_before as f64);
    m.insert("server_rss_peak_kib".into(), peak as f64);
    m.insert("server_cpu_s".into(), cpu as f64 / 1e6);
    m.insert("server_cpu_us_per_mb".into(), if bytes > 0 { cpu as f64 / (bytes as f64 / 1e6) } else { 0.0 });
    Ok((m, json!({ "times": summary(&times), "errors": errors })))
}

/// Runs the download benchmark.
pub async fn run(b: DownloadBench) -> Result<()> {
    if b.devices == 0 || b.image_mib == 0 || b.repeat == 0 {
        bail!("--devices, --image-mib and --repeat must be at least 1");
    }
    let limit = super::stats::nofile_limit();
    if limit < b.devices as u64 * 2 + 200 {
        bail!("{} downloads need about {} open files; the limit is {limit}", b.devices, b.devices * 2 + 200);
    }
    let mut runs: BTreeMap<&'static str, Vec<BTreeMap<String, f64>>> = BTreeMap::new();
    let mut all = Vec::new();
    for n in 0..b.repeat {
        let work = tempfile::tempdir()?;
        eprintln!(
            "== round {}/{}: a hub, a {} MiB release and {} enrolled devices",
            n + 1,
            b.repeat,
            b.image_mib,
            b.devices
        );
        let lab = Lab::start_on(work.path(), &Deployment::default(), n).await?;
        let image = work.path().join("image.bin");
        // Varied bytes (their content does not matter to TLS, which does not compress).
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ n as u64;
        let bytes: Vec<u8> = (0..b.image_mib << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(&image, &bytes)?;
        let expected = bytes.len() as u64;
        drop(bytes);
        let url = publish(&lab, &image, work.path()).await?;
        let creds = lab.devices("dl", b.devices, true).await?;
        // One download first so the hub's node cache holds the file (as after the first device of a rollout).
        round(&lab.hub, &url, &creds[..1], expected).await?;
        let mut targets: Vec<(Kind, Option<Target>, String)> = vec![(Kind::Hearth, None, url)];
        if b.peer {
            let (nginx, nginx_url) = lab.nginx(&image)?;
            targets.push((Kind::Nginx, Some(nginx), nginx_url));
        }
        for (kind, own, url) in &targets {
            let t = own.as_ref().unwrap_or(&lab.hub);
            eprintln!(
                "-- {} (pid {}): {} concurrent downloads of {} MiB",
                kind.name(),
                t.pid(),
                b.devices,
                b.image_mib
            );
            let (m, details) = round(t, url, &creds, expected).await?;
            eprintln!(
                "   {:.0} MB/s aggregate, {} ok, {} failed, {} short, peak RSS {:.0} MiB",
                m["aggregate_mb_per_s"],
                m["downloads_ok"],
                m["downloads_failed"],
                m["downloads_short"],
                m["server_rss_peak_kib"] / 1024.0
            );
            all.push(json!({ "round": n, "target": kind.name(), "metrics": m, "details": details }));
            runs.entry(kind.name()).or_default().push(m);
        }
    }
    let medians = super::medians(&runs);
    println!("\nmedians of {} rounds, {} devices, {} MiB image", b.repeat, b.devices, b.image_mib);
    for (k, m) in &medians {
        println!(
            "  {k:10} {:>8.0} MB/s  p50 {:>7.0} ms  p99 {:>7.0} ms  ok {:>5}  failed {:>3}  peak RSS {:>6.0} MiB  CPU {:.0} µs/MB",
            m["aggregate_mb_per_s"],
            m["download_p50_ms"],
            m["download_p99_ms"],
            m["downloads_ok"],
            m["downloads_failed"] + m["downloads_short"],
            m["server_rss_peak_kib"] / 1024.0,
            m["server_cpu_us_per_mb"]
        );
    }
    let report = json!({
        "date": hearth_hub::clock::Clock::system().now_ms(),
        "machine": super::machine(),
        "args": { "devices": b.devices, "image_mib": b.image_mib, "repeat": b.repeat, "peer": b.peer },
        "medians": medians,
        "runs": all,
    });
    std::fs::write(&b.out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("while writing {}", b.out.display()))?;
    eprintln!("results written to {}", b.out.display());
    if medians.get("hearth").is_some_and(|m| m["downloads_failed"] + m["downloads_short"] > 0.0) {
        bail!("some downloads from the hub failed or came up short (see {})", b.out.display());
    }
    Ok(())
}
