//! The CRD on a real kube-apiserver (1.33–1.37, see tests/support): installed with `kubectl
//! apply --server-side` and served with its short name and category, schema validation and
//! defaults, every CEL `x-kubernetes-validations` rule evaluated by the server (on create and on
//! update), the status subresource, printer columns, and the committed YAML matching the
//! generated one.

use std::time::Duration;

use crate::support::{TestNamespace, control_plane, on_failure_dump_logs};
use inbox_operator::api::inbox::{Condition, Inbox, InboxSpec, InboxStatus};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const CRD_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");

/// No cluster needed. `UPDATE_CRDS=1 cargo test --test it crd::committed_crd` rewrites the files.
#[test]
fn committed_crds_match_generated() {
    let files = inbox_operator::commands::crd::crd_files().expect("render the CRDs");
    assert_eq!(files.len(), 3, "Inbox, Account, ClusterAccount");
    for (name, generated) in files {
        let path = format!("{CRD_DIR}/{name}");
        if std::env::var_os("UPDATE_CRDS").is_some_and(|v| v == "1") {
            std::fs::write(&path, &generated).expect("write the CRD");
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "crds/{name} is missing or differs from the generated CRD.\n\
             Regenerate it with `make crd` (= `cargo run -- crd --dir crds`, plus the Helm \
             chart's copies) or `UPDATE_CRDS=1 cargo test --test it crd::committed_crd`, and \
             commit the result."
        );
    }
}

/// Every field of every CRD has a description (what `kubectl explain` shows): each property of
/// the schema, at any depth (in objects, list items and map values), spec and status alike.
/// No cluster needed.
#[test]
fn every_crd_field_has_a_description() {
    fn walk(schema: &Value, path: &str, missing: &mut Vec<String>, fields: &mut usize) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let at = format!("{path}.{name}");
                *fields += 1;
                let described = prop
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.trim().is_empty());
                if !described {
                    missing.push(at.clone());
                }
                walk(prop, &at, missing, fields);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), missing, fields);
        }
        if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            walk(values, &format!("{path}{{}}"), missing, fields);
        }
    }
    let files = inbox_operator::commands::crd::crd_files().expect("render the CRDs");
    assert_eq!(files.len(), 3, "Inbox, Account, ClusterAccount");
    for (name, yaml) in files {
        let crd: Value = serde_yaml::from_str(&yaml).unwrap();
        let versions = crd["spec"]["versions"].as_array().expect("versions");
        for version in versions {
            let root = &version["schema"]["openAPIV3Schema"];
            let (mut missing, mut fields) = (Vec::new(), 0);
            walk(root, "", &mut missing, &mut fields);
            // The walk reached the status and its conditions: it is not vacuous.
            assert!(
                fields > 10 && root["properties"]["status"]["properties"]["conditions"].is_object(),
                "{name}: only {fields} fields walked"
            );
            assert!(
                missing.is_empty(),
                "{name} {}: fields without a description (a doc comment on the Rust field \
                 becomes one; then `make crd`): {missing:#?}",
                version["name"]
            );
        }
    }
}

/// `kubectl create` (a plain POST; `--validate=false` turns off kubectl's own checks, so that
/// invalid objects reach the server and the server's answer is what is tested).
/// Returns (success, stdout, stderr).
fn kubectl_create(ns: &str, obj: &Value) -> (bool, String, String) {
    let out = control_plane().kubectl_with_stdin(
        &["create", "--validate=false", "-n", ns, "-f", "-"],
        &obj.to_string(),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn inbox(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "agentsend.io/v1alpha1", "kind": "Inbox", "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn crd_is_served_with_short_name_and_category() {
    let _dump = on_failure_dump_logs();
    let cp = control_plane();
    let client = cp.client().await;
    let ns = TestNamespace::new(&client, "crd-served").await;

    // Discovery: namespaced `inboxes`, short name, category, status subresource.
    let resources = client
        .list_api_group_resources("agentsend.io/v1alpha1")
        .await
        .expect("discovery of agentsend.io/v1alpha1");
    let inboxes = resources
        .resources
        .iter()
        .find(|r| r.name == "inboxes")
        .expect("inboxes in discovery");
    assert_eq!(inboxes.kind, "Inbox");
    assert!(inboxes.namespaced);
    assert_eq!(
        inboxes.short_names.as_deref(),
        Some(&["inb".to_string()][..])
    );
    assert_eq!(
        inboxes.categories.as_deref(),
        Some(&["agentsend".to_string()][..])
    );
    assert!(
        resources
            .resources
            .iter()
            .any(|r| r.name == "inboxes/status"),
        "status subresource served"
    );
    for (plural, short) in [("accounts", "acct"), ("clusteraccounts", "cacct")] {
        let r = resources
            .resources
            .iter()
            .find(|r| r.name == plural)
            .unwrap_or_else(|| panic!("{plural} in discovery"));
        assert_eq!(r.short_names.as_deref(), Some(&[short.to_string()][..]));
        assert_eq!(
            r.categories.as_deref(),
            Some(&["agentsend".to_string()][..])
        );
    }

    // Typed create/get/list through kube.
    let api: Api<Inbox> = Api::namespaced(client, ns.name());
    let spec = InboxSpec {
        address: Some("support".into()),
        domain_id: Some("dom_1".into()),
        display_name: Some("Support Agent".into()),
        ..InboxSpec::default()
    };
    let created = api
        .create(&PostParams::default(), &Inbox::new("first", spec.clone()))
        .await
        .expect("create Inbox");
    assert!(created.metadata.uid.is_some());
    let got = api.get("first").await.expect("get Inbox");
    assert_eq!(got.spec, spec);
    let list = api
        .list(&ListParams::default())
        .await
        .expect("list Inboxes");
    assert_eq!(
        list.items
            .iter()
            .filter_map(|i| i.metadata.name.as_deref())
            .collect::<Vec<_>>(),
        ["first"]
    );

    // kubectl resolves the plural, the short name, the category and the full name.
    for resource in ["inboxes", "inb", "agentsend", "inboxes.agentsend.io"] {
        let out = control_plane().kubectl_ok(&["get", resource, "-n", ns.name(), "-o", "name"]);
        // The category also lists ClusterAccounts (cluster-scoped: other tests' too).
        let namespaced: Vec<&str> = out
            .lines()
            .filter(|l| !l.starts_with("clusteraccount."))
            .collect();
        assert_eq!(
            namespaced,
            ["inbox.agentsend.io/first"],
            "kubectl get {resource}"
        );
    }

    // `kubectl explain` describes the status too (the server publishes a CRD's schema to its
    // OpenAPI document shortly after the CRD changes: waited for).
    let explain = |path: &str| {
        let out = control_plane()
            .kubectl()
            .args(["explain", path])
            .output()
            .expect("kubectl explain");
        // Descriptions are wrapped to the terminal: compare words.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    for (path, says) in [
        ("inboxes.status.conditions.reason", "stable CamelCase word"),
        ("inboxes.status.bounceCount", "Bounced messages"),
        ("clusteraccounts.status.conditions.message", "What happened"),
    ] {
        crate::support::wait_for(
            &format!("kubectl explain {path}"),
            Duration::from_secs(60),
            || {
                let text = explain(path);
                async move { text.contains(says).then_some(()) }
            },
        )
        .await;
    }
}

#[tokio::test]
async fn schema_rejects_bad_objects() {
    let _dump = on_failure_dump_logs();
    let client = control_plane().client().await;
    let ns = TestNamespace::new(&client, "crd-schema").await;
    let n = ns.name();
    let cases = [
        (
            "unknown-policy",
            json!({"deletionPolicy": "Keep"}),
            "spec.deletionPolicy",
        ),
        (
            "lowercase-policy",
            json!({"deletionPolicy": "delete"}),
            "spec.deletionPolicy",
        ),
        (
            "long-address",
            json!({"address": "a".repeat(255)}),
            "spec.address",
        ),
        ("empty-address", json!({"address": ""}), "spec.address"),
        ("space-address", json!({"address": "a b"}), "spec.address"),
        ("two-ats", json!({"address": "a@b@c"}), "spec.address"),
        (
            "long-display-name",
            json!({"displayName": "n".repeat(257)}),
            "spec.displayName",
        ),
        (
            "upper-secret",
            json!({"secret": {"name": "Not_A_Name"}}),
            "spec.secret.name",
        ),
        (
            "dash-secret",
            json!({"secret": {"name": "-leading-dash"}}),
            "spec.secret.name",
        ),
        (
            "long-secret",
            json!({"secret": {"name": "s".repeat(254)}}),
            "spec.secret.name",
        ),
        (
            "bad-key",
            json!({"credentials": {"secretRef": {"name": "k", "key": "a/b"}}}),
            "spec.credentials.secretRef.key",
        ),
        (
            "no-ref-name",
            json!({"credentials": {"secretRef": {}}}),
            "spec.credentials.secretRef.name",
        ),
        ("wrong-type", json!({"address": 42}), "spec.address"),
        (
            "template-default-key",
            json!({"secret": {"template": {"address": "{{ address }}"}}}),
            "spec.secret.template",
        ),
        (
            "template-key-slash",
            json!({"secret": {"template": {"a/b": "{{ address }}"}}}),
            "spec.secret.template",
        ),
        (
            "template-long",
            json!({"secret": {"template": {"LONG": "x".repeat(4097)}}}),
            "spec.secret.template",
        ),
        (
            "label-key-space",
            json!({"secret": {"labels": {"bad key": "v"}}}),
            "spec.secret.labels",
        ),
        (
            "label-key-two-slashes",
            json!({"secret": {"labels": {"a/b/c": "v"}}}),
            "spec.secret.labels",
        ),
        (
            "label-key-long-name",
            json!({"secret": {"labels": {"k".repeat(64): "v"}}}),
            "spec.secret.labels",
        ),
        (
            "label-value-long",
            json!({"secret": {"labels": {"team": "v".repeat(64)}}}),
            "spec.secret.labels",
        ),
        (
            "label-value-chars",
            json!({"secret": {"labels": {"team": "a b"}}}),
            "spec.secret.labels",
        ),
        (
            "label-value-dash-end",
            json!({"secret": {"labels": {"team": "care-"}}}),
            "spec.secret.labels",
        ),
        (
            "annotation-key-bad",
            json!({"secret": {"annotations": {"-x": "anything"}}}),
            "spec.secret.annotations",
        ),
        (
            "annotation-key-upper-prefix",
            json!({"secret": {"annotations": {"Example.com/x": "anything"}}}),
            "spec.secret.annotations",
        ),
    ];
    for (name, spec, field) in cases {
        let (ok, _, err) = kubectl_create(n, &inbox(name, spec.clone()));
        assert!(!ok, "{name}: {spec} was accepted");
        assert!(
            err.contains("is invalid"),
            "{name}: not a validation error: {err}"
        );
        assert!(
            err.contains(field),
            "{name}: error does not name {field}: {err}"
        );
    }

    // The limits themselves are accepted, as is a fully specified object.
    let good = [
        ("max-address", json!({"address": "a".repeat(254)})),
        ("full-address", json!({"address": "bot@example.com"})),
        ("max-display-name", json!({"displayName": "n".repeat(256)})),
        (
            "max-labels",
            json!({"secret": {
                "labels": {"example.com/team": "v".repeat(63), "k".repeat(63): "", "a_b.c": "X-1_y.Z"},
                "annotations": {"example.com/note": "any text: spaces, / and \n", "k".repeat(63): "x".repeat(1000)}
            }}),
        ),
        (
            "everything",
            json!({
                "address": "support", "domainId": "dom_1", "displayName": "Support",
                "inboxId": "inb_1", "deletionPolicy": "Orphan",
                "secret": {"name": "support.mail", "labels": {"team": "a"}, "annotations": {"x": "y"}},
                "credentials": {"secretRef": {"name": "team-key", "key": "api.key"}}
            }),
        ),
    ];
    for (name, spec) in good {
        let (ok, _, err) = kubectl_create(n, &inbox(name, spec));
        assert!(ok, "{name}: valid object refused: {err}");
    }
    // Every rejected object really was rejected.
    let api: Api<Inbox> = Api::namespaced(client, n);
    let mut names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|i| i.metadata.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "everything",
            "full-address",
            "max-address",
            "max-display-name",
            "max-labels"
        ]
    );
}

#[tokio::test]
async fn server_applies_defaults() {
    let _dump = on_failure_dump_logs();
    let client = control_plane().client().await;
    let ns = TestNamespace::new(&client, "crd-defaults").await;
    // Raw objects without the defaulted fields: the typed client would send its own defaults.
    let (ok, _, err) = kubectl_create(ns.name(), &inbox("bare", json!({})));
    assert!(ok, "{err}");
    let (ok, _, err) = kubectl_create(
        ns.name(),
        &inbox(
            "keyed",
            json!({"credentials": {"secretRef": {"name": "team-key"}}}),
        ),
    );
    assert!(ok, "{err}");
    let jsonpath = |name: &str, path: &str| {
        control_plane().kubectl_ok(&[
            "get",
            "inbox",
            name,
            "-n",
            ns.name(),
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
    };
    // No default for deletionPolicy: unset means the namespace default (else Delete).
    assert_eq!(jsonpath("bare", ".spec.deletionPolicy"), "");
    assert_eq!(jsonpath("keyed", ".spec.deletionPolicy"), "");
    assert_eq!(
        jsonpath("keyed", ".spec.credentials.secretRef.key"),
        "apiKey"
    );
    // Stored, not just rendered: the typed view agrees.
    let api: Api<Inbox> = Api::namespaced(client, ns.name());
    let bare = api.get("bare").await.unwrap();
    assert_eq!(bare.spec.deletion_policy, None);
    assert_eq!(bare.spec.address, None);
    assert_eq!(bare.status, None);
}

#[tokio::test]
async fn status_is_a_subresource() {
    let _dump = on_failure_dump_logs();
    let client = control_plane().client().await;
    let ns = TestNamespace::new(&client, "crd-status").await;
    let mut obj = inbox("with-status", json!({}));
    obj["status"] = json!({"state": "active", "address": "forged@example.com"});
    let (ok, _, err) = kubectl_create(ns.name(), &obj);
    assert!(ok, "{err}");
    let api: Api<Inbox> = Api::namespaced(client, ns.name());
    let got = api.get("with-status").await.unwrap();
    assert_eq!(got.status, None, "status in a create is ignored");
    // A merge patch of the main resource cannot set status either.
    let patched = api
        .patch(
            "with-status",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"state": "active"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        patched.status, None,
        "status via the main resource is ignored"
    );
    // Only through /status, and that does not bump the generation.
    let generation = patched.metadata.generation;
    let patched = api
        .patch_status(
            "with-status",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"state": "active", "sendsToday": 3}})),
        )
        .await
        .unwrap();
    let status = patched.status.expect("status written via /status");
    assert_eq!(status.state.as_deref(), Some("active"));
    assert_eq!(status.sends_today, Some(3));
    assert_eq!(patched.metadata.generation, generation);
}

/// `kubectl get RESOURCE NAME` (`-n NS` when given; `-o wide` when `wide`): the header's
/// column names and the row's values, split on spaces — except a `MESSAGE` column, whose value
/// is the rest of the row from the header's offset of `MESSAGE`.
fn table(resource: &str, name: &str, ns: Option<&str>, wide: bool) -> (Vec<String>, Vec<String>) {
    let mut args = vec!["get", resource, name];
    args.extend(ns.map(|ns| ["-n", ns]).into_iter().flatten());
    if wide {
        args.extend(["-o", "wide"]);
    }
    let text = control_plane().kubectl_ok(&args);
    let mut lines = text.lines();
    let (header, row) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    );
    let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let mut values = words(row);
    if let Some(at) = header.find("MESSAGE") {
        values = words(row.get(..at).unwrap_or(row));
        values.push(row.get(at..).unwrap_or_default().trim().to_string());
    }
    (words(header), values)
}

/// Why an object is not Ready, without `-o yaml`: the Ready condition's reason is a column of
/// `kubectl get`, its message a column of `kubectl get -o wide` — for Inboxes, Accounts and
/// ClusterAccounts.
#[tokio::test]
async fn printer_columns_show_status() {
    use inbox_operator::api::account::{Account, AccountSpec, ClusterAccount, ClusterAccountSpec};
    use inbox_operator::api::common::SecretKeyRef;
    let _dump = on_failure_dump_logs();
    let cp = control_plane();
    let client = cp.client().await;
    let ns = TestNamespace::new(&client, "crd-cols").await;
    let api: Api<Inbox> = Api::namespaced(client.clone(), ns.name());
    api.create(
        &PostParams::default(),
        &Inbox::new("shown", InboxSpec::default()),
    )
    .await
    .unwrap();

    let (header, _) = table("inboxes", "shown", Some(ns.name()), false);
    assert_eq!(
        header,
        [
            "NAME", "ADDRESS", "STATE", "SENT", "TODAY", "LIMIT", "READY", "REASON", "AGE"
        ]
    );

    let not_ready = |reason: &str, message: &str| Condition {
        type_: "Ready".into(),
        status: "False".into(),
        observed_generation: Some(1),
        last_transition_time: "2026-01-01T00:00:00Z".into(),
        reason: reason.into(),
        message: message.into(),
    };
    let message = "AgentSend answered 401 to the key in Secret team-key (key apiKey)";
    let status = InboxStatus {
        address: Some("x7k2m9@agentsend.io".into()),
        state: Some("active".into()),
        sends_today: Some(12),
        daily_send_limit: Some(100),
        sends_remaining: Some(88),
        conditions: vec![not_ready("CredentialsInvalid", message)],
        ..Default::default()
    };
    // Server-side apply of the status subresource works on 1.20 (only the CRD itself can't be).
    let patch = json!({"apiVersion": "agentsend.io/v1alpha1", "kind": "Inbox", "status": status});
    api.patch_status(
        "shown",
        &PatchParams::apply("crd-test").force(),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();

    let (_, row) = table("inboxes", "shown", Some(ns.name()), false);
    assert_eq!(
        row.get(..7).unwrap_or_default(),
        [
            "shown",
            "x7k2m9@agentsend.io",
            "active",
            "12",
            "100",
            "False",
            "CredentialsInvalid"
        ]
    );
    assert_eq!(row.len(), 8, "then one AGE column: {row:?}");
    let (header, row) = table("inboxes", "shown", Some(ns.name()), true);
    assert_eq!(
        header.last().map(String::as_str),
        Some("MESSAGE"),
        "-o wide"
    );
    assert_eq!(row.last().map(String::as_str), Some(message), "-o wide");

    // Accounts and ClusterAccounts (by their short names): the same Reason and (wide) Message.
    let account_status = |reason: &str, message: &str| json!({"conditions": [not_ready(reason, message)], "inboxes": 3});
    let key = SecretKeyRef {
        name: "team-key".into(),
        key: "apiKey".into(),
    };
    let missing = "Secret team-key not found";
    let accounts: Api<Account> = Api::namespaced(client.clone(), ns.name());
    let spec = AccountSpec {
        secret_ref: key.clone(),
    };
    accounts
        .create(&PostParams::default(), &Account::new("team", spec))
        .await
        .unwrap();
    let patch = json!({"apiVersion": "agentsend.io/v1alpha1", "kind": "Account",
        "status": account_status("CredentialsMissing", missing)});
    accounts
        .patch_status(
            "team",
            &PatchParams::apply("crd-test").force(),
            &Patch::Apply(&patch),
        )
        .await
        .unwrap();
    let check = |short: &str, name: &str, ns: Option<&str>, reason: &str, message: &str| {
        let (header, row) = table(short, name, ns, false);
        assert_eq!(
            header,
            ["NAME", "READY", "REASON", "INBOXES", "AGE"],
            "{short}"
        );
        assert_eq!(
            row.get(1..4).unwrap_or_default(),
            ["False", reason, "3"],
            "{short}"
        );
        let (header, row) = table(short, name, ns, true);
        assert_eq!(
            header.last().map(String::as_str),
            Some("MESSAGE"),
            "{short}"
        );
        assert_eq!(row.last().map(String::as_str), Some(message), "{short}");
    };
    check(
        "acct",
        "team",
        Some(ns.name()),
        "CredentialsMissing",
        missing,
    );

    // Cluster-scoped: a name of this test's own, deleted again whatever the outcome.
    let shared = format!("crd-cols-{}", crate::support::random_suffix(6));
    let cluster_accounts: Api<ClusterAccount> = Api::all(client.clone());
    let spec = ClusterAccountSpec {
        secret_ref: key,
        ..Default::default()
    };
    cluster_accounts
        .create(&PostParams::default(), &ClusterAccount::new(&shared, spec))
        .await
        .unwrap();
    // A ClusterAccount is cluster-wide: the other tests' controllers, which write every
    // ClusterAccount's status, may overwrite this test's status between its write and its
    // read. So write it until one read of both tables shows it (the columns are what is
    // checked, not which writer wins), then check those tables.
    let patch = json!({"apiVersion": "agentsend.io/v1alpha1", "kind": "ClusterAccount",
        "status": account_status("ApiUnavailable", "AgentSend answered 503")});
    let message = "AgentSend answered 503";
    let shown = crate::support::wait_for(
        "the ClusterAccount's status shown",
        crate::ctl::T,
        || async {
            let patched = cluster_accounts
                .patch_status(
                    &shared,
                    &PatchParams::apply("crd-test").force(),
                    &Patch::Apply(&patch),
                )
                .await;
            if let Err(e) = patched {
                return Some(Err(e.to_string()));
            }
            let (narrow, wide) = (
                table("cacct", &shared, None, false),
                table("cacct", &shared, None, true),
            );
            let ours = narrow.1.get(2).map(String::as_str) == Some("ApiUnavailable")
                && wide.1.last().map(String::as_str) == Some(message);
            ours.then_some(Ok((narrow, wide)))
        },
    )
    .await;
    let outcome = std::panic::catch_unwind(|| {
        let ((header, row), (wide_header, wide_row)) = shown
            .as_ref()
            .expect("status of the ClusterAccount")
            .clone();
        assert_eq!(
            header,
            ["NAME", "READY", "REASON", "INBOXES", "AGE"],
            "cacct"
        );
        assert_eq!(
            row.get(1..4).unwrap_or_default(),
            ["False", "ApiUnavailable", "3"],
            "cacct"
        );
        assert_eq!(
            wide_header.last().map(String::as_str),
            Some("MESSAGE"),
            "cacct"
        );
        assert_eq!(wide_row.last().map(String::as_str), Some(message), "cacct");
    });
    let _ = cluster_accounts.delete(&shared, &Default::default()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// RBAC names the resource `inboxes` in group `agentsend.io` (and `inboxes/status`): an
/// identity (impersonated, as the operator's ServiceAccount is in the deploy tests) can't read
/// Inboxes until a Role grants exactly that.
#[tokio::test]
async fn rbac_on_inboxes_through_impersonation() {
    let _dump = on_failure_dump_logs();
    let cp = control_plane();
    let admin = cp.client().await;
    let ns = TestNamespace::new(&admin, "crd-rbac").await;
    let user = format!("system:serviceaccount:{}:reader", ns.name());
    let groups = [
        "system:serviceaccounts",
        &format!("system:serviceaccounts:{}", ns.name()),
        "system:authenticated",
    ];
    let kubeconfig = cp.kubeconfig_as(&user, &groups);
    let reader = crate::support::client_from(&kubeconfig).await;
    let as_reader: Api<Inbox> = Api::namespaced(reader, ns.name());
    let admin_api: Api<Inbox> = Api::namespaced(admin.clone(), ns.name());
    admin_api
        .create(
            &PostParams::default(),
            &Inbox::new("visible", InboxSpec::default()),
        )
        .await
        .unwrap();

    let err = as_reader.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "no RBAC yet: {err}"
    );
    assert!(err.to_string().contains(&user), "denied as {user}: {err}");

    let rbac = json!([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "inbox-reader"},
         "rules": [{"apiGroups": ["agentsend.io"], "resources": ["inboxes"], "verbs": ["get", "list"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "inbox-reader"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "inbox-reader"},
         "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns.name()}]}
    ]);
    for obj in rbac.as_array().unwrap() {
        let (ok, _, err) = kubectl_create(ns.name(), obj);
        assert!(ok, "{err}");
    }
    let before = inbox_requests(&cp.metrics(), "LIST");
    let list = crate::support::wait_for("the Role to take effect", Duration::from_secs(10), || {
        let api = as_reader.clone();
        async move { api.list(&ListParams::default()).await.ok() }
    })
    .await;
    assert_eq!(list.items.len(), 1);
    assert!(
        inbox_requests(&cp.metrics(), "LIST") > before,
        "apiserver_request_total counts the LIST of inboxes"
    );
    // get/list only: writing status is still forbidden.
    let err = as_reader
        .patch_status(
            "visible",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"state": "active"}})),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "status write without RBAC: {err}"
    );
}

/// Sum of `apiserver_request_total` for `verb` on `inboxes`.
fn inbox_requests(metrics: &str, verb: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("resource=\"inboxes\"") && l.contains(&format!("verb=\"{verb}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every CEL rule of the CRD, on the server: transition rules never refuse a create, refuse
/// each kind of change (set → other value, set → unset, unset → set) with the rule's message,
/// and let an unchanged value and changes to mutable fields through.
#[tokio::test]
async fn cel_immutability_rules_are_enforced_by_the_server() {
    let _dump = on_failure_dump_logs();
    let client = control_plane().client().await;
    let ns = TestNamespace::new(&client, "crd-cel").await;
    let api: Api<Inbox> = Api::namespaced(client.clone(), ns.name());
    let rules = inbox_operator::api::inbox::crd()
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| s.properties.as_ref())
        .and_then(|p| p.get("spec"))
        .and_then(|s| s.x_kubernetes_validations.clone())
        .expect("spec has CEL rules");

    // field, a value, another value, whether the rule lets it be set after creation.
    let fields = [
        ("address", "cel-a", "cel-b", false),
        ("displayName", "Agent A", "Agent B", false),
        ("domainId", "dom_a", "dom_b", false),
        ("inboxId", "ibx_a", "ibx_b", true),
    ];
    // ...and the one rule that is not a transition rule (accountRef or credentials).
    assert_eq!(rules.len(), fields.len() + 1, "a case for every rule");
    let both = json!({
        "accountRef": {"kind": "ClusterAccount", "name": "shared"},
        "credentials": {"secretRef": {"name": "key"}},
    });
    let (ok, _, err) = kubectl_create(ns.name(), &inbox("cel-both", both));
    assert!(
        !ok && err.contains("set accountRef or credentials, not both"),
        "{err}"
    );
    let mut n = 0;
    let mut fresh = |spec: Value| {
        n += 1;
        let name = format!("cel-{n}");
        let (ok, _, err) = kubectl_create(ns.name(), &inbox(&name, spec));
        assert!(ok, "transition rules never refuse a create: {err}");
        name
    };
    for (field, one, other, settable_later) in fields {
        let message = rules
            .iter()
            .find(|r| r.rule.contains(&format!("oldSelf.{field}")))
            .map(|r| r.message.clone().unwrap_or_default())
            .unwrap_or_else(|| panic!("a rule for {field}"));
        let refused = |name: &str, patch: Value| {
            let (api, name, message) = (api.clone(), name.to_string(), message.clone());
            async move {
                let err = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect_err("refused");
                let kube::Error::Api(status) = &err else {
                    panic!("{field}: not an API error: {err}");
                };
                assert_eq!(status.code, 422, "{field}: {err}");
                assert!(status.message.contains(&message), "{field}: {err}");
            }
        };
        let accepted = |name: &str, patch: Value| {
            let (api, name) = (api.clone(), name.to_string());
            async move {
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .unwrap_or_else(|e| panic!("{field}: {patch} refused: {e}"));
            }
        };

        let set = fresh(json!({ field: one }));
        refused(&set, json!({"spec": { field: other }})).await;
        refused(&set, json!({"spec": { field: null }})).await;
        accepted(&set, json!({"spec": { field: one }})).await;
        accepted(&set, json!({"spec": {"deletionPolicy": "Orphan"}})).await;

        let unset = fresh(json!({}));
        if settable_later {
            accepted(&unset, json!({"spec": { field: one }})).await;
            refused(&unset, json!({"spec": { field: other }})).await;
        } else {
            refused(&unset, json!({"spec": { field: one }})).await;
        }
        let kept = api.get(&set).await.unwrap();
        let spec = serde_json::to_value(&kept.spec).unwrap();
        assert_eq!(spec[field], json!(one), "{field} kept");
    }
}
