//! Signing keys held in a PKCS#11 token (a hardware security module, a smart card, or SoftHSM for tests), named
//! by an RFC 7512 URI: `pkcs11:token=LABEL;object=KEY?module-path=/usr/lib/…/module.so&pin-source=/path`.
//! The private key never leaves the token: it is made there (`CKM_EC_EDWARDS_KEY_PAIR_GEN`, sensitive, not
//! extractable) and signs there (`CKM_EDDSA`, pure Ed25519, as TUF's `ed25519` scheme wants).
//!
//! The module comes from the URI's `module-path` or `HEARTH_PKCS11_MODULE`; the user PIN from the URI's
//! `pin-source` (a file) or `HEARTH_PKCS11_PIN`, never from the command line, where other users could read it.
//! A module is loaded and initialised once per process, however many keys name it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use tough::key_source::KeySource;
use tough::schema::key::{Ed25519Key, Ed25519Scheme, Key};
use tough::sign::Sign;

use crate::keys::KeyError;

/// The environment variable naming the PKCS#11 module when the URI does not.
pub const MODULE_ENV: &str = "HEARTH_PKCS11_MODULE";
/// The environment variable holding the token's user PIN when the URI names no `pin-source`.
pub const PIN_ENV: &str = "HEARTH_PKCS11_PIN";

/// DER of the Ed25519 curve's object identifier (1.3.101.112), for `CKA_EC_PARAMS`.
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];

/// A key in a token, as an RFC 7512 URI names it.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey {
    /// The token's label.
    pub token: String,
    /// The key's label (`CKA_LABEL`).
    pub object: String,
    /// The module, if the URI names it.
    pub module: Option<PathBuf>,
    /// A file holding the PIN, if the URI names one.
    pub pin_source: Option<PathBuf>,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pkcs11:token={};object={}", self.token, self.object)
    }
}

impl std::fmt::Display for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Decodes RFC 3986 percent-encoding; `None` for a broken escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl TokenKey {
    /// Parses `pkcs11:token=…;object=…[?module-path=…&pin-source=…]`. `token` and `object` are required; other
    /// attributes are refused rather than ignored, so a URI never means less than it says.
    pub fn parse(uri: &str) -> Result<TokenKey, KeyError> {
        // The URI is not repeated in errors: it might carry a PIN someone put there.
        let bad = |why: &str| KeyError::Unusable("a pkcs11: URI".to_owned(), why.to_owned());
        let rest = uri.strip_prefix("pkcs11:").ok_or_else(|| bad("a PKCS#11 URI starts with pkcs11:"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (mut token, mut object, mut module, mut pin_source) = (None, None, None, None);
        let attributes = path.split(';').chain(query.split('&')).filter(|a| !a.is_empty());
        for attribute in attributes {
            let (name, value) = attribute.split_once('=').ok_or_else(|| bad("each attribute is name=value"))?;
            let value = percent_decode(value)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| bad("a value is empty or badly escaped"))?;
            let slot = match name {
                "token" => &mut token,
                "object" => &mut object,
                "module-path" => &mut module,
                "pin-source" => &mut pin_source,
                _ => {
                    return Err(bad(&format!(
                        "the attribute {name} is not supported (token, object, module-path, pin-source)"
                    )));
                }
            };
            if slot.replace(value).is_some() {
                return Err(bad(&format!("{name} is given twice")));
            }
        }
        Ok(TokenKey {
            token: token.ok_or_else(|| bad("token= (the token's label) is required"))?,
            object: object.ok_or_else(|| bad("object= (the key's label) is required"))?,
            module: module.map(PathBuf::from),
            pin_source: pin_source.map(|p| PathBuf::from(p.strip_prefix("file:").unwrap_or(&p))),
        })
    }

    fn error(&self, why: impl std::fmt::Display) -> KeyError {
        KeyError::Unusable(self.to_string(), why.to_string())
    }

    fn module_path(&self) -> Result<PathBuf, KeyError> {
        self.module
            .clone()
            .or_else(|| std::env::var_os(MODULE_ENV).map(PathBuf::from))
            .ok_or_else(|| self.error(format!("no PKCS#11 module: add ?module-path=… to the URI or set {MODULE_ENV}")))
    }

    fn pin(&self) -> Result<AuthPin, KeyError> {
        let pin = match &self.pin_source {
            Some(file) => std::fs::read_to_string(file)
                .map_err(|e| KeyError::Io(file.display().to_string(), e))?
                .trim_end_matches(['\n', '\r'])
                .to_owned(),
            None => std::env::var(PIN_ENV)
                .map_err(|_| self.error(format!("no PIN: set {PIN_ENV} or add ?pin-source=FILE to the URI")))?,
        };
        Ok(AuthPin::from(pin))
    }

    /// A signed-in read-write session on the token.
    fn session(&self) -> Result<Session, KeyError> {
        let pkcs11 = module(&self.module_path()?).map_err(|e| self.error(e))?;
        let mut found = None;
        for slot in pkcs11.get_slots_with_token().map_err(|e| self.error(e))? {
            let info = pkcs11.get_token_info(slot).map_err(|e| self.error(e))?;
            if info.label().trim_end() == self.token {
                found = Some(slot);
                break;
            }
        }
        let slot = found.ok_or_else(|| self.error(format!("no token labelled {} in the module", self.token)))?;
        let session = pkcs11.open_rw_session(slot).map_err(|e| self.error(e))?;
        // A login holds for the whole token: a second key of the same token in this process finds it signed in.
        match session.login(UserType::User, Some(&self.pin()?)) {
            Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(self.error(format!("signing in: {e}"))),
        }
        Ok(session)
    }

    fn find(&self, session: &Session, class: ObjectClass) -> Result<Vec<ObjectHandle>, KeyError> {
        let template = [Attribute::Class(class), Attribute::Label(self.object.as_bytes().to_vec())];
        session.find_objects(&template).map_err(|e| self.error(e))
    }

    /// Makes a new Ed25519 key pair in the token (never over a key with the same label) and returns its public
    /// key. The private half is sensitive and not extractable.
    pub fn generate(&self) -> Result<Key, KeyError> {
        let session = self.session()?;
        if !self.find(&session, ObjectClass::PRIVATE_KEY)?.is_empty()
            || !self.find(&session, ObjectClass::PUBLIC_KEY)?.is_empty()
        {
            return Err(KeyError::Exists(self.to_string()));
        }
        let label = Attribute::Label(self.object.as_bytes().to_vec());
        let id = Attribute::Id(self.object.as_bytes().to_vec());
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcParams(ED25519_OID.to_vec()),
            label.clone(),
            id.clone(),
        ];
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            label,
            id,
        ];
        let (public, _) = session
            .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
            .map_err(|e| self.error(format!("making an Ed25519 key (does the token do EdDSA?): {e}")))?;
        self.public_of(&session, public)
    }

    fn public_of(&self, session: &Session, public: ObjectHandle) -> Result<Key, KeyError> {
        let attributes = session.get_attributes(public, &[AttributeType::EcPoint]).map_err(|e| self.error(e))?;
        let point = attributes
            .into_iter()
            .find_map(|a| if let Attribute::EcPoint(p) = a { Some(p) } else { None })
            .ok_or_else(|| self.error("the public key has no CKA_EC_POINT"))?;
        // Tokens give the point raw or as a DER OCTET STRING (04 20 ‖ 32 bytes); TUF wants the 32 bytes.
        let raw = match point.as_slice() {
            [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest.to_vec(),
            raw if raw.len() == 32 => raw.to_vec(),
            _ => return Err(self.error("the public key is not an Ed25519 point")),
        };
        Ok(Key::Ed25519 {
            keyval: Ed25519Key { public: raw.into(), _extra: HashMap::new() },
            scheme: Ed25519Scheme::Ed25519,
            _extra: HashMap::new(),
        })
    }

    /// The key's public half, as TUF metadata lists it.
    pub fn public(&self) -> Result<Key, KeyError> {
        let session = self.session()?;
        let handle = self.one(&session, ObjectClass::PUBLIC_KEY)?;
        self.public_of(&session, handle)
    }

    fn one(&self, session: &Session, class: ObjectClass) -> Result<ObjectHandle, KeyError> {
        match self.find(session, class)?.as_slice() {
            [one] => Ok(*one),
            [] => Err(self.error(format!("no {class} labelled {} in the token", self.object))),
            _ => Err(self.error(format!("several objects are labelled {}; labels must be unique", self.object))),
        }
    }

    fn signer(&self) -> Result<TokenSigner, KeyError> {
        let session = self.session()?;
        let private = self.one(&session, ObjectClass::PRIVATE_KEY)?;
        let key_type = session.get_attributes(private, &[AttributeType::KeyType]).map_err(|e| self.error(e))?;
        if !key_type.iter().any(|a| matches!(a, Attribute::KeyType(t) if *t == KeyType::EC_EDWARDS)) {
            return Err(self.error("the key is not an Ed25519 (EC Edwards) key"));
        }
        let public = self.public_of(&session, self.one(&session, ObjectClass::PUBLIC_KEY)?)?;
        Ok(TokenSigner { name: self.to_string(), session: Mutex::new(session), private, public })
    }
}

/// Modules loaded in this process, by path: PKCS#11 allows one `C_Initialize` per process.
fn module(path: &Path) -> Result<Pkcs11, String> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut loaded = LOADED.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = loaded.get(path) {
        return Ok(p.clone());
    }
    let pkcs11 = Pkcs11::new(path).map_err(|e| format!("loading the module {}: {e}", path.display()))?;
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("initialising the module {}: {e}", path.display()))?;
    loaded.insert(path.to_owned(), pkcs11.clone());
    Ok(pkcs11)
}

/// A signed-in session with a private key handle: signs in the token.
struct TokenSigner {
    name: String,
    session: Mutex<Session>,
    private: ObjectHandle,
    public: Key,
}

#[async_trait]
impl Sign for TokenSigner {
    fn tuf_key(&self) -> Key {
        self.public.clone()
    }

    async fn sign(
        &self,
        msg: &[u8],
        _rng: &(dyn aws_lc_rs::rand::SecureRandom + Sync),
    ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        session.sign(&mechanism, self.private, msg).map_err(|e| format!("{}: signing: {e}", self.name).into())
    }
}

#[async_trait]
impl KeySource for TokenKey {
    async fn as_sign(&self) -> Result<Box<dyn Sign>, Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(Box::new(self.signer()?))
    }

    async fn write(&self, _value: &str, _key_id_hex: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err("keys in a token are made only by `hearth release keygen`".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_read_as_rfc_7512_says_and_anything_else_is_refused() {
        let key = TokenKey::parse(
            "pkcs11:token=maker%20keys;object=root-1?module-path=/usr/lib/x.so&pin-source=file:/run/pin",
        )
        .expect("a good URI");
        assert_eq!(key.token, "maker keys");
        assert_eq!(key.object, "root-1");
        assert_eq!(key.module.as_deref(), Some(Path::new("/usr/lib/x.so")));
        assert_eq!(key.pin_source.as_deref(), Some(Path::new("/run/pin")));
        assert_eq!(key.to_string(), "pkcs11:token=maker keys;object=root-1", "no paths or PIN in messages");
        let minimal = TokenKey::parse("pkcs11:object=t;token=x").expect("any order");
        assert_eq!((minimal.module, minimal.pin_source), (None, None));
        for bad in [
            "pkcs11:object=t",
            "pkcs11:token=x",
            "pkcs11:token=x;object=t;object=u",
            "pkcs11:token=x;object=t;pin-value=1234",
            "pkcs11:token=x;object=%zz",
            "pkcs11:token=;object=t",
            "pkcs11:token",
            "file:/tmp/key.pem",
        ] {
            assert!(TokenKey::parse(bad).is_err(), "{bad}");
        }
        let refused = TokenKey::parse("pkcs11:token=x;object=t;pin-value=271828").expect_err("a PIN in the URI");
        assert!(!refused.to_string().contains("271828"), "the PIN is not repeated: {refused}");
    }
}
