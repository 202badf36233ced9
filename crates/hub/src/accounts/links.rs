//! What people do through a link in a mail: a consumer signs up and verifies the email, anyone resets a forgotten
//! password, an invited admin or support person sets a first password. Links carry a random token (only its MAC
//! is stored), work once, and expire: 24 hours to verify, 30 minutes to reset, 72 hours to accept an invitation.
//!
//! None of these answers says whether an email has an account: sign-up and reset answer the same either way (the
//! mail says what happened), and mails go out from a task of their own, so answer times do not tell either.
//! Mails per source network and per address are capped, so nobody can use the hub to flood someone's inbox.

use std::net::IpAddr;

use time::Duration;

use super::{AccountInfo, Accounts, AccountsError, Operator, Role, new_secret, normalize_email, password_context};
use crate::identity::ca::unix_ms;
use crate::mail::Mail;
use crate::secrets::random_base32;
use crate::store::{LinkPurpose, NO_PASSWORD_YET, NewAccount, StoreError};

const LINK: &str = "mail-link";
/// How long a sign-up verification link works.
pub const VERIFY_VALIDITY: Duration = Duration::hours(24);
/// How long a password-reset link works.
pub const RESET_VALIDITY: Duration = Duration::minutes(30);
/// How long an invitation link works.
pub const INVITE_VALIDITY: Duration = Duration::hours(72);
/// Sign-ups (and, counted apart, reset requests) allowed per source network in [`super::THROTTLE_WINDOW`].
const REQUESTS_PER_NETWORK: i64 = 9;
/// Mails allowed to one address in [`super::THROTTLE_WINDOW`].
const MAILS_PER_ADDRESS: i64 = 3;

/// Why a sign-up, reset request, link or invitation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefusal {
    /// Consumer sign-up is turned off on this hub.
    #[error("this hub does not take sign-ups; ask its operator for an account")]
    SignUpClosed,
    /// The hub cannot send mail.
    #[error("this hub cannot send mail; ask its operator")]
    NoMailer,
    /// Not an email address.
    #[error("{0}")]
    InvalidEmail(&'static str),
    /// The password breaks a rule.
    #[error("{0}")]
    Password(#[from] super::password::PasswordRefusal),
    /// Too many requests from this network: retry after this many seconds.
    #[error("too many requests; try again in {retry_after_secs} s")]
    Throttled {
        /// Seconds until the lock ends.
        retry_after_secs: u64,
    },
    /// The link is unknown, used, expired or of another kind.
    #[error("this link is not valid any more; ask for a new one")]
    InvalidLink,
    /// Not the password chosen at sign-up.
    #[error("that is not the password you chose when you signed up")]
    WrongPassword,
    /// An account has this email already (invitations only: operators may know).
    #[error("an account has this email already")]
    EmailTaken,
    /// The caller may not invite or disable this role or account.
    #[error("{0}")]
    Forbidden(&'static str),
}

/// An invitation made: the account, and the link itself when the hub has no mailer (the operator hands it over).
#[derive(Debug)]
pub struct Invited {
    /// The invited account (it can sign in once the invitee sets a password).
    pub account: AccountInfo,
    /// The link, only when it could not be mailed.
    pub link: Option<String>,
}

impl Accounts {
    /// Whether consumers may sign up here (sign-up is on and mail can be sent).
    pub fn sign_up_open(&self) -> bool {
        self.settings.consumer_sign_up && self.settings.mailer.is_configured()
    }

    /// A consumer signs up with email and password. The answer is the same whether or not the email has an
    /// account: a new one gets a verification link by mail (no sign-in before it is followed), a known one a
    /// note that someone tried. Refused, with nothing changed, for an invalid email, a password that breaks a
    /// rule, sign-up closed or too many sign-ups from this network.
    pub async fn sign_up(
        &self,
        email: &str,
        password: &str,
        source: Option<IpAddr>,
    ) -> Result<Result<(), LinkRefusal>, AccountsError> {
        if !self.settings.consumer_sign_up {
            return Ok(Err(LinkRefusal::SignUpClosed));
        }
        if !self.settings.mailer.is_configured() {
            return Ok(Err(LinkRefusal::NoMailer));
        }
        if let Some(retry_after_secs) = self.count_request("signup", source).await? {
            return Ok(Err(LinkRefusal::Throttled { retry_after_secs }));
        }
        let email = match normalize_email(email) {
            Ok(e) => e,
            Err(super::SetupRefusal::InvalidEmail(why)) => return Ok(Err(LinkRefusal::InvalidEmail(why))),
            Err(_) => return Ok(Err(LinkRefusal::InvalidEmail("not an email address"))),
        };
        if let Err(refusal) = super::password::check(password, &password_context(&email)) {
            return Ok(Err(refusal.into()));
        }
        // Hashed either way, so a known email takes as long as a new one.
        let hash = self.hash(password).await?;
        let now = self.clock.now_ms();
        let id = random_base32(16).map_err(|e| StoreError::Random(e.to_string()))?;
        let account = NewAccount {
            id: &id,
            email: &email,
            role: Role::Consumer,
            password_hash: &hash,
            created_at: now,
            verified_at: None,
        };
        if !self.store.insert_account(&account).await? {
            self.mail_taken(&email).await?;
            return Ok(Ok(()));
        }
        self.mail_verification(&id, &email).await?;
        self.audit(Some(&id), "sign_up", Some(&id), source, String::new()).await;
        Ok(Ok(()))
    }

    /// Mails `email`, which has an account, that someone tried to sign up with it (capped per address).
    pub(super) async fn mail_taken(&self, email: &str) -> Result<(), StoreError> {
        // One such note per address in 15 minutes, counted apart from reset mails: sign-ups with someone's
        // address can neither flood it nor use up the owner's own reset mails.
        let keys = [(format!("taken:{email}"), 2)];
        if self.count_attempt(&keys, self.clock.now_ms()).await?.is_none() {
            self.settings.mailer.send_later(Mail {
                to: email.to_owned(),
                subject: "Someone tried to create an account with your address".into(),
                body: format!(
                    "Someone (perhaps you) tried to create a Hearth account with this address, which has one \
                     already. Nothing changed.\n\nIf it was you, sign in at {base}/, or reset your password at \
                     {base}/forgot. If not, you can ignore this mail.\n",
                    base = self.settings.link_base
                ),
            });
        }
        Ok(())
    }

    /// Mails a new account the link that confirms its email.
    pub(super) async fn mail_verification(&self, account_id: &str, email: &str) -> Result<(), StoreError> {
        let link = self.new_link(LinkPurpose::Verify, account_id, VERIFY_VALIDITY).await?;
        self.settings.mailer.send_later(Mail {
            to: email.to_owned(),
            subject: "Confirm your email to finish signing up".into(),
            body: format!(
                "Welcome to Hearth. To finish creating your account, open this link and sign in with the password \
                 (or passkey) you chose:\n\n{link}\n\nThe link works once, for 24 hours. If you did not sign up, \
                 ignore this mail and the account will be removed.\n"
            ),
        });
        Ok(())
    }

    /// Follows a verification link: the account's email is verified and it may sign in.
    ///
    /// The link alone does not confirm: whoever follows it signs in with the password chosen at sign-up (a
    /// passkey sign-up confirms through a passkey sign-in carrying the link's token,
    /// [`Accounts::passkey_sign_in_finish`]). Both the mailbox and the credential are needed, so a stranger who
    /// signed up with someone else's email can never have the owner of that mailbox confirm it for them. Wrong
    /// passwords are throttled as at sign-in. A confirmed email opens a session.
    pub async fn verify_email(
        &self,
        token: &str,
        password: &str,
        source: Option<IpAddr>,
        user_agent: Option<&str>,
    ) -> Result<Result<super::SignedIn, LinkRefusal>, AccountsError> {
        let mac = self.master.token_mac(LINK, token);
        let now = self.clock.now_ms();
        let Some((account_id, LinkPurpose::Verify)) = self.store.mail_link(&mac, now).await? else {
            return Ok(Err(LinkRefusal::InvalidLink));
        };
        let Some(account) = self.store.account(&account_id).await?.filter(|a| a.disabled_at.is_none()) else {
            return Ok(Err(LinkRefusal::InvalidLink));
        };
        let network = source.map(crate::monitoring::source_network).unwrap_or_else(|| "-".into());
        let keys = [(format!("acct:{}|{network}", account.email), super::THROTTLE_FAILURES)];
        if let Some(until) = self.count_attempt(&keys, now).await? {
            return Ok(Err(LinkRefusal::Throttled { retry_after_secs: super::retry_after(until, now) }));
        }
        let stored = if account.password_hash.starts_with('!') {
            super::password::decoy().to_owned()
        } else {
            account.password_hash.clone()
        };
        let no_password = account.password_hash.starts_with('!');
        if !self.verify(password, stored).await? || no_password {
            self.audit(Some(&account.id), "email_verification_refused", None, source, String::new()).await;
            return Ok(Err(LinkRefusal::WrongPassword));
        }
        self.store.clear_login_failures(&keys[0].0).await?;
        if self.store.use_mail_link(&mac, LinkPurpose::Verify, None, now).await?.as_deref() != Some(account.id.as_str())
        {
            return Ok(Err(LinkRefusal::InvalidLink));
        }
        self.audit(Some(&account.id), "email_verified", Some(&account.id), source, String::new()).await;
        Ok(Ok(self.open_session(&account, source, user_agent, "password and the confirmation link").await?))
    }

    /// Confirms a passkey sign-up's email with its link's token, for `account_id` only (the passkey sign-in that
    /// carries it proved the credential). True if confirmed.
    pub(super) async fn verify_with_passkey(
        &self,
        token: &str,
        account_id: &str,
        source: Option<IpAddr>,
    ) -> Result<bool, StoreError> {
        let mac = self.master.token_mac(LINK, token);
        let now = self.clock.now_ms();
        match self.store.mail_link(&mac, now).await? {
            Some((owner, LinkPurpose::Verify)) if owner == account_id => {}
            _ => return Ok(false),
        }
        if self.store.use_mail_link(&mac, LinkPurpose::Verify, None, now).await?.as_deref() != Some(account_id) {
            return Ok(false);
        }
        self.audit(Some(account_id), "email_verified", Some(account_id), source, "with a passkey".into()).await;
        Ok(true)
    }

    /// Someone forgot a password: if `email` has an enabled account other than the owner's, it is mailed a reset
    /// link (at most three mails per address in 15 minutes). The same answer either way.
    pub async fn request_reset(
        &self,
        email: &str,
        source: Option<IpAddr>,
    ) -> Result<Result<(), LinkRefusal>, AccountsError> {
        if !self.settings.mailer.is_configured() {
            return Ok(Err(LinkRefusal::NoMailer));
        }
        if let Some(retry_after_secs) = self.count_request("reset", source).await? {
            return Ok(Err(LinkRefusal::Throttled { retry_after_secs }));
        }
        let Ok(email) = normalize_email(email) else {
            return Ok(Err(LinkRefusal::InvalidEmail("not an email address")));
        };
        // The rest happens after the answer, so its time says nothing about whether the email has an account.
        let accounts = self.clone();
        tokio::spawn(async move {
            if let Err(e) = accounts.mail_reset_link(email, source).await {
                tracing::error!(error = %e, "could not prepare a password-reset mail");
            }
        });
        Ok(Ok(()))
    }

    async fn mail_reset_link(&self, email: String, source: Option<IpAddr>) -> Result<(), StoreError> {
        // The owner recovers with `hearth setup-token` (which needs the data directory), never by mail: whoever
        // reads the owner's mailbox must not get the hub.
        let account = self.store.account_by_email(&email).await?;
        let Some(account) = account.filter(|a| a.disabled_at.is_none() && a.role != Role::Owner) else {
            return Ok(());
        };
        if !self.may_mail(&email).await? {
            return Ok(());
        }
        let link = self.new_link(LinkPurpose::Reset, &account.id, RESET_VALIDITY).await?;
        self.settings.mailer.send_later(Mail {
            to: email,
            subject: "Reset your password".into(),
            body: format!(
                "Someone (perhaps you) asked to reset the password of your Hearth account. Choose a new one \
                                  here:\n\n{link}\n\nThe link works once, for 30 minutes. It signs you out everywhere and removes \
                 your passkeys and API tokens (add them again after). If you did not ask, ignore this mail: your \
                 password stays as it is.\n"
            ),
        });
        self.audit(Some(&account.id), "password_reset_requested", Some(&account.id), source, String::new()).await;
        Ok(())
    }

    /// Sets a new password with a reset or invitation link: the link is used up (with every other reset link
    /// of the account), the email counts as verified, every session ends. A password that breaks a rule is
    /// refused without using the link.
    pub async fn complete_link(
        &self,
        token: &str,
        new_password: &str,
        source: Option<IpAddr>,
    ) -> Result<Result<AccountInfo, LinkRefusal>, AccountsError> {
        let mac = self.master.token_mac(LINK, token);
        let now = self.clock.now_ms();
        let Some((account_id, purpose)) = self.store.mail_link(&mac, now).await? else {
            return Ok(Err(LinkRefusal::InvalidLink));
        };
        let Some(account) = self.store.account(&account_id).await?.filter(|_| purpose != LinkPurpose::Verify) else {
            return Ok(Err(LinkRefusal::InvalidLink));
        };
        if let Err(refusal) = super::password::check(new_password, &password_context(&account.email)) {
            return Ok(Err(refusal.into()));
        }
        let hash = self.hash(new_password).await?;
        if self.store.use_mail_link(&mac, purpose, Some(&hash), self.clock.now_ms()).await?.is_none() {
            return Ok(Err(LinkRefusal::InvalidLink));
        }
        self.store.clear_login_failures_like(&format!("acct:{}|", account.email)).await?;
        let action = if purpose == LinkPurpose::Invite { "invitation_accepted" } else { "password_reset" };
        self.audit(Some(&account.id), action, Some(&account.id), source, String::new()).await;
        Ok(Ok((&account).into()))
    }

    /// What a live link is for, so a page can say "choose your first password" or "choose a new password".
    pub async fn link_purpose(&self, token: &str) -> Result<Option<LinkPurpose>, StoreError> {
        let mac = self.master.token_mac(LINK, token);
        Ok(self.store.mail_link(&mac, self.clock.now_ms()).await?.map(|(_, p)| p))
    }

    /// `by` invites an admin (the owner only) or a support person (owner or admin): the account exists at once
    /// but has no password, so nothing can sign in to it until the invitee follows the mailed link and sets
    /// one. Without a mailer the link comes back to hand over.
    pub async fn invite(
        &self,
        by: &Operator,
        email: &str,
        role: Role,
        source: Option<IpAddr>,
    ) -> Result<Result<Invited, LinkRefusal>, AccountsError> {
        match (by.role, role) {
            (Role::Owner, Role::Admin | Role::Support) | (Role::Admin, Role::Support) => {}
            (Role::Admin, Role::Admin) => return Ok(Err(LinkRefusal::Forbidden("only the owner invites admins"))),
            _ => return Ok(Err(LinkRefusal::Forbidden("operators invite admins and support; consumers sign up"))),
        }
        let email = match normalize_email(email) {
            Ok(e) => e,
            Err(super::SetupRefusal::InvalidEmail(why)) => return Ok(Err(LinkRefusal::InvalidEmail(why))),
            Err(_) => return Ok(Err(LinkRefusal::InvalidEmail("not an email address"))),
        };
        let now = self.clock.now_ms();
        let id = random_base32(16).map_err(|e| StoreError::Random(e.to_string()))?;
        let account = NewAccount {
            id: &id,
            email: &email,
            role,
            password_hash: NO_PASSWORD_YET,
            created_at: now,
            verified_at: None,
        };
        if !self.store.insert_account(&account).await? {
            return Ok(Err(LinkRefusal::EmailTaken));
        }
        let link = self.new_link(LinkPurpose::Invite, &id, INVITE_VALIDITY).await?;
        self.record(by, "account_invited", &id, source).await;
        let info = AccountInfo { id, email: email.clone(), role };
        if !self.settings.mailer.is_configured() {
            return Ok(Ok(Invited { account: info, link: Some(link) }));
        }
        self.settings.mailer.send_later(Mail {
            to: email,
            subject: format!("You are invited to run a Hearth hub as {}", role.as_str()),
            body: format!(
                "You have been given a {} account on a Hearth hub. Choose your password here to start:\n\n{link}\n\n\
                 The link works once, for 72 hours.\n",
                role.as_str()
            ),
        });
        Ok(Ok(Invited { account: info, link: None }))
    }

    /// `by` disables an account: it cannot sign in, its sessions end and its API tokens are revoked. The owner
    /// disables anyone but itself; an admin disables support and consumer accounts.
    pub async fn disable(
        &self,
        by: &Operator,
        account_id: &str,
        source: Option<IpAddr>,
    ) -> Result<Result<(), LinkRefusal>, AccountsError> {
        let Some(target) = self.store.account(account_id).await? else { return Ok(Err(LinkRefusal::InvalidLink)) };
        let allowed = match (by.role, target.role) {
            (_, Role::Owner) => false,
            (Role::Owner, _) => true,
            (Role::Admin, Role::Support | Role::Consumer) => true,
            _ => false,
        };
        if !allowed || by.account_id.as_deref() == Some(account_id) {
            return Ok(Err(LinkRefusal::Forbidden("the owner disables admins; admins disable support and consumers")));
        }
        if !self.store.disable_account(account_id, self.clock.now_ms()).await? {
            return Ok(Err(LinkRefusal::InvalidLink));
        }
        self.record(by, "account_disabled", account_id, source).await;
        Ok(Ok(()))
    }

    /// A new link of `purpose` for `account_id`: stored as a MAC, returned as the URL to mail.
    async fn new_link(&self, purpose: LinkPurpose, account_id: &str, validity: Duration) -> Result<String, StoreError> {
        let (token, _) = new_secret("hml_")?;
        let now = self.clock.now();
        let mac = self.master.token_mac(LINK, token.expose());
        self.store.insert_mail_link(&mac, purpose, account_id, unix_ms(now), unix_ms(now + validity)).await?;
        let page = match purpose {
            LinkPurpose::Verify => "verify",
            LinkPurpose::Reset | LinkPurpose::Invite => "reset",
        };
        Ok(format!("{}/{page}?token={}", self.settings.link_base, token.expose()))
    }

    /// Counts a sign-up or reset request from `source`'s network; the seconds to wait if over the cap.
    pub(super) async fn count_request(&self, what: &str, source: Option<IpAddr>) -> Result<Option<u64>, StoreError> {
        let network = source.map(crate::monitoring::source_network).unwrap_or_else(|| "-".into());
        let now = self.clock.now_ms();
        // `count_attempt` refuses the attempt that reaches its limit: the limit is one more than those allowed.
        let keys = [(format!("{what}src:{network}"), REQUESTS_PER_NETWORK + 1)];
        Ok(self.count_attempt(&keys, now).await?.map(|until| super::retry_after(until, now)))
    }

    /// Whether another mail may go to `email` now (counted).
    async fn may_mail(&self, email: &str) -> Result<bool, StoreError> {
        let keys = [(format!("mailto:{email}"), MAILS_PER_ADDRESS + 1)];
        Ok(self.count_attempt(&keys, self.clock.now_ms()).await?.is_none())
    }
}
