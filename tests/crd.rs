//! The CRD on a real kube-apiserver: installed and served, schema validation, printer columns,
//! and the committed YAML matching the generated one.

mod support;

use std::process::Stdio;

use inbox_operator::crd::{Inbox, InboxSpec, InboxStatus};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{TestNamespace, control_plane};

#[test]
fn committed_crd_matches_generated() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/inboxes.agentsend.io.yaml"
    ))
    .expect("crds/inboxes.agentsend.io.yaml exists");
    let generated = inbox_operator::crd::crd_yaml().expect("render CRD");
    assert!(
        committed == generated,
        "crds/inboxes.agentsend.io.yaml is out of date: run `make crd` (cargo run -- crd > crds/inboxes.agentsend.io.yaml)"
    );
}

#[tokio::test]
async fn crd_is_served_with_short_name_and_category() {
    let _dump = support::on_failure_dump_logs();
    let cp = control_plane();
    let client = cp.client().await;
    let ns = TestNamespace::new(&client, "crd").await;
    let api: Api<Inbox> = Api::namespaced(client, ns.name());
    let created = api
        .create(
            &PostParams::default(),
            &Inbox::new("first", InboxSpec::default()),
        )
        .await
        .expect("create Inbox");
    assert_eq!(
        created.spec.deletion_policy,
        inbox_operator::crd::DeletionPolicy::Delete,
        "deletionPolicy defaults to Delete"
    );
    let raw = serde_json::to_value(api.get("first").await.unwrap()).unwrap();
    assert_eq!(
        raw["spec"]["deletionPolicy"], "Delete",
        "defaulted by the server"
    );
    assert_eq!(api.list(&Default::default()).await.unwrap().items.len(), 1);
    for resource in ["inb", "agentsend", "inboxes.agentsend.io"] {
        let out = cp
            .kubectl()
            .args(["get", resource, "-n", ns.name(), "-o", "name"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl get {resource}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("inbox.agentsend.io/first"));
    }
}

/// Create from raw JSON so invalid values reach the server.
fn kubectl_create(ns: &str, obj: serde_json::Value) -> (bool, String) {
    use std::io::Write;
    let mut child = control_plane()
        .kubectl()
        .args(["create", "--validate=false", "-n", ns, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(obj.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn inbox(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "agentsend.io/v1alpha1", "kind": "Inbox", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn schema_rejects_bad_objects() {
    let _dump = support::on_failure_dump_logs();
    let client = control_plane().client().await;
    let ns = TestNamespace::new(&client, "schema").await;
    let n = ns.name();
    let cases = [
        (
            "policy",
            json!({"deletionPolicy": "Keep"}),
            "deletionPolicy",
        ),
        (
            "long-address",
            json!({"address": "a".repeat(300)}),
            "address",
        ),
        ("space-address", json!({"address": "a b"}), "address"),
        (
            "long-name",
            json!({"displayName": "n".repeat(300)}),
            "displayName",
        ),
        (
            "bad-secret",
            json!({"secret": {"name": "Not_A_Name"}}),
            "secret.name",
        ),
        (
            "bad-key",
            json!({"credentials": {"secretRef": {"name": "k", "key": "a/b"}}}),
            "key",
        ),
        (
            "no-ref-name",
            json!({"credentials": {"secretRef": {}}}),
            "name",
        ),
    ];
    for (name, spec, field) in cases {
        let (ok, err) = kubectl_create(n, inbox(name, spec));
        assert!(!ok, "{name} was accepted");
        assert!(
            err.contains(field),
            "{name}: error does not name {field}: {err}"
        );
    }
    let (ok, err) = kubectl_create(
        n,
        inbox(
            "good",
            json!({"address": "support", "domainId": "dom_1", "deletionPolicy": "Orphan"}),
        ),
    );
    assert!(ok, "valid object refused: {err}");
}

#[tokio::test]
async fn printer_columns_show_status() {
    let _dump = support::on_failure_dump_logs();
    let cp = control_plane();
    let client = cp.client().await;
    let ns = TestNamespace::new(&client, "cols").await;
    let api: Api<Inbox> = Api::namespaced(client, ns.name());
    api.create(
        &PostParams::default(),
        &Inbox::new("shown", InboxSpec::default()),
    )
    .await
    .unwrap();
    let status = InboxStatus {
        address: Some("x7k2m9@agentsend.io".into()),
        state: Some("active".into()),
        sends_today: Some(12),
        daily_send_limit: Some(100),
        conditions: vec![inbox_operator::crd::Condition {
            type_: "Ready".into(),
            status: "True".into(),
            observed_generation: Some(1),
            last_transition_time: "2026-01-01T00:00:00Z".into(),
            reason: "Ready".into(),
            message: "ok".into(),
        }],
        ..Default::default()
    };
    let patch = json!({"apiVersion": "agentsend.io/v1alpha1", "kind": "Inbox", "status": status});
    api.patch_status(
        "shown",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();
    let out = cp
        .kubectl()
        .args(["get", "inboxes", "-n", ns.name()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "ADDRESS", "STATE", "SENT", "TODAY", "LIMIT", "READY", "AGE"
        ],
        "{text}"
    );
    let row = text.lines().nth(1).unwrap_or_default();
    for v in [
        "shown",
        "x7k2m9@agentsend.io",
        "active",
        "12",
        "100",
        "True",
    ] {
        assert!(row.contains(v), "{v} missing in {row:?}");
    }
}
