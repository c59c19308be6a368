//! What this process last wrote to each Inbox, so that a pass over a cached Inbox the watch
//! has not yet brought up to date with that write is skipped instead of redoing it.
//!
//! Every write of a pass triggers another pass (the watch sees it). When that pass starts
//! before the watch has delivered the pass's *last* write, it works from an older view and
//! redoes what the newer one already shows — a second status write, or, during deletion, a
//! second DELETE, `Deleted` event and finalizer removal after the finalizer is gone. The
//! watch delivers the write soon and triggers a pass on the current view, so skipping costs
//! nothing; an entry expires after [`TTL`] in case it never does (then passes run as before).

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a noted write makes older views wait for the watch.
pub const TTL: Duration = Duration::from_secs(60);

/// When a skipped pass is tried again if no watch event comes first.
pub const RETRY: Duration = Duration::from_secs(5);

/// The last write of this process to one Inbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// A write that returned this resourceVersion.
    Version(u64),
    /// The pass removed this operator's finalizer from the deleted Inbox: nothing is left to
    /// do for any view of it.
    Finalized,
}

impl Write {
    /// The write of an object now at `resource_version` (`None`: not a number, as etcd's
    /// are; such a write is not tracked).
    pub fn version(resource_version: Option<&str>) -> Option<Write> {
        resource_version?.parse().ok().map(Write::Version)
    }
}

/// Whether a cached view at `cached` (its resourceVersion) predates `last`, this process's
/// last write. Resource versions are compared as numbers only when both are; a view that
/// cannot be compared is taken as current.
pub fn behind(cached: Option<&str>, last: Write) -> bool {
    match last {
        Write::Finalized => true,
        Write::Version(w) => cached
            .and_then(|c| c.parse::<u64>().ok())
            .is_some_and(|c| c < w),
    }
}

/// The last write per Inbox (by UID: an Inbox deleted and created again under the same name
/// is another object), for [`TTL`].
#[derive(Default)]
pub struct LastWrites {
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, (Write, Instant)>,
    /// Sweep expired notes (of Inboxes whose catching-up view never came: deleted ones)
    /// when `map` reaches this size: O(1) amortised per note.
    sweep_at: usize,
}

impl LastWrites {
    /// Note this process's write to the Inbox with UID `uid` (a later one replaces an
    /// earlier one).
    pub fn note(&self, uid: &str, write: Write) {
        let mut entries = self.entries.lock();
        if entries.map.len() >= entries.sweep_at {
            entries.map.retain(|_, (_, at)| at.elapsed() < TTL);
            entries.sweep_at = (entries.map.len() * 2).max(1024);
        }
        let keep = match (entries.map.get(uid), write) {
            (Some((Write::Finalized, _)), _) => false,
            (Some((Write::Version(old), _)), Write::Version(new)) => new > *old,
            _ => true,
        };
        if keep {
            entries.map.insert(uid.to_string(), (write, Instant::now()));
        }
    }

    /// Whether the cached view of the Inbox with UID `uid` at `cached` predates the last
    /// write noted; a view that has caught up clears the note.
    pub fn behind(&self, uid: &str, cached: Option<&str>) -> bool {
        let mut entries = self.entries.lock();
        let Some((last, at)) = entries.map.get(uid).copied() else {
            return false;
        };
        if at.elapsed() < TTL && behind(cached, last) {
            return true;
        }
        entries.map.remove(uid);
        false
    }

    /// Forget the Inbox with UID `uid`.
    #[cfg(test)]
    pub fn forget(&self, uid: &str) {
        let mut entries = self.entries.lock();
        entries.map.remove(uid);
    }

    /// How many Inboxes have a note.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().map.len()
    }

    /// Whether no Inbox has a note.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_older_than_the_last_write_are_behind() {
        for (case, cached, last, want) in [
            ("older", Some("99"), Write::Version(100), true),
            ("the write itself", Some("100"), Write::Version(100), false),
            (
                "newer (someone else wrote)",
                Some("101"),
                Write::Version(100),
                false,
            ),
            ("not a number", Some("abc"), Write::Version(100), false),
            ("no version", None, Write::Version(100), false),
            ("finalized: any view", Some("500"), Write::Finalized, true),
        ] {
            assert_eq!(behind(cached, last), want, "{case}");
        }
        assert_eq!(Write::version(Some("42")), Some(Write::Version(42)));
        assert_eq!(Write::version(Some("x")), None);
    }

    #[test]
    fn a_view_that_caught_up_clears_the_note() {
        let w = LastWrites::default();
        let a = "uid-a";
        assert!(!w.behind(a, Some("1")), "nothing written");
        w.note(a, Write::Version(10));
        w.note(a, Write::Version(8));
        assert!(
            w.behind(a, Some("9")),
            "an older note never replaces a newer one"
        );
        assert!(!w.behind(a, Some("10")));
        assert!(w.is_empty(), "caught up: cleared");
        w.note(a, Write::Version(12));
        w.note(a, Write::Finalized);
        w.note(a, Write::Version(20));
        assert!(w.behind(a, Some("30")), "finalized stays finalized");
        assert!(
            !w.behind("uid-b", Some("1")),
            "the same name created again is another Inbox"
        );
        w.forget(a);
        assert!(!w.behind(a, Some("30")));
    }
}
