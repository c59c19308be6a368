//! `docs/reference/metrics.md`: every metric family the operator exports, read from its own
//! exposition ([`crate::metrics::Metrics`]): name, type, labels and help. Each recording
//! method is called once, so that every family has a series and shows its label names.

use std::time::Duration;

use super::markdown::{code, header, table};
use crate::api::inbox::InboxStatus;
use crate::metrics::{AccountLabel, Metrics};

/// One metric family as the exposition describes it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Family {
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) help: String,
    /// Label names, in the order of their first series (`le` of histogram buckets left out).
    pub(super) labels: Vec<String>,
    /// Whether any series of it was exposed.
    pub(super) has_series: bool,
}

/// The page.
pub(super) fn page() -> String {
    let mut out = header("Metrics", "the metrics registry in `src/metrics.rs`");
    out.push_str(
        "The operator serves these on `/metrics` (OpenMetrics text; HTTPS with a token check \
         unless `--metrics-secure=false`, see [Monitoring](../monitoring.md)). Per-Inbox series \
         carry only `namespace` and `name` (never the address or the inbox ID) and disappear \
         with the Inbox. `account` is the first 8 hex characters of the SHA-256 of the API key, \
         never the key.\n\n",
    );
    let rows: Vec<[String; 4]> = families()
        .into_iter()
        .map(|f| {
            let labels = f.labels.iter().map(|l| code(l)).collect::<Vec<_>>();
            [series_names(&f), f.kind, labels.join(", "), f.help]
        })
        .collect();
    out.push_str(&table(["Metric", "Type", "Labels", "Help"], &rows));
    out
}

/// Every family of a registry whose recording methods were each called once.
pub(super) fn families() -> Vec<Family> {
    let metrics = Metrics::new();
    exercise(&metrics);
    parse(&metrics.encode())
}

/// Call every recording method once, so that every family has a series to show its labels.
fn exercise(m: &Metrics) {
    let took = Duration::from_millis(10);
    m.reconciled(true, took);
    m.skipped();
    m.error("kubernetes");
    m.api_request("create", "201", took);
    m.api_account("0a1b2c3d", Some(10.0), true);
    m.invalid_retry_after("create");
    m.set_leader(true);
    m.counter_sync_succeeded();
    let account = AccountLabel {
        kind: "ClusterAccount".into(),
        namespace: String::new(),
        name: "shared".into(),
    };
    m.set_unclaimed(&account, Some(1));
    let status = InboxStatus {
        state: Some("active".into()),
        sends_today: Some(1),
        daily_send_limit: Some(100),
        sends_remaining: Some(99),
        total_sent: Some(1),
        bounce_count: Some(0),
        complaint_count: Some(0),
        ..Default::default()
    };
    m.observe_inbox("team", "support", &status, true);
}

/// The names a query uses: `_total` for counters, the three series of a histogram.
fn series_names(f: &Family) -> String {
    match f.kind.as_str() {
        "counter" => code(&format!("{}_total", f.name)),
        "histogram" => ["_bucket", "_sum", "_count"]
            .map(|s| code(&format!("{}{s}", f.name)))
            .join(", "),
        _ => code(&f.name),
    }
}

/// The families of an OpenMetrics text exposition, in its order.
fn parse(text: &str) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push(Family {
                name: name.to_string(),
                kind: String::new(),
                help: help.to_string(),
                labels: Vec::new(),
                has_series: false,
            });
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(f) = out.iter_mut().rfind(|f| f.name == name) {
                f.kind = kind.to_string();
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let sample = &line[..name_end];
            let Some(f) = out
                .iter_mut()
                .rfind(|f| sample.starts_with(f.name.as_str()))
            else {
                continue;
            };
            f.has_series = true;
            for label in label_names(&line[name_end..]) {
                if label != "le" && !f.labels.contains(&label) {
                    f.labels.push(label);
                }
            }
        }
    }
    out
}

/// The label names of `{a="x",b="y\"z"} 1`.
fn label_names(rest: &str) -> Vec<String> {
    let Some(body) = rest.strip_prefix('{') else {
        return Vec::new();
    };
    let mut names = Vec::new();
    let mut chars = body.chars();
    let mut name = String::new();
    while let Some(c) = chars.next() {
        match c {
            '=' => {
                names.push(std::mem::take(&mut name));
                // The quoted value, escapes included.
                chars.next();
                while let Some(v) = chars.next() {
                    match v {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            ',' => {}
            '}' => break,
            c => name.push(c),
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_has_a_series_to_show_its_labels() {
        let families = families();
        assert!(families.len() >= 10, "{families:?}");
        let silent: Vec<&str> = families
            .iter()
            .filter(|f| !f.has_series || f.kind.is_empty())
            .map(|f| f.name.as_str())
            .collect();
        assert!(
            silent.is_empty(),
            "metric families without a series: call their recording method in \
             `reference::metrics::exercise` so the reference shows their labels: {silent:?}"
        );
    }

    #[test]
    fn label_names_are_read_past_escaped_values() {
        assert_eq!(
            label_names(r#"{namespace="a\"b",name="c,d"} 1"#),
            ["namespace", "name"]
        );
        assert!(label_names(" 1").is_empty());
    }
}
