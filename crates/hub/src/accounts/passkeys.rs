//! Passkeys (WebAuthn, webauthn-rs): a first-class way to sign in (discoverable credentials, so nobody types an
//! email and nothing says which emails have passkeys), a way to sign up without a password, and the second factor
//! of operators: an owner, admin or support account with a passkey must confirm every password sign-in with it.
//!
//! Ceremony state lives in the store for five minutes and is taken once, so a ceremony finishes on any node and
//! cannot be replayed. Passkeys need the hub to be reached by a DNS name (WebAuthn has no relying party for an IP
//! address): with `public.host` an IP address they are off, and the pages and API say so.

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

use super::{Accounts, AccountsError, Operator, Role, SignedIn, normalize_email};
use crate::secrets::random_base32;
use crate::store::{AccountRow, CeremonyKind, NewAccount, PasskeyRow, StoreError};

/// How long a ceremony may take (the browser's own timeout is five minutes too).
pub const CEREMONY_VALIDITY_MS: i64 = 5 * 60 * 1000;
/// The password hash of an account whose only credential is a passkey: no password verifies against it.
pub const PASSKEY_ONLY: &str = "!passkey";
/// Adding a passkey needs a sign-in this recent.
pub const FRESH_SIGN_IN_MS: i64 = 10 * 60 * 1000;
/// Passkeys per account.
pub const MAX_PASSKEYS: usize = 10;
const HANDLE: &str = "webauthn-user";

/// The relying party for the hub's public address, or `None` when that is an IP address (or not a URL).
pub fn relying_party(public_host: &str, https_url: &str) -> Option<Arc<Webauthn>> {
    if public_host.parse::<IpAddr>().is_ok() {
        tracing::info!(
            host = public_host,
            "passkeys are off: WebAuthn needs the hub reached by a DNS name (public.host)"
        );
        return None;
    }
    let origin = Url::parse(https_url).ok()?;
    match WebauthnBuilder::new(public_host, &origin).and_then(|b| b.rp_name("Hearth").build()) {
        Ok(w) => Some(Arc::new(w)),
        Err(e) => {
            tracing::warn!(error = %e, host = public_host, "passkeys are off: no WebAuthn relying party for this host");
            None
        }
    }
}

/// The relying party, or (from a function answering `Result<Result<_, PasskeyRefusal>, _>`) the refusal that
/// passkeys are off.
macro_rules! relying_party {
    ($accounts:expr) => {
        match $accounts.webauthn() {
            Ok(w) => w,
            Err(refusal) => return Ok(Err(refusal)),
        }
    };
}

/// Why a passkey step was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasskeyRefusal {
    /// The hub has no relying party (reached by an IP address).
    #[error("passkeys need the hub to be reached by a DNS name (set public.host)")]
    Unavailable,
    /// The ceremony is unknown, taken or expired, or belongs to someone else.
    #[error("this passkey request is not valid any more; start again")]
    InvalidCeremony,
    /// The browser's answer does not verify (or is not one).
    #[error("the passkey's answer does not verify: {0}")]
    Rejected(String),
    /// Unknown passkey, or its account cannot sign in (the same answer).
    #[error("this passkey does not sign in to any account here")]
    UnknownPasskey,
    /// Adding a passkey needs a sign-in within the last 10 minutes, through a session.
    #[error("sign in again (within the last 10 minutes) to add a passkey")]
    SignInAgain,
    /// The account's only way to sign in.
    #[error("this is the account's only way to sign in; set a password first (forgot password)")]
    LastCredential,
    /// The account has as many passkeys as it may.
    #[error("an account has at most 10 passkeys; remove one first")]
    TooMany,
    /// No such passkey on the account.
    #[error("no such passkey")]
    NoSuchPasskey,
    /// Other refusals of sign-up (closed, no mailer, bad email, throttled).
    #[error("{0}")]
    SignUp(super::links::LinkRefusal),
}

/// A ceremony started: its id and the options for `navigator.credentials.create()` or `.get()`.
#[derive(Debug)]
pub struct Started {
    /// Send it back with the browser's answer.
    pub ceremony_id: String,
    /// `CreationChallengeResponse` or `RequestChallengeResponse`, as JSON (`{"publicKey": …}`).
    pub options: serde_json::Value,
}

/// What an operator's right password leads to.
#[derive(Debug)]
pub enum SecondFactor {
    /// No passkey: the session.
    None,
    /// Confirm with one of these passkeys.
    Ask(Started),
    /// The account has passkeys, but the hub cannot check them now: refused.
    Unavailable,
}

/// A passkey as its owner sees it.
#[derive(Debug, Clone)]
pub struct PasskeyInfo {
    /// Its id (base64url of the credential id).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Added, Unix ms.
    pub created_at_ms: i64,
    /// Last used, Unix ms.
    pub last_used_at_ms: Option<i64>,
}

impl From<PasskeyRow> for PasskeyInfo {
    fn from(p: PasskeyRow) -> Self {
        PasskeyInfo { id: p.credential_id, name: p.name, created_at_ms: p.created_at, last_used_at_ms: p.last_used_at }
    }
}

/// What a sign-up ceremony remembers between its two steps.
#[derive(Serialize, Deserialize)]
struct SignUpState {
    account_id: String,
    email: String,
    registration: PasskeyRegistration,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn json<T: Serialize>(value: &T) -> Result<String, AccountsError> {
    serde_json::to_string(value).map_err(|e| AccountsError::Store(StoreError::Corrupt(e.to_string())))
}

fn parse<T: for<'de> Deserialize<'de>>(value: &str) -> Result<T, AccountsError> {
    serde_json::from_str(value).map_err(|e| AccountsError::Store(StoreError::Corrupt(format!("ceremony state: {e}"))))
}

/// A name people give a passkey: trimmed, no control characters, at most 64 characters.
fn clean_name(name: &str) -> String {
    let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    let name = name.trim();
    if name.is_empty() { "Passkey".to_owned() } else { name.to_owned() }
}

impl Accounts {
    fn webauthn(&self) -> Result<&Webauthn, PasskeyRefusal> {
        self.settings.webauthn.as_deref().ok_or(PasskeyRefusal::Unavailable)
    }

    /// Whether passkeys work on this hub.
    pub fn passkeys_available(&self) -> bool {
        self.settings.webauthn.is_some()
    }

    /// The WebAuthn user handle of an account: a MAC of its id, so it says nothing about the account.
    fn user_handle(&self, account_id: &str) -> Uuid {
        let mac = self.master.token_mac(HANDLE, account_id);
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&mac[..16]);
        Uuid::from_bytes(bytes)
    }

    async fn start_ceremony(
        &self,
        kind: CeremonyKind,
        account_id: Option<&str>,
        state: String,
        options: serde_json::Value,
    ) -> Result<Started, AccountsError> {
        let id = random_base32(20).map_err(|e| StoreError::Random(e.to_string()))?;
        let now = self.clock.now_ms();
        self.store.insert_ceremony(&id, kind, account_id, &state, now, now + CEREMONY_VALIDITY_MS).await?;
        Ok(Started { ceremony_id: id, options })
    }

    /// Counts a passkey ceremony started by `source`'s network (anonymous starts store state): 20 in 15 minutes.
    async fn count_passkey_start(&self, source: Option<IpAddr>) -> Result<Option<u64>, StoreError> {
        let network = source.map(crate::monitoring::source_network).unwrap_or_else(|| "-".into());
        let now = self.clock.now_ms();
        let keys = [(format!("passkeysrc:{network}"), 4 * super::THROTTLE_FAILURES + 1)];
        Ok(self.count_attempt(&keys, now).await?.map(|until| super::retry_after(until, now)))
    }

    /// A signed-in account starts adding a passkey.
    pub async fn passkey_registration_start(
        &self,
        by: &Operator,
    ) -> Result<Result<Started, PasskeyRefusal>, AccountsError> {
        let webauthn = relying_party!(self);
        let Some(account) = self.account_of(by).await? else { return Ok(Err(PasskeyRefusal::InvalidCeremony)) };
        // A stolen session or token must not add a way in that outlives a password reset.
        let fresh = by.signed_in_at_ms.is_some_and(|at| self.clock.now_ms() - at <= FRESH_SIGN_IN_MS);
        if !by.session || !fresh {
            return Ok(Err(PasskeyRefusal::SignInAgain));
        }
        let existing = self.store.passkeys_of(&account.id).await?;
        if existing.len() >= MAX_PASSKEYS {
            return Ok(Err(PasskeyRefusal::TooMany));
        }
        let exclude = existing
            .iter()
            .filter_map(|p| serde_json::from_str::<Passkey>(&p.passkey_json).ok())
            .map(|p| p.cred_id().clone())
            .collect();
        let (options, state) = match webauthn.start_passkey_registration(
            self.user_handle(&account.id),
            &account.email,
            &account.email,
            Some(exclude),
        ) {
            Ok(pair) => pair,
            Err(e) => return Ok(Err(PasskeyRefusal::Rejected(e.to_string()))),
        };
        let options = serde_json::to_value(&options).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Ok(self.start_ceremony(CeremonyKind::Register, Some(&account.id), json(&state)?, options).await?))
    }

    /// Finishes adding a passkey with the browser's answer.
    pub async fn passkey_registration_finish(
        &self,
        by: &Operator,
        ceremony_id: &str,
        name: &str,
        credential: serde_json::Value,
        source: Option<IpAddr>,
    ) -> Result<Result<PasskeyInfo, PasskeyRefusal>, AccountsError> {
        let webauthn = relying_party!(self);
        let now = self.clock.now_ms();
        let Some((Some(account_id), state)) =
            self.store.take_ceremony(ceremony_id, CeremonyKind::Register, now).await?
        else {
            return Ok(Err(PasskeyRefusal::InvalidCeremony));
        };
        if by.account_id.as_deref() != Some(account_id.as_str()) {
            return Ok(Err(PasskeyRefusal::InvalidCeremony));
        }
        let state: PasskeyRegistration = parse(&state)?;
        let credential: RegisterPublicKeyCredential = match serde_json::from_value(credential) {
            Ok(c) => c,
            Err(e) => return Ok(Err(PasskeyRefusal::Rejected(format!("not a registration: {e}")))),
        };
        let passkey = match webauthn.finish_passkey_registration(&credential, &state) {
            Ok(p) => p,
            Err(e) => return Ok(Err(PasskeyRefusal::Rejected(e.to_string()))),
        };
        if self.store.passkeys_of(&account_id).await?.len() >= MAX_PASSKEYS {
            return Ok(Err(PasskeyRefusal::TooMany));
        }
        let row = PasskeyRow {
            credential_id: b64(passkey.cred_id()),
            account_id: account_id.clone(),
            name: clean_name(name),
            passkey_json: json(&passkey)?,
            created_at: now,
            last_used_at: None,
        };
        if !self.store.insert_passkey(&row).await? {
            return Ok(Err(PasskeyRefusal::Rejected("this passkey is registered already".into())));
        }
        self.record(by, "passkey_added", &row.credential_id, source).await;
        if let Some(account) = self.store.account(&account_id).await? {
            // The owner is never reset by mail: its way back is recovery on the hub's machine.
            let what_now = if account.role == Role::Owner {
                "recover the owner account now with `hearth setup-token` on the hub's machine: recovery removes \
                 every passkey"
                    .to_owned()
            } else {
                format!("reset your password at {}/forgot now: a reset removes every passkey", self.settings.link_base)
            };
            self.settings.mailer.send_later(crate::mail::Mail {
                to: account.email,
                subject: "A passkey was added to your account".into(),
                body: format!(
                    "A passkey named \"{}\" was added to your Hearth account. If that was not you, {what_now}.\n",
                    row.name
                ),
            });
        }
        Ok(Ok(row.into()))
    }

    /// The account's passkeys.
    pub async fn passkeys(&self, account_id: &str) -> Result<Vec<PasskeyInfo>, StoreError> {
        Ok(self.store.passkeys_of(account_id).await?.into_iter().map(PasskeyInfo::from).collect())
    }

    /// Removes one of the caller's passkeys.
    pub async fn remove_passkey(
        &self,
        by: &Operator,
        id: &str,
        source: Option<IpAddr>,
    ) -> Result<Result<(), PasskeyRefusal>, AccountsError> {
        let Some(account) = by.account_id.as_deref() else { return Ok(Err(PasskeyRefusal::NoSuchPasskey)) };
        let account_row = self.store.account(account).await?;
        let passkeys = self.store.passkeys_of(account).await?;
        if !passkeys.iter().any(|p| p.credential_id == id) {
            return Ok(Err(PasskeyRefusal::NoSuchPasskey));
        }
        // The last credential of a passkey-only account stays: removing it would leave no way in.
        if account_row.is_some_and(|a| a.password_hash == PASSKEY_ONLY) && passkeys.len() == 1 {
            return Ok(Err(PasskeyRefusal::LastCredential));
        }
        if !self.store.delete_passkey(account, id).await? {
            return Ok(Err(PasskeyRefusal::NoSuchPasskey));
        }
        self.record(by, "passkey_removed", id, source).await;
        Ok(Ok(()))
    }

    /// Starts a passkey sign-in: no email is asked for; the browser offers the passkeys it holds for this hub.
    pub async fn passkey_sign_in_start(
        &self,
        source: Option<IpAddr>,
    ) -> Result<Result<Started, PasskeyRefusal>, AccountsError> {
        let webauthn = relying_party!(self);
        if let Some(retry_after_secs) = self.count_passkey_start(source).await? {
            return Ok(Err(PasskeyRefusal::SignUp(super::links::LinkRefusal::Throttled { retry_after_secs })));
        }
        let (options, state) = match webauthn.start_discoverable_authentication() {
            Ok(pair) => pair,
            Err(e) => return Ok(Err(PasskeyRefusal::Rejected(e.to_string()))),
        };
        let options = serde_json::to_value(&options).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Ok(self.start_ceremony(CeremonyKind::SignIn, None, json(&state)?, options).await?))
    }

    /// Finishes a passkey sign-in: a session for the passkey's account. `verify_token`, the token of the link in
    /// a passkey sign-up's mail, confirms that account's email on the way (the mailbox and the passkey together).
    pub async fn passkey_sign_in_finish(
        &self,
        ceremony_id: &str,
        credential: serde_json::Value,
        verify_token: Option<&str>,
        source: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<Result<SignedIn, PasskeyRefusal>, AccountsError> {
        let webauthn = relying_party!(self);
        let now = self.clock.now_ms();
        let Some((_, state)) = self.store.take_ceremony(ceremony_id, CeremonyKind::SignIn, now).await? else {
            return Ok(Err(PasskeyRefusal::InvalidCeremony));
        };
        let state: DiscoverableAuthentication = parse(&state)?;
        let credential: PublicKeyCredential = match serde_json::from_value(credential) {
            Ok(c) => c,
            Err(e) => return Ok(Err(PasskeyRefusal::Rejected(format!("not an assertion: {e}")))),
        };
        let Ok((handle, credential_id)) = webauthn.identify_discoverable_authentication(&credential) else {
            return Ok(Err(PasskeyRefusal::UnknownPasskey));
        };
        let Some(row) = self.store.passkey(&b64(credential_id)).await? else {
            return Ok(Err(PasskeyRefusal::UnknownPasskey));
        };
        let Some(account) = self.store.account(&row.account_id).await?.filter(|a| a.disabled_at.is_none()) else {
            return Ok(Err(PasskeyRefusal::UnknownPasskey));
        };
        if self.user_handle(&account.id) != handle {
            return Ok(Err(PasskeyRefusal::UnknownPasskey));
        }
        let mut passkey: Passkey = parse(&row.passkey_json)?;
        let result = match webauthn.finish_discoverable_authentication_v2(&credential, state, &passkey) {
            Ok(r) => r,
            Err(e) => {
                self.audit(Some(&account.id), "sign_in_refused", None, source, "passkey".into()).await;
                return Ok(Err(PasskeyRefusal::Rejected(e.to_string())));
            }
        };
        passkey.update_credential(&result);
        self.store.passkey_used(&row.credential_id, &json(&passkey)?, now).await?;
        if account.verified_at.is_none() {
            let confirmed = match verify_token {
                Some(token) => self.verify_with_passkey(token, &account.id, source).await?,
                None => false,
            };
            if !confirmed {
                // As for an unknown passkey: nothing tells a stranger that this email was free.
                self.audit(Some(&account.id), "sign_in_unconfirmed", None, source, "passkey".into()).await;
                return Ok(Err(PasskeyRefusal::UnknownPasskey));
            }
        }
        Ok(Ok(self.open_session(&account, source, user_agent, "passkey").await?))
    }

    /// After the right password of an operator with passkeys: the second-factor ceremony, over its passkeys.
    pub(super) async fn second_factor_start(&self, account: &AccountRow) -> Result<SecondFactor, AccountsError> {
        if !matches!(account.role, Role::Owner | Role::Admin | Role::Support) {
            return Ok(SecondFactor::None);
        }
        let rows = self.store.passkeys_of(&account.id).await?;
        if rows.is_empty() {
            return Ok(SecondFactor::None);
        }
        // Fail closed: passkeys the hub cannot check now (reached by an IP address) are no reason to skip them.
        let Some(webauthn) = self.settings.webauthn.as_deref() else { return Ok(SecondFactor::Unavailable) };
        // Fail closed: a passkey that cannot be read is an error, never a sign-in without the second factor.
        let passkeys = rows.iter().map(|p| parse::<Passkey>(&p.passkey_json)).collect::<Result<Vec<_>, _>>()?;
        let (options, state) = webauthn
            .start_passkey_authentication(&passkeys)
            .map_err(|e| AccountsError::Store(StoreError::Corrupt(format!("passkey challenge: {e}"))))?;
        let options = serde_json::to_value(&options).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(SecondFactor::Ask(
            self.start_ceremony(CeremonyKind::SecondFactor, Some(&account.id), json(&state)?, options).await?,
        ))
    }

    /// Finishes an operator's sign-in with the passkey: the session.
    pub async fn second_factor_finish(
        &self,
        ceremony_id: &str,
        credential: serde_json::Value,
        source: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<Result<SignedIn, PasskeyRefusal>, AccountsError> {
        let webauthn = relying_party!(self);
        let now = self.clock.now_ms();
        let Some((Some(account_id), state)) =
            self.store.take_ceremony(ceremony_id, CeremonyKind::SecondFactor, now).await?
        else {
            return Ok(Err(PasskeyRefusal::InvalidCeremony));
        };
        let Some(account) = self.store.account(&account_id).await?.filter(|a| a.disabled_at.is_none()) else {
            return Ok(Err(PasskeyRefusal::InvalidCeremony));
        };
        let state: PasskeyAuthentication = parse(&state)?;
        let credential: PublicKeyCredential = match serde_json::from_value(credential) {
            Ok(c) => c,
            Err(e) => return Ok(Err(PasskeyRefusal::Rejected(format!("not an assertion: {e}")))),
        };
        let result = match webauthn.finish_passkey_authentication(&credential, &state) {
            Ok(r) => r,
            Err(e) => {
                self.audit(Some(&account.id), "second_factor_refused", None, source, String::new()).await;
                return Ok(Err(PasskeyRefusal::Rejected(e.to_string())));
            }
        };
        let id = b64(result.cred_id());
        if let Some(row) = self.store.passkey(&id).await?.filter(|p| p.account_id == account.id) {
            let mut passkey: Passkey = parse(&row.passkey_json)?;
            passkey.update_credential(&result);
            self.store.passkey_used(&id, &json(&passkey)?, now).await?;
        }
        Ok(Ok(self.open_session(&account, source, user_agent, "password and passkey").await?))
    }

    /// A consumer starts signing up with a passkey instead of a password. The same answer whether or not the email
    /// has an account (the difference shows only in the mail).
    pub async fn passkey_sign_up_start(
        &self,
        email: &str,
        source: Option<IpAddr>,
    ) -> Result<Result<Started, PasskeyRefusal>, AccountsError> {
        let webauthn = relying_party!(self);
        use super::links::LinkRefusal;
        if !self.settings.consumer_sign_up {
            return Ok(Err(PasskeyRefusal::SignUp(LinkRefusal::SignUpClosed)));
        }
        if !self.settings.mailer.is_configured() {
            return Ok(Err(PasskeyRefusal::SignUp(LinkRefusal::NoMailer)));
        }
        if let Some(retry_after_secs) = self.count_request("signup", source).await? {
            return Ok(Err(PasskeyRefusal::SignUp(LinkRefusal::Throttled { retry_after_secs })));
        }
        let email = match normalize_email(email) {
            Ok(e) => e,
            Err(super::SetupRefusal::InvalidEmail(why)) => {
                return Ok(Err(PasskeyRefusal::SignUp(LinkRefusal::InvalidEmail(why))));
            }
            Err(_) => return Ok(Err(PasskeyRefusal::SignUp(LinkRefusal::InvalidEmail("not an email address")))),
        };
        let account_id = random_base32(16).map_err(|e| StoreError::Random(e.to_string()))?;
        let (options, registration) =
            match webauthn.start_passkey_registration(self.user_handle(&account_id), &email, &email, None) {
                Ok(pair) => pair,
                Err(e) => return Ok(Err(PasskeyRefusal::Rejected(e.to_string()))),
            };
        let state = json(&SignUpState { account_id, email, registration })?;
        let options = serde_json::to_value(&options).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Ok(self.start_ceremony(CeremonyKind::SignUp, None, state, options).await?))
    }

    /// Finishes a passkey sign-up: the account and its passkey are made (its email to be confirmed by the
    /// mailed link, as with a password), or, for a taken email, a note is mailed. The same answer either way.
    pub async fn passkey_sign_up_finish(
        &self,
        ceremony_id: &str,
        credential: serde_json::Value,
        source: Option<IpAddr>,
    ) -> Result<Result<(), PasskeyRefusal>, AccountsError> {
        let webauthn = relying_party!(self);
        let now = self.clock.now_ms();
        let Some((_, state)) = self.store.take_ceremony(ceremony_id, CeremonyKind::SignUp, now).await? else {
            return Ok(Err(PasskeyRefusal::InvalidCeremony));
        };
        let SignUpState { account_id, email, registration } = parse(&state)?;
        let credential: RegisterPublicKeyCredential = match serde_json::from_value(credential) {
            Ok(c) => c,
            Err(e) => return Ok(Err(PasskeyRefusal::Rejected(format!("not a registration: {e}")))),
        };
        let passkey = match webauthn.finish_passkey_registration(&credential, &registration) {
            Ok(p) => p,
            Err(e) => return Ok(Err(PasskeyRefusal::Rejected(e.to_string()))),
        };
        let account = NewAccount {
            id: &account_id,
            email: &email,
            role: Role::Consumer,
            password_hash: PASSKEY_ONLY,
            created_at: now,
            verified_at: None,
        };
        let row = PasskeyRow {
            credential_id: b64(passkey.cred_id()),
            account_id: account_id.clone(),
            name: "Passkey from sign-up".into(),
            passkey_json: json(&passkey)?,
            created_at: now,
            last_used_at: None,
        };
        if !self.store.create_passkey_account(&account, &row).await? {
            self.mail_taken(&email).await?;
            return Ok(Ok(()));
        }
        self.mail_verification(&account_id, &email).await?;
        self.audit(Some(&account_id), "sign_up", Some(&account_id), source, "with a passkey".into()).await;
        Ok(Ok(()))
    }

    /// The account behind `by`, if any.
    async fn account_of(&self, by: &Operator) -> Result<Option<AccountRow>, StoreError> {
        match &by.account_id {
            Some(id) => self.store.account(id).await,
            None => Ok(None),
        }
    }
}

/// For pages: whether `info`'s account has a passkey-only credential (no password to change).
pub fn passkey_only(account: &AccountRow) -> bool {
    account.password_hash == PASSKEY_ONLY
}
