//! `/metrics` over HTTPS (`--metrics-secure`, the default), checked with the real API server:
//! no token is 401, a token whose ServiceAccount lacks the shipped `metrics-reader` role is
//! 403, one bound to it reads the metrics; the probes stay open.

use std::process::Stdio;

use crate::ctl::{Env, Ready, T};
use crate::support::{control_plane, free_port, http_get, wait_for};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A token of ServiceAccount `name` in `ns` (created here), from the TokenRequest API.
pub(crate) fn token_of(ns: &str, name: &str) -> String {
    let kubectl = |args: &[&str]| {
        let out = control_plane()
            .kubectl()
            .args(args)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    kubectl(&["-n", ns, "create", "serviceaccount", name]);
    kubectl(&["-n", ns, "create", "token", name])
}

/// `GET https://127.0.0.1:PORT/metrics` (self-signed certificate) with `token`: the status.
pub(crate) async fn scrape(port: u16, token: Option<&str>) -> u16 {
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let mut req = client.get(format!("https://127.0.0.1:{port}/metrics"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test]
async fn metrics_need_a_token_allowed_to_read_them() {
    let env = Env::bare("metrics", "acct-metrics", "metrics-key").await;
    let ns = env.ns.name();
    let health = free_port();
    let health_addr = format!("127.0.0.1:{health}");
    let op = env.operator(&["--metrics-secure", "--health-addr", &health_addr]);
    env.create_labelled("scraped", &[]).await;
    env.wait_ready("scraped", Ready::True).await;

    // The shipped reader role, bound to one ServiceAccount of this test.
    let rbac = std::fs::read_to_string(format!("{ROOT}/deploy/common/metrics-rbac.yaml")).unwrap();
    let applied = control_plane().kubectl_with_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=metrics-test",
            "-f",
            "-",
        ],
        &rbac,
    );
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let reader = token_of(ns, "prometheus");
    let stranger = token_of(ns, "stranger");
    let binding = format!("metrics-reader-{ns}");
    let bound = control_plane()
        .kubectl()
        .args(["create", "clusterrolebinding", &binding])
        .args(["--clusterrole=inbox-operator-metrics-reader"])
        .arg(format!("--serviceaccount={ns}:prometheus"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(bound.success());

    let port = op.metrics_port();
    wait_for("an authorized scrape", env.timeout, || async {
        (scrape(port, Some(&reader)).await == 200).then_some(())
    })
    .await;
    assert_eq!(scrape(port, None).await, 401, "no token");
    assert_eq!(scrape(port, Some("not-a-token")).await, 401, "a bad token");
    assert_eq!(
        scrape(port, Some(&stranger)).await,
        403,
        "not a metrics reader"
    );
    // Plain HTTP gets nothing on the HTTPS port.
    assert_eq!(
        http_get(port, "/metrics").await.filter(|b| !b.is_empty()),
        None
    );
    let body = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap()
        .get(format!("https://127.0.0.1:{port}/metrics"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("inbox_operator_inbox_ready{namespace="),
        "{body}"
    );
    // Probes: plain HTTP on --health-addr, for the kubelet.
    assert_eq!(http_get(health, "/healthz").await.as_deref(), Some("ok"));
    assert_eq!(http_get(health, "/readyz").await.as_deref(), Some("ready"));
    assert_eq!(
        http_get(health, "/metrics").await.as_deref(),
        Some(""),
        "not served there"
    );
    let logs = op.logs();
    assert!(
        !logs.contains(&reader) && !logs.contains(&stranger),
        "a token was logged"
    );

    let _ = control_plane()
        .kubectl()
        .args([
            "delete",
            "clusterrolebinding",
            &binding,
            "--ignore-not-found",
        ])
        .stdout(Stdio::null())
        .status();
}

/// Open `n` connections to `port` that never finish a request (half a request line on the
/// plain port, no TLS handshake on the HTTPS one); the ones the server accepted.
pub(crate) async fn idle_connections(port: u16, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut open = Vec::new();
    for _ in 0..n {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
            open.push(s);
        }
    }
    open
}

/// Whether the server closes `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A flood of connections that never finish a request, to both ports (the HTTPS metrics
/// port and the plain health port), neither stalls the operator nor holds the ports: each
/// port keeps at most its connection cap, Inboxes keep becoming Ready meanwhile, every idle
/// connection is closed once the header-read timeout passes (before, the plain port had no
/// timeout at all and kept them forever), and the probes answer again afterwards.
#[tokio::test]
async fn a_connection_flood_neither_holds_the_ports_nor_stalls_reconciles() {
    let env = Env::bare("flood", "acct-flood", "flood-key").await;
    let health = free_port();
    let health_addr = format!("127.0.0.1:{health}");
    let op = env.operator(&["--metrics-secure", "--health-addr", &health_addr]);
    env.create_labelled("before", &[]).await;
    env.wait_ready("before", Ready::True).await;
    let flood = inbox_operator::runtime::server::MAX_CONNECTIONS + 16;
    let mut held = idle_connections(health, flood).await;
    held.extend(idle_connections(op.metrics_port(), flood).await);
    for name in ["during-1", "during-2", "during-3"] {
        env.create_labelled(name, &[]).await;
    }
    for name in ["during-1", "during-2", "during-3"] {
        env.wait_ready(name, Ready::True).await;
    }
    let patience = inbox_operator::runtime::server::HEADER_READ_TIMEOUT * 3;
    for (i, s) in held.iter_mut().enumerate() {
        assert!(
            closed_within(s, patience).await,
            "connection {i} still open"
        );
    }
    drop(held);
    let healthz = wait_for("/healthz after the flood", T, || {
        http_get(health, "/healthz")
    })
    .await;
    assert_eq!(healthz.trim(), "ok");
    env.stop().await;
    drop(op);
}
