//! A Prometheus-like client scrapes `/metrics` through the release's Service (its ClusterIP,
//! port `https`, as kube-proxy routes it) with the token the kubelet mounted in a Pod of its
//! ServiceAccount: allowed once that ServiceAccount is bound to the shipped reader ClusterRole
//! (200, the operator's metrics), refused with the token of a ServiceAccount without the
//! binding (403) and without a token (401) — README, "Metrics". The TLS client is the host's
//! curl: busybox's own TLS, the only one in the test image, offers no signature algorithm for
//! the ECDSA certificates the operator and the API server use.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::node::{POD_READY, SHELL_IMAGE, node, pod_ready, shared};
use crate::release::Release;
use crate::support::wait_for;

/// A Pod running as `service_account`, idle: it holds the token the kubelet mounts for it.
fn token_holder(name: &str, service_account: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": service_account,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000},
            "containers": [{
                "name": "scraper",
                "image": SHELL_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sleep", "3600"]
            }],
            "terminationGracePeriodSeconds": 1
        }
    }))
    .unwrap()
}

/// The ServiceAccount token the kubelet mounted in the Pod.
fn mounted_token(ns: &str, pod: &str) -> String {
    node()
        .kubectl_ok(&[
            "exec",
            "-n",
            ns,
            pod,
            "--",
            "cat",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
        ])
        .trim()
        .to_string()
}

/// GET `url` (self-signed: not verified, as the ServiceMonitor example's
/// `insecureSkipVerify`), with `token` as the bearer token: the status code and the body.
fn scrape(url: &str, token: Option<&str>) -> (u16, String) {
    let mut curl = Command::new("curl");
    curl.args(["-sk", "--max-time", "10", "-w", "\n%{http_code}", url]);
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = curl.output().expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[tokio::test]
#[ignore = "needs a real node: root + containerd; hack/test.sh runs it on 1.37, or cargo test --test node -- --ignored"]
async fn metrics_through_the_service_need_a_token_bound_to_the_shipped_reader_role() {
    let _node = shared().await;
    let node = node();
    let r = Release::install("metrics", &[]).await;
    r.wait_pods_ready(1).await;
    let ns = r.work.name();
    for sa in ["prometheus", "stranger"] {
        node.kubectl_ok(&["create", "serviceaccount", sa, "-n", ns]);
    }
    let binding = format!("{}-prometheus", r.name);
    node.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        &binding,
        &format!("--clusterrole={}-metrics-reader", r.name),
        &format!("--serviceaccount={ns}:prometheus"),
    ]);
    let pods: Api<Pod> = Api::namespaced(r.client.clone(), ns);
    for (pod, sa) in [("prometheus", "prometheus"), ("stranger", "stranger")] {
        pods.create(&PostParams::default(), &token_holder(pod, sa))
            .await
            .unwrap();
    }
    for pod in ["prometheus", "stranger"] {
        wait_for(&format!("the {pod} Pod Ready"), POD_READY, || async {
            pod_ready(&pods.get(pod).await.ok()?).then_some(())
        })
        .await;
    }
    let service = Api::<Service>::namespaced(r.client.clone(), r.home.name())
        .get(&format!("{}-metrics", r.name))
        .await
        .unwrap();
    let spec = service.spec.unwrap();
    let port = spec
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("https"))
        .unwrap();
    let url = format!("https://{}:{}/metrics", spec.cluster_ip.unwrap(), port.port);

    // The reader: 200 and the operator's series (the binding may take a moment to be seen).
    let reader = mounted_token(ns, "prometheus");
    let body = wait_for(
        "a scrape with the bound token",
        Duration::from_secs(60),
        || async {
            let (code, body) = scrape(&url, Some(&reader));
            (code == 200).then_some(body)
        },
    )
    .await;
    assert!(
        body.lines()
            .any(|l| l.starts_with("inbox_operator_leader ")),
        "{body}"
    );
    // A token the API server knows, without the role: 403. No token: 401.
    let stranger = mounted_token(ns, "stranger");
    assert_eq!(
        scrape(&url, Some(&stranger)).0,
        403,
        "a ServiceAccount without the binding"
    );
    assert_eq!(scrape(&url, None).0, 401, "no token");
    assert_eq!(
        scrape(&url, Some("not-a-token")).0,
        401,
        "a token the API server does not know"
    );

    node.kubectl_ok(&["delete", "clusterrolebinding", &binding]);
    r.uninstall();
}
