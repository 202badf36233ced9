//! `hearth release …` and `hearth rollout …`: the maker's signing (offline: keys, the root and its rotation,
//! each release's targets metadata, through `hearth-release`), uploading what was signed to a hub, and rollouts.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use hearth_proto::ModelId;
use hearth_proto::release::{Disruption, ReleaseInfo, ReleaseKind};
use hearth_release::keys::KeySpec;
use hearth_release::{HubKeys, NewRelease, Repo, RootPlan};
use tough::key_source::KeySource;

use crate::HubArgs;
use crate::client::HubClient;

/// Signing and publishing releases.
#[derive(Subcommand)]
pub enum SigningAction {
    /// Make a new Ed25519 signing key: a file (PKCS#8 PEM, mode 0600), or in a PKCS#11 token with a URI such as
    /// `pkcs11:token=maker;object=root-1` (module from `HEARTH_PKCS11_MODULE` or `?module-path=`, PIN from
    /// `HEARTH_PKCS11_PIN` or `?pin-source=FILE`). Keep root and targets keys offline.
    Keygen {
        /// Where to make it: a file path (never over an existing file) or a `pkcs11:` URI (never over a key
        /// with that label).
        #[arg(long)]
        out: KeySpec,
    },
    /// Fetch the hub's snapshot and timestamp public keys (they go into the root).
    HubKeys {
        #[command(flatten)]
        hub: HubArgs,
        /// Where to write them.
        #[arg(long)]
        out: PathBuf,
    },
    /// Create a repository: root version 1, signed by the root keys (offline).
    Init {
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The hub's keys (from `hearth release hub-keys`).
        #[arg(long)]
        hub_keys: PathBuf,
        /// A root key, a file or a `pkcs11:` URI (repeat for several).
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<KeySpec>,
        /// Root signatures needed.
        #[arg(long, default_value_t = 1)]
        root_threshold: u64,
        /// A targets key, a file or a `pkcs11:` URI (repeat for several).
        #[arg(long = "targets-key", required = true)]
        targets_keys: Vec<KeySpec>,
        /// Targets signatures needed.
        #[arg(long, default_value_t = 1)]
        targets_threshold: u64,
        /// Days until the root expires.
        #[arg(long, default_value_t = 365)]
        expires_days: u32,
    },
    /// Sign a release into the repository's targets metadata (offline): the image, its metadata and its SBOM.
    Add(AddArgs),
    /// Sign root version N+1 (offline) with the current root keys and the new ones; with new targets keys the
    /// targets metadata is signed again by them (revoking the old targets keys).
    RotateRoot {
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
        /// The hub's keys.
        #[arg(long)]
        hub_keys: PathBuf,
        /// A current root key, a file or a `pkcs11:` URI (repeat to reach the current threshold).
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<KeySpec>,
        /// A root key, a file or a `pkcs11:` URI of the new root (repeat; may repeat current keys that stay).
        #[arg(long = "new-root-key", required = true)]
        new_root_keys: Vec<KeySpec>,
        /// Root signatures the new root needs.
        #[arg(long, default_value_t = 1)]
        new_root_threshold: u64,
        /// A targets key, a file or a `pkcs11:` URI of the new root (repeat).
        #[arg(long = "targets-key", required = true)]
        targets_keys: Vec<KeySpec>,
        /// Targets signatures needed.
        #[arg(long, default_value_t = 1)]
        targets_threshold: u64,
        /// Days until the new root expires.
        #[arg(long, default_value_t = 365)]
        expires_days: u32,
    },
    /// Upload what the repository holds and the hub does not (files, root versions, targets metadata).
    Upload {
        #[command(flatten)]
        hub: HubArgs,
        /// The repository directory.
        #[arg(long)]
        repo: PathBuf,
    },
    /// Write the CycloneDX 1.5 SBOM of a package's binary: exactly the crates built into it (normal dependencies,
    /// from `cargo metadata`), each with its package URL and, for registry crates, the SHA-256 from Cargo.lock.
    Sbom {
        /// The package's Cargo.toml.
        #[arg(long, default_value = "crates/agent/Cargo.toml")]
        manifest_path: PathBuf,
        /// The package (the image's binary).
        #[arg(long, default_value = "hearth-agent")]
        package: String,
        /// Where to write the SBOM.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `hearth release add`.
#[derive(Args)]
pub struct AddArgs {
    /// The repository directory.
    #[arg(long)]
    repo: PathBuf,
    /// A targets key, a file or a `pkcs11:` URI (repeat to reach the threshold).
    #[arg(long = "targets-key", required = true)]
    targets_keys: Vec<KeySpec>,
    /// The image file.
    #[arg(long)]
    image: PathBuf,
    /// Its target name (default `MODEL-VERSION.img`).
    #[arg(long)]
    name: Option<String>,
    /// The model.
    #[arg(long)]
    model: String,
    /// The version.
    #[arg(long)]
    version: String,
    /// A hardware revision it runs on (repeat).
    #[arg(long = "hardware", required = true)]
    hardware: Vec<String>,
    /// Its security version: devices never install a release below the highest they ran.
    #[arg(long)]
    security_version: u64,
    /// `security` or `feature`.
    #[arg(long)]
    kind: String,
    /// What risk it fixes, in plain words (required for a security release).
    #[arg(long, default_value = "")]
    fixes: String,
    /// Release notes.
    #[arg(long, default_value = "")]
    notes: String,
    /// Installing restarts the device.
    #[arg(long)]
    restarts: bool,
    /// About how long the device does not do its job while installing, seconds.
    #[arg(long, default_value_t = 0)]
    downtime_seconds: u32,
    /// Its CycloneDX SBOM (JSON); `hearth release sbom` makes one for the agent.
    #[arg(long)]
    sbom: Option<PathBuf>,
    /// Days until the targets metadata expires (sign again before then).
    #[arg(long, default_value_t = 365)]
    expires_days: u32,
}

/// Rollouts.
#[derive(Subcommand)]
pub enum RolloutAction {
    /// Start a rollout of a published release to every enrolled device of its model.
    Start {
        /// The release (its image's target name).
        #[arg(long)]
        release: String,
        /// Devices in the canary wave.
        #[arg(long, default_value_t = 1)]
        canary: u32,
        /// The later waves as cumulative percentages, the last 100.
        #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
        percents: Vec<u8>,
        /// Share of told devices that must succeed before the next wave, percent.
        #[arg(long, default_value_t = 90)]
        success_percent: u8,
        /// Share of told devices failing or rolling back that pauses the rollout, percent.
        #[arg(long, default_value_t = 20)]
        pause_failure_percent: u8,
    },
    /// List rollouts with their progress.
    List,
    /// Pause a rollout.
    Pause {
        /// The rollout id.
        id: String,
    },
    /// Resume a paused rollout.
    Resume {
        /// The rollout id.
        id: String,
    },
    /// Abort a rollout for good.
    Abort {
        /// The rollout id.
        id: String,
    },
}

fn key_sources(keys: &[KeySpec]) -> Vec<Box<dyn KeySource>> {
    keys.iter().map(KeySpec::source).collect()
}

fn publics(keys: &[KeySpec]) -> Result<Vec<tough::schema::key::Key>> {
    keys.iter().map(|k| k.public().with_context(|| format!("while reading {k}"))).collect()
}

fn read_hub_keys(path: &Path) -> Result<HubKeys> {
    let bytes = std::fs::read(path).with_context(|| format!("while reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not the hub's keys", path.display()))
}

fn expires(days: u32) -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * i64::from(days))
}

/// Runs a signing action.
pub async fn signing(action: SigningAction) -> Result<()> {
    match action {
        SigningAction::Keygen { out } => {
            let key = out.generate()?;
            let id: String = key.key_id().map(|k| k.iter().map(|b| format!("{b:02x}")).collect()).unwrap_or_default();
            let held = match &out {
                KeySpec::File(_) => " (mode 0600)",
                KeySpec::Token(_) => " (made in the token; the private key cannot leave it)",
            };
            println!("New Ed25519 key {out}{held}, key id {id}. Keep root and targets keys offline.");
        }
        SigningAction::HubKeys { hub, out } => {
            let keys = HubClient::new(&hub)?.get("/api/v1/updates/keys").await?;
            std::fs::write(&out, serde_json::to_vec_pretty(&keys)?)
                .with_context(|| format!("while writing {}", out.display()))?;
            println!("The hub's snapshot and timestamp keys are in {}", out.display());
        }
        SigningAction::Init {
            repo,
            hub_keys,
            root_keys,
            root_threshold,
            targets_keys,
            targets_threshold,
            expires_days,
        } => {
            let plan = RootPlan {
                root: publics(&root_keys)?,
                root_threshold,
                targets: publics(&targets_keys)?,
                targets_threshold,
                hub: read_hub_keys(&hub_keys)?,
                expires: expires(expires_days),
            };
            Repo::init(&repo, &plan, &key_sources(&root_keys)).await?;
            println!(
                "Repository in {} with root version 1. Upload it with `hearth release upload --repo {}`.",
                repo.display(),
                repo.display()
            );
        }
        SigningAction::Add(a) => add(a).await?,
        SigningAction::RotateRoot {
            repo,
            hub_keys,
            root_keys,
            new_root_keys,
            new_root_threshold,
            targets_keys,
            targets_threshold,
            expires_days,
        } => {
            let plan = RootPlan {
                root: publics(&new_root_keys)?,
                root_threshold: new_root_threshold,
                targets: publics(&targets_keys)?,
                targets_threshold,
                hub: read_hub_keys(&hub_keys)?,
                expires: expires(expires_days),
            };
            let repo = Repo::open(&repo);
            let root = repo
                .rotate_root(&plan, &key_sources(&root_keys), &key_sources(&new_root_keys), &key_sources(&targets_keys))
                .await?;
            println!("Root version {} signed. Upload it with `hearth release upload`.", root.signed.version);
        }
        SigningAction::Upload { hub, repo } => upload(&HubClient::new(&hub)?, &Repo::open(&repo)).await?,
        SigningAction::Sbom { manifest_path, package, out } => {
            let crates = crate::sbom::closure(&manifest_path, &package)?;
            let json = crate::sbom::cyclonedx(&crates)?;
            std::fs::write(&out, json).with_context(|| format!("while writing {}", out.display()))?;
            println!("SBOM of {package} ({} crates, CycloneDX 1.5) written to {}", crates.len(), out.display());
        }
    }
    Ok(())
}

async fn add(a: AddArgs) -> Result<()> {
    let kind = match a.kind.as_str() {
        "security" => ReleaseKind::Security,
        "feature" => ReleaseKind::Feature,
        other => bail!("--kind is security or feature, not {other:?}"),
    };
    let model = ModelId::parse(&a.model).context("--model")?;
    let name = a.name.clone().unwrap_or_else(|| format!("{}-{}.img", a.model, a.version));
    let info = ReleaseInfo {
        model,
        version: a.version.clone(),
        hardware: a.hardware.clone(),
        security_version: a.security_version,
        kind,
        disruption: Disruption { restarts: a.restarts, seconds: a.downtime_seconds },
        fixes: a.fixes.clone(),
        notes: a.notes.clone(),
        sbom: None,
    };
    let repo = Repo::open(&a.repo);
    let release =
        NewRelease { image: &a.image, name: &name, info, sbom: a.sbom.as_deref(), expires: expires(a.expires_days) };
    let targets = repo.add_release(release, &key_sources(&a.targets_keys)).await?;
    println!(
        "{} {} signed as target {name} (targets version {}). Upload it with `hearth release upload`.",
        a.model, a.version, targets.signed.version
    );
    Ok(())
}

/// Uploads the target files the hub lacks, then the root versions after the hub's and the targets metadata if
/// newer, in one publication.
pub async fn upload(client: &HubClient, repo: &Repo) -> Result<()> {
    let status = client.get("/api/v1/updates").await?;
    let hub_root = status["root_version"].as_u64().unwrap_or(0);
    let hub_targets = status["targets_version"].as_u64().unwrap_or(0);
    let mut body = serde_json::json!({});
    let mut roots = Vec::new();
    for (version, path) in repo.root_files()? {
        if version > hub_root {
            roots.push(serde_json::from_slice::<serde_json::Value>(&std::fs::read(&path)?)?);
        }
    }
    let mut files = 0;
    if let Some(targets) = repo.targets()?
        && targets.signed.version.get() > hub_targets
    {
        for (name, target) in &targets.signed.targets {
            let sha = hearth_release::sha256_hex(&target.hashes);
            if client.get(&format!("/api/v1/updates/files/{sha}")).await.is_ok() {
                continue;
            }
            let path = repo.target_file(name.raw());
            let bytes = tokio::fs::read(&path).await.with_context(|| format!("while reading {}", path.display()))?;
            eprintln!("uploading {} ({} bytes)…", name.raw(), bytes.len());
            client.upload(&format!("/api/v1/updates/files/{sha}"), bytes).await?;
            files += 1;
        }
        body["targets"] = serde_json::from_slice(&std::fs::read(repo.dir().join("targets.json"))?)?;
    }
    if roots.is_empty() && body.get("targets").is_none() {
        println!("The hub has everything this repository holds (root {hub_root}, targets {hub_targets}).");
        return Ok(());
    }
    let n_roots = roots.len();
    body["roots"] = serde_json::Value::Array(roots);
    let answer = client.post("/api/v1/updates/publish", body).await?;
    println!(
        "Published: {files} files, {n_roots} root versions; the hub now serves root {}, targets {}, snapshot {}, timestamp {}.",
        answer["root_version"], answer["targets_version"], answer["snapshot_version"], answer["timestamp_version"]
    );
    Ok(())
}

/// Runs a rollout action.
pub async fn rollout(hub: &HubArgs, action: RolloutAction) -> Result<()> {
    let client = HubClient::new(hub)?;
    let show = |v: &serde_json::Value| {
        println!(
            "{}  {}  {}  wave {}/{}  {}  {}",
            v["id"].as_str().unwrap_or(""),
            v["release"].as_str().unwrap_or(""),
            v["state"].as_str().unwrap_or(""),
            v["wave"].as_i64().unwrap_or(-1) + 1,
            v["waves"],
            v["counts"],
            v["reason"].as_str().unwrap_or("")
        );
    };
    match action {
        RolloutAction::Start { release, canary, percents, success_percent, pause_failure_percent } => {
            let plan = serde_json::json!({"release": release, "canary": canary, "percents": percents,
                "success_percent": success_percent, "pause_failure_percent": pause_failure_percent});
            show(&client.post("/api/v1/rollouts", plan).await?);
        }
        RolloutAction::List => {
            for r in client.get("/api/v1/rollouts").await?["rollouts"].as_array().into_iter().flatten() {
                show(r);
            }
        }
        RolloutAction::Pause { id } => {
            show(&client.post(&format!("/api/v1/rollouts/{id}/pause"), serde_json::json!({})).await?)
        }
        RolloutAction::Resume { id } => {
            show(&client.post(&format!("/api/v1/rollouts/{id}/resume"), serde_json::json!({})).await?)
        }
        RolloutAction::Abort { id } => {
            show(&client.post(&format!("/api/v1/rollouts/{id}/abort"), serde_json::json!({})).await?)
        }
    }
    Ok(())
}
