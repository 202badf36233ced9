//! `hearth bench store`: the storage engines' commit capacity alone, without TLS, MQTT or a load generator in
//! the way: batches of uplinks committed through the hub's own store API (`Store::commit_uplinks`, the group
//! commit's transaction) on SQLite and, with `--postgres`, PostgreSQL; the same records for both, medians of
//! several runs. It tells how much of the end-to-end ingest ceiling is the database.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use hearth_hub::store::{NewDevice, PoolSettings, Store, StoreUrl, UplinkRecord};
use hearth_proto::uplink::UplinkKind;
use serde_json::json;

use super::stats::median;

/// What to measure.
#[derive(Debug, Clone)]
pub struct StoreBench {
    /// Admin URL of a PostgreSQL server (a database `hearth_bench_store` is made there).
    pub postgres: Option<String>,
    /// Batch sizes.
    pub batches: Vec<usize>,
    /// Devices the records are spread over.
    pub devices: usize,
    /// Records per measurement.
    pub records: usize,
    /// Measurements per batch size.
    pub repeat: usize,
    /// JSON output.
    pub out: PathBuf,
}

const NOW: i64 = 1_795_608_000_000;

/// Runs the measurement and prints a table.
pub async fn run(b: StoreBench) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut backends = vec![("sqlite", Store::open_sqlite(&dir.path().join("bench.db")).await?)];
    if let Some(admin) = &b.postgres {
        let url = Store::fresh_postgres_database(admin, "hearth_bench_store").await?;
        let store = Store::open(&StoreUrl::parse(&url).map_err(anyhow::Error::msg)?, PoolSettings::default()).await?;
        backends.push(("postgres", store));
    }
    let mut results = Vec::new();
    println!("{:<10} {:>8} {:>14} {:>12}", "backend", "batch", "msg/s (median)", "ms/batch");
    for (name, store) in &backends {
        store.prepare_uplink_partitions(NOW, 2).await?;
        let devices: Vec<NewDevice> = (0..b.devices)
            .map(|i| NewDevice {
                id: format!("bench-{i:06}"),
                model: "bench".into(),
                bootstrap_mac: format!("b{i}").into_bytes(),
                bootstrap_expires_at: NOW + 1,
                claim_mac: format!("c{i}").into_bytes(),
            })
            .collect();
        store.insert_devices(&devices, NOW).await?;
        let mut next_seq = vec![1i64; b.devices];
        for &batch in &b.batches {
            let mut rates = Vec::new();
            let mut per_batch = Vec::new();
            for _ in 0..b.repeat {
                let rounds = b.records.div_ceil(batch).max(3);
                let started = Instant::now();
                for r in 0..rounds {
                    let records: Vec<UplinkRecord> = (0..batch)
                        .map(|i| {
                            let d = (r * batch + i) % b.devices;
                            let seq = next_seq[d];
                            next_seq[d] += 1;
                            UplinkRecord {
                                device_id: format!("bench-{d:06}"),
                                seq,
                                kind: UplinkKind::Telemetry,
                                device_ts: NOW + seq,
                                received_at: NOW,
                                body_json: format!(
                                    r#"{{"v":1,"seq":{seq},"ts":{},"metrics":{{"temperature":21.5,"on":true}}}}"#,
                                    NOW + seq
                                ),
                            }
                        })
                        .collect();
                    store.commit_uplinks(&records, &[]).await?;
                }
                let secs = started.elapsed().as_secs_f64();
                rates.push((rounds * batch) as f64 / secs);
                per_batch.push(secs * 1000.0 / rounds as f64);
            }
            let (rate, ms) = (median(rates.clone()), median(per_batch));
            println!("{name:<10} {batch:>8} {rate:>14.0} {ms:>12.2}");
            results.push(json!({ "backend": name, "batch": batch, "msg_per_s": rate, "ms_per_batch": ms,
                "runs_msg_per_s": rates }));
        }
        store.close().await;
    }
    std::fs::write(&b.out, serde_json::to_vec_pretty(&json!({ "store_commit": results, "devices": b.devices }))?)?;
    println!("results written to {}", b.out.display());
    Ok(())
}
