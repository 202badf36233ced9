//! The printable label of a device (`hearth factory` writes one per device): an SVG, 50 × 30 mm, with the claim
//! QR code (it opens `{hub}/claim?code=…`, where a signed-in consumer confirms the claim), the claim code for
//! typing, in groups of five, and the model and device id. Text and QR are dark on white for any printer.

use std::fmt::Write as _;

use qrcode::{Color, EcLevel, QrCode};

/// The claim link a label's QR code holds.
pub fn claim_url(hub_url: &str, claim_code: &str) -> String {
    format!("{}/claim?code={claim_code}", hub_url.trim_end_matches('/'))
}

/// The claim code as printed: groups of five.
pub fn grouped(code: &str) -> String {
    code.as_bytes().chunks(5).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-")
}

/// The QR code of `url` as one SVG path, in module units (quiet zone not included), and its width.
pub fn qr_path(url: &str) -> Result<(String, usize), qrcode::types::QrError> {
    // Level M: readable with a quarter of a scuffed label missing, and still small at this length.
    let code = QrCode::with_error_correction_level(url, EcLevel::M)?;
    let width = code.width();
    let mut path = String::new();
    for (i, color) in code.to_colors().into_iter().enumerate() {
        if color == Color::Dark {
            let _ = write!(path, "M{},{}h1v1h-1z", i % width, i / width);
        }
    }
    Ok((path, width))
}

/// The label's SVG.
pub fn svg(device_id: &str, model: &str, claim_code: &str, hub_url: &str) -> Result<String, qrcode::types::QrError> {
    let url = claim_url(hub_url, claim_code);
    let host = hub_url.trim_start_matches("https://").trim_end_matches('/');
    let (path, width) = qr_path(&url)?;
    // The QR code fills 26 mm with a quiet zone of 4 modules on each side; text to its right.
    let with_quiet = (width + 8) as f64;
    let scale = 26.0 / with_quiet;
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="50mm" height="30mm" viewBox="0 0 50 30" role="img" aria-labelledby="t">
<title id="t">Claim label of {id}</title>
<rect width="50" height="30" fill="#fff"/>
<g transform="translate({q:.3},{q2:.3}) scale({scale:.5})"><path d="{path}" fill="#000"/></g>
<g font-family="DejaVu Sans, Arial, sans-serif" fill="#000">
<text x="28" y="6" font-size="2.1" font-weight="bold">Add to your home</text>
<text x="28" y="9.5" font-size="1.7">Scan, or type the code at</text>
<text x="28" y="12" font-size="1.7"{fit}>{host}/claim</text>
<text x="28" y="17" font-size="2.5" font-family="DejaVu Sans Mono, monospace" font-weight="bold">{code1}</text>
<text x="28" y="20.2" font-size="2.5" font-family="DejaVu Sans Mono, monospace" font-weight="bold">{code2}</text>
<text x="28" y="25" font-size="1.8">Model {model}</text>
<text x="28" y="27.5" font-size="1.8">ID {id}</text>
</g>
</svg>
"##,
        id = escape(device_id),
        model = escape(model),
        host = escape(host),
        // A long address is squeezed into the 21 mm beside the QR code rather than cut off.
        fit = if host.len() > 16 { r#" textLength="21" lengthAdjust="spacingAndGlyphs""# } else { "" },
        q = 4.0 * scale + 1.0,
        q2 = 4.0 * scale + 2.0,
        code1 = escape(&grouped(claim_code.get(..10).unwrap_or(claim_code))),
        code2 = escape(&grouped(claim_code.get(10..).unwrap_or(""))),
    );
    Ok(out)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_draws_exactly_the_dark_modules_of_the_claim_url() {
        let url = claim_url("https://hub.example.org:8443/", "K7PQ2M9X4W3RT8VC2HNZ");
        assert_eq!(url, "https://hub.example.org:8443/claim?code=K7PQ2M9X4W3RT8VC2HNZ");
        let (path, width) = qr_path(&url).expect("encodes");
        let drawn: std::collections::BTreeSet<(usize, usize)> = path
            .split('M')
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (xy, _) = s.split_once('h').expect("a module");
                let (x, y) = xy.split_once(',').expect("x,y");
                (x.parse().expect("x"), y.parse().expect("y"))
            })
            .collect();
        let code = QrCode::with_error_correction_level(&url, EcLevel::M).expect("encodes");
        let dark: std::collections::BTreeSet<(usize, usize)> = code
            .to_colors()
            .into_iter()
            .enumerate()
            .filter(|(_, c)| *c == Color::Dark)
            .map(|(i, _)| (i % width, i / width))
            .collect();
        assert_eq!(drawn, dark);
        // The three finder patterns are there: the corners' 7×7 squares start dark.
        for corner in [(0, 0), (width - 7, 0), (0, width - 7)] {
            assert!(dark.contains(&corner), "{corner:?}");
        }
    }

    #[test]
    fn the_label_shows_the_code_in_groups_and_escapes_what_it_prints() {
        let svg = svg("dev-1", "plug<2>", "K7PQ2M9X4W3RT8VC2HNZ", "https://hub.example.org").expect("svg");
        assert!(svg.contains(">K7PQ2-M9X4W<") && svg.contains(">3RT8V-C2HNZ<"), "{svg}");
        assert!(svg.contains("Model plug&lt;2&gt;"), "{svg}");
        assert!(svg.contains("hub.example.org/claim"));
        assert!(svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"));
    }
}
