//! Fuzzes the hub's CSR handling, `identity::ca::Authorities::issue_device_cert` (what enrolment and renewal call):
//! PEM decoding, PKCS#10 parsing and signature verification, the subject check and the key-algorithm check. A
//! certificate is issued only naming the device; everything else is refused as the device's mistake.
//!
//! Input: PEM text (what devices send) when it starts with `-----BEGIN`, otherwise DER that the target wraps in
//! PEM, so mutations reach the ASN.1 structure rather than only the base64.
#![no_main]

use hearth_fuzz::{csr_pem_of_der, hub};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let hub = hub();
    if data.starts_with(b"-----BEGIN") {
        // The API delivers the CSR inside a JSON string, so it is always UTF-8 there.
        if let Ok(pem) = std::str::from_utf8(data) {
            hub.check_csr(hub.device(), pem);
        }
    } else {
        hub.check_csr(hub.device(), &csr_pem_of_der(data));
    }
});
