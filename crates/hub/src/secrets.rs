//! Secrets at rest and in memory: the hub's master key, the envelope that seals private keys under it, the MAC
//! that turns bearer tokens into what the database stores, and random token generation.
//!
//! The master key is 32 random bytes. It comes, in order of precedence, from `HEARTH_MASTER_KEY` (base64), from a
//! file named by the configuration (for example a systemd credential), or from `{data_dir}/master.key`, which the
//! first start creates with mode 0600. Two sub-keys are derived from it with HKDF-SHA256: one seals secrets
//! (AES-256-GCM, random nonce, the secret's name as associated data), one computes HMAC-SHA256 of tokens. Tokens
//! are 128 bits or more of randomness, so a keyed MAC (not a slow password hash) is the right tool: a stolen
//! database alone does not let anyone test guesses.

use std::fmt;
use std::path::Path;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::{hkdf, hmac, rand};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Errors about the master key and sealed secrets.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The master key could not be read or created.
    #[error("master key at {path}: {source}")]
    Io {
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The master key is not 32 bytes of base64 (or raw bytes in a file).
    #[error("master key from {origin} is not 32 bytes (base64 or raw)")]
    BadMasterKey {
        /// Where it came from.
        origin: String,
    },
    /// A master key file is readable by others.
    #[error("master key file {0} is readable by group or others; run `chmod 600 {0}`")]
    Permissions(String),
    /// A sealed secret could not be opened: wrong master key or corrupted data.
    #[error("secret {0:?} cannot be opened with this master key (wrong key or corrupted)")]
    Unseal(String),
    /// The system random generator failed.
    #[error("system random generator failed")]
    Random,
}

/// Where the master key came from, for the start-up log line (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    /// `HEARTH_MASTER_KEY`.
    Environment,
    /// A file; `created` when this start made it.
    File {
        /// The file.
        path: String,
        /// Whether this start created it.
        created: bool,
    },
}

/// The master key and the keys derived from it. Zeroized on drop; `Debug` shows nothing secret.
#[derive(ZeroizeOnDrop)]
pub struct MasterKey {
    #[zeroize(skip)]
    seal: LessSafeKey,
    #[zeroize(skip)]
    mac: hmac::Key,
    raw: [u8; 32],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

const SEAL_MAGIC: &[u8; 4] = b"HS1\0";

impl MasterKey {
    /// Loads the master key from the environment value, an explicit file, or `default_path` (created if missing).
    pub fn load(
        env_value: Option<&str>,
        file: Option<&Path>,
        default_path: &Path,
    ) -> Result<(MasterKey, MasterKeySource), SecretError> {
        if let Some(value) = env_value {
            let bytes = Zeroizing::new(
                STANDARD
                    .decode(value.trim())
                    .map_err(|_| SecretError::BadMasterKey { origin: "HEARTH_MASTER_KEY".into() })?,
            );
            let key = Self::from_bytes(&bytes, "HEARTH_MASTER_KEY")?;
            return Ok((key, MasterKeySource::Environment));
        }
        let (path, may_create) = match file {
            Some(p) => (p, false),
            None => (default_path, true),
        };
        let shown = path.display().to_string();
        let io = |source| SecretError::Io { path: shown.clone(), source };
        match std::fs::read(path) {
            Ok(contents) => {
                check_private(path)?;
                let contents = Zeroizing::new(contents);
                let key = match Self::from_bytes(&contents, &shown) {
                    Ok(k) => k,
                    Err(_) => {
                        let text = std::str::from_utf8(&contents)
                            .map_err(|_| SecretError::BadMasterKey { origin: shown.clone() })?;
                        let decoded = Zeroizing::new(
                            STANDARD
                                .decode(text.trim())
                                .map_err(|_| SecretError::BadMasterKey { origin: shown.clone() })?,
                        );
                        Self::from_bytes(&decoded, &shown)?
                    }
                };
                Ok((key, MasterKeySource::File { path: shown, created: false }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
                let mut raw = Zeroizing::new([0u8; 32]);
                rand::fill(raw.as_mut()).map_err(|_| SecretError::Random)?;
                let encoded = Zeroizing::new(STANDARD.encode(raw.as_ref()));
                write_private(path, encoded.as_bytes()).map_err(io)?;
                let key = Self::from_bytes(raw.as_ref(), &shown)?;
                Ok((key, MasterKeySource::File { path: shown, created: true }))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Builds a key from exactly 32 bytes.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<MasterKey, SecretError> {
        let raw: [u8; 32] = bytes.try_into().map_err(|_| SecretError::BadMasterKey { origin: origin.into() })?;
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"hearth master key v1");
        let prk = salt.extract(&raw);
        let mut seal_bytes = Zeroizing::new([0u8; 32]);
        prk.expand(&[b"seal"], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(seal_bytes.as_mut()))
            .map_err(|_| SecretError::Random)?;
        let mut mac_bytes = Zeroizing::new([0u8; 32]);
        prk.expand(&[b"token-mac"], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(mac_bytes.as_mut()))
            .map_err(|_| SecretError::Random)?;
        let unbound = UnboundKey::new(&aead::AES_256_GCM, seal_bytes.as_ref()).map_err(|_| SecretError::Random)?;
        Ok(MasterKey {
            seal: LessSafeKey::new(unbound),
            mac: hmac::Key::new(hmac::HMAC_SHA256, mac_bytes.as_ref()),
            raw,
        })
    }

    /// Encrypts `plaintext` under the master key; `name` binds the ciphertext to its purpose.
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; 12];
        rand::fill(&mut nonce).map_err(|_| SecretError::Random)?;
        let mut buf = plaintext.to_vec();
        self.seal
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(name.as_bytes()), &mut buf)
            .map_err(|_| SecretError::Random)?;
        let mut out = Vec::with_capacity(4 + 12 + buf.len());
        out.extend_from_slice(SEAL_MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        buf.zeroize();
        Ok(out)
    }

    /// Decrypts what [`seal`](Self::seal) produced for the same `name`.
    pub fn unseal(&self, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let err = || SecretError::Unseal(name.to_owned());
        if sealed.len() < 4 + 12 + 16 || &sealed[..4] != SEAL_MAGIC {
            return Err(err());
        }
        let nonce: [u8; 12] = sealed[4..16].try_into().map_err(|_| err())?;
        let mut buf = Zeroizing::new(sealed[16..].to_vec());
        let len = self
            .seal
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(name.as_bytes()), &mut buf)
            .map_err(|_| err())?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    /// The keyed hash under which a token is stored and looked up.
    pub fn token_mac(&self, purpose: &str, token: &str) -> Vec<u8> {
        let mut ctx = hmac::Context::with_key(&self.mac);
        ctx.update(purpose.as_bytes());
        ctx.update(&[0]);
        ctx.update(token.as_bytes());
        ctx.sign().as_ref().to_vec()
    }
}

/// A secret string (token, code): zeroized on drop, redacted in `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(s: String) -> Self {
        SecretString(s)
    }
    /// The secret, for the one place that must show or send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A new random token: `prefix` followed by `bytes` random bytes in URL-safe base64.
pub fn random_token(prefix: &str, bytes: usize) -> Result<SecretString, SecretError> {
    let mut buf = Zeroizing::new(vec![0u8; bytes]);
    rand::fill(&mut buf).map_err(|_| SecretError::Random)?;
    Ok(SecretString(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(buf.as_slice()))))
}

/// A new random string of `len` characters from the Crockford base32 alphabet in lower case (no i, l, o, u),
/// used for device ids and claim codes, which people may read and type.
pub fn random_base32(len: usize) -> Result<String, SecretError> {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let mut buf = vec![0u8; len];
    rand::fill(&mut buf).map_err(|_| SecretError::Random)?;
    Ok(buf.iter().map(|b| ALPHABET[(b & 31) as usize] as char).collect())
}

/// Writes `contents` to `path` with mode 0600, atomically and durably (temporary file, fsync, rename, fsync of
/// the directory: the master key must be on disk before the database holding keys sealed under it is).
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    hearth_fsutil::write_atomic(path, contents, 0o600)
}

fn check_private(path: &Path) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta =
        std::fs::metadata(path).map_err(|source| SecretError::Io { path: path.display().to_string(), source })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(SecretError::Permissions(path.display().to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_binding() {
        let key = MasterKey::from_bytes(&[7u8; 32], "test").expect("key");
        let sealed = key.seal("ca-key", b"private").expect("seal");
        assert_ne!(&sealed[16..], b"private");
        assert_eq!(key.unseal("ca-key", &sealed).expect("open").as_slice(), b"private");
        assert!(key.unseal("other-name", &sealed).is_err());
        let other = MasterKey::from_bytes(&[8u8; 32], "test").expect("key");
        assert!(other.unseal("ca-key", &sealed).is_err());
        assert!(key.unseal("ca-key", b"short").is_err());
    }

    #[test]
    fn master_key_file_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("master.key");
        let (k1, src) = MasterKey::load(None, None, &path).expect("create");
        assert!(matches!(src, MasterKeySource::File { created: true, .. }));
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        let (k2, src) = MasterKey::load(None, None, &path).expect("load");
        assert!(matches!(src, MasterKeySource::File { created: false, .. }));
        assert_eq!(k1.token_mac("p", "t"), k2.token_mac("p", "t"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(MasterKey::load(None, None, &path), Err(SecretError::Permissions(_))));
        assert!(MasterKey::load(Some("dG9vIHNob3J0"), None, &path).is_err());
        assert!(format!("{k1:?}").contains("redacted"));
    }

    #[test]
    fn tokens_are_random_and_redacted() {
        let a = random_token("hth_", 32).expect("token");
        let b = random_token("hth_", 32).expect("token");
        assert_ne!(a, b);
        assert!(a.expose().starts_with("hth_") && a.expose().len() > 40);
        assert_eq!(format!("{a:?}"), "<redacted>");
        let id = random_base32(16).expect("id");
        assert_eq!(id.len(), 16);
        assert!(hearth_proto::DeviceId::parse(&id).is_ok());
    }
}
