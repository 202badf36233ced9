//! Signed updates: the TUF repository's metadata (every version of every role), target files in chunks,
//! releases, support periods, rollouts and each device's part in them, and what devices say they run.

use tokio::io::AsyncReadExt as _;

use super::{BeginWrite as _, Result, Store};
use hearth_proto::DeviceId;

/// One version of one role's metadata, as served.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TufMetadataRow {
    /// root, targets, snapshot or timestamp.
    pub role: String,
    /// Its version.
    pub version: i64,
    /// Exactly the bytes served.
    pub body: Vec<u8>,
    /// When it expires, Unix ms.
    pub expires_at: i64,
}

/// A release, as its signed targets metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ReleaseRow {
    /// The image's target name.
    pub target_name: String,
    /// The model.
    pub model: String,
    /// Its version.
    pub version: String,
    /// Its security version.
    pub security_version: i64,
    /// security or feature.
    pub kind: String,
    /// `hearth_proto::release::ReleaseInfo`, JSON.
    pub info_json: String,
    /// The image's SHA-256, hex.
    pub sha256: String,
    /// The image's length.
    pub length: i64,
    /// The targets metadata version that first listed it.
    pub targets_version: i64,
    /// When the hub published it, Unix ms.
    pub published_at: i64,
}

/// A model's defined support period.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ModelSupportRow {
    /// The model.
    pub model: String,
    /// Security updates until, Unix ms.
    pub support_until: i64,
    /// The policy in plain words.
    pub policy: String,
    /// Last changed, Unix ms.
    pub updated_at: i64,
}

/// A rollout.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RolloutRow {
    /// Its id.
    pub id: String,
    /// The release's target name.
    pub release: String,
    /// The model.
    pub model: String,
    /// running, paused, aborted or completed.
    pub state: String,
    /// How many waves.
    pub waves: i64,
    /// The highest wave opened (-1: none yet).
    pub wave: i64,
    /// Share of a wave's devices that must succeed before the next opens, percent.
    pub success_percent: i64,
    /// Share of failed devices among those told that pauses the rollout, percent.
    pub pause_failure_percent: i64,
    /// Failures accepted by resuming after the failure gate paused it.
    pub accepted_failures: i64,
    /// No wave opens before, Unix ms.
    pub starts_at: i64,
    /// Daily window start, minutes after midnight UTC.
    pub window_start: Option<i64>,
    /// Daily window end, minutes after midnight UTC.
    pub window_end: Option<i64>,
    /// Why it is paused, aborted or completed.
    pub reason: String,
    /// Who created it (account id).
    pub created_by: String,
    /// Created, Unix ms.
    pub created_at: i64,
    /// Last changed, Unix ms.
    pub updated_at: i64,
}

/// How many devices of a wave are in a state.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WaveCount {
    /// The wave.
    pub wave: i64,
    /// The state.
    pub state: String,
    /// How many.
    pub count: i64,
}

/// A device's part in a rollout.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RolloutDeviceRow {
    /// The rollout.
    pub rollout_id: String,
    /// The device.
    pub device_id: String,
    /// Its wave.
    pub wave: i64,
    /// Its state.
    pub state: String,
    /// What it last reported.
    pub detail: String,
    /// Postponed until, Unix ms.
    pub postponed_until: Option<i64>,
    /// How often it was postponed.
    pub postpones: i64,
    /// Last changed, Unix ms.
    pub updated_at: i64,
}

/// A device's goal: the release its rollout wants on it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GoalRow {
    /// The rollout.
    pub rollout_id: String,
    /// The release's target name.
    pub release: String,
}

/// What a device last said it runs.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeviceSoftwareRow {
    /// Its image's SHA-256, hex (none before its first check-in).
    pub image_sha256: Option<String>,
    /// Its image's version.
    pub image_version: Option<String>,
    /// Its hardware revision.
    pub hardware: Option<String>,
    /// Its security-version floor.
    pub security_floor: Option<i64>,
    /// Its last check-in, Unix ms.
    pub checked_in_at: Option<i64>,
}

/// States after which a device's part in a rollout does not change.
pub const FINAL_DEVICE_STATES: [&str; 3] = ["succeeded", "rolled_back", "failed"];

const ROLLOUT_COLUMNS: &str = "id, release, model, state, waves, wave, success_percent, pause_failure_percent, \
     accepted_failures, starts_at, window_start, window_end, reason, created_by, created_at, updated_at";
const RELEASE_COLUMNS: &str =
    "target_name, model, version, security_version, kind, info_json, sha256, length, targets_version, published_at";

impl Store {
    /// The newest version of a role's metadata.
    pub async fn tuf_latest(&self, role: &str) -> Result<Option<TufMetadataRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT role, version, body, expires_at FROM tuf_metadata WHERE role = $1 ORDER BY version DESC LIMIT 1",
        )
        .bind(role)
        .fetch_optional(pool)
        .await?))
    }

    /// One version of a role's metadata.
    pub async fn tuf_version(&self, role: &str, version: i64) -> Result<Option<TufMetadataRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT role, version, body, expires_at FROM tuf_metadata WHERE role = $1 AND version = $2",
        )
        .bind(role)
        .bind(version)
        .fetch_optional(pool)
        .await?))
    }

    /// Stores new metadata versions and the releases they list, all or nothing; false (nothing stored) when
    /// the repository moved on meanwhile: a version exists already, a version does not follow the newest stored
    /// one (snapshot, timestamp and root: the next one; targets: a higher one), or `snapshot_covers` (the targets version a new snapshot names) is no longer the newest targets.
    /// So a timestamp renewal racing a publication (on this node or another) can never sign a snapshot over
    /// older targets.
    pub async fn tuf_publish(
        &self,
        metadata: &[TufMetadataRow],
        releases: &[ReleaseRow],
        snapshot_covers: Option<i64>,
        now: i64,
    ) -> Result<bool> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for m in metadata {
                let (newest,): (i64,) =
                    sqlx::query_as("SELECT COALESCE(MAX(version), 0) FROM tuf_metadata WHERE role = $1")
                        .bind(&m.role)
                        .fetch_one(tx.conn())
                        .await?;
                // The hub's own roles count up by one; the maker's targets may skip versions signed offline but
                // never published, and each root version follows the last (checked before too).
                let follows = if m.role == "targets" { m.version > newest } else { m.version == newest + 1 };
                if !follows {
                    return Ok(false);
                }
                let inserted = sqlx::query(
                    "INSERT INTO tuf_metadata (role, version, body, expires_at, created_at) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (role, version) DO NOTHING",
                )
                .bind(&m.role)
                .bind(m.version)
                .bind(&m.body)
                .bind(m.expires_at)
                .bind(now)
                .execute(tx.conn())
                .await?
                .rows_affected();
                if inserted == 0 {
                    return Ok(false);
                }
            }
            if let Some(covers) = snapshot_covers {
                let (newest,): (i64,) =
                    sqlx::query_as("SELECT COALESCE(MAX(version), 0) FROM tuf_metadata WHERE role = 'targets'")
                        .fetch_one(tx.conn())
                        .await?;
                if newest != covers {
                    return Ok(false);
                }
            }
            for r in releases {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO releases ({RELEASE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT DO NOTHING"
                )))
                .bind(&r.target_name)
                .bind(&r.model)
                .bind(&r.version)
                .bind(r.security_version)
                .bind(&r.kind)
                .bind(&r.info_json)
                .bind(&r.sha256)
                .bind(r.length)
                .bind(r.targets_version)
                .bind(r.published_at)
                .execute(tx.conn())
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// A stored target file's length and chunk count.
    pub async fn update_file(&self, sha256: &str) -> Result<Option<(i64, i64)>> {
        on_pool!(self, pool => Ok(sqlx::query_as("SELECT length, chunks FROM update_files WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(pool)
            .await?))
    }

    /// Stores a target file read from `reader` (whose content the caller verified) in chunks of `chunk` bytes,
    /// in one transaction; false if it is stored already.
    pub async fn insert_update_file(
        &self,
        sha256: &str,
        length: i64,
        reader: &mut (dyn tokio::io::AsyncRead + Unpin + Send),
        chunk: usize,
        now: i64,
    ) -> Result<bool> {
        let chunks = (length as u64).div_ceil(chunk as u64).max(1) as i64;
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let inserted = sqlx::query(
                "INSERT INTO update_files (sha256, length, chunks, uploaded_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(sha256)
            .bind(length)
            .bind(chunks)
            .bind(now)
            .execute(tx.conn())
            .await?
            .rows_affected();
            if inserted == 0 {
                return Ok(false);
            }
            let mut buf = vec![0u8; chunk];
            for idx in 0..chunks {
                let mut filled = 0;
                while filled < chunk {
                    let n = reader.read(&mut buf[filled..]).await.map_err(super::StoreError::Io)?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                sqlx::query("INSERT INTO update_file_chunks (sha256, idx, data) VALUES ($1, $2, $3)")
                    .bind(sha256)
                    .bind(idx)
                    .bind(&buf[..filled])
                    .execute(tx.conn())
                    .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// One chunk of a stored target file.
    pub async fn update_file_chunk(&self, sha256: &str, idx: i64) -> Result<Option<Vec<u8>>> {
        on_pool!(self, pool => Ok(sqlx::query_as::<_, (Vec<u8>,)>(
            "SELECT data FROM update_file_chunks WHERE sha256 = $1 AND idx = $2",
        )
        .bind(sha256)
        .bind(idx)
        .fetch_optional(pool)
        .await?
        .map(|(d,)| d)))
    }

    /// Releases, newest first (of one model, or all).
    pub async fn releases(&self, model: Option<&str>) -> Result<Vec<ReleaseRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE ($1 IS NULL OR model = $1) \
             ORDER BY published_at DESC, target_name"
        )))
        .bind(model)
        .fetch_all(pool)
        .await?))
    }

    /// One release by its target name.
    pub async fn release(&self, target_name: &str) -> Result<Option<ReleaseRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE target_name = $1"
        )))
        .bind(target_name)
        .fetch_optional(pool)
        .await?))
    }

    /// The release of `model` whose image has this SHA-256, if the hub ever released one.
    pub async fn release_by_image(&self, model: &str, sha256: &str) -> Result<Option<ReleaseRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE model = $1 AND sha256 = $2 LIMIT 1"
        )))
        .bind(model)
        .bind(sha256)
        .fetch_optional(pool)
        .await?))
    }

    /// Sets a model's support period.
    pub async fn set_model_support(&self, row: &ModelSupportRow) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "INSERT INTO model_support (model, support_until, policy, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (model) DO UPDATE SET support_until = $2, policy = $3, updated_at = $4",
        )
        .bind(&row.model)
        .bind(row.support_until)
        .bind(&row.policy)
        .bind(row.updated_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Support periods (of one model, or all).
    pub async fn model_support(&self, model: Option<&str>) -> Result<Vec<ModelSupportRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT model, support_until, policy, updated_at FROM model_support WHERE ($1 IS NULL OR model = $1) \
             ORDER BY model",
        )
        .bind(model)
        .fetch_all(pool)
        .await?))
    }

    /// Creates a rollout with its devices and their waves, in one transaction; false (nothing stored) while
    /// another rollout of the same model is running or paused.
    pub async fn create_rollout(&self, r: &RolloutRow, devices: &[(DeviceId, i64)]) -> Result<bool> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let (active,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM rollouts WHERE model = $1 AND state IN ('running', 'paused')",
            )
            .bind(&r.model)
            .fetch_one(tx.conn())
            .await?;
            if active > 0 {
                return Ok(false);
            }
            let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO rollouts ({ROLLOUT_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                 ON CONFLICT DO NOTHING"
            )))
            .bind(&r.id)
            .bind(&r.release)
            .bind(&r.model)
            .bind(&r.state)
            .bind(r.waves)
            .bind(r.wave)
            .bind(r.success_percent)
            .bind(r.pause_failure_percent)
            .bind(r.accepted_failures)
            .bind(r.starts_at)
            .bind(r.window_start)
            .bind(r.window_end)
            .bind(&r.reason)
            .bind(&r.created_by)
            .bind(r.created_at)
            .bind(r.updated_at)
            .execute(tx.conn())
            .await?
            .rows_affected();
            if inserted == 0 {
                // Another node's rollout of this model came first (the unique index on active rollouts).
                return Ok(false);
            }
            for (device, wave) in devices {
                sqlx::query(
                    "INSERT INTO rollout_devices (rollout_id, device_id, wave, state, detail, postponed_until, \
                     postpones, updated_at) VALUES ($1, $2, $3, 'waiting', '', NULL, 0, $4)",
                )
                .bind(&r.id)
                .bind(device.as_str())
                .bind(wave)
                .bind(r.created_at)
                .execute(tx.conn())
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Rollouts, newest first; only those in `states` when given.
    pub async fn rollouts(&self, states: Option<&[&str]>) -> Result<Vec<RolloutRow>> {
        let all: Vec<RolloutRow> = on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at DESC, id"
        )))
        .fetch_all(pool)
        .await?);
        Ok(match states {
            Some(states) => all.into_iter().filter(|r| states.contains(&r.state.as_str())).collect(),
            None => all,
        })
    }

    /// One rollout.
    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1")))
            .bind(id)
            .fetch_optional(pool)
            .await?))
    }

    /// How many devices of each wave are in each state.
    pub async fn rollout_counts(&self, id: &str) -> Result<Vec<WaveCount>> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT wave, state, COUNT(*) AS count FROM rollout_devices WHERE rollout_id = $1 \
             GROUP BY wave, state ORDER BY wave, state",
        )
        .bind(id)
        .fetch_all(pool)
        .await?))
    }

    /// The devices of a rollout.
    pub async fn rollout_devices(&self, id: &str) -> Result<Vec<RolloutDeviceRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT rollout_id, device_id, wave, state, detail, postponed_until, postpones, updated_at \
             FROM rollout_devices WHERE rollout_id = $1 ORDER BY wave, device_id",
        )
        .bind(id)
        .fetch_all(pool)
        .await?))
    }

    /// Moves a rollout from one of `from` to `to` with `reason`; false if it was in none of them (another
    /// request or node changed it first).
    pub async fn set_rollout_state(&self, id: &str, from: &[&str], to: &str, reason: &str, now: i64) -> Result<bool> {
        let rollout = self.rollout(id).await?;
        let Some(rollout) = rollout.filter(|r| from.contains(&r.state.as_str())) else { return Ok(false) };
        on_pool!(self, pool => Ok(sqlx::query(
            "UPDATE rollouts SET state = $1, reason = $2, updated_at = $3 WHERE id = $4 AND state = $5",
        )
        .bind(to)
        .bind(reason)
        .bind(now)
        .bind(id)
        .bind(&rollout.state)
        .execute(pool)
        .await?
        .rows_affected() == 1))
    }

    /// Resumes a paused rollout, accepting the failures so far (the failure gate counts only later ones); false
    /// if it was not paused.
    pub async fn resume_rollout(&self, id: &str, now: i64) -> Result<bool> {
        on_pool!(self, pool => Ok(sqlx::query(
            "UPDATE rollouts SET state = 'running', reason = '', updated_at = $1, accepted_failures = \
             (SELECT COUNT(*) FROM rollout_devices WHERE rollout_id = $2 AND state IN ('rolled_back', 'failed')) \
             WHERE id = $2 AND state = 'paused'",
        )
        .bind(now)
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected() == 1))
    }

    /// Opens wave `from + 1` of a running rollout (only if `from` is still its highest open wave) and returns
    /// the devices told now; empty when another node opened it first.
    pub async fn open_wave(&self, id: &str, from: i64, now: i64) -> Result<Vec<DeviceId>> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let moved = sqlx::query(
                "UPDATE rollouts SET wave = wave + 1, updated_at = $1 WHERE id = $2 AND wave = $3 AND state = 'running'",
            )
            .bind(now)
            .bind(id)
            .bind(from)
            .execute(tx.conn())
            .await?
            .rows_affected();
            if moved == 0 {
                return Ok(Vec::new());
            }
            let ids: Vec<(String,)> = sqlx::query_as(
                "UPDATE rollout_devices SET state = 'notified', updated_at = $1 \
                 WHERE rollout_id = $2 AND wave = $3 AND state = 'waiting' RETURNING device_id",
            )
            .bind(now)
            .bind(id)
            .bind(from + 1)
            .fetch_all(tx.conn())
            .await?;
            tx.commit().await?;
            Ok(ids.into_iter().filter_map(|(d,)| DeviceId::parse(&d).ok()).collect())
        })
    }

    /// The release a device should install now: its part in a running rollout whose wave is open, not finished
    /// and not postponed past `now`.
    pub async fn device_goal(&self, device: &DeviceId, now: i64) -> Result<Option<GoalRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT d.rollout_id, r.release FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id \
             WHERE d.device_id = $1 AND r.state = 'running' AND d.wave <= r.wave \
             AND d.state NOT IN ('succeeded', 'rolled_back', 'failed') \
             AND (d.postponed_until IS NULL OR d.postponed_until <= $2) \
             ORDER BY r.created_at DESC LIMIT 1",
        )
        .bind(device.as_str())
        .bind(now)
        .fetch_optional(pool)
        .await?))
    }

    /// A device's unfinished part in the newest running or paused rollout whose wave has opened for it,
    /// postponed or not: what its owner sees as the waiting update.
    pub async fn pending_update(&self, device: &DeviceId) -> Result<Option<RolloutDeviceRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT d.rollout_id, d.device_id, d.wave, d.state, d.detail, d.postponed_until, d.postpones, d.updated_at \
             FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id \
             WHERE d.device_id = $1 AND r.state IN ('running', 'paused') AND d.wave <= r.wave \
             AND d.state NOT IN ('succeeded', 'rolled_back', 'failed') \
             ORDER BY r.created_at DESC LIMIT 1",
        )
        .bind(device.as_str())
        .fetch_optional(pool)
        .await?))
    }

    /// What a device last said it runs; none for an unknown device.
    pub async fn device_software(&self, device: &DeviceId) -> Result<Option<DeviceSoftwareRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT image_sha256, image_version, hardware, security_floor, checked_in_at FROM devices WHERE id = $1",
        )
        .bind(device.as_str())
        .fetch_optional(pool)
        .await?))
    }

    /// A device's part in a rollout.
    pub async fn rollout_device(&self, rollout: &str, device: &DeviceId) -> Result<Option<RolloutDeviceRow>> {
        on_pool!(self, pool => Ok(sqlx::query_as(
            "SELECT rollout_id, device_id, wave, state, detail, postponed_until, postpones, updated_at \
             FROM rollout_devices WHERE rollout_id = $1 AND device_id = $2",
        )
        .bind(rollout)
        .bind(device.as_str())
        .fetch_optional(pool)
        .await?))
    }

    /// Records a device's update step in a rollout, unless its part is final already, its wave is not open, or
    /// the rollout is aborted or completed; true if it changed.
    pub async fn record_update_step(
        &self,
        rollout: &str,
        device: &DeviceId,
        state: &str,
        detail: &str,
        now: i64,
    ) -> Result<bool> {
        on_pool!(self, pool => Ok(sqlx::query(
            "UPDATE rollout_devices SET state = $1, detail = $2, updated_at = $3 \
             WHERE rollout_id = $4 AND device_id = $5 AND state NOT IN ('succeeded', 'rolled_back', 'failed') \
             AND (state <> $1 OR detail <> $2) \
             AND wave <= (SELECT r.wave FROM rollouts r WHERE r.id = $4 AND r.state IN ('running', 'paused'))",
        )
        .bind(state)
        .bind(detail)
        .bind(now)
        .bind(rollout)
        .bind(device.as_str())
        .execute(pool)
        .await?
        .rows_affected() == 1))
    }

    /// Postpones a device's part in a rollout to `until` if it has been postponed fewer than `max` times and
    /// has not started installing; true if it did.
    pub async fn postpone_update(
        &self,
        rollout: &str,
        device: &DeviceId,
        until: i64,
        max: i64,
        now: i64,
    ) -> Result<bool> {
        on_pool!(self, pool => Ok(sqlx::query(
            "UPDATE rollout_devices SET postponed_until = $1, postpones = postpones + 1, updated_at = $2 \
             WHERE rollout_id = $3 AND device_id = $4 AND postpones < $5 AND state IN ('waiting', 'notified')",
        )
        .bind(until)
        .bind(now)
        .bind(rollout)
        .bind(device.as_str())
        .bind(max)
        .execute(pool)
        .await?
        .rows_affected() == 1))
    }

    /// Records what a device says it runs.
    pub async fn record_check_in(
        &self,
        device: &DeviceId,
        image_sha256: Option<&str>,
        image_version: Option<&str>,
        hardware: &str,
        security_floor: i64,
        now: i64,
    ) -> Result<()> {
        on_pool!(self, pool => sqlx::query(
            "UPDATE devices SET image_sha256 = $1, image_version = $2, hardware = $3, security_floor = $4, \
             checked_in_at = $5 WHERE id = $6",
        )
        .bind(image_sha256)
        .bind(image_version)
        .bind(hardware)
        .bind(security_floor)
        .bind(now)
        .bind(device.as_str())
        .execute(pool)
        .await?
        .rows_affected());
        Ok(())
    }

    /// Devices of a model that are enrolled and not revoked, for a rollout.
    pub async fn rollout_candidates(&self, model: &str) -> Result<Vec<DeviceId>> {
        let ids: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(
            "SELECT id FROM devices WHERE model = $1 AND status = 'enrolled' ORDER BY id",
        )
        .bind(model)
        .fetch_all(pool)
        .await?);
        Ok(ids.into_iter().filter_map(|(d,)| DeviceId::parse(&d).ok()).collect())
    }
}
