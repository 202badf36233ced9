//! `/.well-known/security.txt` (RFC 9116), made from `[disclosure]` at each request: the hub's own report form is
//! always the first `Contact`, so the file is never without one, and `Expires` always lies `expires_days` ahead
//! (rounded down to the day, so the file changes once a day), within the RFC's "less than a year". Values come
//! from validated configuration (URIs without spaces or line breaks), so nothing can add a field.

use super::DisclosureSettings;

/// The path of the hub's report form, relative to its base URL.
pub const REPORT_PATH: &str = "/security/report";
/// The path of the disclosure policy page.
pub const POLICY_PATH: &str = "/security/policy";

/// RFC 3339 UTC date and time, whole seconds.
pub fn rfc3339(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The file for a hub at `base_url` (no trailing slash), at `now_ms`.
pub fn render(s: &DisclosureSettings, base_url: &str, now_ms: i64) -> String {
    let day = 86_400_000i64;
    let expires = (now_ms.div_euclid(day) + i64::from(s.expires_days)) * day;
    let mut out = String::new();
    out.push_str("# Security contacts and policy of this Hearth hub (RFC 9116).\n");
    out.push_str(&format!("Contact: {base_url}{REPORT_PATH}\n"));
    for c in &s.contacts {
        out.push_str(&format!("Contact: {c}\n"));
    }
    out.push_str(&format!("Expires: {}\n", rfc3339(expires)));
    if let Some(url) = &s.encryption_key_url {
        out.push_str(&format!("Encryption: {url}\n"));
    }
    if let Some(url) = &s.acknowledgments_url {
        out.push_str(&format!("Acknowledgments: {url}\n"));
    }
    if !s.preferred_languages.is_empty() {
        out.push_str(&format!("Preferred-Languages: {}\n", s.preferred_languages.join(", ")));
    }
    out.push_str(&format!("Canonical: {base_url}/.well-known/security.txt\n"));
    out.push_str(&format!("Policy: {base_url}{POLICY_PATH}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn settings() -> DisclosureSettings {
        DisclosureSettings {
            organisation: "Example Devices Ltd".into(),
            contacts: vec!["mailto:security@example.org".into()],
            encryption_key_url: Some("https://example.org/pgp.asc".into()),
            acknowledgments_url: None,
            preferred_languages: vec!["en".into(), "de".into()],
            expires_days: 180,
            acknowledge_days: 7,
            status_days: 30,
            fix_days: 90,
            scope: "everything".into(),
            reports_per_source_per_hour: 5,
            reports_per_hour: 100,
            proof_of_work_bits: 16,
        }
    }

    #[test]
    fn the_file_has_the_fields_rfc_9116_requires_once_each_and_expires_within_a_year() {
        let now = 1_795_000_000_000; // 2026-11-18
        let text = render(&settings(), "https://hub.example.org", now);
        let fields: Vec<(&str, &str)> =
            text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split_once(": ").expect("field: value")).collect();
        let count = |name: &str| fields.iter().filter(|(n, _)| *n == name).count();
        assert_eq!(count("Contact"), 2);
        assert_eq!(fields[0], ("Contact", "https://hub.example.org/security/report"), "the form comes first");
        for once in ["Expires", "Preferred-Languages", "Canonical", "Policy", "Encryption"] {
            assert_eq!(count(once), 1, "{once}");
        }
        let expires = fields.iter().find(|(n, _)| *n == "Expires").expect("expires").1;
        let at = crate::doctor::parse_utc(expires).expect("RFC 3339 in UTC");
        let ahead = at - now;
        assert!(ahead > 170 * 86_400_000 && ahead < 365 * 86_400_000, "{expires}");
        assert!(fields.iter().all(|(_, v)| !v.is_empty() && !v.contains('\n')));
        assert!(!text.contains("Acknowledgments"), "optional fields only when set");
    }
}
