//! The monitoring kit (deploy/monitoring/ and the chart's `monitoring.*` values) against the
//! real thing:
//!
//! - every metric and label that the alerts, their unit tests and the dashboard use is one a
//!   running operator exports on `/metrics` (read from its exposition, suffixes and all, not
//!   from the code that registers it; the per-Inbox families are hand-encoded at scrape time);
//! - the ServiceMonitor, PrometheusRule and dashboard ConfigMap of the chart and of the
//!   kustomize component apply, with strict field validation, to an API server serving the
//!   Prometheus Operator's CRDs, and read back unchanged.
//!
//! `hack/check-monitoring.py` checks the rest (promtool, runbook links, tests per alert, the
//! dashboard's structure).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use inbox_operator::api::account::{Account, AccountSpec};
use inbox_operator::api::common::{AccountKind, AccountRef, SecretKeyRef};
use inbox_operator::api::inbox::{CredentialsSpec, InboxSpec};
use kube::api::{Api, PostParams};

use crate::ctl::{Env, Ready, key_secret};
use crate::support::{TestNamespace, control_plane, wait_for};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const KEY: &str = "sk_test_monitoring_4b1d0c2e";
const ACCOUNT: &str = "acct-monitoring";
const TEAM_KEY: &str = "sk_test_monitoring_team_77e1";
const TEAM_ACCOUNT: &str = "acct-monitoring-team";

/// Labels a scrape adds to every series (the Prometheus Operator's target labels); a rule may
/// group or match by them although the operator does not export them. (`namespace` is also
/// the per-Inbox series' own label, kept by the ServiceMonitor's honorLabels.)
const TARGET_LABELS: [&str; 4] = ["job", "instance", "namespace", "pod"];

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What one exposition holds: sample names (with `_total`, `_bucket`, ...) and the label names
/// of their series; the families' sample names from `# TYPE`, series or not.
#[derive(Debug, Default)]
struct Exposition {
    labels: BTreeMap<String, BTreeSet<String>>,
    declared: BTreeSet<String>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut e = Exposition::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                    continue;
                };
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_sum", "_count"],
                    "summary" => &["", "_sum", "_count"],
                    _ => &[""],
                };
                for s in suffixes {
                    e.declared.insert(format!("{name}{s}"));
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                let names = e.labels.entry(line[..end].to_string()).or_default();
                if line[end..].starts_with('{') {
                    let (labels, _) = matchers(line.as_bytes(), end);
                    names.extend(labels);
                }
            }
        }
        e
    }
}

/// Skip a quoted string starting at `i` (`"`, `'` or `` ` ``, backslash escapes); the index
/// after it.
fn skip_string(b: &[u8], mut i: usize) -> usize {
    let quote = b[i];
    i += 1;
    while i < b.len() && b[i] != quote {
        if b[i] == b'\\' && quote != b'`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The label names of a `{name op "value", ...}` block starting at `i` (the `{`), and the
/// index after its `}`.
fn matchers(b: &[u8], mut i: usize) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    i += 1;
    while i < b.len() && b[i] != b'}' {
        match b[i] {
            b'"' | b'\'' | b'`' => i = skip_string(b, i),
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                names.push(String::from_utf8_lossy(&b[start..i]).into_owned());
            }
            _ => i += 1,
        }
    }
    (names, i + 1)
}

/// The label names of a `(a, b)` list starting at `i` (the `(`), and the index after it.
fn label_list(b: &[u8], i: usize) -> (Vec<String>, usize) {
    let end = i + b[i..]
        .iter()
        .position(|&c| c == b')')
        .unwrap_or(b.len() - i);
    let inner = String::from_utf8_lossy(&b[i + 1..end.min(b.len())]).into_owned();
    let names = inner
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    (names, end + 1)
}

/// What one PromQL query uses: metric selectors with the labels they match on, the labels
/// it groups or matches by, and the names of any other metric it selects.
#[derive(Debug, Default)]
struct Query {
    metrics: Vec<(String, Vec<String>)>,
    grouping: Vec<String>,
    foreign: Vec<String>,
}

const KEYWORDS: [&str; 14] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// Aggregation operators: `sum by (x) (...)` is a call although `(` does not follow `sum`.
const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Scan PromQL (with Grafana's `$variables`) for what it uses. Not a full parser: promtool
/// parses every query (hack/check-monitoring.py); this only needs the names.
fn scan(expr: &str) -> Query {
    let b = expr.as_bytes();
    let mut q = Query::default();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_string(b, i);
        } else if c == b'$' {
            i += 1;
            if i < b.len() && b[i] == b'{' {
                i += b[i..].iter().position(|&c| c == b'}').unwrap_or(0) + 1;
            } else {
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || c == b'.' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && is_ident(b[i]) {
                i += 1;
            }
            let ident = &expr[start..i];
            let j = skip_ws(b, i);
            let next = b.get(j).copied();
            if KEYWORDS.contains(&ident) {
                if next == Some(b'(') {
                    let (names, end) = label_list(b, j);
                    q.grouping.extend(names);
                    i = end;
                }
            } else if next == Some(b'(') || AGGREGATIONS.contains(&ident) {
                // A function call or an aggregation.
            } else {
                let mut labels = Vec::new();
                if next == Some(b'{') {
                    let (names, end) = matchers(b, j);
                    labels = names;
                    i = end;
                }
                if ident.starts_with("inbox_operator_") {
                    q.metrics.push((ident.to_string(), labels));
                } else {
                    q.foreign.push(ident.to_string());
                }
            }
        } else if c == b'{' {
            q.foreign.push(expr[i..].chars().take(30).collect());
            i = matchers(b, i).1;
        } else {
            i += 1;
        }
    }
    q
}

/// One use of the exposition: where (for messages), the query, and labels it reads on top of
/// those it matches or groups by (legend `{{label}}`s, `label_values` labels).
struct Use {
    at: String,
    query: Query,
    reads: Vec<String>,
}

fn alert_uses() -> Vec<Use> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/monitoring/alerts.yaml")).unwrap();
    let mut uses = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap();
            uses.push(Use {
                at: format!("alerts.yaml {name}"),
                query: scan(rule["expr"].as_str().unwrap()),
                reads: Vec::new(),
            });
        }
    }
    uses
}

fn dashboard_uses() -> Vec<Use> {
    let d: serde_json::Value =
        serde_json::from_str(&read("deploy/monitoring/dashboard.json")).unwrap();
    let legend = legend_labels;
    let mut uses = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            uses.push(Use {
                at: format!(
                    "dashboard panel {:?} {}",
                    p["title"].as_str().unwrap_or_default(),
                    t["refId"].as_str().unwrap_or_default()
                ),
                query: scan(t["expr"].as_str().unwrap_or_default()),
                reads: legend(t["legendFormat"].as_str().unwrap_or_default()),
            });
        }
    }
    for v in d["templating"]["list"].as_array().unwrap() {
        let Some(q) = v["query"]["query"].as_str() else {
            continue;
        };
        let inner = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| {
                panic!(
                    "variable {}: only label_values(...) is checked: {q}",
                    v["name"]
                )
            });
        let (selector, label) = inner.rsplit_once(',').unwrap();
        uses.push(Use {
            at: format!("dashboard variable ${}", v["name"].as_str().unwrap()),
            query: scan(selector),
            reads: vec![label.trim().to_string()],
        });
    }
    uses
}

/// The `{{label}}`s of a Grafana legend.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|s| s.split_once("}}").map(|(l, _)| l.trim().to_string()))
        .collect()
}

/// The input series of alerts_test.yaml: (name, label names).
fn test_series() -> Vec<(String, Vec<String>)> {
    let tests: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/monitoring/alerts_test.yaml")).unwrap();
    let mut out = Vec::new();
    for t in tests["tests"].as_sequence().unwrap() {
        for s in t["input_series"].as_sequence().unwrap() {
            let series = s["series"].as_str().unwrap();
            let name_end = series.find('{').unwrap_or(series.len());
            let labels = if name_end < series.len() {
                matchers(series.as_bytes(), name_end).0
            } else {
                Vec::new()
            };
            out.push((series[..name_end].to_string(), labels));
        }
    }
    out
}

/// Problems of `uses` and the test series against the exposition `e`.
fn problems(e: &Exposition, uses: &[Use], series: &[(String, Vec<String>)]) -> Vec<String> {
    let mut out = Vec::new();
    let target: BTreeSet<String> = TARGET_LABELS.iter().map(|s| s.to_string()).collect();
    for u in uses {
        if u.query.metrics.is_empty() {
            out.push(format!("{}: queries no inbox_operator_ metric", u.at));
        }
        for f in &u.query.foreign {
            out.push(format!(
                "{}: selects {f:?}, not an inbox_operator_ metric",
                u.at
            ));
        }
        let mut known = target.clone();
        for (m, matched) in &u.query.metrics {
            let Some(own) = e.labels.get(m) else {
                out.push(format!("{}: {m} is not exported", u.at));
                continue;
            };
            known.extend(own.iter().cloned());
            for l in matched {
                if !own.contains(l) && !target.contains(l) {
                    out.push(format!("{}: {m} has no label {l:?} (it has {own:?})", u.at));
                }
            }
        }
        for l in u.query.grouping.iter().chain(&u.reads) {
            if !known.contains(l) {
                out.push(format!("{}: label {l:?} is on none of its metrics", u.at));
            }
        }
    }
    for (m, labels) in series {
        let Some(own) = e.labels.get(m) else {
            out.push(format!(
                "alerts_test.yaml: input series {m} is not exported"
            ));
            continue;
        };
        let given: BTreeSet<String> = labels.iter().cloned().collect();
        for l in own.difference(&given) {
            out.push(format!(
                "alerts_test.yaml: a {m} series lacks its label {l:?}"
            ));
        }
        for l in given.difference(own) {
            if !target.contains(l) {
                out.push(format!(
                    "alerts_test.yaml: {m} has no label {l:?} (it has {own:?})"
                ));
            }
        }
    }
    out
}

#[test]
fn the_scanner_finds_metrics_labels_and_groupings() {
    let q = scan(
        r#"sum by (namespace, job) (increase(inbox_operator_agentsend_requests_total{status=~"401|403", job=~"$job"}[15m])) > 0 and on (x) up unless ignoring(state) inbox_operator_inbox_state{state="a{b}"} == 1"#,
    );
    assert_eq!(
        q.metrics,
        vec![
            (
                "inbox_operator_agentsend_requests_total".to_string(),
                vec!["status".to_string(), "job".to_string()]
            ),
            (
                "inbox_operator_inbox_state".to_string(),
                vec!["state".to_string()]
            ),
        ]
    );
    assert_eq!(q.grouping, ["namespace", "job", "x", "state"]);
    assert_eq!(q.foreign, ["up"]);
    let e = Exposition::parse(
        "# TYPE inbox_operator_inbox_state gauge\ninbox_operator_inbox_state{namespace=\"a\",name=\"b\",state=\"active\"} 1\n# TYPE inbox_operator_agentsend_requests counter\ninbox_operator_agentsend_requests_total{route=\"list\",status=\"200\"} 3\n",
    );
    let uses = [Use {
        at: "q".into(),
        query: q,
        reads: vec!["route".into(), "nope".into()],
    }];
    assert_eq!(
        problems(
            &e,
            &uses,
            &[(
                "inbox_operator_inbox_state".into(),
                vec!["namespace".into(), "job".into()]
            )]
        ),
        [
            "q: selects \"up\", not an inbox_operator_ metric",
            "q: label \"x\" is on none of its metrics",
            "q: label \"nope\" is on none of its metrics",
            "alerts_test.yaml: a inbox_operator_inbox_state series lacks its label \"name\"",
            "alerts_test.yaml: a inbox_operator_inbox_state series lacks its label \"state\"",
        ]
    );
}

/// The operator binary against the simulator, in a state where every family the kit uses has
/// series: a Ready Inbox through the default key, one through an Account holding an inbox no
/// Inbox claims, one whose credentials are missing (a failing reconcile), and a 429 with an
/// invalid Retry-After; then its /metrics is the reference.
#[tokio::test]
async fn alerts_tests_and_dashboard_use_only_what_the_operator_exports() {
    let mut env = Env::bare("monitoring", ACCOUNT, KEY).await;
    env.timeout = Duration::from_secs(60);
    let ns = env.ns.name().to_string();
    env.sim.add_account(TEAM_ACCOUNT, TEAM_KEY);
    env.sim
        .insert_inbox(
            TEAM_ACCOUNT,
            inbox_sim::CreateInbox {
                address: Some("forgotten".into()),
                ..Default::default()
            },
        )
        .expect("an inbox no Inbox claims");
    env.secrets()
        .create(&PostParams::default(), &key_secret("team-key", TEAM_KEY))
        .await
        .unwrap();
    Api::<Account>::namespaced(env.client.clone(), &ns)
        .create(
            &PostParams::default(),
            &Account::new(
                "team",
                AccountSpec {
                    secret_ref: SecretKeyRef {
                        name: "team-key".into(),
                        key: "apiKey".into(),
                    },
                },
            ),
        )
        .await
        .unwrap();
    // The next request with the default key is answered 429 with a Retry-After that is not a
    // delay.
    env.sim.rate_limit_with_retry_after(ACCOUNT, ["soon"]);
    let op = env.operator(&[]);
    env.create_labelled("plain", &[]).await;
    env.create(
        "via-team",
        InboxSpec {
            account_ref: Some(Box::new(AccountRef {
                kind: AccountKind::Account,
                name: "team".into(),
            })),
            ..Default::default()
        },
    )
    .await;
    env.create(
        "no-key",
        InboxSpec {
            credentials: Some(Box::new(CredentialsSpec {
                secret_ref: SecretKeyRef {
                    name: "missing".into(),
                    key: "apiKey".into(),
                },
            })),
            ..Default::default()
        },
    )
    .await;
    env.wait_ready("plain", Ready::True).await;
    env.wait_ready("via-team", Ready::True).await;

    let uses: Vec<Use> = alert_uses().into_iter().chain(dashboard_uses()).collect();
    let series = test_series();
    let used: BTreeSet<&str> = uses
        .iter()
        .flat_map(|u| u.query.metrics.iter().map(|(m, _)| m.as_str()))
        .chain(series.iter().map(|(m, _)| m.as_str()))
        .collect();
    assert!(
        used.len() >= 15,
        "the kit uses {} metrics: {used:?}",
        used.len()
    );

    // Every name is declared from the start (families are registered at start-up).
    let first = Exposition::parse(&op.metrics().await.expect("/metrics answers"));
    let undeclared: Vec<_> = used
        .iter()
        .filter(|m| !first.declared.contains(**m))
        .collect();
    assert!(
        undeclared.is_empty(),
        "not exported by the operator: {undeclared:?}\nit exports: {:?}",
        first.declared
    );
    // Series (and so label names) come with traffic: wait until every used name has some.
    let deadline = Instant::now() + Duration::from_secs(60);
    let exposition = loop {
        let e = Exposition::parse(&op.metrics().await.unwrap_or_default());
        let missing: Vec<_> = used
            .iter()
            .filter(|m| !e.labels.contains_key(**m))
            .collect();
        if missing.is_empty() {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no series after 60 s for {missing:?}; the scenario should produce them"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The scenario produced what it meant to (so the labels read are the real ones).
    assert!(exposition.labels["inbox_operator_reconcile_errors_total"].contains("reason"));
    let problems = problems(&exposition, &uses, &series);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// `kubectl ARGS` with `yaml` on stdin; its output, or the failure.
fn kubectl_stdin(args: &[&str], yaml: &str) -> Result<String, String> {
    let out = control_plane().kubectl_with_stdin(args, yaml);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

const MONITORING_KINDS: [&str; 3] = ["ServiceMonitor", "PrometheusRule", "ConfigMap"];

/// The monitoring objects of a render, moved to namespace `ns`.
fn monitoring_objects(render: &str, ns: &str) -> Vec<serde_yaml::Value> {
    let mut objs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(render)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|o: &serde_yaml::Value| {
            o["kind"]
                .as_str()
                .is_some_and(|k| MONITORING_KINDS.contains(&k))
        })
        .collect();
    for o in &mut objs {
        o["metadata"]["namespace"] = ns.into();
    }
    objs
}

fn to_yaml(objs: &[serde_yaml::Value]) -> String {
    objs.iter()
        .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
        .collect()
}

const APPLY: [&str; 5] = [
    "apply",
    "--server-side",
    "--field-manager=monitoring-test",
    "--validate=strict",
    "-f",
];

/// Apply `objs` strictly and read each back: what the API server stored is what was rendered.
fn apply_and_read_back(what: &str, objs: &[serde_yaml::Value]) {
    let kinds: BTreeSet<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(kinds.len(), 3, "{what} renders {kinds:?}");
    kubectl_stdin(&[&APPLY[..], &["-"]].concat(), &to_yaml(objs))
        .unwrap_or_else(|e| panic!("{what} does not apply strictly: {e}"));
    for o in objs {
        let (kind, name, ns) = (
            o["kind"].as_str().unwrap(),
            o["metadata"]["name"].as_str().unwrap(),
            o["metadata"]["namespace"].as_str().unwrap(),
        );
        let stored: serde_yaml::Value = serde_yaml::from_str(
            &control_plane().kubectl_ok(&["get", kind, name, "-n", ns, "-o", "yaml"]),
        )
        .unwrap();
        for field in ["spec", "data"] {
            assert_eq!(
                stored[field], o[field],
                "{what}: {kind} {name} {field} as stored"
            );
        }
        assert_eq!(
            stored["metadata"]["labels"], o["metadata"]["labels"],
            "{what}: {kind} {name} labels as stored"
        );
    }
}

#[tokio::test]
async fn monitoring_objects_apply_strictly_with_the_prometheus_operator_crds() {
    let _dump = crate::support::on_failure_dump_logs();
    let cp = control_plane();
    let client = cp.client().await;
    let out = Command::new(format!("{ROOT}/hack/prometheus-operator-crds.sh"))
        .output()
        .expect("run hack/prometheus-operator-crds.sh");
    assert!(
        out.status.success(),
        "hack/prometheus-operator-crds.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crds = String::from_utf8_lossy(&out.stdout).trim().to_string();
    for crd in ["servicemonitors", "prometheusrules"] {
        let file = format!("{crds}/monitoring.coreos.com_{crd}.yaml");
        control_plane().kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", &file]);
        control_plane().kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            &format!("crd/{crd}.monitoring.coreos.com"),
            "--timeout=60s",
        ]);
    }
    let helm_ns = TestNamespace::new(&client, "mon-helm").await;
    let kustomize_ns = TestNamespace::new(&client, "mon-kustomize").await;
    wait_for(
        "the monitoring.coreos.com kinds served",
        Duration::from_secs(60),
        || async {
            let ok = cp
                .kubectl()
                .args([
                    "get",
                    "servicemonitors,prometheusrules",
                    "-n",
                    helm_ns.name(),
                ])
                .output()
                .is_ok_and(|o| o.status.success());
            ok.then_some(())
        },
    )
    .await;

    // The chart, with every monitoring object on.
    let values = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        values.path(),
        "monitoring: {serviceMonitor: {enabled: true}, prometheusRule: {enabled: true}, dashboard: {enabled: true}}\n",
    )
    .unwrap();
    let render = cp
        .helm()
        .args([
            "template",
            "inbox-operator",
            &format!("{ROOT}/charts/inbox-operator"),
        ])
        .args(["--namespace", helm_ns.name(), "--values"])
        .arg(values.path())
        .output()
        .expect("helm template");
    assert!(
        render.status.success(),
        "{}",
        String::from_utf8_lossy(&render.stderr)
    );
    let chart = monitoring_objects(&String::from_utf8_lossy(&render.stdout), helm_ns.name());
    apply_and_read_back("the chart", &chart);

    // The kustomize component.
    let component = cp
        .kubectl()
        .args(["kustomize", &format!("{ROOT}/deploy/monitoring")])
        .output()
        .unwrap();
    // A Component renders on its own too (kubectl kustomize accepts it as the root).
    assert!(
        component.status.success(),
        "{}",
        String::from_utf8_lossy(&component.stderr)
    );
    let kustomized = monitoring_objects(
        &String::from_utf8_lossy(&component.stdout),
        kustomize_ns.name(),
    );
    apply_and_read_back("deploy/monitoring", &kustomized);

    // The PrometheusRule holds the canonical rule file, and the ConfigMap the dashboard.
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/monitoring/alerts.yaml")).unwrap();
    let dashboard = read("deploy/monitoring/dashboard.json");
    for objs in [&chart, &kustomized] {
        for o in objs.iter() {
            match o["kind"].as_str().unwrap() {
                "PrometheusRule" => assert_eq!(o["spec"], rules),
                "ConfigMap" => {
                    assert_eq!(
                        o["data"]["inbox-operator.json"].as_str(),
                        Some(dashboard.as_str())
                    );
                    assert_eq!(
                        o["metadata"]["labels"]["grafana_dashboard"].as_str(),
                        Some("1")
                    );
                }
                _ => {}
            }
        }
    }

    // Strict validation is in force: a misspelled field is refused, not pruned.
    let mut wrong = kustomized
        .iter()
        .find(|o| o["kind"] == "ServiceMonitor")
        .unwrap()
        .clone();
    wrong["metadata"]["name"] = "misspelled".into();
    wrong["spec"]["endpoints"][0]["honorLabel"] = true.into();
    let refused = kubectl_stdin(&[&APPLY[..], &["-"]].concat(), &to_yaml(&[wrong]));
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("honorLabel")),
        "a ServiceMonitor with an unknown field: {refused:?}"
    );
}
