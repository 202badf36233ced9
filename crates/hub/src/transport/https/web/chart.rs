//! The telemetry chart, drawn on the server as SVG: no script, nothing for the Content-Security-Policy to allow.
//! One line per numeric metric (at most [`MAX_SERIES`]), each scaled to its own range, with the range in its
//! legend; the page shows the same readings as a table for screen readers and for anyone who wants numbers.
//! Everything a device sent (metric names) is escaped here, since the markup goes into the page as is.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Most metrics drawn.
pub const MAX_SERIES: usize = 4;
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const PAD: f64 = 8.0;

/// One reading: when the hub received it (Unix ms) and its numeric metrics.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Received, Unix ms.
    pub at_ms: i64,
    /// Metric name and value.
    pub metrics: Vec<(String, f64)>,
}

/// The SVG markup for `readings` (oldest first), or `None` when there is nothing numeric to draw.
pub fn svg(readings: &[Reading], title: &str) -> Option<String> {
    let mut series: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
    for r in readings {
        for (name, value) in &r.metrics {
            if value.is_finite() && (series.contains_key(name.as_str()) || series.len() < MAX_SERIES) {
                series.entry(name.as_str()).or_default().push((r.at_ms, *value));
            }
        }
    }
    series.retain(|_, points| !points.is_empty());
    if series.is_empty() {
        return None;
    }
    let (t0, t1) = readings.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| (lo.min(r.at_ms), hi.max(r.at_ms)));
    let span = (t1 - t0).max(1) as f64;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {h}" role="img" aria-labelledby="chart-title" xmlns="http://www.w3.org/2000/svg"><title id="chart-title">{}</title>"#,
        escape(title),
        h = HEIGHT + 24.0 * series.len() as f64
    );
    let _ = write!(
        out,
        r#"<rect class="chart-frame" x="0.5" y="0.5" width="{}" height="{}" fill="none"/>"#,
        WIDTH - 1.0,
        HEIGHT - 1.0
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (_, v)| (lo.min(*v), hi.max(*v)));
        let range = if hi > lo { hi - lo } else { 1.0 };
        let coords: Vec<String> = points
            .iter()
            .map(|(t, v)| {
                let x = PAD + (WIDTH - 2.0 * PAD) * ((t - t0) as f64 / span);
                let y = HEIGHT - PAD - (HEIGHT - 2.0 * PAD) * ((v - lo) / range);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let class = format!("series series-{i}");
        if coords.len() == 1 {
            let (x, y) = coords[0].split_once(',').unwrap_or(("0", "0"));
            let _ = write!(out, r#"<circle class="{class}" cx="{x}" cy="{y}" r="3"/>"#);
        } else {
            let _ = write!(out, r#"<polyline class="{class}" fill="none" points="{}"/>"#, coords.join(" "));
        }
        let y = HEIGHT + 18.0 + 24.0 * i as f64;
        let _ = write!(
            out,
            r#"<rect class="{class} swatch" x="{PAD}" y="{}" width="14" height="4"/><text class="legend" x="{}" y="{y}">{}: {} to {} ({} readings)</text>"#,
            y - 6.0,
            PAD + 22.0,
            escape(name),
            number(lo),
            number(hi),
            points.len()
        );
    }
    out.push_str("</svg>");
    Some(out)
}

/// A value as people read it: whole numbers without decimals, others with up to three.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Escapes text for XML character data and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at_ms: i64, metrics: &[(&str, f64)]) -> Reading {
        Reading { at_ms, metrics: metrics.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect() }
    }

    #[test]
    fn each_metric_is_a_line_scaled_to_its_own_range_and_names_are_escaped() {
        let readings = [
            reading(0, &[("temp", 20.0), ("<script>", 1.0)]),
            reading(500, &[("temp", 22.5), ("<script>", 3.0)]),
            reading(1000, &[("temp", 21.0), ("<script>", f64::NAN)]),
        ];
        let svg = svg(&readings, "Plug & socket").expect("drawn");
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("temp: 20 to 22.5 (3 readings)"), "{svg}");
        assert!(svg.contains("&lt;script&gt;: 1 to 3 (2 readings)"), "NaN is skipped: {svg}");
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("<title id=\"chart-title\">Plug &amp; socket</title>"));
        // The lowest reading at the bottom, the highest at the top, time left to right.
        assert!(svg.contains(r#"points="8.0,212.0 320.0,8.0 632.0,130.4""#), "{svg}");
    }

    #[test]
    fn nothing_numeric_draws_nothing_and_at_most_four_metrics_are_drawn() {
        assert_eq!(svg(&[], "t"), None);
        assert_eq!(svg(&[reading(0, &[("x", f64::INFINITY)])], "t"), None);
        let many: Vec<(String, f64)> = (0..9).map(|i| (format!("m{i}"), f64::from(i))).collect();
        let readings = [Reading { at_ms: 0, metrics: many }];
        let svg = svg(&readings, "t").expect("drawn");
        assert_eq!(svg.matches("<circle").count(), MAX_SERIES);
        assert_eq!(number(3.0), "3");
        assert_eq!(number(2.125), "2.125");
        assert_eq!(number(0.1), "0.1");
    }
}
