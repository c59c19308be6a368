//! deploy/, the Helm chart and examples/ on a real apiserver: every manifest (the CRD included)
//! applies with `kubectl apply --server-side`; the chart installs, upgrades and uninstalls with
//! the real `helm`; and the operator, run with exactly the ServiceAccount's RBAC from deploy/base
//! (impersonation), takes an Inbox through create → Ready → delete.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Operator, TestNamespace, control_plane, output_with_stdin, wait_for};
use inbox_operator::api::common::SecretKeyRef;
use inbox_operator::api::inbox::{CredentialsSpec, Inbox, InboxSpec};
use inbox_sim::Simulator;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn kustomize(dir: &str) -> String {
    let out = control_plane()
        .kubectl()
        .args(["kustomize", &format!("{ROOT}/{dir}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn apply_server_side(yaml: &str, ns: Option<&str>) {
    let mut cmd = control_plane().kubectl();
    cmd.args([
        "apply",
        "--server-side",
        "--field-manager=deploy-test",
        "-f",
        "-",
    ]);
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let out = output_with_stdin(&mut cmd, yaml);
    assert!(
        out.status.success(),
        "apply failed: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn manifests_apply_and_operator_runs_with_deployed_rbac() {
    let _dump = crate::support::on_failure_dump_logs();
    let cp = control_plane();
    let client = cp.client().await;

    // deploy/base and deploy/namespaced (whose Roles need their namespaces).
    for ns in ["team-a", "team-b"] {
        let _ = cp
            .kubectl()
            .args(["create", "namespace", ns])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
    let base = kustomize("deploy/base");
    assert!(
        base.contains("kind: CustomResourceDefinition"),
        "base installs the CRD"
    );
    apply_server_side(&base, None);
    apply_server_side(&kustomize("deploy/namespaced"), None);
    // The component deploy/ha adds a PodDisruptionBudget: valid for the server, field by field.
    let pdb = control_plane()
        .kubectl()
        .args(["create", "--dry-run=server", "--validate=strict", "-f"])
        .arg(format!("{ROOT}/deploy/ha/poddisruptionbudget.yaml"))
        .output()
        .unwrap();
    assert!(pdb.status.success(), "{pdb:?}");
    // As typed CRDs: kustomize writes `minimum: 0.0` as `0`.
    type Crd = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let rendered = kustomize("crds");
    let mut crd_dir: Vec<Crd> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let mut generated: Vec<Crd> = inbox_operator::commands::crd::crd_files()
        .unwrap()
        .values()
        .map(|y| serde_yaml::from_str(y).unwrap())
        .collect();
    let by_name = |c: &Crd| c.metadata.name.clone();
    crd_dir.sort_by_key(by_name);
    generated.sort_by_key(by_name);
    assert_eq!(
        crd_dir, generated,
        "crds/ kustomization renders the generated CRDs"
    );

    // Every example.
    let ns = TestNamespace::new(&client, "examples").await;
    // The test controller-manager runs no serviceaccount controller (only the garbage collector,
    // the namespace and the clusterrole-aggregation controllers):
    // create the `default` ServiceAccount the Pod example needs.
    let _ = cp
        .kubectl()
        .args(["-n", ns.name(), "create", "serviceaccount", "default"])
        .stdout(Stdio::null())
        .status();
    let mut examples: Vec<_> = std::fs::read_dir(format!("{ROOT}/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    examples.sort();
    assert!(examples.len() >= 6, "{examples:?}");
    for path in &examples {
        apply_server_side(&std::fs::read_to_string(path).unwrap(), Some(ns.name()));
    }
    apply_server_side(&kustomize("examples"), Some(ns.name()));

    // The operator with exactly the ServiceAccount's permissions.
    let sa = "system:serviceaccount:inbox-operator:inbox-operator";
    let kubeconfig = cp.kubeconfig_as(
        sa,
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:inbox-operator",
            "system:authenticated",
        ],
    );
    let can_i = |verb: &str, resource: &str| {
        cp.kubectl_without_kubeconfig()
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["auth", "can-i", verb, resource, "-A"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes")
            .unwrap_or(false)
    };
    assert!(can_i("watch", "inboxes.agentsend.io"));
    assert!(can_i("watch", "namespaces"), "namespace defaults");
    assert!(
        !can_i("delete", "inboxes.agentsend.io"),
        "least privilege: no Inbox deletes"
    );
    assert!(
        !can_i("create", "customresourcedefinitions"),
        "least privilege: no CRD writes"
    );
    assert!(
        !can_i("get", "pods"),
        "least privilege: nothing beyond Inboxes, Secrets, events"
    );

    let sim = Simulator::new();
    sim.add_account("acct", "rbac-key");
    let handle = sim.spawn().await.unwrap();
    let work = TestNamespace::new(&client, "rbac").await;
    // Cluster-wide, as deployed, but reconciling only the Inbox labelled for this test
    // (`--selector`): the other tests share the control plane, and their Inboxes are not its.
    let shard = format!("inbox-operator-test/rbac={}", work.name());
    let lease = format!("rbac-{}", work.name());
    let op = Operator::start(
        &kubeconfig,
        &handle.url(),
        "rbac-key",
        &[
            "--leader-elect",
            "--lease-namespace",
            "inbox-operator",
            "--lease-name",
            &lease,
            "--lease-duration",
            "4s",
            "--sync-interval",
            "5s",
            "--selector",
            &shard,
        ],
        "info",
    );

    let api: Api<Inbox> = Api::namespaced(client.clone(), work.name());
    let mut bot = Inbox::new("rbac-bot", InboxSpec::default());
    bot.metadata.labels = Some(
        [(
            "inbox-operator-test/rbac".to_string(),
            work.name().to_string(),
        )]
        .into(),
    );
    api.create(&PostParams::default(), &bot).await.unwrap();
    let ready = wait_for(
        "Ready under deployed RBAC",
        Duration::from_secs(60),
        || async {
            let i = api.get("rbac-bot").await.ok()?;
            i.status
                .as_ref()?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(i)
        },
    )
    .await;
    let id = ready.status.unwrap().inbox_id.unwrap();
    assert!(sim.inbox(&id).is_some());
    api.delete("rbac-bot", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        "deleted under deployed RBAC",
        Duration::from_secs(60),
        || async { matches!(api.get_opt("rbac-bot").await, Ok(None)).then_some(()) },
    )
    .await;
    assert!(sim.inbox(&id).is_none(), "the AgentSend inbox was deleted");
    // The deployed Role lets the leader renew its Lease, not only create it.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "inbox-operator");
    wait_for(
        "a renewal under deployed RBAC",
        Duration::from_secs(30),
        || async {
            let spec = leases.get(&lease).await.ok()?.spec?;
            (spec.renew_time.is_some() && spec.renew_time != spec.acquire_time).then_some(())
        },
    )
    .await;
    let logs = op.logs();
    assert!(!logs.contains("forbidden"), "a call was forbidden:\n{logs}");
}

#[test]
fn argocd_health_check() {
    // Argo CD runs health checks in gopher-lua, a Lua 5.1: prefer that dialect.
    let lua = ["lua5.1", "lua5.4", "lua5.3", "lua"].into_iter().find(|l| {
        Command::new(l)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    let Some(lua) = lua else {
        panic!("no Lua interpreter: apt-get install lua5.1 (.ci/run does)");
    };
    let out = Command::new(lua)
        .current_dir(format!("{ROOT}/deploy/argocd"))
        .arg("test_health.lua")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// charts/inbox-operator/README.md is what hack/chart-readme.py makes of values.yaml, every value
/// is documented, and values.schema.json is strict (`make chart-readme` regenerates the README).
#[test]
fn chart_readme_is_current() {
    let out = Command::new("python3")
        .arg(format!("{ROOT}/hack/chart-readme.py"))
        .arg("--check")
        .output()
        .expect("python3 with PyYAML (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn helm_chart_crds_match() {
    let dir = format!("{ROOT}/charts/inbox-operator/files/crds");
    let mut copies: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    copies.sort();
    let files = inbox_operator::commands::crd::crd_files().unwrap();
    assert_eq!(
        copies,
        files.keys().cloned().collect::<Vec<_>>(),
        "{dir}: one copy per CRD (`make crd`)"
    );
    for (name, generated) in files {
        let chart = std::fs::read_to_string(format!("{dir}/{name}")).unwrap();
        assert_eq!(
            chart, generated,
            "charts/inbox-operator/files/crds/{name}: run `make crd`"
        );
    }
}

/// `helm ARGS` (the real binary built with the control plane); its output.
fn helm(args: &[&str]) -> std::process::Output {
    control_plane()
        .helm()
        .args(args)
        .output()
        .expect("run helm (hack/envtest-assets.sh builds it; or set HELM)")
}

/// `helm ARGS` that must succeed; its stdout.
fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `kubectl get KIND NAME` (with `-n NS` when given) finds the object.
fn exists(kind: &str, name: &str, ns: Option<&str>) -> bool {
    let mut cmd = control_plane().kubectl();
    cmd.args(["get", kind, name, "-o", "name"]);
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

/// Which chart [`TestCrds::chart`] makes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Layout {
    /// This chart.
    New,
    /// This chart with an older CRD (no `spec.configMap`).
    Old,
    /// An older chart that still had its CRDs in `crds/` (no `spec.configMap` either).
    CrdsDir,
}

/// The chart's CRDs, each under an API group of the test's own, so that a test installs,
/// upgrades and uninstalls CRDs without touching `agentsend.io` (every other test's Inboxes).
/// The chart's templates do the rest exactly as for the real CRDs.
struct TestCrds {
    group: String,
}

impl TestCrds {
    fn new() -> Self {
        TestCrds {
            group: format!("h{}.inbox-operator.test", crate::support::random_suffix(6)),
        }
    }

    fn names(&self) -> [String; 3] {
        ["inboxes", "accounts", "clusteraccounts"].map(|p| format!("{p}.{}", self.group))
    }

    /// The CRD files of the chart moved to this group; without `spec.configMap` when `old`
    /// (the schema of an operator from before that field).
    fn files(&self, old: bool) -> Vec<(String, String)> {
        let dir = format!("{ROOT}/charts/inbox-operator/files/crds");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let mut crd: serde_yaml::Value =
                serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let plural = crd["spec"]["names"]["plural"].as_str().unwrap().to_string();
            crd["metadata"]["name"] = format!("{plural}.{}", self.group).into();
            crd["spec"]["group"] = self.group.clone().into();
            if old && plural == "inboxes" {
                let spec = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
                    ["spec"]["properties"];
                let removed = spec.as_mapping_mut().unwrap().remove("configMap");
                assert!(removed.is_some(), "the Inbox CRD has spec.configMap");
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, serde_yaml::to_string(&crd).unwrap()));
        }
        out
    }

    /// A copy of the chart, in `dir`, whose CRDs are [`TestCrds::files`], as `layout` says.
    fn chart(&self, dir: &std::path::Path, layout: Layout) -> String {
        fn copy(from: &std::path::Path, to: &std::path::Path) {
            std::fs::create_dir_all(to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                let target = to.join(entry.file_name());
                if entry.file_type().unwrap().is_dir() {
                    copy(&entry.path(), &target);
                } else {
                    std::fs::copy(entry.path(), &target).unwrap();
                }
            }
        }
        let chart = dir.join(format!("{layout:?}"));
        copy(
            std::path::Path::new(&format!("{ROOT}/charts/inbox-operator")),
            &chart,
        );
        let mut crds = chart.join("files/crds");
        if layout == Layout::CrdsDir {
            std::fs::remove_file(chart.join("templates/crds.yaml")).unwrap();
            std::fs::remove_dir_all(&crds).unwrap();
            crds = chart.join("crds");
            std::fs::create_dir(&crds).unwrap();
        }
        for (name, yaml) in self.files(layout != Layout::New) {
            std::fs::write(crds.join(name), yaml).unwrap();
        }
        chart.to_string_lossy().into_owned()
    }

    /// `kubectl create` (strict field validation, as kubectl does by default) of an Inbox of
    /// this group with `spec.configMap`.
    fn create_inbox_with_config_map(&self, ns: &str, name: &str) -> std::process::Output {
        let inbox = serde_json::json!({
            "apiVersion": format!("{}/v1alpha1", self.group), "kind": "Inbox",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"configMap": {"name": format!("{name}-address")}},
        });
        control_plane().kubectl_with_stdin(&["create", "-f", "-"], &inbox.to_string())
    }

    fn uid(&self, name: &str) -> String {
        control_plane().kubectl_ok(&["get", "crd", name, "-o", "jsonpath={.metadata.uid}"])
    }
}

impl Drop for TestCrds {
    fn drop(&mut self) {
        let mut cmd = control_plane().kubectl();
        cmd.args(["delete", "crd", "--ignore-not-found", "--wait=false"])
            .args(self.names())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = cmd.status();
    }
}

/// The chart as users run it: `helm install` of an older chart, `helm upgrade` to this one
/// with a changed value and a CRD with a new field, `helm uninstall`, against the test
/// apiserver. The CRDs are installed and upgraded by the chart, and kept on uninstall with the
/// objects in them. No kubelet runs the Pods: the objects are checked, not the Pods.
#[tokio::test]
async fn helm_install_upgrade_uninstall() {
    let _dump = crate::support::on_failure_dump_logs();
    let cp = control_plane();
    let client = cp.client().await;
    let ns = TestNamespace::new(&client, "helm").await;
    // The ClusterRoles and ClusterRoleBindings are cluster-wide: a name of this test's own.
    let fullname = format!("helm-{}", crate::support::random_suffix(6));
    let crds = TestCrds::new();
    let dir = tempfile::tempdir().unwrap();
    let (old_chart, new_chart) = (
        crds.chart(dir.path(), Layout::Old),
        crds.chart(dir.path(), Layout::New),
    );
    let release = [
        "--namespace",
        ns.name(),
        "--set",
        &format!("fullnameOverride={fullname}"),
    ];
    let namespaced = [
        ("deployment", fullname.clone()),
        ("serviceaccount", fullname.clone()),
        ("service", format!("{fullname}-metrics")),
        ("role", format!("{fullname}-leader-election")),
    ];
    let cluster = [
        ("clusterrole", fullname.clone()),
        ("clusterrolebinding", fullname.clone()),
        ("clusterrole", format!("{fullname}-view")),
        ("clusterrole", format!("{fullname}-edit")),
    ];

    helm_ok(&[&["install", "inbox-operator", &old_chart][..], &release[..]].concat());
    for (kind, name) in &namespaced {
        assert!(
            exists(kind, name, Some(ns.name())),
            "{kind}/{name} installed"
        );
    }
    for (kind, name) in &cluster {
        assert!(exists(kind, name, None), "{kind}/{name} installed");
    }
    let [inboxes, ..] = crds.names();
    control_plane().kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        &format!("crd/{inboxes}"),
    ]);
    let uids = crds.names().map(|n| crds.uid(&n));
    // The old CRD does not know spec.configMap: kubectl's strict field validation says so.
    let refused = crds.create_inbox_with_config_map(ns.name(), "early");
    assert!(
        !refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("configMap"),
        "the old CRD refuses spec.configMap: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let bare = serde_json::json!({
        "apiVersion": format!("{}/v1alpha1", crds.group), "kind": "Inbox",
        "metadata": {"name": "kept", "namespace": ns.name()}, "spec": {},
    });
    let created = control_plane().kubectl_with_stdin(&["create", "-f", "-"], &bare.to_string());
    assert!(created.status.success(), "{created:?}");

    let args = || {
        let out = cp
            .kubectl()
            .args(["get", "deployment", &fullname, "-n", ns.name()])
            .args(["-o", "jsonpath={.spec.template.spec.containers[0].args}"])
            .output()
            .expect("kubectl get deployment");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!args().contains("--sync-interval"), "default: {}", args());

    helm_ok(
        &[
            &[
                "upgrade",
                "inbox-operator",
                &new_chart,
                "--set",
                "syncInterval=30s",
            ][..],
            &release[..],
        ]
        .concat(),
    );
    assert!(
        args().contains("--sync-interval=30s"),
        "upgraded: {}",
        args()
    );
    let history = helm_ok(&["history", "inbox-operator", "--namespace", ns.name()]);
    assert_eq!(
        history.lines().count(),
        3,
        "header + two revisions: {history}"
    );
    // The upgrade upgraded the CRD (the same CRD, not a new one): the new field is served
    // once the server has loaded the new schema.
    assert_eq!(crds.names().map(|n| crds.uid(&n)), uids, "updated in place");
    wait_for(
        "spec.configMap accepted after the upgrade",
        Duration::from_secs(60),
        || async {
            let out = crds.create_inbox_with_config_map(ns.name(), "late");
            out.status.success().then_some(())
        },
    )
    .await;
    let stored = control_plane().kubectl_ok(&[
        "get",
        &inboxes,
        "late",
        "-n",
        ns.name(),
        "-o",
        "jsonpath={.spec.configMap.name}",
    ]);
    assert_eq!(stored, "late-address", "stored, not pruned");

    helm_ok(&["uninstall", "inbox-operator", "--namespace", ns.name()]);
    wait_for(
        "the release's objects gone",
        Duration::from_secs(60),
        || async {
            let left = namespaced
                .iter()
                .any(|(kind, name)| exists(kind, name, Some(ns.name())))
                || cluster.iter().any(|(kind, name)| exists(kind, name, None));
            (!left).then_some(())
        },
    )
    .await;
    // crds.keep: the CRDs stay, and the Inboxes in them (deleting a CRD deletes them all).
    assert_eq!(crds.names().map(|n| crds.uid(&n)), uids, "the CRDs stay");
    assert!(exists(&inboxes, "kept", Some(ns.name())), "the Inbox stays");
}

/// A release of a chart from before the chart managed its CRDs (they were in its `crds/`,
/// installed once and never upgraded by Helm), upgraded to this chart: Helm refuses to take
/// over CRDs it did not create, the label and annotations of the chart README hand them to the
/// release, and the upgrade then upgrades them in place, the Inboxes in them untouched.
#[tokio::test]
async fn helm_adopts_crds_of_an_older_chart() {
    let _dump = crate::support::on_failure_dump_logs();
    let client = control_plane().client().await;
    let ns = TestNamespace::new(&client, "helm-adopt").await;
    let fullname = format!("adopt-{}", crate::support::random_suffix(6));
    let crds = TestCrds::new();
    let dir = tempfile::tempdir().unwrap();
    let (old_chart, new_chart) = (
        crds.chart(dir.path(), Layout::CrdsDir),
        crds.chart(dir.path(), Layout::New),
    );
    let set = format!("fullnameOverride={fullname}");
    helm_ok(&[
        "install",
        "inbox-operator",
        &old_chart,
        "--namespace",
        ns.name(),
        "--set",
        &set,
    ]);
    let [inboxes, ..] = crds.names();
    control_plane().kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        &format!("crd/{inboxes}"),
    ]);
    let bare = serde_json::json!({
        "apiVersion": format!("{}/v1alpha1", crds.group), "kind": "Inbox",
        "metadata": {"name": "before", "namespace": ns.name()}, "spec": {},
    });
    let created = control_plane().kubectl_with_stdin(&["create", "-f", "-"], &bare.to_string());
    assert!(created.status.success(), "{created:?}");
    let inbox_uid = || {
        control_plane().kubectl_ok(&[
            "get",
            &inboxes,
            "before",
            "-n",
            ns.name(),
            "-o",
            "jsonpath={.metadata.uid}",
        ])
    };
    let uid = inbox_uid();
    // As the chart README says to upgrade.
    let upgrade = [
        "upgrade",
        "inbox-operator",
        &new_chart,
        "--namespace",
        ns.name(),
        "--reset-then-reuse-values",
    ];
    let out = helm(&upgrade);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("invalid ownership metadata"),
        "Helm does not take over CRDs it did not create: {out:?}"
    );
    let names = crds.names();
    let mut label = vec!["label", "crd"];
    label.extend(names.iter().map(String::as_str));
    label.push("app.kubernetes.io/managed-by=Helm");
    control_plane().kubectl_ok(&label);
    let release_ns = format!("meta.helm.sh/release-namespace={}", ns.name());
    let mut annotate = vec!["annotate", "crd"];
    annotate.extend(names.iter().map(String::as_str));
    annotate.extend(["meta.helm.sh/release-name=inbox-operator", &release_ns]);
    control_plane().kubectl_ok(&annotate);

    helm_ok(&upgrade);
    let deployment =
        control_plane().kubectl_ok(&["get", "deployment", "-n", ns.name(), "-o", "name"]);
    assert_eq!(
        deployment.trim(),
        format!("deployment.apps/{fullname}"),
        "the release's values reused"
    );
    let keep = control_plane().kubectl_ok(&[
        "get",
        "crd",
        &inboxes,
        "-o",
        "jsonpath={.metadata.annotations.helm\\.sh/resource-policy}",
    ]);
    assert_eq!(keep, "keep", "the chart's CRD now");
    wait_for(
        "spec.configMap accepted after the upgrade",
        Duration::from_secs(60),
        || async {
            let out = crds.create_inbox_with_config_map(ns.name(), "after");
            out.status.success().then_some(())
        },
    )
    .await;
    assert_eq!(inbox_uid(), uid, "the Inbox from before is untouched");
    helm_ok(&["uninstall", "inbox-operator", "--namespace", ns.name()]);
    assert!(exists("crd", &inboxes, None), "kept on uninstall");
    assert_eq!(inbox_uid(), uid, "and the Inbox in it");
}

/// The cluster-scoped RBAC objects of `deploy/namespaced`.
const CLUSTER_WIDE_NAMESPACED: [&str; 6] = [
    "inbox-operator-binding-check",
    "inbox-operator-clusteraccounts",
    "inbox-operator-metrics-auth",
    "inbox-operator-metrics-reader",
    "inbox-operator-view",
    "inbox-operator-edit",
];

/// `deploy/namespaced` as shipped, moved to this test's namespaces: the operator's namespace
/// `home` (ServiceAccount, Lease Role) and the watched `a` and `b` (Roles). Its ClusterRoles
/// and ClusterRoleBindings get names of their own so that tests running at once do not
/// rebind them.
fn namespaced_install(home: &str, a: &str, b: &str) -> String {
    let mut yaml = kustomize("deploy/namespaced");
    for cluster_wide in CLUSTER_WIDE_NAMESPACED {
        yaml = yaml.replace(
            &format!("name: {cluster_wide}\n"),
            &format!("name: {cluster_wide}-{home}\n"),
        );
    }
    yaml.replace(
        "namespace: inbox-operator\n",
        &format!("namespace: {home}\n"),
    )
    .replace("namespace: team-a\n", &format!("namespace: {a}\n"))
    .replace("namespace: team-b\n", &format!("namespace: {b}\n"))
}

/// The namespaced variant under exactly its RBAC (impersonating its ServiceAccount): Inboxes
/// in both watched namespaces become Ready — one with the default key, one with a key Secret
/// of its namespace (watched by name) — while a Secret in any other namespace is forbidden.
#[tokio::test]
async fn namespaced_install_works_and_is_confined_by_rbac() {
    let _dump = crate::support::on_failure_dump_logs();
    let cp = control_plane();
    let client = cp.client().await;
    let home = TestNamespace::new(&client, "nsop").await;
    let a = TestNamespace::new(&client, "nsop-a").await;
    let b = TestNamespace::new(&client, "nsop-b").await;
    let outside = TestNamespace::new(&client, "nsop-out").await;
    apply_server_side(&namespaced_install(home.name(), a.name(), b.name()), None);

    let sa = format!("system:serviceaccount:{}:inbox-operator", home.name());
    let groups = format!("system:serviceaccounts:{}", home.name());
    let kubeconfig = cp.kubeconfig_as(
        &sa,
        &["system:serviceaccounts", &groups, "system:authenticated"],
    );
    let sim = Simulator::new();
    sim.add_account("acct", "default-key");
    sim.add_account("team", "team-key");
    let handle = sim.spawn().await.unwrap();
    let watched = format!("--namespace={},{}", a.name(), b.name());
    let op = Operator::start(
        &kubeconfig,
        &handle.url(),
        "default-key",
        &[
            &watched,
            "--leader-elect",
            "--lease-namespace",
            home.name(),
            // As POD_NAMESPACE in the pod: ClusterAccount key Secrets are looked for (and
            // watched by name) where the install's Role allows it.
            "--operator-namespace",
            home.name(),
            "--sync-interval",
            "5s",
            "--metrics-secure",
        ],
        "info",
    );

    // The shipped metrics RBAC: the operator may review tokens, a bound reader may scrape.
    let scraper = crate::secure_metrics::token_of(home.name(), "scraper");
    let reader_binding = format!("inbox-operator-metrics-reader-{}", home.name());
    let bound = cp
        .kubectl()
        .args(["create", "clusterrolebinding", &reader_binding])
        .arg(format!("--clusterrole={reader_binding}"))
        .arg(format!("--serviceaccount={}:scraper", home.name()))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(bound.success());
    let port = op.metrics_port();
    wait_for(
        "a scrape under the shipped RBAC",
        Duration::from_secs(60),
        || async {
            (crate::secure_metrics::scrape(port, Some(&scraper)).await == 200).then_some(())
        },
    )
    .await;

    let secrets = |ns: &str| Api::<Secret>::namespaced(client.clone(), ns);
    let key = Secret {
        metadata: ObjectMeta {
            name: Some("team-key".into()),
            ..Default::default()
        },
        string_data: Some([("apiKey".to_string(), "team-key".to_string())].into()),
        ..Default::default()
    };
    secrets(b.name())
        .create(&PostParams::default(), &key)
        .await
        .unwrap();
    let with_key = InboxSpec {
        credentials: Some(Box::new(CredentialsSpec {
            secret_ref: SecretKeyRef {
                name: "team-key".into(),
                key: "apiKey".into(),
            },
        })),
        ..Default::default()
    };
    let inboxes = |ns: &str| Api::<Inbox>::namespaced(client.clone(), ns);
    for (ns, spec) in [(a.name(), InboxSpec::default()), (b.name(), with_key)] {
        inboxes(ns)
            .create(&PostParams::default(), &Inbox::new("bot", spec))
            .await
            .unwrap();
    }
    for ns in [a.name(), b.name()] {
        wait_for(
            "Ready under namespaced RBAC",
            Duration::from_secs(60),
            || async {
                let i = inboxes(ns).get("bot").await.ok()?;
                let ready = i.status.as_ref()?.conditions.iter();
                ready
                    .clone()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
    }
    assert_eq!(sim.inboxes("team").len(), 1, "the key Secret's account");

    // Forbidden outside the watched namespaces, by RBAC — not merely unused.
    secrets(outside.name())
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("not-yours".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let as_operator = crate::support::client_from(&kubeconfig).await;
    let denied = |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    let theirs: Api<Secret> = Api::namespaced(as_operator.clone(), outside.name());
    assert!(denied(theirs.get("not-yours").await.map(|_| ())));
    let everywhere: Api<Secret> = Api::all(as_operator.clone());
    assert!(denied(
        everywhere.list(&Default::default()).await.map(|_| ())
    ));

    for ns in [a.name(), b.name()] {
        inboxes(ns)
            .delete("bot", &DeleteParams::default())
            .await
            .unwrap();
        wait_for(
            "deleted under namespaced RBAC",
            Duration::from_secs(60),
            || async { matches!(inboxes(ns).get_opt("bot").await, Ok(None)).then_some(()) },
        )
        .await;
    }
    let logs = op.logs();
    assert!(!logs.contains("forbidden"), "a call was forbidden:\n{logs}");
    drop(op);
    for cluster_wide in CLUSTER_WIDE_NAMESPACED {
        let _ = cp
            .kubectl()
            .args(["delete", "clusterrole,clusterrolebinding"])
            .arg(format!("{cluster_wide}-{}", home.name()))
            .args(["--ignore-not-found", "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The shard overlay of docs/install.md ("Sharding"), shipped as deploy/shard: it holds no
/// CRD, so applying it and deleting it again leave the cluster's CRDs (and with them every
/// Inbox) as they were. Its objects are moved to names of this test's own.
#[tokio::test]
async fn shard_overlay_leaves_the_crds_alone() {
    let _dump = crate::support::on_failure_dump_logs();
    let rendered = kustomize("deploy/shard");
    let kinds: Vec<&str> = rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert!(
        !kinds.contains(&"CustomResourceDefinition"),
        "no CRD in the shard overlay: {kinds:?}"
    );
    for kind in [
        "Deployment",
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
    ] {
        assert!(kinds.contains(&kind), "{kind} in the shard overlay");
    }
    let docs = std::fs::read_to_string(format!("{ROOT}/docs/install.md")).unwrap();
    let overlay =
        std::fs::read_to_string(format!("{ROOT}/deploy/shard/kustomization.yaml")).unwrap();
    assert!(
        docs.contains(&overlay),
        "docs/install.md shows deploy/shard/kustomization.yaml as it is"
    );

    // The shard's namespace (the overlay creates it) and every other name of its own: the
    // -b suffix becomes this test's.
    let ns = format!("shard-{}", crate::support::random_suffix(6));
    let yaml = rendered
        .replace("inbox-operator-b", &ns)
        .replace("-b\n", &format!("-{ns}\n"));
    let crds = [
        "inboxes.agentsend.io",
        "accounts.agentsend.io",
        "clusteraccounts.agentsend.io",
    ];
    let state = || {
        crds.map(|crd| {
            control_plane().kubectl_ok(&[
                "get",
                "crd",
                crd,
                "-o",
                "jsonpath={.metadata.uid} {.metadata.deletionTimestamp}",
            ])
        })
    };
    let before = state();

    apply_server_side(&yaml, None);
    let args = control_plane().kubectl_ok(&[
        "get",
        "deployment",
        &ns,
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].args}",
    ]);
    assert!(args.contains("--selector=shard=b"), "{args}");
    assert_eq!(state(), before, "applying the shard left the CRDs alone");

    let deleted = control_plane().kubectl_with_stdin(&["delete", "--wait=false", "-f", "-"], &yaml);
    assert!(deleted.status.success(), "{deleted:?}");
    wait_for(
        "the shard's objects gone",
        Duration::from_secs(60),
        || async {
            let left = exists("deployment", &ns, Some(&ns))
                || exists("clusterrole", &ns, None)
                || exists("clusterrolebinding", &ns, None);
            (!left).then_some(())
        },
    )
    .await;
    assert_eq!(state(), before, "deleting the shard left the CRDs alone");
}

/// A developer bound to the built-in `edit` ClusterRole in a namespace creates, changes and
/// deletes Inboxes and Accounts there, through the aggregated `inbox-operator-edit` (copied into
/// `edit` by the clusterrole-aggregation controller); not elsewhere, not their status, and
/// never ClusterAccounts — not even bound to `admin` cluster-wide. A `view` user reads them
/// and cannot create one. Each user is a kube client impersonating them.
#[tokio::test]
async fn people_bound_to_edit_and_view_use_inboxes() {
    use inbox_operator::api::account::{Account, AccountSpec, ClusterAccount, ClusterAccountSpec};
    use kube::api::{ListParams, Patch, PatchParams};

    let _dump = crate::support::on_failure_dump_logs();
    let cp = control_plane();
    let admin = cp.client().await;
    let ns = TestNamespace::new(&admin, "roles").await;
    let elsewhere = TestNamespace::new(&admin, "roles-other").await;
    let n = ns.name();

    // The shipped roles (deploy/common, the same as the chart's), under names of this test's own.
    let roles = std::fs::read_to_string(format!("{ROOT}/deploy/common/aggregated-roles.yaml"))
        .unwrap()
        .replace(
            "name: inbox-operator-view\n",
            &format!("name: inbox-operator-view-{n}\n"),
        )
        .replace(
            "name: inbox-operator-edit\n",
            &format!("name: inbox-operator-edit-{n}\n"),
        );
    apply_server_side(&roles, None);
    let cluster_admin_binding = format!("roles-admin-{n}");
    struct Cleanup(Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = control_plane()
                .kubectl()
                .args(["delete", "--ignore-not-found", "--wait=false"])
                .args(&self.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let _cleanup = Cleanup(vec![
        format!("clusterrole/inbox-operator-view-{n}"),
        format!("clusterrole/inbox-operator-edit-{n}"),
        format!("clusterrolebinding/{cluster_admin_binding}"),
    ]);

    let (dev, viewer, ns_admin) = (
        format!("dev-{n}"),
        format!("viewer-{n}"),
        format!("admin-{n}"),
    );
    control_plane().kubectl_ok(&[
        "create",
        "rolebinding",
        "dev",
        "--clusterrole=edit",
        "--user",
        &dev,
        "-n",
        n,
    ]);
    control_plane().kubectl_ok(&[
        "create",
        "rolebinding",
        "viewer",
        "--clusterrole=view",
        "--user",
        &viewer,
        "-n",
        n,
    ]);
    control_plane().kubectl_ok(&[
        "create",
        "clusterrolebinding",
        &cluster_admin_binding,
        "--clusterrole=admin",
        "--user",
        &ns_admin,
    ]);
    let as_user = |user: &str| {
        let kubeconfig = cp.kubeconfig_as(user, &["system:authenticated"]);
        async move { crate::support::client_from(&kubeconfig).await }
    };
    let (dev, viewer, ns_admin) = (
        as_user(&dev).await,
        as_user(&viewer).await,
        as_user(&ns_admin).await,
    );
    let forbidden =
        |r: Result<(), kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);

    // The aggregation controller copies the rules into `edit` shortly after the roles exist.
    let inboxes: Api<Inbox> = Api::namespaced(dev.clone(), n);
    wait_for(
        "an edit user creates an Inbox",
        Duration::from_secs(60),
        || async {
            match inboxes
                .create(
                    &PostParams::default(),
                    &Inbox::new("dev-bot", InboxSpec::default()),
                )
                .await
            {
                Ok(_) => Some(()),
                Err(kube::Error::Api(s)) if s.code == 403 => None,
                Err(e) => panic!("creating an Inbox as an edit user: {e}"),
            }
        },
    )
    .await;
    inboxes
        .patch(
            "dev-bot",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"deletionPolicy": "Orphan"}})),
        )
        .await
        .expect("an edit user changes an Inbox");
    assert!(
        forbidden(
            inboxes
                .patch_status(
                    "dev-bot",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"status": {"state": "active"}})),
                )
                .await
                .map(|_| ())
        ),
        "status is the operator's"
    );
    let key = SecretKeyRef {
        name: "team-key".into(),
        key: "apiKey".into(),
    };
    let accounts: Api<Account> = Api::namespaced(dev.clone(), n);
    accounts
        .create(
            &PostParams::default(),
            &Account::new(
                "team",
                AccountSpec {
                    secret_ref: key.clone(),
                },
            ),
        )
        .await
        .expect("an edit user creates an Account");
    let other: Api<Inbox> = Api::namespaced(dev.clone(), elsewhere.name());
    assert!(
        forbidden(
            other
                .create(
                    &PostParams::default(),
                    &Inbox::new("x", InboxSpec::default())
                )
                .await
                .map(|_| ())
        ),
        "edit in one namespace only"
    );
    let shared = ClusterAccount::new(
        &format!("roles-{n}"),
        ClusterAccountSpec {
            secret_ref: key,
            ..Default::default()
        },
    );
    for (who, client) in [("edit", &dev), ("admin (cluster-wide)", &ns_admin)] {
        let cluster_accounts: Api<ClusterAccount> = Api::all(client.clone());
        assert!(
            forbidden(
                cluster_accounts
                    .create(&PostParams::default(), &shared)
                    .await
                    .map(|_| ())
            ),
            "{who} never creates ClusterAccounts"
        );
    }

    let seen: Api<Inbox> = Api::namespaced(viewer.clone(), n);
    let listed = seen
        .list(&ListParams::default())
        .await
        .expect("a view user lists Inboxes");
    assert_eq!(
        listed
            .items
            .iter()
            .filter_map(|i| i.metadata.name.as_deref())
            .collect::<Vec<_>>(),
        ["dev-bot"]
    );
    Api::<Account>::namespaced(viewer.clone(), n)
        .get("team")
        .await
        .expect("a view user reads Accounts");
    assert!(
        forbidden(
            seen.create(
                &PostParams::default(),
                &Inbox::new("viewer-bot", InboxSpec::default())
            )
            .await
            .map(|_| ())
        ),
        "a view user creates no Inbox"
    );

    inboxes
        .delete("dev-bot", &DeleteParams::default())
        .await
        .expect("an edit user deletes an Inbox");
}
