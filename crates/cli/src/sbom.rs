//! The SBOM of a release (CRA Annex I: a machine-readable bill of materials per release): CycloneDX 1.5 JSON of
//! one package of a Cargo workspace and of exactly what goes into its binary. The graph comes from
//! `cargo metadata` (normal dependencies only: no dev- or build-dependencies, which are not in the image), the
//! SHA-256 of each crate from `Cargo.lock`; every component carries its package URL (`pkg:cargo/name@version`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use cyclonedx_bom::models::component::Classification;
use cyclonedx_bom::models::hash::{Hash, HashAlgorithm, HashValue, Hashes};
use cyclonedx_bom::prelude::{Bom, Component, Components, Metadata, NormalizedString, Purl, Validate};

/// One crate in the image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Crate {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the crate file, from `Cargo.lock` (None for workspace members).
    pub sha256: Option<String>,
}

/// The crates `package` is built from (itself first), following normal dependencies only.
pub fn closure(manifest: &Path, package: &str) -> Result<Vec<Crate>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--locked", "--manifest-path"])
        .arg(manifest)
        .output()
        .context("while running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).context("cargo metadata's output")?;
    let workspace_root = meta["workspace_root"].as_str().context("workspace_root")?;
    let packages: HashMap<&str, (&str, &str)> = meta["packages"]
        .as_array()
        .context("packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, (p["name"].as_str()?, p["version"].as_str()?))))
        .collect();
    let nodes: HashMap<&str, Vec<&str>> = meta["resolve"]["nodes"]
        .as_array()
        .context("resolve")?
        .iter()
        .filter_map(|n| {
            let deps = n["deps"]
                .as_array()?
                .iter()
                .filter(|d| d["dep_kinds"].as_array().is_some_and(|k| k.iter().any(|k| k["kind"].is_null())))
                .filter_map(|d| d["pkg"].as_str())
                .collect();
            Some((n["id"].as_str()?, deps))
        })
        .collect();
    let root = packages.iter().find(|(_, (name, _))| *name == package).map(|(id, _)| *id);
    let root = root.with_context(|| format!("no package {package} in the workspace"))?;
    let checksums = lock_checksums(&Path::new(workspace_root).join("Cargo.lock"))?;
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if seen.insert(id) {
            stack.extend(nodes.get(id).into_iter().flatten().copied());
        }
    }
    let mut crates: Vec<Crate> = seen
        .into_iter()
        .filter(|id| *id != root)
        .filter_map(|id| packages.get(id))
        .map(|(name, version)| Crate {
            name: (*name).to_owned(),
            version: (*version).to_owned(),
            sha256: checksums.get(&((*name).to_owned(), (*version).to_owned())).cloned(),
        })
        .collect();
    crates.sort();
    let (name, version) = packages[root];
    crates.insert(0, Crate { name: name.into(), version: version.into(), sha256: None });
    Ok(crates)
}

/// (name, version) → SHA-256 from a `Cargo.lock`.
fn lock_checksums(lock: &Path) -> Result<BTreeMap<(String, String), String>> {
    let text = std::fs::read_to_string(lock).with_context(|| format!("while reading {}", lock.display()))?;
    let lock: toml::Value = toml::from_str(&text).context("Cargo.lock")?;
    Ok(lock
        .get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                (p.get("name")?.as_str()?.to_owned(), p.get("version")?.as_str()?.to_owned()),
                p.get("checksum")?.as_str()?.to_owned(),
            ))
        })
        .collect())
}

/// The CycloneDX 1.5 JSON of `crates` (the first is the image itself), checked by the library's validation.
pub fn cyclonedx(crates: &[Crate]) -> Result<Vec<u8>> {
    let component = |c: &Crate, kind: Classification| -> Result<Component> {
        let image = kind == Classification::Firmware;
        let mut component = Component::new(kind, &c.name, &c.version, Some(format!("{}@{}", c.name, c.version)));
        component.purl = Some(Purl::new("cargo", &c.name, &c.version).context("a package URL")?);
        if let Some(sha) = &c.sha256 {
            component.hashes =
                Some(Hashes(vec![Hash { alg: HashAlgorithm::SHA_256, content: HashValue(sha.clone()) }]));
        }
        component.description = Some(NormalizedString::new(if image {
            "the device software release"
        } else {
            "a Rust crate built into it"
        }));
        Ok(component)
    };
    let (image, rest) = crates.split_first().context("no crates")?;
    let mut metadata = Metadata::new().context("SBOM metadata")?;
    metadata.component = Some(component(image, Classification::Firmware)?);
    let bom = Bom {
        metadata: Some(metadata),
        components: Some(Components(
            rest.iter().map(|c| component(c, Classification::Library)).collect::<Result<_>>()?,
        )),
        ..Bom::default()
    };
    let check = bom.validate();
    if !check.passed() {
        bail!("the SBOM does not validate: {check:?}");
    }
    let mut out = Vec::new();
    bom.output_as_json_v1_5(&mut out).context("writing the SBOM")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_sbom_lists_what_is_in_its_binary_and_nothing_else() {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/Cargo.toml");
        let crates = closure(&manifest, "hearth-agent").expect("closure");
        assert_eq!(crates[0].name, "hearth-agent");
        let names: BTreeSet<&str> = crates.iter().map(|c| c.name.as_str()).collect();
        for inside in ["tokio", "rustls", "tough", "hearth-proto", "redb", "aws-lc-rs"] {
            assert!(names.contains(inside), "{inside} is in the agent");
        }
        for outside in ["axum", "sqlx", "webauthn-rs", "lettre", "zxcvbn"] {
            assert!(!names.contains(outside), "{outside} is not in the agent's binary");
        }
        let tokio = crates.iter().find(|c| c.name == "tokio").expect("tokio");
        assert_eq!(tokio.sha256.as_ref().map(String::len), Some(64), "registry crates carry their SHA-256");
        let json: serde_json::Value = serde_json::from_slice(&cyclonedx(&crates).expect("sbom")).expect("json");
        assert_eq!((json["bomFormat"].as_str(), json["specVersion"].as_str()), (Some("CycloneDX"), Some("1.5")));
        assert_eq!(json["metadata"]["component"]["name"], "hearth-agent");
        assert_eq!(json["metadata"]["component"]["type"], "firmware");
        let components = json["components"].as_array().expect("components");
        assert_eq!(components.len(), crates.len() - 1);
        let tokio = components.iter().find(|c| c["name"] == "tokio").expect("tokio");
        assert!(tokio["purl"].as_str().is_some_and(|p| p.starts_with("pkg:cargo/tokio@")), "{tokio}");
        assert_eq!(tokio["hashes"][0]["alg"], "SHA-256");
    }
}
