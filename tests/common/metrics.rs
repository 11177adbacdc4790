//! Reading the proxy's Prometheus text from its ops listener, by series name and labels, for
//! tests that count what the proxy did rather than guess it from timing.

use super::harness::{client, get};
use super::wait::{self, LONG};

/// The `/metrics` text of the ops listener at `ops` (a base URL, `http://127.0.0.1:port`).
pub async fn scrape(ops: &str) -> String {
    let r = get(&client(), &format!("{ops}/metrics")).await;
    assert_eq!(r.status, 200, "{ops}/metrics: {}", r.text());
    r.text()
}

/// The value of the line starting with `series` (name and labels, exactly as exported) in
/// the metrics `text`.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The value of `series` from `/metrics`; panics if it is not exported.
pub async fn metric(ops: &str, series: &str) -> f64 {
    let text = scrape(ops).await;
    value(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// Waits until the metric `series` reaches `at_least`; panics after [`LONG`].
pub async fn wait_metric(ops: &str, series: &str, at_least: f64) {
    wait::until(LONG, &format!("{series} >= {at_least}"), async || {
        match value(&scrape(ops).await, series) {
            Some(now) if now >= at_least => Ok(()),
            Some(now) => Err(format!("stayed at {now}")),
            // A labelled series appears with its first event.
            None => Err("not exported".to_owned()),
        }
    })
    .await
}

/// Waits until `/metrics` holds every line fragment in `lines` (a counter is recorded when a
/// response has ended, which the client may see a moment before the proxy does); returns the
/// text. Panics after [`LONG`], naming what is missing.
pub async fn wait_lines(ops: &str, lines: &[&str]) -> String {
    wait::until(LONG, "the metrics lines", async || {
        let text = scrape(ops).await;
        let missing: Vec<&&str> = lines.iter().filter(|l| !text.contains(**l)).collect();
        if missing.is_empty() {
            Ok(text)
        } else {
            Err(format!("missing {missing:?} in\n{text}"))
        }
    })
    .await
}
