//! `hearth doctor`: what a deployment should fix or know, from its configuration and data directory (and, when
//! the CLI is given the hub's address, from what the hub serves). Each finding names the setting and what to do.
//! Errors stop a hub from starting or break a promise the product makes; warnings weaken it.

use std::os::unix::fs::PermissionsExt as _;

use crate::Config;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine, said so that the report shows what was checked.
    Ok,
    /// Weaker than it should be.
    Warn,
    /// Broken.
    Error,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How serious.
    pub level: Level,
    /// The setting or thing it is about.
    pub about: String,
    /// What was found and what to do.
    pub message: String,
}

fn finding(level: Level, about: &str, message: impl Into<String>) -> Finding {
    Finding { level, about: about.into(), message: message.into() }
}

/// Checks a configuration and its data directory.
pub fn check_config(config: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    if let Err(e) = config.validate() {
        out.push(finding(Level::Error, "configuration", format!("{e}: the hub will not start")));
        return out;
    }
    out.push(finding(Level::Ok, "configuration", "valid"));
    let d = &config.disclosure;
    if d.organisation.trim().is_empty() {
        out.push(finding(
            Level::Warn,
            "disclosure.organisation",
            "empty: the disclosure policy cannot name who makes the product; set your company's name",
        ));
    }
    if d.contacts.is_empty() {
        out.push(finding(
            Level::Warn,
            "disclosure.contacts",
            "only the hub's report form is listed in security.txt; add a mailto: contact for reporters who cannot \
             use the form",
        ));
    } else {
        out.push(finding(
            Level::Ok,
            "disclosure.contacts",
            format!("{} contact(s) besides the form", d.contacts.len()),
        ));
    }
    if config.mail.dev_log_links_insecure {
        out.push(finding(
            Level::Warn,
            "mail.dev_log_links_insecure",
            "on: sign-in and reset links are written to the log, not mailed; for demos and tests only",
        ));
    }
    if d.proof_of_work_bits < 12 {
        out.push(finding(
            Level::Warn,
            "disclosure.proof_of_work_bits",
            format!("{}: anyone can flood the report intake cheaply; 16 is the default", d.proof_of_work_bits),
        ));
    }
    if config.tls.allow_tls12 {
        out.push(finding(
            Level::Warn,
            "tls.allow_tls12",
            "on: TLS 1.2 is accepted beside 1.3; turn it off unless old devices need it",
        ));
    }
    check_data_dir(config, &mut out);
    out
}

fn check_data_dir(config: &Config, out: &mut Vec<Finding>) {
    let dir = &config.data_dir;
    let Ok(meta) = std::fs::metadata(dir) else {
        out.push(finding(
            Level::Ok,
            "data_dir",
            format!("{} does not exist yet; the first start makes it", dir.display()),
        ));
        return;
    };
    if meta.permissions().mode() & 0o007 != 0 {
        out.push(finding(
            Level::Warn,
            "data_dir",
            format!(
                "{} is open to every user (mode {:o}); chmod o-rwx it",
                dir.display(),
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    let key = config.secrets.master_key_file.clone().unwrap_or_else(|| dir.join("master.key"));
    match std::fs::metadata(&key) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => out.push(finding(
            Level::Error,
            "secrets.master_key_file",
            format!(
                "{} is readable by others (mode {:o}); chmod 600 it",
                key.display(),
                m.permissions().mode() & 0o777
            ),
        )),
        Ok(_) => out.push(finding(Level::Ok, "secrets.master_key_file", format!("{} is private", key.display()))),
        Err(_) if std::env::var_os("HEARTH_MASTER_KEY").is_some() => {}
        Err(_) => {}
    }
    if let Ok(stat) = rustix::fs::statvfs(dir) {
        let free_mb = stat.f_bavail.saturating_mul(stat.f_frsize) >> 20;
        let floor = config.telemetry.min_free_disk_mb;
        if free_mb < floor.saturating_mul(4) {
            out.push(finding(
                Level::Warn,
                "telemetry.min_free_disk_mb",
                format!("{free_mb} MiB free in {}; the hub refuses telemetry below {floor} MiB", dir.display()),
            ));
        }
    }
}

/// Checks a served security.txt (`text`) at `now_ms`: the fields RFC 9116 requires, and an `Expires` more than
/// 30 days ahead.
pub fn check_security_txt(text: &str, now_ms: i64) -> Vec<Finding> {
    let mut out = Vec::new();
    // Field names are case-insensitive (RFC 9116 §2.4); what the hub sent is shown without control characters.
    let fields: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().chars().filter(|c| !c.is_control()).take(100).collect()))
        .collect();
    if !fields.iter().any(|(n, _)| n == "contact") {
        out.push(finding(Level::Error, "security.txt", "no Contact field (RFC 9116 requires one)"));
    }
    let expires: Vec<&str> = fields.iter().filter(|(n, _)| n == "expires").map(|(_, v)| v.as_str()).collect();
    match expires.as_slice() {
        [one] => match parse_utc(one) {
            Some(at) if at < now_ms => out.push(finding(Level::Error, "security.txt", format!("expired on {one}"))),
            Some(at) if at < now_ms + 30 * 86_400_000 => {
                out.push(finding(Level::Warn, "security.txt", format!("expires on {one}, within 30 days")))
            }
            Some(_) => out.push(finding(Level::Ok, "security.txt", format!("expires on {one}"))),
            None => out.push(finding(Level::Error, "security.txt", format!("Expires is not an RFC 3339 time: {one}"))),
        },
        _ => out.push(finding(Level::Error, "security.txt", "Expires must appear exactly once (RFC 9116)")),
    }
    out
}

/// `YYYY-MM-DDTHH:MM:SSZ` as Unix ms.
pub(crate) fn parse_utc(s: &str) -> Option<i64> {
    if s.len() != 20 || !s.is_ascii() || &s[10..11] != "T" || &s[19..] != "Z" {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u8>().ok();
    let month = time::Month::try_from(n(5..7)?).ok()?;
    let date = time::Date::from_calendar_date(s.get(..4)?.parse().ok()?, month, n(8..10)?).ok()?;
    let at = date.with_hms(n(11..13)?, n(14..16)?, n(17..19)?).ok()?.assume_utc();
    Some(at.unix_timestamp() * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_contacts_and_an_empty_organisation_are_warned_about() {
        let dir = tempfile::tempdir().expect("dir");
        let mut config = Config { data_dir: dir.path().join("data"), ..Config::default() };
        config.accounts.consumer_sign_up = false; // (else a mailer is required)
        let found = check_config(&config);
        let about = |f: &[Finding], what: &str| f.iter().find(|x| x.about == what).map(|x| x.level);
        assert_eq!(about(&found, "disclosure.organisation"), Some(Level::Warn));
        assert_eq!(about(&found, "disclosure.contacts"), Some(Level::Warn));
        config.disclosure.organisation = "Example Devices Ltd".into();
        config.disclosure.contacts = vec!["mailto:security@example.org".into()];
        config.tls.allow_tls12 = true;
        let found = check_config(&config);
        assert_eq!(about(&found, "disclosure.organisation"), None);
        assert_eq!(about(&found, "disclosure.contacts"), Some(Level::Ok));
        assert_eq!(about(&found, "tls.allow_tls12"), Some(Level::Warn));
        config.disclosure.contacts = vec!["mailto:a@b\nExpires: x".into()];
        assert_eq!(about(&check_config(&config), "configuration"), Some(Level::Error));
    }

    #[test]
    fn a_master_key_others_can_read_is_an_error() {
        let dir = tempfile::tempdir().expect("dir");
        let mut config = Config { data_dir: dir.path().to_owned(), ..Config::default() };
        config.accounts.consumer_sign_up = false;
        let key = dir.path().join("master.key");
        std::fs::write(&key, [0u8; 32]).expect("key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let level =
            |c: &Config| check_config(c).into_iter().find(|f| f.about == "secrets.master_key_file").map(|f| f.level);
        assert_eq!(level(&config), Some(Level::Error));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(level(&config), Some(Level::Ok));
    }

    #[test]
    fn security_txt_is_checked_for_contact_and_expiry() {
        let now = 1_795_608_000_000; // 2026-11-25T12:00:00Z
        let good = "Contact: mailto:a@example.org\nExpires: 2027-05-01T00:00:00Z\n";
        assert!(
            check_security_txt(good, now).iter().all(|f| f.level == Level::Ok),
            "{:?}",
            check_security_txt(good, now)
        );
        let soon = "Contact: mailto:a@example.org\nExpires: 2026-12-10T00:00:00Z\n";
        assert_eq!(check_security_txt(soon, now)[0].level, Level::Warn);
        let gone = "Contact: mailto:a@example.org\nExpires: 2026-01-01T00:00:00Z\n";
        assert_eq!(check_security_txt(gone, now)[0].level, Level::Error);
        let none = "Expires: 2027-05-01T00:00:00Z\n";
        assert_eq!(check_security_txt(none, now)[0].level, Level::Error);
        let twice = "Contact: x\nExpires: 2027-05-01T00:00:00Z\nExpires: 2027-05-01T00:00:00Z\n";
        assert_eq!(check_security_txt(twice, now)[0].level, Level::Error);
        assert_eq!(parse_utc("1970-01-02T00:00:01Z"), Some(86_401_000));
        assert_eq!(parse_utc("2027-02-30T00:00:00Z"), None);
        assert_eq!(parse_utc("2027-05-01T00:00:0\u{e9}"), None, "no panic on a character across a boundary");
        let odd = "contact: https://x\nEXPIRES: 2027-05-01T00:00:00Z\n";
        assert!(check_security_txt(odd, now).iter().all(|f| f.level == Level::Ok), "names are case-insensitive");
    }
}
