//! The SMTP mailer against a relay on 127.0.0.1 speaking implicit TLS with its own CA: the mail arrives with its
//! sender, recipient, subject and link, after authentication; a relay the hub cannot verify gets nothing.

use std::sync::Arc;

use hearth_hub::config::{Mail as MailSettings, SmtpTls};
use hearth_hub::mail::{Mail, Mailer};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// What the relay heard.
#[derive(Debug, Default)]
struct Heard {
    auth: Option<String>,
    from: Option<String>,
    to: Option<String>,
    data: String,
}

/// A one-connection SMTP relay with implicit TLS; returns its port, its CA (PEM) and what it heard.
async fn relay() -> (u16, String, tokio::task::JoinHandle<Heard>) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("cert");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key"),
        )
        .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut heard = Heard::default();
        let (tcp, _) = listener.accept().await.expect("accept");
        let Ok(tls) = acceptor.accept(tcp).await else { return heard };
        let (read, mut write) = tokio::io::split(tls);
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"220 localhost ESMTP test relay\r\n").await.expect("greet");
        let mut in_data = false;
        while let Ok(Some(line)) = lines.next_line().await {
            if in_data {
                if line == "." {
                    in_data = false;
                    write.write_all(b"250 queued\r\n").await.expect("queued");
                } else {
                    heard.data.push_str(&line);
                    heard.data.push('\n');
                }
                continue;
            }
            let reply: &[u8] = match line.split_whitespace().next().unwrap_or("").to_ascii_uppercase().as_str() {
                "EHLO" => b"250-localhost\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n",
                "AUTH" => {
                    heard.auth = Some(line.clone());
                    b"235 ok\r\n"
                }
                "MAIL" => {
                    heard.from = Some(line.clone());
                    b"250 ok\r\n"
                }
                "RCPT" => {
                    heard.to = Some(line.clone());
                    b"250 ok\r\n"
                }
                "DATA" => {
                    in_data = true;
                    b"354 go on\r\n"
                }
                "QUIT" => {
                    let _ = write.write_all(b"221 bye\r\n").await;
                    break;
                }
                _ => b"250 ok\r\n",
            };
            write.write_all(reply).await.expect("reply");
        }
        heard
    });
    (port, ca_cert.pem(), task)
}

fn settings(port: u16, ca_file: Option<std::path::PathBuf>, password_file: std::path::PathBuf) -> MailSettings {
    MailSettings {
        from: Some("Hearth <hearth@example.org>".into()),
        smtp_host: Some("localhost".into()),
        smtp_port: Some(port),
        smtp_tls: SmtpTls::Implicit,
        smtp_username: Some("hearth".into()),
        smtp_password_file: Some(password_file),
        smtp_ca_file: ca_file,
        dev_log_links_insecure: false,
    }
}

/// Writes a file only its owner may read, as the hub requires of a password file.
fn write_secret(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[test]
fn a_password_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("dir");
    let password_file = dir.path().join("smtp-password");
    write_secret(&password_file, "relay secret");
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = Mailer::from_settings(&settings(465, None, password_file)).expect_err("world-readable");
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

fn mail() -> Mail {
    Mail {
        to: "alice@example.org".into(),
        subject: "Reset your password".into(),
        body: "Choose a new one here:\n\nhttps://hub.example.org/reset?token=hml_abc\n".into(),
    }
}

#[tokio::test]
async fn the_smtp_mailer_sends_over_verified_tls_with_authentication() {
    let dir = tempfile::tempdir().expect("dir");
    let (port, ca_pem, heard) = relay().await;
    let (ca_file, password_file) = (dir.path().join("relay-ca.pem"), dir.path().join("smtp-password"));
    std::fs::write(&ca_file, ca_pem).expect("ca");
    write_secret(&password_file, "relay secret\n");
    let mailer = Mailer::from_settings(&settings(port, Some(ca_file), password_file)).expect("mailer");
    assert!(mailer.is_configured());
    mailer.send(mail()).await.expect("sent");
    let heard = heard.await.expect("relay");
    assert_eq!(heard.from.as_deref(), Some("MAIL FROM:<hearth@example.org>"));
    assert_eq!(heard.to.as_deref(), Some("RCPT TO:<alice@example.org>"));
    // AUTH PLAIN: "\0hearth\0relay secret", the password file's trailing newline trimmed.
    use base64::Engine as _;
    let plain = base64::engine::general_purpose::STANDARD.encode("\0hearth\0relay secret");
    assert_eq!(heard.auth, Some(format!("AUTH PLAIN {plain}")));
    assert!(heard.data.contains("Subject: Reset your password"), "{}", heard.data);
    assert!(heard.data.contains("https://hub.example.org/reset?token=hml_abc"), "{}", heard.data);
    assert!(mailer.dev_outbox().is_empty(), "nothing is kept in memory");
}

#[tokio::test]
async fn a_relay_the_hub_cannot_verify_gets_no_mail_and_no_password() {
    let dir = tempfile::tempdir().expect("dir");
    let (port, _ca_pem, heard) = relay().await;
    let password_file = dir.path().join("smtp-password");
    write_secret(&password_file, "relay secret");
    let mailer = Mailer::from_settings(&settings(port, None, password_file)).expect("mailer");
    let err = mailer.send(mail()).await.expect_err("an unknown CA");
    assert!(err.to_string().contains(&format!("localhost:{port}")), "{err}");
    let heard = heard.await.expect("relay");
    assert_eq!((heard.auth, heard.from, heard.data.as_str()), (None, None, ""));
}
