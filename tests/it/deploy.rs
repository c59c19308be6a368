//! deploy/, the Helm chart and examples/ on a real apiserver: every manifest (the CRD included)
//! applies with `kubectl apply --server-side`; the chart installs, upgrades and uninstalls with
//! the real `helm`; and the operator, run with exactly the ServiceAccount's RBAC from deploy/base
//! (impersonation), takes an Inbox through create → Ready → delete.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Operator, TestNamespace, control_plane, wait_for};
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
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
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
        Command::new(cp.kubectl_path())
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
    for (name, generated) in inbox_operator::commands::crd::crd_files().unwrap() {
        let chart =
            std::fs::read_to_string(format!("{ROOT}/charts/inbox-operator/crds/{name}")).unwrap();
        assert_eq!(
            chart, generated,
            "charts/inbox-operator/crds/{name}: run `make crd`"
        );
    }
}

/// `helm ARGS` (the real binary built with the control plane) that must succeed; its stdout.
fn helm_ok(args: &[&str]) -> String {
    let out = control_plane()
        .helm()
        .args(args)
        .output()
        .expect("run helm (hack/envtest-assets.sh builds it; or set HELM)");
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

/// The chart as users run it: `helm install`, `helm upgrade` with a changed value, `helm
/// uninstall`, against the test apiserver. No kubelet runs the Pods: the objects are checked,
/// not the Pods.
#[tokio::test]
async fn helm_install_upgrade_uninstall() {
    let _dump = crate::support::on_failure_dump_logs();
    let cp = control_plane();
    let client = cp.client().await;
    let ns = TestNamespace::new(&client, "helm").await;
    // The ClusterRole and ClusterRoleBinding are cluster-wide: a name of this test's own.
    let fullname = format!("helm-{}", crate::support::random_suffix(6));
    let chart = format!("{ROOT}/charts/inbox-operator");
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
        ("clusterrole", &fullname),
        ("clusterrolebinding", &fullname),
    ];

    helm_ok(&[&["install", "inbox-operator", &chart][..], &release[..]].concat());
    for (kind, name) in &namespaced {
        assert!(
            exists(kind, name, Some(ns.name())),
            "{kind}/{name} installed"
        );
    }
    for (kind, name) in &cluster {
        assert!(exists(kind, name, None), "{kind}/{name} installed");
    }
    assert!(
        exists("crd", "inboxes.agentsend.io", None),
        "the CRD is there"
    );
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
                &chart,
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
    // Helm never deletes a chart's CRDs (that would delete every Inbox, and with them the mail).
    assert!(exists("crd", "inboxes.agentsend.io", None), "the CRD stays");
}

/// The cluster-scoped RBAC objects of `deploy/namespaced`.
const CLUSTER_WIDE_NAMESPACED: [&str; 4] = [
    "inbox-operator-binding-check",
    "inbox-operator-clusteraccounts",
    "inbox-operator-metrics-auth",
    "inbox-operator-metrics-reader",
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
