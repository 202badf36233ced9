//! People: accounts (owner, admin, support, consumer) with passwords that are never default, skippable or weak,
//! the one-time owner-setup token printed at first start, sign-in sessions, API tokens that belong to an account,
//! login throttling without user enumeration, and the audit log (guidelines 1 and 4).
//!
//! There is no default account: the first account, the owner, is made with the setup token and a password the
//! owner chooses, and nothing can sign in before that. Only MACs of tokens and Argon2id hashes of passwords are
//! stored; API tokens expire (90 days by default) and can be listed and revoked.

pub mod links;
pub mod passkeys;
pub mod password;

use std::net::IpAddr;
use std::sync::Arc;

use time::Duration;
use tokio::sync::Semaphore;

use crate::clock::Clock;
use crate::identity::ca::unix_ms;
use crate::secrets::{MasterKey, SecretString, random_base32, random_token};
pub use crate::store::Role;
use crate::store::{AccountRow, AuditRow, NewAccount, NewApiToken, NewWebSession, Store, StoreError};

const SETUP: &str = "setup";
const API: &str = "api";
const SESSION: &str = "session";
const CSRF: &str = "csrf";

/// How long a setup token works.
pub const SETUP_TOKEN_VALIDITY: Duration = Duration::hours(24);
/// Default lifetime of API tokens.
pub const DEFAULT_TOKEN_VALIDITY: Duration = Duration::days(90);
/// Longest lifetime an API token may be given.
pub const MAX_TOKEN_VALIDITY: Duration = Duration::days(397);
/// A sign-in session ends this long after sign-in, whatever its use.
pub const SESSION_ABSOLUTE: Duration = Duration::hours(12);
/// A sign-in session ends after this long unused.
pub const SESSION_IDLE: Duration = Duration::minutes(30);
/// Failed sign-ins counted per account and per source network within [`THROTTLE_WINDOW`] before a lock.
pub const THROTTLE_FAILURES: i64 = 5;
/// The window failures are counted in, and how long a lock lasts.
pub const THROTTLE_WINDOW: Duration = Duration::minutes(15);
/// Password hashes computed at once (each takes 19 MiB and tens of milliseconds): more wait, then are refused.
const HASHING_AT_ONCE: usize = 2;

/// The accounts capability.
#[derive(Debug, Clone)]
pub struct Accounts {
    store: Store,
    master: Arc<MasterKey>,
    clock: Clock,
    settings: Arc<AccountSettings>,
    hashing: Arc<Semaphore>,
}

/// How the accounts capability behaves.
#[derive(Debug, Clone)]
pub struct AccountSettings {
    /// API tokens get this lifetime unless asked for less.
    pub token_validity: Duration,
    /// Consumers may sign up themselves.
    pub consumer_sign_up: bool,
    /// Sends verification, reset and invitation links.
    pub mailer: crate::mail::Mailer,
    /// The hub's public HTTPS URL, which mailed links start with.
    pub link_base: String,
    /// The WebAuthn relying party (None: the hub is reached by an IP address, and passkeys are off).
    pub webauthn: Option<Arc<webauthn_rs::Webauthn>>,
}

impl AccountSettings {
    /// Settings for a tool that only mints tokens (`hearth setup-token`): no mail, no sign-up.
    pub fn offline(token_validity: Duration) -> Self {
        AccountSettings {
            token_validity,
            consumer_sign_up: false,
            mailer: crate::mail::Mailer::off(),
            link_base: String::new(),
            webauthn: None,
        }
    }
}

/// The authenticated caller of an API request: an account (or, for an API token minted before accounts existed,
/// the owner), through an API token or a sign-in session.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The id of the API token or the sign-in session used.
    pub token_id: String,
    /// When that token or session ends (None: an API token from before tokens expired).
    pub expires_at_ms: Option<i64>,
    /// The account (None: an API token minted by an older hub's setup, which stands for the owner).
    pub account_id: Option<String>,
    /// The account's role.
    pub role: Role,
    /// Through a sign-in session (a browser: unsafe methods need the CSRF token).
    pub session: bool,
    /// When the session signed in, Unix ms (None: an API token). Adding a passkey needs a recent sign-in.
    pub signed_in_at_ms: Option<i64>,
}

/// Why a bearer token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No live token has this value.
    Invalid,
    /// The token expired.
    Expired,
}

/// An API token as listed (never its value).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// Id.
    pub id: String,
    /// Label.
    pub label: String,
    /// Created, Unix ms.
    pub created_at_ms: i64,
    /// Expires, Unix ms.
    pub expires_at_ms: i64,
    /// Revoked, Unix ms.
    pub revoked_at_ms: Option<i64>,
}

/// A new API token: its value is shown once.
#[derive(Debug)]
pub struct NewToken {
    /// Id (to list and revoke it).
    pub id: String,
    /// The value.
    pub token: SecretString,
    /// Expires, Unix ms.
    pub expires_at_ms: i64,
}

/// Failures of the capability that are not the caller's.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing failed (no randomness).
    #[error(transparent)]
    Hashing(#[from] password::HashError),
    /// Too many password hashes wanted at once: retry shortly.
    #[error("too many sign-ins at once; retry in a moment")]
    Busy,
}

/// Why owner setup was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupRefusal {
    /// The setup token is unknown, used or expired (or an owner exists).
    #[error("the setup token is unknown, already used or expired")]
    InvalidToken,
    /// Not an email address.
    #[error("{0}")]
    InvalidEmail(&'static str),
    /// The password breaks a rule.
    #[error("{0}")]
    Password(#[from] password::PasswordRefusal),
}

/// Why a sign-in was refused. The same answer for an unknown email and a wrong password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInRefusal {
    /// Unknown email or wrong password.
    Invalid,
    /// Too many failures from this account or source: retry after this many seconds (also with the right password).
    Throttled {
        /// Seconds until the lock ends.
        retry_after_secs: u64,
    },
    /// An operator's passkeys cannot be checked (the hub is reached by an IP address now): refused, never
    /// signed in without the second factor.
    SecondFactorUnavailable,
}

/// What the right password leads to.
#[derive(Debug)]
pub enum SignInOutcome {
    /// Signed in.
    Session(SignedIn),
    /// An operator with a passkey: confirm with it ([`Accounts::second_factor_finish`]) to get the session.
    SecondFactor(passkeys::Started),
}

/// A sign-in that succeeded: the session token goes into a cookie, the CSRF token into the page or the client.
#[derive(Debug)]
pub struct SignedIn {
    /// The account.
    pub account: AccountInfo,
    /// The session token (cookie value); shown once.
    pub session_token: SecretString,
    /// The CSRF token that unsafe requests with this session must carry.
    pub csrf_token: String,
    /// The session's absolute end, Unix ms.
    pub expires_at_ms: i64,
}

/// What a client may know of an account.
#[derive(Debug, Clone)]
pub struct AccountInfo {
    /// Id.
    pub id: String,
    /// Email.
    pub email: String,
    /// Role.
    pub role: Role,
}

impl From<&AccountRow> for AccountInfo {
    fn from(a: &AccountRow) -> Self {
        AccountInfo { id: a.id.clone(), email: a.email.clone(), role: a.role }
    }
}

/// The email as stored (trimmed, lower case), if it looks like one.
pub fn normalize_email(raw: &str) -> Result<String, SetupRefusal> {
    let email = raw.trim().to_lowercase();
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err(SetupRefusal::InvalidEmail("an email address has an @"));
    };
    if email.len() > 254 || local.is_empty() || local.len() > 64 {
        return Err(SetupRefusal::InvalidEmail("an email address is at most 254 characters, 64 before the @"));
    }
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
        return Err(SetupRefusal::InvalidEmail("the part after the @ must be a domain, like example.org"));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ',' | ';')) {
        return Err(SetupRefusal::InvalidEmail("an email address has no spaces or <>\",;"));
    }
    Ok(email)
}

impl Accounts {
    /// Builds the capability.
    pub fn new(store: Store, master: Arc<MasterKey>, clock: Clock, settings: AccountSettings) -> Self {
        // The decoy hash is made now, off the async threads, not by the first sign-in with an unknown email.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn_blocking(|| password::decoy().len());
        }
        Accounts {
            store,
            master,
            clock,
            settings: Arc::new(settings),
            hashing: Arc::new(Semaphore::new(HASHING_AT_ONCE)),
        }
    }

    /// The mailer (tests and the demo read the development outbox).
    pub fn mailer(&self) -> &crate::mail::Mailer {
        &self.settings.mailer
    }

    /// If the hub has no owner yet, replaces any earlier setup token with a new one and returns it (to be printed
    /// once). Returns `None` once the hub has an owner (or an API token from an older hub's setup): then only
    /// `hearth setup-token`, run with access to the data directory, issues a new one.
    pub async fn setup_token_if_needed(&self) -> Result<Option<SecretString>, StoreError> {
        if self.store.owner_exists().await? || self.store.api_tokens_ever().await? > 0 {
            return Ok(None);
        }
        self.issue_setup_token().await.map(Some)
    }

    /// Issues a new setup token (replacing any earlier one), also when an owner exists: the recovery path for a
    /// lost owner password, open only to someone who can read the data directory and the master key.
    pub async fn issue_setup_token(&self) -> Result<SecretString, StoreError> {
        let token = random_token("hst_", 32).map_err(|e| StoreError::Random(e.to_string()))?;
        let expires = unix_ms(self.clock.now() + SETUP_TOKEN_VALIDITY);
        self.store.replace_setup_token(&self.master.token_mac(SETUP, token.expose()), expires).await?;
        Ok(token)
    }

    /// Creates the owner account with the setup token, `email` and a password the owner chose, and returns the
    /// owner's first API token (labelled `label`). Refused, with nothing changed, for a dead setup token, an invalid
    /// email or a password that breaks a rule. The setup token is checked before any password work.
    ///
    /// Once an owner exists, a setup token (issued by `hearth setup-token` from the data directory) is the
    /// recovery path: with the owner's email it sets a new password, ends the owner's sessions and mints a new
    /// API token; with any other email it is refused.
    pub async fn setup_owner(
        &self,
        setup_token: &str,
        email: &str,
        password: &str,
        label: &str,
        source: Option<IpAddr>,
    ) -> Result<Result<(AccountInfo, NewToken), SetupRefusal>, AccountsError> {
        let setup_mac = self.master.token_mac(SETUP, setup_token);
        let now = self.clock.now();
        if !self.store.setup_token_usable(&setup_mac, unix_ms(now)).await? {
            return Ok(Err(SetupRefusal::InvalidToken));
        }
        let email = match normalize_email(email) {
            Ok(e) => e,
            Err(refusal) => return Ok(Err(refusal)),
        };
        if let Err(refusal) = password::check(password, &password_context(&email)) {
            return Ok(Err(refusal.into()));
        }
        let hash = self.hash(password).await?;
        if self.store.owner_exists().await? {
            return self.recover_owner(&setup_mac, &email, &hash, label, source).await;
        }
        let id = random_base32(16).map_err(|e| StoreError::Random(e.to_string()))?;
        let at = unix_ms(now);
        let account = NewAccount {
            id: &id,
            email: &email,
            role: Role::Owner,
            password_hash: &hash,
            created_at: at,
            verified_at: Some(at),
        };
        let (token, token_id) = new_secret("hop_")?;
        let expires_at = unix_ms(now + self.settings.token_validity);
        let api_token = NewApiToken {
            id: &token_id,
            mac: &self.master.token_mac(API, token.expose()),
            label,
            created_at: unix_ms(now),
            expires_at,
            account_id: Some(&id),
        };
        if !self.store.create_owner(&setup_mac, &account, &api_token).await? {
            return Ok(Err(SetupRefusal::InvalidToken));
        }
        self.audit(Some(&id), "owner_setup", Some(&id), source, String::new()).await;
        let info = AccountInfo { id: id.clone(), email, role: Role::Owner };
        Ok(Ok((info, NewToken { id: token_id, token, expires_at_ms: expires_at })))
    }

    async fn recover_owner(
        &self,
        setup_mac: &[u8],
        email: &str,
        hash: &str,
        label: &str,
        source: Option<IpAddr>,
    ) -> Result<Result<(AccountInfo, NewToken), SetupRefusal>, AccountsError> {
        let now = self.clock.now();
        let owner = self.store.account_by_email(email).await?.filter(|a| a.role == Role::Owner);
        let Some(owner) = owner else {
            self.audit(None, "owner_recovery_refused", None, source, String::new()).await;
            return Ok(Err(SetupRefusal::InvalidToken));
        };
        if !self.store.use_setup_token(setup_mac, unix_ms(now)).await? {
            return Ok(Err(SetupRefusal::InvalidToken));
        }
        self.store.set_password(&owner.id, hash, unix_ms(now)).await?;
        // Whoever had the owner's access loses it: every API token of the owner goes, and the sign-in counters
        // of the owner's email are cleared.
        let revoked = self.store.revoke_api_tokens_of(&owner.id, unix_ms(now)).await?;
        self.store.clear_login_failures_like(&format!("acct:{email}|")).await?;
        let by = Operator {
            token_id: String::new(),
            expires_at_ms: None,
            account_id: Some(owner.id.clone()),
            role: Role::Owner,
            session: false,
            signed_in_at_ms: None,
        };
        // Passkeys too: one an intruder added would be the owner's second factor from now on.
        let passkeys = self.store.delete_passkeys_of(&owner.id).await?;
        let token = self.create_token(&by, label, None).await?;
        self.audit(
            Some(&owner.id),
            "owner_recovered",
            Some(&owner.id),
            source,
            format!("{revoked} API tokens and {passkeys} passkeys removed"),
        )
        .await;
        Ok(Ok(((&owner).into(), token)))
    }

    /// Signs in with email and password. Every attempt is counted before any password work, under the account
    /// as seen from this source network (a lock after [`THROTTLE_FAILURES`] within [`THROTTLE_WINDOW`]) and under
    /// the source network (after four times as many, for a shared NAT); a lock lasts [`THROTTLE_WINDOW`] and while
    /// it holds even the right password is refused. Counting per account *and source* means nobody elsewhere can
    /// lock the owner out. An unknown email costs the same work as a wrong password and gets the same answer.
    pub async fn sign_in(
        &self,
        email: &str,
        password: &str,
        source: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<Result<SignInOutcome, SignInRefusal>, AccountsError> {
        let raw = email.trim().to_lowercase();
        // Control characters never match an account (and no database column takes NUL); keys keep the rest.
        let plain = !raw.chars().any(char::is_control) && raw.len() <= 254;
        let email: String = raw.chars().filter(|c| !c.is_control()).take(254).collect();
        let now = self.clock.now_ms();
        let network = source.map(crate::monitoring::source_network).unwrap_or_else(|| "-".into());
        let keys =
            [(format!("acct:{email}|{network}"), THROTTLE_FAILURES), (format!("src:{network}"), 4 * THROTTLE_FAILURES)];
        if let Some(until) = self.count_attempt(&keys, now).await? {
            return Ok(Err(SignInRefusal::Throttled { retry_after_secs: retry_after(until, now) }));
        }
        let account = if plain { self.store.account_by_email(&email).await? } else { None };
        // Disabled accounts, and those without a password (invited, passkey only) are checked against the decoy
        // like unknown emails: the same work, the same answer.
        let account = account.filter(|a| a.disabled_at.is_none() && !a.password_hash.starts_with('!'));
        let stored = account.as_ref().map_or(password::decoy(), |a| a.password_hash.as_str()).to_owned();
        let matches = self.verify(password, stored).await? && account.is_some();
        let Some(account) = account.filter(|_| matches) else {
            if let Some(known) = self.store.account_by_email(&email).await?.filter(|_| plain) {
                self.audit(Some(&known.id), "sign_in_refused", None, source, String::new()).await;
            }
            return Ok(Err(SignInRefusal::Invalid));
        };
        if account.verified_at.is_none() {
            // A sign-up not yet confirmed answers like a wrong password: the answer must not tell a stranger who
            // signed up with someone else's email that the email was free. (The confirmation link itself signs
            // in: `verify_email`.)
            self.audit(Some(&account.id), "sign_in_unconfirmed", None, source, String::new()).await;
            return Ok(Err(SignInRefusal::Invalid));
        }
        // A success is no failure: the account's count here is cleared, the source's given back.
        self.store.clear_login_failures(&keys[0].0).await?;
        self.store.forgive_login_failure(&keys[1].0).await?;
        // An operator with a passkey confirms with it: no session until then.
        match self.second_factor_start(&account).await? {
            passkeys::SecondFactor::None => {}
            passkeys::SecondFactor::Ask(started) => {
                self.audit(Some(&account.id), "second_factor_asked", None, source, String::new()).await;
                return Ok(Ok(SignInOutcome::SecondFactor(started)));
            }
            passkeys::SecondFactor::Unavailable => {
                self.audit(Some(&account.id), "second_factor_unavailable", None, source, String::new()).await;
                return Ok(Err(SignInRefusal::SecondFactorUnavailable));
            }
        }
        Ok(Ok(SignInOutcome::Session(self.open_session(&account, source, user_agent, "password").await?)))
    }

    /// Opens a sign-in session for `account` (signed in by `how`), audited.
    async fn open_session(
        &self,
        account: &AccountRow,
        source: Option<IpAddr>,
        user_agent: Option<&str>,
        how: &str,
    ) -> Result<SignedIn, StoreError> {
        let now = self.clock.now_ms();
        let (token, id) = new_secret("hss_")?;
        let expires_at = now + SESSION_ABSOLUTE.whole_milliseconds() as i64;
        let agent: Option<String> = user_agent.map(|a| a.chars().filter(|c| !c.is_control()).take(200).collect());
        self.store
            .insert_web_session(&NewWebSession {
                id: &id,
                mac: &self.master.token_mac(SESSION, token.expose()),
                account_id: &account.id,
                created_at: now,
                expires_at,
                source: source.map(crate::monitoring::source_network).as_deref(),
                user_agent: agent.as_deref(),
            })
            .await?;
        self.audit(Some(&account.id), "sign_in", Some(&id), source, format!("with {how}")).await;
        let csrf_token = self.csrf_token(token.expose());
        Ok(SignedIn { account: account.into(), session_token: token, csrf_token, expires_at_ms: expires_at })
    }

    /// Counts a claim attempt of `account_id` from `source` (10 per account and 20 per source network in
    /// [`THROTTLE_WINDOW`]); if a lock holds or this attempt sets one, the seconds until it ends.
    pub async fn count_claim_attempt(
        &self,
        account_id: &str,
        source: Option<IpAddr>,
    ) -> Result<Option<u64>, StoreError> {
        let network = source.map(crate::monitoring::source_network).unwrap_or_else(|| "-".into());
        let keys = [
            (format!("claim:{account_id}"), 2 * THROTTLE_FAILURES),
            (format!("claimsrc:{network}"), 4 * THROTTLE_FAILURES),
        ];
        let now = self.clock.now_ms();
        Ok(self.count_attempt(&keys, now).await?.map(|until| retry_after(until, now)))
    }

    /// A claim succeeded: it is not held against the account or its network.
    pub async fn claim_succeeded(&self, account_id: &str, source: Option<IpAddr>) -> Result<(), StoreError> {
        let network = source.map(crate::monitoring::source_network).unwrap_or_else(|| "-".into());
        self.store.forgive_login_failure(&format!("claim:{account_id}")).await?;
        self.store.forgive_login_failure(&format!("claimsrc:{network}")).await
    }

    /// Counts an attempt under each key (with its limit) before any password work: the lock, if one holds or
    /// this attempt sets one. Counting first means parallel attempts cannot all slip in before the first
    /// failure is recorded.
    async fn count_attempt(&self, keys: &[(String, i64)], now: i64) -> Result<Option<i64>, StoreError> {
        for (key, _) in keys {
            if let Some(until) = self.store.login_lock(key, now).await? {
                return Ok(Some(until));
            }
        }
        let window = THROTTLE_WINDOW.whole_milliseconds() as i64;
        let mut locked = None;
        for (key, max) in keys {
            // The attempt that reaches the limit is refused too: `max - 1` attempts are judged per window.
            locked = locked.max(self.store.record_login_failure(key, now, window, *max, window).await?);
        }
        Ok(locked)
    }

    /// The caller behind a session cookie, if the session is live.
    pub async fn session(&self, token: &str) -> Result<Option<(Operator, AccountInfo)>, StoreError> {
        let mac = self.master.token_mac(SESSION, token);
        let idle = SESSION_IDLE.whole_milliseconds() as i64;
        let Some((session, account)) = self.store.web_session(&mac, self.clock.now_ms(), idle).await? else {
            return Ok(None);
        };
        let caller = Operator {
            token_id: session.id,
            expires_at_ms: Some(session.expires_at),
            account_id: Some(account.id.clone()),
            role: account.role,
            session: true,
            signed_in_at_ms: Some(session.created_at),
        };
        Ok(Some((caller, (&account).into())))
    }

    /// The CSRF token of a session: a MAC of its token, so it needs no storage and dies with the session.
    pub fn csrf_token(&self, session_token: &str) -> String {
        self.master.token_mac(CSRF, session_token).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `presented` is the CSRF token of `session_token` (compared in constant time).
    pub fn csrf_ok(&self, session_token: &str, presented: &str) -> bool {
        let expected = self.csrf_token(session_token);
        expected.len() == presented.len()
            && expected.bytes().zip(presented.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// Ends one of the account's sessions.
    pub async fn end_session(
        &self,
        account_id: &str,
        session_id: &str,
        source: Option<IpAddr>,
    ) -> Result<bool, StoreError> {
        let ended = self.store.revoke_web_session(account_id, session_id, self.clock.now_ms()).await?;
        if ended {
            self.audit(Some(account_id), "sign_out", Some(session_id), source, String::new()).await;
        }
        Ok(ended)
    }

    /// Ends every session of the account; returns how many.
    pub async fn end_all_sessions(&self, account_id: &str, source: Option<IpAddr>) -> Result<u64, StoreError> {
        let n = self.store.revoke_web_sessions_of(account_id, self.clock.now_ms()).await?;
        self.audit(Some(account_id), "sign_out_everywhere", None, source, format!("{n} sessions")).await;
        Ok(n)
    }

    /// The account's live sessions, newest first.
    pub async fn sessions(&self, account_id: &str) -> Result<Vec<crate::store::WebSessionRow>, StoreError> {
        self.store.web_sessions_of(account_id, self.clock.now_ms(), SESSION_IDLE.whole_milliseconds() as i64).await
    }

    /// Changes the account's password (the current one must be given); every session of the account ends.
    pub async fn change_password(
        &self,
        account_id: &str,
        current: &str,
        new: &str,
        source: Option<IpAddr>,
    ) -> Result<Result<(), ChangeRefusal>, AccountsError> {
        let Some(account) = self.store.account(account_id).await? else {
            return Ok(Err(ChangeRefusal::WrongPassword));
        };
        // Guessing the current password here is throttled like signing in.
        let now = self.clock.now_ms();
        let key = [(format!("pw:{account_id}"), THROTTLE_FAILURES)];
        if let Some(until) = self.count_attempt(&key, now).await? {
            return Ok(Err(ChangeRefusal::Throttled { retry_after_secs: retry_after(until, now) }));
        }
        if !self.verify(current, account.password_hash.clone()).await? {
            self.audit(Some(account_id), "password_change_refused", None, source, String::new()).await;
            return Ok(Err(ChangeRefusal::WrongPassword));
        }
        self.store.clear_login_failures(&key[0].0).await?;
        if let Err(refusal) = password::check(new, &password_context(&account.email)) {
            return Ok(Err(ChangeRefusal::Password(refusal)));
        }
        let hash = self.hash(new).await?;
        self.store.set_password(account_id, &hash, self.clock.now_ms()).await?;
        self.audit(Some(account_id), "password_changed", None, source, String::new()).await;
        Ok(Ok(()))
    }

    /// Authenticates an API token.
    pub async fn authenticate(&self, bearer: &str) -> Result<Result<Operator, TokenRefusal>, StoreError> {
        let Some((token_id, expires_at, account_id)) =
            self.store.api_token(&self.master.token_mac(API, bearer)).await?
        else {
            return Ok(Err(TokenRefusal::Invalid));
        };
        if expires_at.is_some_and(|t| t <= self.clock.now_ms()) {
            return Ok(Err(TokenRefusal::Expired));
        }
        let role = match &account_id {
            None => Role::Owner,
            Some(id) => match self.store.account(id).await? {
                Some(a) if a.disabled_at.is_none() => a.role,
                _ => return Ok(Err(TokenRefusal::Invalid)),
            },
        };
        Ok(Ok(Operator {
            token_id,
            expires_at_ms: expires_at,
            account_id,
            role,
            session: false,
            signed_in_at_ms: None,
        }))
    }

    /// Creates an API token for `by`'s account, valid for `validity` (at most [`MAX_TOKEN_VALIDITY`]; default the
    /// hub's), and never beyond `by`'s own token or session: a stolen token cannot mint itself a longer life.
    pub async fn create_token(
        &self,
        by: &Operator,
        label: &str,
        validity: Option<Duration>,
    ) -> Result<NewToken, StoreError> {
        let validity = validity.unwrap_or(self.settings.token_validity).min(MAX_TOKEN_VALIDITY);
        let (token, id) = new_secret("hop_")?;
        let now = self.clock.now();
        let expires_at = by.expires_at_ms.map_or(unix_ms(now + validity), |cap| cap.min(unix_ms(now + validity)));
        self.store
            .insert_api_token(&NewApiToken {
                id: &id,
                mac: &self.master.token_mac(API, token.expose()),
                label,
                created_at: unix_ms(now),
                expires_at,
                account_id: by.account_id.as_deref(),
            })
            .await?;
        Ok(NewToken { id, token, expires_at_ms: expires_at })
    }

    /// Every API token, newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        self.store.api_tokens().await
    }

    /// Revokes a token. False if there is no such live token.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.store.revoke_api_token(id, self.clock.now_ms()).await
    }

    /// Records an action `by` took on `target` in the audit log (token and device changes, for example).
    pub async fn record(&self, by: &Operator, action: &str, target: &str, source: Option<IpAddr>) {
        let via = if by.session { "session" } else { "API token" };
        self.audit(by.account_id.as_deref(), action, Some(target), source, format!("by {via} {}", by.token_id)).await;
    }

    /// The newest audit entries.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditRow>, StoreError> {
        self.store.audit_log(limit).await
    }

    /// Appends to the audit log; a failure is logged, never fatal to the action it records.
    async fn audit(
        &self,
        account: Option<&str>,
        action: &str,
        target: Option<&str>,
        source: Option<IpAddr>,
        detail: String,
    ) {
        let entry = AuditRow {
            at: self.clock.now_ms(),
            account_id: account.map(str::to_owned),
            action: action.to_owned(),
            target: target.map(str::to_owned),
            source: source.map(crate::monitoring::source_network),
            detail,
        };
        if let Err(e) = self.store.audit(&entry).await {
            tracing::warn!(error = %e, action, "could not write the audit log");
        }
    }

    async fn hash(&self, password: &str) -> Result<String, AccountsError> {
        let _permit = self.permit().await?;
        let password = zeroize::Zeroizing::new(password.to_owned());
        tokio::task::spawn_blocking(move || password::hash(&password))
            .await
            .map_err(|e| AccountsError::Hashing(password::HashError::new(e.to_string())))?
            .map_err(AccountsError::from)
    }

    async fn verify(&self, password: &str, stored: String) -> Result<bool, AccountsError> {
        let _permit = self.permit().await?;
        let password = zeroize::Zeroizing::new(password.to_owned());
        tokio::task::spawn_blocking(move || password::verify(&password, &stored))
            .await
            .map_err(|e| AccountsError::Hashing(password::HashError::new(e.to_string())))
    }

    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, AccountsError> {
        tokio::time::timeout(std::time::Duration::from_secs(5), self.hashing.clone().acquire_owned())
            .await
            .map_err(|_| AccountsError::Busy)?
            .map_err(|_| AccountsError::Busy)
    }
}

/// Why a password change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeRefusal {
    /// The current password is wrong.
    #[error("the current password is not right")]
    WrongPassword,
    /// Too many wrong current passwords: retry after this many seconds.
    #[error("too many wrong passwords; try again in {retry_after_secs} s")]
    Throttled {
        /// Seconds until the lock ends.
        retry_after_secs: u64,
    },
    /// The new one breaks a rule.
    #[error("{0}")]
    Password(password::PasswordRefusal),
}

/// What a password of the account with `email` must not be built from.
fn password_context(email: &str) -> password::Context<'_> {
    password::Context { email, products: &["hearth"], device_ids: &[] }
}

/// A new random token with `prefix`, and a new id.
fn new_secret(prefix: &str) -> Result<(SecretString, String), StoreError> {
    let token = random_token(prefix, 32).map_err(|e| StoreError::Random(e.to_string()))?;
    let id = random_base32(12).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok((token, id))
}

fn retry_after(until: i64, now: i64) -> u64 {
    u64::try_from((until - now + 999) / 1000).unwrap_or(1).max(1)
}
