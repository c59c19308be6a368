//! The README's first command: `hack/demo.sh` brings up a control plane, the simulator, the
//! operator and the examples, and prints Ready inboxes and an address read from a Secret.

use std::process::Command;

#[test]
fn demo_script_runs_and_stops() {
    let root = env!("CARGO_MANIFEST_DIR");
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(format!("{root}/hack/demo.sh"))
            .args(args)
            .env("DEMO_STATE_DIR", state.path())
            .env_remove("AGENTSEND_API_KEY")
            .output()
            .expect("run hack/demo.sh")
    };
    let out = run(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let down = run(&["down"]);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(down.status.success(), "demo down failed");
    assert!(
        stderr.contains("SIMULATOR (not the real service)"),
        "{stderr}"
    );
    let header = stdout
        .lines()
        .find(|l| l.starts_with("NAME"))
        .expect("kubectl get inboxes table");
    assert!(header.contains("ADDRESS") && header.contains("READY"));
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("@") && l.contains("True"))
        .collect();
    assert!(rows.len() >= 3, "three Ready inboxes:\n{stdout}");
    let addr_line = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Address of Inbox"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        addr_line.contains('@'),
        "address read back from the Secret:\n{stdout}"
    );
    assert!(stdout.contains("export KUBECONFIG=") && stdout.contains("hack/demo.sh down"));
    assert!(
        !state.path().join("cluster").exists(),
        "down removes the cluster"
    );
}
