//! A maker for update tests: offline keys, a signed repository (through `hearth-release`, as `hearth release`
//! does) and publishing it to a hub through its API.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use hearth_proto::ModelId;
use hearth_proto::release::{Disruption, ReleaseInfo, ReleaseKind};
use hearth_release::keys::KeyFile;
use hearth_release::{HubKeys, NewRelease, Repo, RootPlan};
use tough::key_source::KeySource;

/// A maker with two root keys (threshold 2) and one targets key, and its repository.
#[derive(Debug)]
pub struct Maker {
    /// Keys, repository and images live here.
    pub dir: PathBuf,
    /// The repository.
    pub repo: Repo,
    /// Root keys.
    pub root_keys: Vec<KeyFile>,
    /// Targets keys.
    pub targets_keys: Vec<KeyFile>,
    /// The hub's online keys.
    pub hub_keys: HubKeys,
}

/// Key sources of key files.
pub fn sources(keys: &[KeyFile]) -> Vec<Box<dyn KeySource>> {
    keys.iter().map(|k| Box::new(k.clone()) as Box<dyn KeySource>).collect()
}

/// A year from now.
pub fn in_a_year() -> jiff::Timestamp {
    jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365)
}

/// Release metadata of a feature release for `model` `version` on hardware `rev-a`.
pub fn release_info(model: &str, version: &str, security_version: u64) -> ReleaseInfo {
    ReleaseInfo {
        model: ModelId::parse(model).expect("model"),
        version: version.into(),
        hardware: vec!["rev-a".into()],
        security_version,
        kind: ReleaseKind::Feature,
        disruption: Disruption { restarts: true, seconds: 20 },
        fixes: String::new(),
        notes: format!("{model} {version}"),
        sbom: None,
    }
}

impl Maker {
    /// Makes keys in `dir`, asks `hub` (`base`, operator `token`) for its online keys and signs root version 1.
    pub async fn new(client: &reqwest::Client, base: &str, token: &str, dir: &Path) -> Result<Maker> {
        let answer = client.get(format!("{base}/api/v1/updates/keys")).bearer_auth(token).send().await?;
        if !answer.status().is_success() {
            bail!("hub keys: {}", answer.status());
        }
        let hub_keys: HubKeys = answer.json().await?;
        let key = |name: &str| -> Result<KeyFile> {
            let path = dir.join("keys").join(name);
            KeyFile::generate(&path)?;
            Ok(KeyFile::new(&path))
        };
        let root_keys = vec![key("root-1.pem")?, key("root-2.pem")?];
        let targets_keys = vec![key("targets-1.pem")?];
        let plan = RootPlan {
            root: vec![root_keys[0].public()?, root_keys[1].public()?],
            root_threshold: 2,
            targets: vec![targets_keys[0].public()?],
            targets_threshold: 1,
            hub: hub_keys.clone(),
            expires: in_a_year(),
        };
        let repo = Repo::init(&dir.join("repo"), &plan, &sources(&root_keys)).await?;
        Ok(Maker { dir: dir.to_owned(), repo, root_keys, targets_keys, hub_keys })
    }

    /// Writes an image of `size` bytes (content depends on `seed`) and adds it as release `name`, with an SBOM.
    pub async fn release(&self, name: &str, info: ReleaseInfo, size: usize, seed: u8) -> Result<Vec<u8>> {
        let image: Vec<u8> = (0..size).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        self.release_bytes(name, info, image).await
    }

    /// Adds `image` as release `name`, with an SBOM.
    pub async fn release_bytes(&self, name: &str, info: ReleaseInfo, image: Vec<u8>) -> Result<Vec<u8>> {
        let path = self.dir.join(format!("{name}.src"));
        std::fs::write(&path, &image)?;
        let sbom = self.dir.join(format!("{name}.sbom.json"));
        std::fs::write(
            &sbom,
            serde_json::to_vec(
                &serde_json::json!({"bomFormat": "CycloneDX", "specVersion": "1.5", "version": 1, "components": []}),
            )?,
        )?;
        let release = NewRelease { image: &path, name, info, sbom: Some(&sbom), expires: in_a_year() };
        self.repo.add_release(release, &sources(&self.targets_keys)).await?;
        Ok(image)
    }

    /// Uploads every target file the hub lacks, then publishes root versions `roots` and (if `targets`) the
    /// newest targets metadata. Returns the publish answer's status and body.
    pub async fn publish(
        &self,
        client: &reqwest::Client,
        base: &str,
        token: &str,
        roots: &[u64],
        targets: bool,
    ) -> Result<(u16, serde_json::Value)> {
        let signed = self.repo.targets()?.context("no targets yet")?;
        for (name, target) in &signed.signed.targets {
            let sha = hearth_release::sha256_hex(&target.hashes);
            let body = std::fs::read(self.repo.target_file(name.raw()))?;
            let request = client
                .post(format!("{base}/api/v1/updates/files/{sha}"))
                .bearer_auth(token)
                .header("content-type", "application/octet-stream")
                .body(body);
            let (status, _, answer) = crate::checked(request).await?;
            if !(200..300).contains(&status) {
                bail!("upload {}: {status} {}", name.raw(), String::from_utf8_lossy(&answer));
            }
        }
        let mut body = serde_json::json!({});
        let roots: Vec<serde_json::Value> = roots
            .iter()
            .map(|v| -> Result<serde_json::Value> {
                Ok(serde_json::from_slice(&std::fs::read(self.repo.dir().join(format!("{v}.root.json")))?)?)
            })
            .collect::<Result<_>>()?;
        body["roots"] = serde_json::Value::Array(roots);
        if targets {
            body["targets"] = serde_json::from_slice(&std::fs::read(self.repo.dir().join("targets.json"))?)?;
        }
        let request = client.post(format!("{base}/api/v1/updates/publish")).bearer_auth(token).json(&body);
        let (status, _, answer) = crate::checked(request).await?;
        Ok((status, serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null)))
    }
}
