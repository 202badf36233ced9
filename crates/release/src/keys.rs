//! Offline signing keys: Ed25519 key files (PKCS#8 PEM, written 0600) that `hearth release keygen` makes, or
//! keys in a PKCS#11 token ([`crate::pkcs11`]), named by a [`KeySpec`] and read through tough's `KeySource`, so
//! that the same code signs with a file or a hardware token.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tough::key_source::KeySource;
use tough::schema::key::Key;
use tough::sign::Sign;
use zeroize::Zeroizing;

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Not a key this tool can sign with.
    #[error("{0}: {1}")]
    Unusable(String, String),
    /// Refusing to overwrite a key.
    #[error("{0} exists; a key is never overwritten")]
    Exists(String),
}

/// A signing key in a PKCS#8 PEM file.
#[derive(Debug, Clone)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    /// The key in `path` (read when used).
    pub fn new(path: &Path) -> KeyFile {
        KeyFile { path: path.to_owned() }
    }

    /// Makes a new Ed25519 key in `path` (mode 0600; never over an existing file) and returns its public key.
    pub fn generate(path: &Path) -> Result<Key, KeyError> {
        if path.exists() {
            return Err(KeyError::Exists(path.display().to_string()));
        }
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| KeyError::Unusable(path.display().to_string(), e.to_string()))?;
        let pem = Zeroizing::new(pair.serialize_pem());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| KeyError::Io(dir.display().to_string(), e))?;
        }
        hearth_fsutil::write_atomic(path, pem.as_bytes(), 0o600)
            .map_err(|e| KeyError::Io(path.display().to_string(), e))?;
        KeyFile::new(path).public()
    }

    /// The key's public half, as TUF metadata lists it.
    pub fn public(&self) -> Result<Key, KeyError> {
        Ok(self.signer()?.tuf_key())
    }

    fn signer(&self) -> Result<impl Sign + use<>, KeyError> {
        let at = self.path.display().to_string();
        let pem = Zeroizing::new(std::fs::read_to_string(&self.path).map_err(|e| KeyError::Io(at.clone(), e))?);
        let pair = rcgen::KeyPair::from_pem(&pem).map_err(|e| KeyError::Unusable(at.clone(), e.to_string()))?;
        let der = Zeroizing::new(pair.serialize_der());
        tough::sign::parse_keypair(&der).map_err(|e| KeyError::Unusable(at, e.to_string()))
    }
}

#[async_trait]
impl KeySource for KeyFile {
    async fn as_sign(&self) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(Box::new(self.signer()?))
    }

    async fn write(&self, _value: &str, _key_id_hex: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err("key files are written only by `hearth release keygen`".into())
    }
}

/// A signing key as the maker names it: a file path, or a `pkcs11:` URI for a key in a token.
#[derive(Debug, Clone)]
pub enum KeySpec {
    /// A PKCS#8 PEM file.
    File(KeyFile),
    /// A key in a PKCS#11 token.
    Token(crate::pkcs11::TokenKey),
}

impl std::str::FromStr for KeySpec {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<KeySpec, KeyError> {
        if s.starts_with("pkcs11:") {
            crate::pkcs11::TokenKey::parse(s).map(KeySpec::Token)
        } else {
            Ok(KeySpec::File(KeyFile::new(Path::new(s))))
        }
    }
}

impl std::fmt::Display for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySpec::File(k) => write!(f, "{}", k.path.display()),
            KeySpec::Token(t) => write!(f, "{t}"),
        }
    }
}

impl KeySpec {
    /// Makes the key (in the file or the token; never over an existing one) and returns its public key.
    pub fn generate(&self) -> Result<Key, KeyError> {
        match self {
            KeySpec::File(k) => KeyFile::generate(&k.path),
            KeySpec::Token(t) => t.generate(),
        }
    }

    /// The key's public half, as TUF metadata lists it.
    pub fn public(&self) -> Result<Key, KeyError> {
        match self {
            KeySpec::File(k) => k.public(),
            KeySpec::Token(t) => t.public(),
        }
    }

    /// The key as tough signs with it.
    pub fn source(&self) -> Box<dyn KeySource> {
        match self {
            KeySpec::File(k) => Box::new(k.clone()),
            KeySpec::Token(t) => Box::new(t.clone()),
        }
    }
}

/// The public key of a key source.
pub async fn public_key(source: &dyn KeySource) -> Result<Key, KeyError> {
    source.as_sign().await.map(|s| s.tuf_key()).map_err(|e| KeyError::Unusable(format!("{source:?}"), e.to_string()))
}
