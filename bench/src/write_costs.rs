//! `--write-costs N`: what one write costs the control plane, by kind of write, so that the
//! time ratios of the main run can be checked against a floor. Each kind is made N times
//! ([`CREATE_CONCURRENCY`] at once) against a fresh local control plane with no operator,
//! and its CPU is read per process (etcd, kube-apiserver, kube-controller-manager) from /proc.
//! The writes are those of one Inbox's life in the order the operator makes them (the
//! user's create; the finalizer and pending mark; the binding; a Ready status; its Secret;
//! an event; the user's delete; the finalizer's removal), next to the baseline's Secret
//! creates and deletes.

use std::collections::HashMap;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use inbox_operator::api::inbox::{self, Condition, DeletionPolicy, Inbox, InboxSpec, InboxStatus};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::serde_json::json;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource};

use super::{CREATE_CONCURRENCY, Cluster, create_namespace, install_crd};

/// The namespace the writes go to.
const NS: &str = "costs";

/// One kind of write: what it is, and whose it is in an Inbox's life.
#[derive(Clone, Copy, PartialEq)]
enum Write {
    SecretCreate,
    SecretDelete,
    InboxCreate,
    MarkPending,
    Bind,
    ReadyStatus,
    OutputSecret,
    Event,
    InboxDelete,
    OutputSecretDelete,
    FinalizerRemoval,
}

impl Write {
    /// In the order they are measured (each needs the ones before it).
    const ALL: [Write; 11] = [
        Write::SecretCreate,
        Write::SecretDelete,
        Write::InboxCreate,
        Write::MarkPending,
        Write::Bind,
        Write::ReadyStatus,
        Write::OutputSecret,
        Write::Event,
        Write::InboxDelete,
        Write::OutputSecretDelete,
        Write::FinalizerRemoval,
    ];
    /// An Inbox's writes from the user's create to Ready: the six of [`ALL`](Self::ALL)
    /// after the two baseline writes.
    const TO_READY: &'static [Write] = Write::ALL.split_at(2).1.split_at(6).0;
    /// An Inbox's writes from the user's delete to gone (the operator deletes its Secret
    /// itself, before the finalizer goes: nothing is left to the garbage collector).
    const TO_GONE: [Write; 4] = [
        Write::InboxDelete,
        Write::OutputSecretDelete,
        Write::FinalizerRemoval,
        Write::Event,
    ];

    fn describe(self) -> &'static str {
        match self {
            Write::SecretCreate => "Secret create (the baseline)",
            Write::SecretDelete => "Secret delete",
            Write::InboxCreate => "Inbox create (the user's)",
            Write::MarkPending => "Inbox patch: finalizer + create-pending mark (no status yet)",
            Write::Bind => "Inbox patch: binding, mark cleared (no status yet)",
            Write::ReadyStatus => "Inbox status apply: Ready (3 conditions, counters)",
            Write::OutputSecret => "the Inbox's Secret create (owner reference)",
            Write::Event => "Event create (events.k8s.io/v1)",
            Write::InboxDelete => "Inbox delete (the user's; finalizer: marks it deleting)",
            Write::FinalizerRemoval => "Inbox patch: finalizer removed (the object goes)",
            Write::OutputSecretDelete => "the Inbox's Secret delete",
        }
    }
}

/// Measure every [`Write`] `n` times on a fresh control plane and print the table.
pub async fn run(n: usize) -> Result<(), String> {
    let root = std::env::current_dir().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("inbox-bench-costs-{}", std::process::id()));
    let cluster = Cluster::up(&root, &dir)?;
    let client = cluster.client().await?;
    install_crd(&root, &cluster.kubeconfig)?;
    create_namespace(&client, NS).await?;
    let mut costs = Vec::new();
    for write in Write::ALL {
        // The owner references of the Inboxes' Secrets, read before the phase (the operator
        // has them from its cache).
        let owners = match write {
            Write::OutputSecret => owner_references(&client).await?,
            _ => HashMap::new(),
        };
        let before = cluster.cpu_by_process();
        let started = Instant::now();
        each(n, |i| {
            make(
                client.clone(),
                write,
                i,
                owners.get(&inbox_name(i)).cloned(),
            )
        })
        .await?;
        let wall = started.elapsed().as_secs_f64();
        let after = cluster.cpu_by_process();
        let per_write: Vec<f64> = after
            .iter()
            .zip(before)
            .map(|(a, b)| 1000.0 * (a - b) / n as f64)
            .collect();
        costs.push((write, wall, per_write));
    }
    print(n, &costs);
    Ok(())
}

/// Run `write(i)` for `i` in `0..n`, [`CREATE_CONCURRENCY`] at once.
async fn each<F>(n: usize, write: impl Fn(usize) -> F) -> Result<(), String>
where
    F: std::future::Future<Output = Result<(), kube::Error>>,
{
    futures::stream::iter(0..n)
        .map(write)
        .buffer_unordered(CREATE_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn inbox_name(i: usize) -> String {
    format!("inbox-{i:05}")
}

fn secret_name(i: usize) -> String {
    format!("secret-{i:05}")
}

/// Every Inbox's controller owner reference, by name.
async fn owner_references(client: &Client) -> Result<HashMap<String, OwnerReference>, String> {
    let inboxes: Api<Inbox> = Api::namespaced(client.clone(), NS);
    let list = inboxes
        .list(&Default::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .filter_map(|i| Some((i.metadata.name.clone()?, i.controller_owner_ref(&())?)))
        .collect())
}

/// Make write `write` for object `i` (`owner`: the Inbox's, for its Secret).
async fn make(
    client: Client,
    write: Write,
    i: usize,
    owner: Option<OwnerReference>,
) -> Result<(), kube::Error> {
    let inboxes: Api<Inbox> = Api::namespaced(client.clone(), NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let (create, delete) = (PostParams::default(), DeleteParams::default());
    match write {
        Write::SecretCreate => secrets
            .create(&create, &secret(secret_name(i), i, None))
            .await
            .map(drop),
        Write::OutputSecret => secrets
            .create(&create, &secret(inbox_name(i), i, owner))
            .await
            .map(drop),
        Write::SecretDelete => secrets.delete(&secret_name(i), &delete).await.map(drop),
        Write::OutputSecretDelete => secrets.delete(&inbox_name(i), &delete).await.map(drop),
        Write::InboxCreate => {
            let spec = InboxSpec {
                deletion_policy: Some(DeletionPolicy::Delete),
                ..Default::default()
            };
            let inbox = Inbox::new(&inbox_name(i), spec);
            inboxes.create(&create, &inbox).await.map(drop)
        }
        Write::InboxDelete => inboxes.delete(&inbox_name(i), &delete).await.map(drop),
        Write::MarkPending | Write::Bind | Write::FinalizerRemoval => {
            let body = Patch::Merge(metadata_patch(write, i));
            inboxes
                .patch(&inbox_name(i), &PatchParams::default(), &body)
                .await
                .map(drop)
        }
        Write::ReadyStatus => {
            let body = json!({
                "apiVersion": Inbox::api_version(&()),
                "kind": Inbox::kind(&()),
                "status": ready_status(i),
            });
            let apply = PatchParams::apply(inbox::FIELD_MANAGER).force();
            inboxes
                .patch_status(&inbox_name(i), &apply, &Patch::Apply(&body))
                .await
                .map(drop)
        }
        Write::Event => Api::<Event>::namespaced(client, NS)
            .create(&create, &event(i))
            .await
            .map(drop),
    }
}

/// The operator's merge patch of an Inbox's metadata for `write`: the finalizer and pending
/// mark, the binding (mark cleared), or the finalizer's removal.
fn metadata_patch(write: Write, i: usize) -> k8s_openapi::serde_json::Value {
    match write {
        Write::MarkPending => json!({"metadata": {
            "finalizers": [inbox::FINALIZER],
            "annotations": {inbox::ANNOTATION_CREATE_PENDING: address(i)},
        }}),
        Write::Bind => json!({"metadata": {"annotations": {
            inbox::ANNOTATION_CREATE_PENDING: null,
            inbox::ANNOTATION_INBOX_ID: inbox_id(i),
        }}}),
        _ => json!({"metadata": {"finalizers": null}}),
    }
}

fn address(i: usize) -> String {
    format!("x{i:07}k2j3h4@agentsend.io")
}

fn inbox_id(i: usize) -> String {
    format!("inb_7bu7reiq91p1{i:06}")
}

/// An Inbox's Secret (or the baseline's: no owner).
fn secret(name: String, i: usize, owner: Option<OwnerReference>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        string_data: Some(
            [
                ("address".to_string(), address(i)),
                ("inboxId".to_string(), inbox_id(i)),
            ]
            .into(),
        ),
        ..Default::default()
    }
}

/// The status of a Ready Inbox as the operator renders it.
fn ready_status(i: usize) -> InboxStatus {
    let condition = |type_: &str, status: &str, message: &str| Condition {
        type_: type_.into(),
        status: status.into(),
        observed_generation: Some(1),
        last_transition_time: "2026-12-04T18:00:01Z".into(),
        reason: "Ready".into(),
        message: message.into(),
    };
    InboxStatus {
        inbox_id: Some(inbox_id(i)),
        address: Some(address(i)),
        state: Some("active".into()),
        daily_send_limit: Some(100),
        sends_today: Some(0),
        sends_remaining: Some(100),
        total_sent: Some(0),
        bounce_count: Some(0),
        complaint_count: Some(0),
        created_at: Some("2026-12-04T18:00:01.123Z".into()),
        secret_name: Some(inbox_name(i)),
        observed_generation: Some(1),
        deletion_policy: Some(DeletionPolicy::Delete),
        conditions: vec![
            condition(
                "Ready",
                "True",
                "the inbox exists and its Secret holds its address",
            ),
            condition("Reconciling", "False", "up to date"),
            condition("Stalled", "False", "not stalled"),
        ],
        ..Default::default()
    }
}

/// The event of a created inbox, about Inbox `i`.
fn event(i: usize) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{i:x}", inbox_name(i))),
            ..Default::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        action: Some("Create".into()),
        reason: Some("Created".into()),
        note: Some(format!("created inbox {} ({})", address(i), inbox_id(i))),
        type_: Some("Normal".into()),
        reporting_controller: Some("inbox-operator".into()),
        reporting_instance: Some("inbox-operator-bench".into()),
        regarding: Some(ObjectReference {
            api_version: Some(Inbox::api_version(&()).into()),
            kind: Some(Inbox::kind(&()).into()),
            name: Some(inbox_name(i)),
            namespace: Some(NS.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The table, then the floors: an Inbox's writes to Ready (and to gone) at these costs,
/// against the baseline's one Secret create (and delete).
fn print(n: usize, costs: &[(Write, f64, Vec<f64>)]) {
    println!(
        "Control plane CPU per write ({n} of each, {CREATE_CONCURRENCY} at once, no operator; from /proc):"
    );
    println!();
    println!(
        "| write | wall (s) | etcd (ms) | kube-apiserver (ms) | kube-controller-manager (ms) | total (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (write, wall, ms) in costs {
        println!(
            "| {} | {wall:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
            write.describe(),
            ms[0],
            ms[1],
            ms[2],
            ms.iter().sum::<f64>()
        );
    }
    let total = |w: Write| {
        costs
            .iter()
            .find(|(k, _, _)| *k == w)
            .map_or(0.0, |(_, _, ms)| ms.iter().sum::<f64>())
    };
    let floor = |writes: &[Write]| writes.iter().map(|w| total(*w)).sum::<f64>();
    let (ready, gone) = (floor(Write::TO_READY), floor(&Write::TO_GONE));
    let (create, delete) = (total(Write::SecretCreate), total(Write::SecretDelete));
    println!();
    println!(
        "An Inbox to Ready ({} writes): {ready:.2} ms, {:.1}x a Secret create ({create:.2} ms); to gone ({} writes): {gone:.2} ms, {:.1}x a Secret delete ({delete:.2} ms).",
        Write::TO_READY.len(),
        ready / create.max(0.001),
        Write::TO_GONE.len(),
        gone / delete.max(0.001),
    );
    println!(
        "Where the control plane is CPU-bound, these ratios are the floor of \"all Ready ÷ N-Secret baseline\" and \"all deleted ÷ baseline\" (reads and watch deliveries come on top)."
    );
}
