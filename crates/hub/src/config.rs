//! Hub configuration: a TOML file (every setting optional, secure defaults), overridden by command-line flags and
//! environment variables in the CLI. Parsed once into [`Config`]; a bad value is refused at start with a message
//! naming the setting. `hearth.example.toml` at the repository root documents every setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A configuration problem, naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or mistyped setting.
    #[error("configuration file {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (names the setting and line).
        message: String,
    },
    /// A setting has a bad value.
    #[error("setting `{setting}`: {reason}")]
    Invalid {
        /// The setting's dotted name.
        setting: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
}

/// The hub's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the hub keeps its database and keys.
    pub data_dir: PathBuf,
    /// Listening addresses.
    pub listen: Listen,
    /// How devices and people reach the hub.
    pub public: Public,
    /// TLS settings.
    pub tls: Tls,
    /// Device identity settings.
    pub devices: Devices,
    /// MQTT limits.
    pub mqtt: Mqtt,
    /// Secrets.
    pub secrets: Secrets,
    /// HTTPS connection limits.
    pub https: Https,
    /// Telemetry limits and the storage floor.
    pub telemetry: Telemetry,
    /// How long stored data is kept.
    pub retention: Retention,
    /// Operator accounts.
    pub accounts: Accounts,
    /// Mail to people.
    pub mail: Mail,
    /// The database.
    pub store: StoreSettings,
    /// The bus between hub nodes.
    pub bus: BusSettings,
    /// Signed updates.
    pub updates: Updates,
    /// Vulnerability disclosure.
    pub disclosure: Disclosure,
}

/// `[disclosure]`: what `security.txt` and the disclosure policy say, and the report intake's limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Disclosure {
    /// Who makes the product, as the policy names it (`hearth doctor` warns while it is empty).
    pub organisation: String,
    /// Contacts besides the hub's own report form, `mailto:` or `https://` URIs (security.txt `Contact`).
    pub contacts: Vec<String>,
    /// Where the maker's OpenPGP key is, an `https://` URL (security.txt `Encryption`).
    pub encryption_key_url: Option<String>,
    /// Where reporters are thanked, an `https://` URL (security.txt `Acknowledgments`).
    pub acknowledgments_url: Option<String>,
    /// Languages reports may be written in (RFC 5646 tags).
    pub preferred_languages: Vec<String>,
    /// security.txt `Expires` lies this many days ahead (at most 364: the RFC wants less than a year).
    pub expires_days: u32,
    /// The policy promises an acknowledgement within this many days.
    pub acknowledge_days: u32,
    /// …and the status at least this often, days.
    pub status_days: u32,
    /// …and aims at a fix within this many days.
    pub fix_days: u32,
    /// What the policy covers, in plain words.
    pub scope: String,
    /// Reports one source address may send per hour.
    pub reports_per_source_per_hour: u32,
    /// Reports the hub takes per hour in all.
    pub reports_per_hour: u32,
    /// Proof-of-work difficulty, bits (each bit doubles a sender's work).
    pub proof_of_work_bits: u8,
}

impl Default for Disclosure {
    fn default() -> Self {
        Disclosure {
            organisation: String::new(),
            contacts: Vec::new(),
            encryption_key_url: None,
            acknowledgments_url: None,
            preferred_languages: vec!["en".into()],
            expires_days: 180,
            acknowledge_days: 7,
            status_days: 30,
            fix_days: 90,
            scope: "The devices connected to this hub, their software and updates, this hub and its web app and API."
                .into(),
            reports_per_source_per_hour: 5,
            reports_per_hour: 100,
            proof_of_work_bits: 16,
        }
    }
}

/// `[updates]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Updates {
    /// Largest target file (image or SBOM) an operator may upload, MiB.
    pub max_file_mb: u64,
    /// How often a device checks in at the latest, hours (it also checks after every start and when told).
    pub check_hours: u32,
    /// How often a consumer may postpone one update.
    pub max_postpones: u32,
    /// Longest single postponement, days.
    pub max_postpone_days: u32,
    /// A security release is installed at the latest this many days after it was published, postponed or not.
    pub security_deadline_days: u32,
}

impl Default for Updates {
    fn default() -> Self {
        Updates {
            max_file_mb: 1024,
            check_hours: 6,
            max_postpones: 3,
            max_postpone_days: 7,
            security_deadline_days: 14,
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSettings {
    /// `sqlite://PATH` or `postgres://…`; unset: SQLite at `{data_dir}/hearth.db`.
    pub url: Option<String>,
    /// Most connections to PostgreSQL from this node (2 to 1000).
    pub max_connections: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings { url: None, max_connections: 16 }
    }
}

/// `[bus]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct BusSettings {
    /// `nats://host:port` for NATS JetStream between nodes; unset: in-process (one node).
    pub url: Option<String>,
    /// Run on PostgreSQL without a bus, knowing that only one node may then run.
    pub single_node: bool,
}

/// `[https]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Https {
    /// Connections in their TLS handshake from one source address (IPv6: one /64).
    pub max_pending_per_source: usize,
    /// Established connections without a device certificate from one source address.
    pub max_connections_per_source: usize,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Telemetry {
    /// Uplink bytes one device may store per UTC day; more are refused with reason 0x97 (0 = no quota).
    pub max_bytes_per_device_per_day: u64,
    /// Refuse new telemetry while the data directory has less free space than this, MiB (0 = no check).
    pub min_free_disk_mb: u64,
}

/// `[retention]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Days uplinks are kept after they arrive (0 = for ever).
    pub telemetry_days: u32,
    /// Days security events are kept after their last occurrence (1 to 3650).
    pub security_events_days: u32,
    /// Most security-event rows kept; the oldest go first.
    pub max_security_events: u64,
    /// Days audit-log entries are kept (30 to 3650).
    pub audit_days: u32,
}

/// `[accounts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Accounts {
    /// Default lifetime of operator API tokens, days (1 to 397).
    pub operator_token_days: u32,
    /// Consumers may create their own accounts (verified by mail; default on). Needs a mailer (`[mail]`).
    pub consumer_sign_up: bool,
}

/// `[mail]`: how the hub mails people verification, password-reset and invitation links.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mail {
    /// The sender, like `Hearth <hearth@example.org>`.
    pub from: Option<String>,
    /// The SMTP relay's host name (its certificate must name it).
    pub smtp_host: Option<String>,
    /// Its port (default 465 for `implicit`, 587 for `starttls`, 25 for `none_loopback_only`).
    pub smtp_port: Option<u16>,
    /// TLS to the relay: `implicit` (default), `starttls` (required, never skipped), or `none_loopback_only` (a
    /// relay on this machine's loopback interface; refused for any other host).
    pub smtp_tls: SmtpTls,
    /// User name for SMTP authentication (the password is read from `smtp_password_file`).
    pub smtp_username: Option<String>,
    /// File holding the SMTP password.
    pub smtp_password_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for the relay, besides the system's.
    pub smtp_ca_file: Option<PathBuf>,
    /// INSECURE, development only: write mails, with their one-time links, to the log instead of sending them.
    pub dev_log_links_insecure: bool,
}

/// TLS to the SMTP relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// TLS from the first byte (port 465).
    #[default]
    Implicit,
    /// STARTTLS, required (port 587).
    Starttls,
    /// No TLS: only to a relay on the loopback interface.
    NoneLoopbackOnly,
}

impl Default for Https {
    fn default() -> Self {
        let l = crate::transport::https::HttpsLimits::default();
        Https { max_pending_per_source: l.pending.per_source, max_connections_per_source: l.anonymous.per_source }
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry { max_bytes_per_device_per_day: 64 << 20, min_free_disk_mb: 256 }
    }
}

impl Default for Retention {
    fn default() -> Self {
        Retention { telemetry_days: 365, security_events_days: 90, max_security_events: 1_000_000, audit_days: 365 }
    }
}

impl Default for Accounts {
    fn default() -> Self {
        Accounts { operator_token_days: 90, consumer_sign_up: true }
    }
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// HTTPS API and web app (port 0 picks a free port).
    pub https: SocketAddr,
    /// MQTT over TLS for devices.
    pub mqtts: SocketAddr,
    /// Load balancers whose connections start with a PROXY v2 header naming the client (both listeners).
    pub proxy_protocol_from: Vec<std::net::IpAddr>,
}

/// `[public]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Public {
    /// Host names and IP addresses in the hub's server certificate.
    pub hostnames: Vec<String>,
    /// The host devices use for HTTPS and MQTT (default: the first of `hostnames`).
    pub host: Option<String>,
    /// The HTTPS port devices and people use (default: the listening port).
    pub https_port: Option<u16>,
    /// The MQTTS port devices use (default: the listening port).
    pub mqtt_port: Option<u16>,
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Also accept TLS 1.2 (default: TLS 1.3 only).
    pub allow_tls12: bool,
}

/// `[devices]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Devices {
    /// Lifetime of device certificates, days (1 to 397). Devices renew after two thirds.
    pub cert_validity_days: u32,
    /// Lifetime of bootstrap tokens from manufacture, days (1 to 3650).
    pub bootstrap_validity_days: u32,
    /// Days after its certificate expired that a device may still renew it (0 to 397; 0 = never: an operator
    /// re-issues its bootstrap token instead).
    pub expired_renewal_grace_days: u32,
}

/// `[mqtt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    /// Largest inbound packet, bytes (1024 to 1048576).
    pub max_packet_bytes: u32,
    /// Unacknowledged QoS 1 messages per connection (1 to 1024).
    pub receive_maximum: u16,
    /// Subscriptions per session (1 to 64).
    pub max_subscriptions: usize,
    /// Sustained publishes per second per connection (1 to 100000).
    pub publish_rate_per_sec: u32,
    /// Publish burst per connection (at least the rate).
    pub publish_burst: u32,
    /// Largest keep-alive, seconds (10 to 65535); clients asking for 0 or more get this.
    pub max_keep_alive_secs: u16,
    /// Most concurrent device sessions.
    pub max_connections: usize,
    /// Connections in their TLS handshake or before CONNECT from one source address (IPv6: one /64).
    pub max_pending_per_source: usize,
}

/// `[secrets]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Secrets {
    /// A file holding the master key (32 bytes, raw or base64), for example a systemd credential. Default:
    /// `{data_dir}/master.key`, created at first start. `HEARTH_MASTER_KEY` (base64) takes precedence.
    pub master_key_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("hearth-data"),
            listen: Listen::default(),
            public: Public::default(),
            tls: Tls::default(),
            devices: Devices::default(),
            mqtt: Mqtt::default(),
            secrets: Secrets::default(),
            https: Https::default(),
            telemetry: Telemetry::default(),
            retention: Retention::default(),
            accounts: Accounts::default(),
            mail: Mail::default(),
            store: StoreSettings::default(),
            bus: BusSettings::default(),
            updates: Updates::default(),
            disclosure: Disclosure::default(),
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            https: SocketAddr::from(([0, 0, 0, 0], 8443)),
            mqtts: SocketAddr::from(([0, 0, 0, 0], 8883)),
            proxy_protocol_from: Vec::new(),
        }
    }
}

impl Default for Public {
    fn default() -> Self {
        Public {
            hostnames: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            host: None,
            https_port: None,
            mqtt_port: None,
        }
    }
}

impl Default for Devices {
    fn default() -> Self {
        Devices { cert_validity_days: 30, bootstrap_validity_days: 730, expired_renewal_grace_days: 90 }
    }
}

impl Default for Mqtt {
    fn default() -> Self {
        let l = crate::transport::mqtt::MqttLimits::default();
        Mqtt {
            max_packet_bytes: l.max_packet,
            receive_maximum: l.receive_max,
            max_subscriptions: l.max_subscriptions,
            publish_rate_per_sec: l.rate_per_sec,
            publish_burst: l.burst,
            max_keep_alive_secs: l.max_keep_alive,
            max_connections: l.max_connections,
            max_pending_per_source: l.pending.per_source,
        }
    }
}

impl Config {
    /// Where the store is: `store.url`, or SQLite in the data directory.
    pub fn store_url(&self) -> Result<crate::store::StoreUrl, ConfigError> {
        match &self.store.url {
            None => Ok(crate::store::StoreUrl::Sqlite(self.data_dir.join("hearth.db"))),
            Some(url) => crate::store::StoreUrl::parse(url)
                .map_err(|reason| ConfigError::Invalid { setting: "store.url", reason }),
        }
    }

    /// Reads a TOML file and validates it.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        Self::from_toml(&text, &shown)
    }

    /// Parses TOML text (`origin` names it in errors) and validates it.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: origin.to_owned(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value's range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn range<T: PartialOrd + std::fmt::Display>(
            setting: &'static str,
            v: T,
            lo: T,
            hi: T,
        ) -> Result<(), ConfigError> {
            if v < lo || v > hi {
                return Err(ConfigError::Invalid { setting, reason: format!("{v} is outside {lo} to {hi}") });
            }
            Ok(())
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid { setting: "data_dir", reason: "must not be empty".into() });
        }
        let store = self.store_url()?;
        range("store.max_connections", self.store.max_connections, 2, 1000)?;
        range("updates.max_file_mb", self.updates.max_file_mb, 1, 16 * 1024)?;
        range("updates.check_hours", self.updates.check_hours, 1, 24 * 7)?;
        range("updates.max_postpones", self.updates.max_postpones, 0, 10)?;
        range("updates.max_postpone_days", self.updates.max_postpone_days, 1, 30)?;
        range("updates.security_deadline_days", self.updates.security_deadline_days, 1, 90)?;
        self.validate_disclosure()?;
        if let Some(url) = &self.bus.url
            && !(url.starts_with("nats://") || url.starts_with("tls://"))
        {
            return Err(ConfigError::Invalid {
                setting: "bus.url",
                reason: "must start with nats:// or tls:// (NATS with JetStream)".into(),
            });
        }
        if matches!(store, crate::store::StoreUrl::Postgres(_)) && self.bus.url.is_none() && !self.bus.single_node {
            return Err(ConfigError::Invalid {
                setting: "bus.url",
                reason: "a PostgreSQL store is shared by several nodes, which need a bus: set bus.url to \
                         nats://…, or bus.single_node = true if only one node will ever run"
                    .into(),
            });
        }
        if self.public.hostnames.is_empty() {
            return Err(ConfigError::Invalid { setting: "public.hostnames", reason: "name at least one host".into() });
        }
        for h in &self.public.hostnames {
            if h.parse::<std::net::IpAddr>().is_err() && !valid_dns_name(h) {
                return Err(ConfigError::Invalid {
                    setting: "public.hostnames",
                    reason: format!("{h:?} is neither an IP address nor a DNS name"),
                });
            }
        }
        if let Some(host) = &self.public.host
            && !self.public.hostnames.contains(host)
        {
            return Err(ConfigError::Invalid {
                setting: "public.host",
                reason: format!("{host:?} must be one of public.hostnames, or devices cannot verify the hub"),
            });
        }
        if self.public.https_port == Some(0) || self.public.mqtt_port == Some(0) {
            return Err(ConfigError::Invalid {
                setting: "public.https_port / public.mqtt_port",
                reason: "a public port cannot be 0".into(),
            });
        }
        if self.listen.https == self.listen.mqtts && self.listen.https.port() != 0 {
            return Err(ConfigError::Invalid {
                setting: "listen.mqtts",
                reason: "must differ from listen.https".into(),
            });
        }
        range("devices.cert_validity_days", self.devices.cert_validity_days, 1, 397)?;
        range("devices.bootstrap_validity_days", self.devices.bootstrap_validity_days, 1, 3650)?;
        range("mqtt.max_packet_bytes", self.mqtt.max_packet_bytes, 1024, 1 << 20)?;
        range("mqtt.receive_maximum", self.mqtt.receive_maximum, 1, 1024)?;
        range("mqtt.max_subscriptions", self.mqtt.max_subscriptions, 1, 64)?;
        range("mqtt.publish_rate_per_sec", self.mqtt.publish_rate_per_sec, 1, 100_000)?;
        range("mqtt.publish_burst", self.mqtt.publish_burst, self.mqtt.publish_rate_per_sec, 1_000_000)?;
        range("mqtt.max_keep_alive_secs", self.mqtt.max_keep_alive_secs, 10, u16::MAX)?;
        range("mqtt.max_connections", self.mqtt.max_connections, 1, 10_000_000)?;
        range("mqtt.max_pending_per_source", self.mqtt.max_pending_per_source, 1, 100_000)?;
        range("devices.expired_renewal_grace_days", self.devices.expired_renewal_grace_days, 0, 397)?;
        range("https.max_pending_per_source", self.https.max_pending_per_source, 1, 100_000)?;
        range("https.max_connections_per_source", self.https.max_connections_per_source, 1, 100_000)?;
        range("retention.security_events_days", self.retention.security_events_days, 1, 3650)?;
        range("retention.telemetry_days", self.retention.telemetry_days, 0, 36_500)?;
        range("retention.max_security_events", self.retention.max_security_events, 1_000, 1_000_000_000)?;
        range("retention.audit_days", self.retention.audit_days, 30, 3650)?;
        range("accounts.operator_token_days", self.accounts.operator_token_days, 1, 397)?;
        self.validate_mail()?;
        Ok(())
    }

    fn validate_disclosure(&self) -> Result<(), ConfigError> {
        let d = &self.disclosure;
        let invalid = |setting: &'static str, reason: &str| ConfigError::Invalid { setting, reason: reason.into() };
        // A value goes into security.txt as it is: no spaces or control characters, so none can add a field.
        let plain_uri =
            |v: &str| !v.is_empty() && v.len() <= 512 && !v.chars().any(|c| c.is_whitespace() || c.is_control());
        for c in &d.contacts {
            if !plain_uri(c) || !(c.starts_with("mailto:") || c.starts_with("https://") || c.starts_with("tel:")) {
                return Err(invalid("disclosure.contacts", "each a mailto:, https:// or tel: URI without spaces"));
            }
        }
        for (setting, url) in [
            ("disclosure.encryption_key_url", &d.encryption_key_url),
            ("disclosure.acknowledgments_url", &d.acknowledgments_url),
        ] {
            if let Some(u) = url
                && (!plain_uri(u) || !u.starts_with("https://"))
            {
                return Err(invalid(setting, "an https:// URL without spaces"));
            }
        }
        if d.preferred_languages.len() > 20
            || d.preferred_languages
                .iter()
                .any(|l| l.is_empty() || l.len() > 35 || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(invalid("disclosure.preferred_languages", "language tags such as en or de-CH, up to 20"));
        }
        let plain_text = |v: &str, max: usize| v.chars().count() <= max && !v.chars().any(char::is_control);
        if !plain_text(&d.organisation, 200) {
            return Err(invalid("disclosure.organisation", "one line of up to 200 characters"));
        }
        if !plain_text(&d.scope, 2000) {
            return Err(invalid("disclosure.scope", "up to 2000 characters without control characters"));
        }
        let range = |setting: &'static str, v: u32, lo: u32, hi: u32| {
            if v < lo || v > hi {
                Err(ConfigError::Invalid { setting, reason: format!("{v} is outside {lo} to {hi}") })
            } else {
                Ok(())
            }
        };
        range("disclosure.expires_days", d.expires_days, 1, 364)?;
        range("disclosure.acknowledge_days", d.acknowledge_days, 1, 90)?;
        range("disclosure.status_days", d.status_days, 1, 180)?;
        range("disclosure.fix_days", d.fix_days, 1, 365)?;
        range("disclosure.reports_per_source_per_hour", d.reports_per_source_per_hour, 1, 1000)?;
        range("disclosure.reports_per_hour", d.reports_per_hour, 1, 100_000)?;
        range("disclosure.proof_of_work_bits", u32::from(d.proof_of_work_bits), 0, 28)?;
        Ok(())
    }

    fn validate_mail(&self) -> Result<(), ConfigError> {
        let mail = &self.mail;
        match &mail.smtp_host {
            None if self.accounts.consumer_sign_up && !mail.dev_log_links_insecure => {
                return Err(ConfigError::Invalid {
                    setting: "mail.smtp_host",
                    reason: "consumer sign-up (on by default) mails people a link to confirm their address: set \
                             [mail] smtp_host and from (see docs/OPERATOR.md), or accounts.consumer_sign_up = false; \
                             for development only, mail.dev_log_links_insecure = true writes the links to the log"
                        .into(),
                });
            }
            Some(host) if mail.smtp_tls == SmtpTls::NoneLoopbackOnly => {
                let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(ConfigError::Invalid {
                        setting: "mail.smtp_tls",
                        reason: format!(
                            "none_loopback_only sends mail in plaintext: only to a relay on 127.0.0.1 \
                                         or ::1, not {host:?}; use implicit or starttls"
                        ),
                    });
                }
            }
            _ => {}
        }
        if mail.smtp_password_file.is_some() && mail.smtp_username.is_none() {
            return Err(ConfigError::Invalid {
                setting: "mail.smtp_password_file",
                reason: "a password file needs mail.smtp_username".into(),
            });
        }
        if mail.smtp_host.is_some() && mail.dev_log_links_insecure {
            return Err(ConfigError::Invalid {
                setting: "mail.dev_log_links_insecure",
                reason: "set either smtp_host or dev_log_links_insecure, not both".into(),
            });
        }
        Ok(())
    }

    /// The MQTT limits these settings describe.
    pub fn mqtt_limits(&self) -> crate::transport::mqtt::MqttLimits {
        crate::transport::mqtt::MqttLimits {
            max_packet: self.mqtt.max_packet_bytes,
            receive_max: self.mqtt.receive_maximum,
            max_subscriptions: self.mqtt.max_subscriptions,
            rate_per_sec: self.mqtt.publish_rate_per_sec,
            burst: self.mqtt.publish_burst,
            max_keep_alive: self.mqtt.max_keep_alive_secs,
            max_connections: self.mqtt.max_connections,
            proxy_from: self.listen.proxy_protocol_from.clone().into(),
            pending: crate::transport::admission::StageLimits {
                per_source: self.mqtt.max_pending_per_source,
                ..crate::transport::mqtt::MqttLimits::default().pending
            },
            ..Default::default()
        }
    }

    /// The HTTPS limits these settings describe.
    pub fn https_limits(&self) -> crate::transport::https::HttpsLimits {
        let d = crate::transport::https::HttpsLimits::default();
        crate::transport::https::HttpsLimits {
            pending: crate::transport::admission::StageLimits {
                per_source: self.https.max_pending_per_source,
                ..d.pending
            },
            anonymous: crate::transport::admission::StageLimits {
                per_source: self.https.max_connections_per_source,
                ..d.anonymous
            },
            ..d
        }
    }
}

fn valid_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::Mailer;

    fn check(toml: &str, expected_setting: Option<&str>) {
        // A mailer unless the case is about mail or accounts.
        let toml = if toml.contains("[mail]") || toml.contains("[accounts]") {
            toml.to_owned()
        } else {
            format!("{toml}\n[mail]\ndev_log_links_insecure = true\n")
        };
        match (Config::from_toml(&toml, "test.toml"), expected_setting) {
            (Ok(_), None) => {}
            (Err(e), Some(setting)) => {
                assert!(e.to_string().contains(setting), "{e} should name {setting}")
            }
            (got, want) => panic!("{toml}: got {got:?}, expected error naming {want:?}"),
        }
    }

    #[test]
    fn store_and_bus_urls_are_checked_at_start() {
        check("[store]\nurl = \"mysql://h/db\"", Some("store.url"));
        check("[store]\nurl = \"sqlite://\"", Some("store.url"));
        check("[store]\nmax_connections = 1", Some("store.max_connections"));
        check("[store]\nurl = \"postgres://h/db\"", Some("bus.url"));
        check("[store]\nurl = \"postgres://h/db\"\n[bus]\nsingle_node = true", None);
        check("[store]\nurl = \"postgres://h/db\"\n[bus]\nurl = \"nats://127.0.0.1:4222\"", None);
        check("[bus]\nurl = \"http://n:4222\"", Some("bus.url"));
        check("[store]\nurl = \"sqlite:///tmp/x.db\"", None);
        let c = Config::default();
        assert_eq!(c.store_url().expect("default"), crate::store::StoreUrl::Sqlite("hearth-data/hearth.db".into()));
    }

    #[test]
    fn every_setting_in_the_example_file_exists_and_parses() {
        // Uncomment every `#name = value` line: the result must be a valid configuration (unknown names are
        // refused), so the example cannot document a setting that does not exist.
        let example = include_str!("../../../hearth.example.toml");
        let text: String = example
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest)
                    if rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_')) =>
                {
                    format!("{rest}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        // Parsed, not validated: `public.host` shows an example name that is not among the default hostnames.
        let config: Config = toml::from_str(&text).expect("every setting in the example exists");
        assert_eq!(config.retention.telemetry_days, 365);
        assert_eq!(config.devices.expired_renewal_grace_days, 90);
        assert!(text.lines().filter(|l| !l.starts_with('#') && l.contains(" = ")).count() >= 25);
    }

    #[test]
    fn mail_is_required_for_sign_up_and_never_plaintext_off_the_machine() {
        check("", None);
        check("[accounts]\nconsumer_sign_up = true", Some("mail.smtp_host"));
        check("[accounts]\nconsumer_sign_up = false", None);
        check("[mail]\nsmtp_host = \"smtp.example.org\"\nfrom = \"h@example.org\"", None);
        check("[mail]\nsmtp_host = \"smtp.example.org\"\nsmtp_tls = \"none_loopback_only\"", Some("mail.smtp_tls"));
        check("[mail]\nsmtp_host = \"127.0.0.1\"\nsmtp_tls = \"none_loopback_only\"", None);
        check("[mail]\nsmtp_host = \"localhost\"\nsmtp_tls = \"none_loopback_only\"", None);
        check("[mail]\nsmtp_host = \"h.example.org\"\ndev_log_links_insecure = true", Some("dev_log_links"));
        check("[mail]\nsmtp_tls = \"sometimes\"", Some("smtp_tls"));
        // Built: the sender must parse, a password needs its file.
        let mail = |text: &str| Mailer::from_settings(&Config::from_toml(text, "t.toml").expect("valid").mail);
        let err = mail("[mail]\nsmtp_host = \"smtp.example.org\"").expect_err("no sender");
        assert!(err.to_string().contains("mail.from"), "{err}");
        let err = mail("[mail]\nsmtp_host = \"smtp.example.org\"\nfrom = \"not a mailbox\"").expect_err("bad sender");
        assert!(err.to_string().contains("mail.from"), "{err}");
        let err = mail("[mail]\nsmtp_host = \"s.example.org\"\nfrom = \"h@example.org\"\nsmtp_username = \"u\"")
            .expect_err("no password file");
        assert!(err.to_string().contains("smtp_password_file"), "{err}");
        assert!(mail("[mail]\nsmtp_host = \"s.example.org\"\nfrom = \"Hearth <h@example.org>\"").is_ok());
    }

    #[test]
    fn bad_settings_are_named() {
        check("", None);
        check("[mqtt]\nreceive_maximum = 0", Some("mqtt.receive_maximum"));
        check("[devices]\ncert_validity_days = 1000", Some("devices.cert_validity_days"));
        check("[mqtt]\nrecieve_maximum = 5", Some("recieve_maximum"));
        check("[listen]\nhttps = \"not an address\"", Some("https"));
        check("[public]\nhostnames = [\"bad host!\"]", Some("public.hostnames"));
        check("[mqtt]\npublish_rate_per_sec = 100\npublish_burst = 10", Some("mqtt.publish_burst"));
        check("[public]\nhost = \"hub.example\"", Some("public.host"));
        check("[public]\nmqtt_port = 0", Some("public.mqtt_port"));
        check("[retention]\nsecurity_events_days = 0", Some("retention.security_events_days"));
        check("[accounts]\noperator_token_days = 400", Some("accounts.operator_token_days"));
        check("[https]\nmax_pending_per_source = 0", Some("https.max_pending_per_source"));
        check("[devices]\nexpired_renewal_grace_days = 500", Some("devices.expired_renewal_grace_days"));
    }
}
