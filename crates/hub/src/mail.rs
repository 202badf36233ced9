//! Mail to people: email verification, password reset and invitation links. Sent over SMTP with TLS (implicit
//! or STARTTLS, both required; plaintext only to a relay on the loopback interface), or, for development only and
//! under a loudly named setting, written to the log and kept in a small in-memory outbox instead.
//!
//! Sending never happens on a request's own time: [`Mailer::send_later`] hands the mail to a task, so an answer
//! takes as long whether or not a mail went out (no account enumeration through timing), and a slow or broken
//! relay never holds a request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{ConfigError, Mail as MailSettings, SmtpTls};

/// How many mails the development outbox keeps.
const OUTBOX: usize = 100;

/// One mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// Recipient address.
    pub to: String,
    /// Subject.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// Why a mail could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The hub has no way to send mail.
    #[error("mail is not configured: set [mail] in the hub's configuration")]
    NotConfigured,
    /// The address or message could not be built.
    #[error("invalid mail: {0}")]
    Invalid(String),
    /// The relay refused or could not be reached.
    #[error("the SMTP relay failed: {0}")]
    Smtp(String),
}

/// Sends mail to people. Cheap to clone.
#[derive(Clone)]
pub struct Mailer(Arc<Inner>);

enum Inner {
    Smtp { transport: Box<AsyncSmtpTransport<Tokio1Executor>>, from: Mailbox, relay: String },
    DevLog { outbox: Mutex<VecDeque<Mail>> },
    Off,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &*self.0 {
            Inner::Smtp { .. } => "Mailer::Smtp",
            Inner::DevLog { .. } => "Mailer::DevLog",
            Inner::Off => "Mailer::Off",
        })
    }
}

impl Mailer {
    /// The mailer the settings describe: SMTP if `smtp_host` is set, the development log if
    /// `dev_log_links_insecure` is, else none (mail-dependent features then answer that mail is not configured;
    /// the configuration check refuses to start with consumer sign-up on and no mailer).
    pub fn from_settings(settings: &MailSettings) -> Result<Mailer, ConfigError> {
        let invalid = |setting: &'static str, reason: String| ConfigError::Invalid { setting, reason };
        let Some(host) = &settings.smtp_host else {
            if settings.dev_log_links_insecure {
                tracing::warn!(
                    "mail.dev_log_links_insecure is on: verification, reset and invitation links are WRITTEN TO \
                     THE LOG, not mailed; anyone who reads the log can take over accounts. Development only."
                );
                return Ok(Mailer(Arc::new(Inner::DevLog { outbox: Mutex::new(VecDeque::new()) })));
            }
            return Ok(Mailer(Arc::new(Inner::Off)));
        };
        let from: Mailbox = settings
            .from
            .as_deref()
            .ok_or_else(|| invalid("mail.from", "set the sender, like \"Hearth <hearth@example.org>\"".into()))?
            .parse()
            .map_err(|e| invalid("mail.from", format!("not a mail address: {e}")))?;
        let mut tls = TlsParameters::builder(host.clone());
        if let Some(path) = &settings.smtp_ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| invalid("mail.smtp_ca_file", format!("cannot read {}: {e}", path.display())))?;
            let ca = Certificate::from_pem(&pem).map_err(|e| invalid("mail.smtp_ca_file", e.to_string()))?;
            tls = tls.add_root_certificate(ca);
        }
        let tls = tls.build_rustls().map_err(|e| invalid("mail.smtp_host", e.to_string()))?;
        let mode = match settings.smtp_tls {
            SmtpTls::Implicit => Tls::Wrapper(tls),
            SmtpTls::Starttls => Tls::Required(tls),
            SmtpTls::NoneLoopbackOnly => Tls::None,
        };
        let default_port = match settings.smtp_tls {
            SmtpTls::Implicit => 465,
            SmtpTls::Starttls => 587,
            SmtpTls::NoneLoopbackOnly => 25,
        };
        let port = settings.smtp_port.unwrap_or(default_port);
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
            .port(port)
            .tls(mode)
            .timeout(Some(Duration::from_secs(30)));
        if let Some(user) = &settings.smtp_username {
            let path = settings.smtp_password_file.as_ref().ok_or_else(|| {
                invalid("mail.smtp_password_file", "smtp_username needs the password in a file".into())
            })?;
            {
                use std::os::unix::fs::PermissionsExt as _;
                let meta = std::fs::metadata(path)
                    .map_err(|e| invalid("mail.smtp_password_file", format!("cannot read {}: {e}", path.display())))?;
                if meta.permissions().mode() & 0o077 != 0 {
                    return Err(invalid(
                        "mail.smtp_password_file",
                        format!("{} is readable by group or others: chmod 600 it", path.display()),
                    ));
                }
            }
            let password = std::fs::read_to_string(path)
                .map_err(|e| invalid("mail.smtp_password_file", format!("cannot read {}: {e}", path.display())))?;
            builder = builder.credentials(Credentials::new(user.clone(), password.trim_end().to_owned()));
        }
        let relay = format!("{host}:{port}");
        Ok(Mailer(Arc::new(Inner::Smtp { transport: Box::new(builder.build()), from, relay })))
    }

    /// A mailer that sends nothing (mail-dependent features are unavailable).
    pub fn off() -> Mailer {
        Mailer(Arc::new(Inner::Off))
    }

    /// Whether this mailer can deliver mail (SMTP or the development log).
    pub fn is_configured(&self) -> bool {
        !matches!(&*self.0, Inner::Off)
    }

    /// Sends a mail now.
    pub async fn send(&self, mail: Mail) -> Result<(), MailError> {
        match &*self.0 {
            Inner::Off => Err(MailError::NotConfigured),
            Inner::DevLog { outbox } => {
                tracing::warn!(to = %mail.to, subject = %mail.subject, body = %mail.body,
                    "development mail (mail.dev_log_links_insecure): not sent");
                let mut outbox = outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if outbox.len() == OUTBOX {
                    outbox.pop_front();
                }
                outbox.push_back(mail);
                Ok(())
            }
            Inner::Smtp { transport, from, relay } => {
                let to: Mailbox = mail.to.parse().map_err(|e| MailError::Invalid(format!("recipient: {e}")))?;
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(mail.subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(mail.body)
                    .map_err(|e| MailError::Invalid(e.to_string()))?;
                transport.send(message).await.map_err(|e| MailError::Smtp(format!("{relay}: {e}")))?;
                Ok(())
            }
        }
    }

    /// Sends a mail from a task of its own; a failure is logged (without the body: it holds a one-time link).
    pub fn send_later(&self, mail: Mail) {
        let mailer = self.clone();
        tokio::spawn(async move {
            let subject = mail.subject.clone();
            if let Err(e) = mailer.send(mail).await {
                tracing::error!(error = %e, %subject, "could not send a mail");
            }
        });
    }

    /// The development outbox, oldest first (empty unless `mail.dev_log_links_insecure` is on).
    pub fn dev_outbox(&self) -> Vec<Mail> {
        match &*self.0 {
            Inner::DevLog { outbox } => {
                outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().cloned().collect()
            }
            _ => Vec::new(),
        }
    }
}
