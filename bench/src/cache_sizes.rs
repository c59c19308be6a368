//! `--cache-sizes`: the heap one cached Inbox costs the operator, part by part, measured by
//! counting what the allocator is asked for while one is built (no cluster, no operator run).
//! The object is a Ready Inbox as the operator leaves it (four conditions, the binding
//! annotation, a finalizer), as the watch cache keeps it (`CachedInbox`: no managed fields,
//! labels or foreign annotations; annotations as a list, condition words shared) and, for
//! comparison, as a full `Inbox` (what a pass rebuilds from it). Sizes are given as requested and rounded up to jemalloc's size classes (the
//! operator's allocator), which is what the operator's heap pays.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use inbox_operator::api::inbox::{Inbox, InboxSpec, InboxStatus};
use inbox_operator::controller::{CachedInbox, READY, UP_TO_DATE};
use kube::api::ObjectMeta;
use kube::runtime::reflector::ObjectRef;

/// The system allocator, counting live bytes (requested and in jemalloc's size classes).
pub struct Counting;

static REQUESTED: AtomicUsize = AtomicUsize::new(0);
static CLASSED: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// jemalloc's small size class for `n` bytes: 8, 16, then four classes per doubling.
fn size_class(n: usize) -> usize {
    if n <= 16 {
        return if n <= 8 { 8 } else { 16 };
    }
    let base = (n - 1).next_power_of_two() / 2;
    let step = base / 4;
    base + (n - base).div_ceil(step) * step
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are
// plain atomics.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        REQUESTED.fetch_add(layout.size(), Relaxed);
        CLASSED.fetch_add(size_class(layout.size()), Relaxed);
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        REQUESTED.fetch_sub(layout.size(), Relaxed);
        CLASSED.fetch_sub(size_class(layout.size()), Relaxed);
        ALLOCATIONS.fetch_sub(1, Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Print the live heap `build` leaves (what it returns is kept until then).
fn measure<T>(what: &str, build: impl FnOnce() -> T) -> T {
    let before = (
        REQUESTED.load(Relaxed),
        CLASSED.load(Relaxed),
        ALLOCATIONS.load(Relaxed),
    );
    let kept = build();
    println!(
        "| {what} | {} | {} | {} |",
        REQUESTED.load(Relaxed) - before.0,
        CLASSED.load(Relaxed) - before.1,
        ALLOCATIONS.load(Relaxed) - before.2,
    );
    kept
}

/// A Ready Inbox as the cache holds it.
fn ready_inbox() -> serde_json::Value {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        serde_json::json!({"type": type_, "status": status, "observedGeneration": 1,
            "lastTransitionTime": "2026-12-05T22:00:01Z", "reason": reason, "message": message})
    };
    let id = "inb_5f3c2a1b9d8e7f60";
    serde_json::json!({
        "apiVersion": "agentsend.io/v1alpha1", "kind": "Inbox",
        "metadata": {"name": "inbox-04242", "namespace": "bench",
            "uid": "0b6f4c1e-7d2a-4c57-9e0b-3f1a2b4c5d6e", "resourceVersion": "1234567",
            "generation": 1, "creationTimestamp": "2026-12-05T22:00:00Z",
            "finalizers": ["agentsend.io/finalizer"],
            "annotations": {"agentsend.io/inbox-id": id}},
        "spec": {"displayName": "Bench 4242"},
        "status": {"inboxId": id, "address": "inbox-04242-x7k2@agentsend.dev",
            "displayName": "Bench 4242", "state": "active", "dailySendLimit": 100,
            "sendsToday": 0, "sendsRemaining": 100, "totalSent": 0, "bounceCount": 0,
            "complaintCount": 0, "createdAt": "2026-12-05T22:00:01.123Z",
            "secretName": "inbox-04242", "observedGeneration": 1,
            "deletionPolicy": "Delete", "deletionPolicySource": "Default",
            "conditions": [
                condition("Ready", "True", "Ready", READY),
                condition("Reconciling", "False", "UpToDate", UP_TO_DATE),
                condition("Stalled", "False", "UpToDate", UP_TO_DATE),
                condition("SendLimitReached", "False", "SendsAvailable", "100 sends remaining today"),
            ]}
    })
}

/// Print the table.
pub fn run() -> Result<(), String> {
    let inbox: Inbox = serde_json::from_value(ready_inbox()).map_err(|e| e.to_string())?;
    let status = inbox.status.clone().unwrap_or_default();
    // The shared condition words are allocated once per process, not per Inbox.
    drop(CachedInbox::from(inbox.clone()));
    println!(
        "inline sizes: CachedInbox {} B; Inbox {} B (ObjectMeta {}, InboxSpec {}, InboxStatus {})",
        size_of::<CachedInbox>(),
        size_of::<Inbox>(),
        size_of::<ObjectMeta>(),
        size_of::<InboxSpec>(),
        size_of::<InboxStatus>()
    );
    println!();
    println!(
        "| one Ready Inbox in the cache | requested (B) | jemalloc size classes (B) | allocations |"
    );
    println!("|---|---:|---:|---:|");
    let kept = (
        measure("**the cached object (`Arc<CachedInbox>`), whole**", || {
            Arc::new(CachedInbox::from(inbox.clone()))
        }),
        measure("a full `Inbox` in an `Arc`, as a pass rebuilds it", || {
            Arc::new(inbox.clone())
        }),
        measure("of which `status.conditions` (4)", || {
            status.conditions.clone()
        }),
        measure("of which `metadata.annotations` (the binding)", || {
            inbox.metadata.annotations.clone()
        }),
        measure("of which `metadata`, all of it (heap only)", || {
            inbox.metadata.clone()
        }),
        measure("the store's key (`ObjectRef`, heap only)", || {
            ObjectRef::from_obj(&inbox)
        }),
    );
    drop(kept);
    let json = serde_json::to_string(&status).map_err(|e| e.to_string())?;
    println!();
    println!("`status` as JSON: {} B", json.len());
    Ok(())
}
