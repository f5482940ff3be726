//! Reading a Prometheus endpoint as Prometheus would: [`scrape`] fetches
//! `http://<addr>/metrics` (plain HTTP/1.0, no client library) and
//! [`parse`] reads the text format into samples; [`dashboard_metrics`]
//! lists the metric names a Grafana dashboard's queries use, and
//! [`query_metrics`] those of any document with `expr`s (alert rules).

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// GET `http://<addr>/metrics`; the body, or an error with the status line.
pub fn scrape(addr: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .with_context(|| format!("read from {addr}"))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP header from {addr}: {raw:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        bail!("{addr}: {status}");
    }
    Ok(body.to_owned())
}

/// Parse the Prometheus text format (comments skipped). Label values with
/// escaped quotes are not needed by Tandem's metrics and not supported.
pub fn parse(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: {line:?}", i + 1);
        let (series, value) = line.rsplit_once(' ').with_context(bad)?;
        let value: f64 = value.parse().with_context(bad)?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').with_context(bad)?;
                let mut labels = Vec::new();
                for pair in rest.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").with_context(bad)?;
                    labels.push((k.trim().to_owned(), v.trim_end_matches('"').to_owned()));
                }
                (name, labels)
            }
            None => (series, Vec::new()),
        };
        out.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(out)
}

/// The `tandem_*` metric names in the queries (`expr`, variable
/// `definition`s and `query`s) of the Grafana dashboard at `path`.
pub fn dashboard_metrics(path: &Path) -> anyhow::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    Ok(query_metrics(&v))
}

/// The `tandem_*` metric names in the queries (`expr`, `definition`,
/// `query`) anywhere in `v`: a dashboard, or Prometheus rules read from
/// YAML.
pub fn query_metrics(v: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    collect(v, &mut names);
    names
}

fn collect(v: &Value, names: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition" | "query", Value::String(q)) => {
                        names.extend(metric_names(q))
                    }
                    _ => collect(v, names),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect(v, names)),
        _ => {}
    }
}

/// The `tandem_...` identifiers in a PromQL expression.
fn metric_names(q: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = q;
    while let Some(i) = rest.find("tandem_") {
        let before = rest[..i].chars().last();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_format() {
        let s = parse(
            "# HELP x y\n# TYPE tandem_a counter\ntandem_a{set=\"b\",verdict=\"clean\"} 1\ntandem_b 2.5\n",
        )
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].label("verdict"), Some("clean"));
        assert_eq!(s[1].value, 2.5);
    }

    #[test]
    fn finds_metric_names_in_promql() {
        let n = metric_names(
            "histogram_quantile(0.5, sum by (le) (rate(tandem_test_duration_seconds_bucket{set=\"$set\"}[1d]))) / x_tandem_no",
        );
        assert_eq!(n, vec!["tandem_test_duration_seconds_bucket".to_owned()]);
    }
}
