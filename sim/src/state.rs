//! The simulator's in-memory data: accounts, keys, domains, inboxes, faults and counters.
//!
//! Inboxes are stored by insertion sequence; each account keeps its sequences in ascending
//! order, so a newest-first page is read by index (O(page)) and a deletion is a binary search
//! plus a small memmove.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rand::Rng;

use super::{Malformed, RequestRecord, Route};
use crate::bucket::{Bucket, RateLimit};
use crate::types::{CreateInbox, InboxState, RemoteInbox};

pub use crate::types::SHARED_DOMAIN;
/// Longest address accepted (RFC 5321 path limit).
pub const MAX_ADDRESS_LEN: usize = 254;
/// Longest local part accepted.
pub const MAX_LOCAL_PART_LEN: usize = 64;
/// Most request records kept for [`super::Simulator::requests`].
pub(super) const MAX_RECORDS: usize = 200_000;
/// Length of generated local parts.
const RANDOM_LOCAL_LEN: usize = 8;

/// A refusal, as the API would send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimError {
    /// HTTP status.
    pub status: u16,
    /// Short error code.
    pub error: &'static str,
    /// Human message.
    pub message: String,
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.error, self.message)
    }
}

impl std::error::Error for SimError {}

pub(super) fn err(status: u16, error: &'static str, message: impl Into<String>) -> SimError {
    SimError {
        status,
        error,
        message: message.into(),
    }
}

#[derive(Clone)]
pub(super) struct KeyEntry {
    pub account: String,
    pub revoked: bool,
}

pub(super) struct Stored {
    pub account: String,
    pub inbox: RemoteInbox,
}

pub(super) struct SimState {
    pub keys: HashMap<String, KeyEntry>,
    /// (account, domain id) → domain name (lower case).
    pub domains: HashMap<(String, String), String>,
    /// Insertion sequence → inbox.
    pub inboxes: HashMap<u64, Stored>,
    /// Account → its inboxes' sequences, ascending (oldest first).
    pub by_account: HashMap<String, Vec<u64>>,
    pub by_id: HashMap<String, u64>,
    /// Addresses of live inboxes (lower case), all accounts.
    pub addresses: HashSet<String>,
    pub next_seq: u64,
    pub default_limit: i64,
    // Faults.
    pub latency: Duration,
    pub error_rate: f64,
    pub error_status: u16,
    pub fail_next: HashMap<Route, (usize, u16)>,
    pub rate_limited: HashMap<String, (Instant, bool)>,
    /// Rate limits that start at the account's next request: (length, HTTP-date form).
    pub rate_limit_armed: HashMap<String, (Duration, bool)>,
    /// Account → `Retry-After` values sent verbatim with a 429, one per request, in order.
    pub raw_retry_after: HashMap<String, VecDeque<String>>,
    pub drop_creates: usize,
    /// The next creates commit this long after they arrive (count, delay): a client with a
    /// shorter timeout gives up while the create is still to happen.
    pub late_commits: (usize, Duration),
    /// Late creates whose commit has been attempted (succeeded or refused).
    pub late_commits_settled: usize,
    pub malformed: HashMap<Route, Malformed>,
    /// The server-side request-rate limit of every account, if on.
    pub account_limit: Option<RateLimit>,
    /// Account → its token bucket (while `account_limit` is on).
    pub buckets: HashMap<String, Bucket>,
    // Observation.
    pub counts: HashMap<Route, u64>,
    pub records: Vec<RequestRecord>,
}

impl Default for SimState {
    fn default() -> Self {
        SimState {
            keys: HashMap::new(),
            domains: HashMap::new(),
            inboxes: HashMap::new(),
            by_account: HashMap::new(),
            by_id: HashMap::new(),
            addresses: HashSet::new(),
            next_seq: 0,
            default_limit: 100,
            latency: Duration::ZERO,
            error_rate: 0.0,
            error_status: 503,
            fail_next: HashMap::new(),
            rate_limited: HashMap::new(),
            rate_limit_armed: HashMap::new(),
            raw_retry_after: HashMap::new(),
            drop_creates: 0,
            late_commits: (0, Duration::ZERO),
            late_commits_settled: 0,
            malformed: HashMap::new(),
            account_limit: None,
            buckets: HashMap::new(),
            counts: HashMap::new(),
            records: Vec::new(),
        }
    }
}

pub(super) fn random_string(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// Now, as RFC 3339 UTC with milliseconds (`2026-01-02T03:04:05.678Z`).
pub(super) fn now_rfc3339_millis() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Whether `local` is an acceptable local part: 1–64 of `a-z 0-9 . _ + -`, no leading,
/// trailing or doubled dot. Expects lower case.
pub fn valid_local_part(local: &str) -> bool {
    !local.is_empty()
        && local.len() <= MAX_LOCAL_PART_LEN
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._+-".contains(&c))
}

/// The full, lower-case address that `requested` (a local part or a full address) denotes
/// on `domain`, or a 400.
pub fn resolve_address(requested: &str, domain: &str) -> Result<String, SimError> {
    let invalid = |why: &str| {
        err(
            400,
            "invalid_address",
            format!("{requested:?} is not a valid email address: {why}"),
        )
    };
    if requested.len() > MAX_ADDRESS_LEN {
        return Err(invalid("longer than 254 characters"));
    }
    if requested
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid("contains spaces or control characters"));
    }
    let lower = requested.to_ascii_lowercase();
    let (local, dom) = match lower.split_once('@') {
        None => (lower.as_str(), None),
        Some((_, d)) if d.contains('@') => return Err(invalid("more than one '@'")),
        Some((l, d)) => (l, Some(d)),
    };
    if local.is_empty() {
        return Err(invalid("empty local part"));
    }
    if !valid_local_part(local) {
        return Err(invalid(
            "the local part may only contain letters, digits, '.', '_', '+' and '-'",
        ));
    }
    if let Some(d) = dom
        && d != domain
    {
        return Err(err(
            400,
            "domain_mismatch",
            format!("the address's domain {d:?} does not match the inbox's domain {domain:?}"),
        ));
    }
    let full = format!("{local}@{domain}");
    if full.len() > MAX_ADDRESS_LEN {
        return Err(invalid("longer than 254 characters"));
    }
    Ok(full)
}

impl SimState {
    /// `POST /inboxes` for `account`, after auth.
    pub fn create(&mut self, account: &str, req: &CreateInbox) -> Result<RemoteInbox, SimError> {
        let domain = match &req.domain_id {
            Some(d) => self
                .domains
                .get(&(account.to_string(), d.clone()))
                .cloned()
                .ok_or_else(|| {
                    err(
                        422,
                        "unknown_domain",
                        format!("domain {d:?} does not exist in this account"),
                    )
                })?,
            None => SHARED_DOMAIN.to_string(),
        };
        let address = match &req.address {
            None => loop {
                let a = format!("{}@{}", random_string(RANDOM_LOCAL_LEN), domain);
                if !self.addresses.contains(&a) {
                    break a;
                }
            },
            Some(a) => resolve_address(a, &domain)?,
        };
        if self.addresses.contains(&address) {
            return Err(err(
                409,
                "address_taken",
                format!("the address {address} is already in use"),
            ));
        }
        let inbox = RemoteInbox {
            id: loop {
                let id = format!("inb_{}", random_string(20));
                if !self.by_id.contains_key(&id) {
                    break id;
                }
            },
            address,
            display_name: req.display_name.clone(),
            domain_id: req.domain_id.clone(),
            status: InboxState::Active,
            daily_send_limit: Some(self.default_limit),
            sends_today: Some(0),
            total_sent: Some(0),
            bounce_count: Some(0),
            complaint_count: Some(0),
            created_at: Some(now_rfc3339_millis()),
        };
        self.next_seq += 1;
        let seq = self.next_seq;
        self.addresses.insert(inbox.address.clone());
        self.by_id.insert(inbox.id.clone(), seq);
        // Sequences only grow, so pushing keeps the account's list sorted.
        self.by_account
            .entry(account.to_string())
            .or_default()
            .push(seq);
        self.inboxes.insert(
            seq,
            Stored {
                account: account.to_string(),
                inbox: inbox.clone(),
            },
        );
        Ok(inbox)
    }

    /// The inbox `id` if it belongs to `account` (any account when `None`).
    pub fn get(&self, id: &str, account: Option<&str>) -> Option<&Stored> {
        let seq = self.by_id.get(id)?;
        self.inboxes
            .get(seq)
            .filter(|s| account.is_none_or(|a| a == s.account))
    }

    /// Remove `id` if it belongs to `account` (any account when `None`).
    pub fn remove(&mut self, id: &str, account: Option<&str>) -> bool {
        let Some(seq) = self.by_id.get(id).copied() else {
            return false;
        };
        let Some(stored) = self.inboxes.get(&seq) else {
            return false;
        };
        if account.is_some_and(|a| a != stored.account) {
            return false;
        }
        self.by_id.remove(id);
        if let Some(s) = self.inboxes.remove(&seq) {
            self.addresses.remove(&s.inbox.address);
            if let Some(list) = self.by_account.get_mut(&s.account)
                && let Ok(pos) = list.binary_search(&seq)
            {
                list.remove(pos);
            }
        }
        true
    }

    /// Newest-first page of `account`'s inboxes, and the total.
    pub fn page(&self, account: &str, limit: usize, offset: usize) -> (Vec<&RemoteInbox>, usize) {
        let Some(list) = self.by_account.get(account) else {
            return (Vec::new(), 0);
        };
        let total = list.len();
        let data = (offset..total.min(offset.saturating_add(limit)))
            .filter_map(|i| self.inboxes.get(&list[total - 1 - i]))
            .map(|s| &s.inbox)
            .collect();
        (data, total)
    }

    /// Apply `f` to inbox `id`; its ID cannot change, a changed address is re-indexed.
    pub fn update(&mut self, id: &str, f: impl FnOnce(&mut RemoteInbox)) -> bool {
        let Some(seq) = self.by_id.get(id).copied() else {
            return false;
        };
        let Some(s) = self.inboxes.get_mut(&seq) else {
            return false;
        };
        let old_address = s.inbox.address.clone();
        f(&mut s.inbox);
        s.inbox.id = id.to_string();
        if s.inbox.address != old_address {
            let new = s.inbox.address.clone();
            self.addresses.remove(&old_address);
            self.addresses.insert(new);
        }
        true
    }

    /// Count one API request (first step of every request).
    pub fn count(&mut self, route: Route) {
        *self.counts.entry(route).or_default() += 1;
    }

    /// Log one finished API request.
    pub fn log(&mut self, record: RequestRecord) {
        if self.records.len() >= MAX_RECORDS {
            self.records.drain(..MAX_RECORDS / 2);
        }
        self.records.push(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(address: Option<&str>, domain: Option<&str>) -> CreateInbox {
        CreateInbox {
            address: address.map(str::to_string),
            display_name: None,
            domain_id: domain.map(str::to_string),
        }
    }

    #[test]
    fn addresses_are_validated() {
        let ok = |a: &str| resolve_address(a, "agentsend.io");
        assert_eq!(ok("support").unwrap(), "support@agentsend.io");
        assert_eq!(ok("Support@AgentSend.io").unwrap(), "support@agentsend.io");
        assert_eq!(ok("a.b+c_d-e").unwrap(), "a.b+c_d-e@agentsend.io");
        for bad in [
            "",
            "@agentsend.io",
            "a b",
            " a",
            "a@b@agentsend.io",
            "a!b",
            "ä",
            ".a",
            "a..b",
            "a.",
            "a\n",
        ] {
            assert_eq!(ok(bad).unwrap_err().status, 400, "{bad:?}");
        }
        assert_eq!(ok(&"a".repeat(65)).unwrap_err().status, 400);
        assert_eq!(ok(&"a".repeat(300)).unwrap_err().status, 400);
        let e = ok("a@example.com").unwrap_err();
        assert_eq!((e.status, e.error), (400, "domain_mismatch"));
        assert_eq!(ok("a@").unwrap_err().status, 400);
    }

    #[test]
    fn create_page_remove() {
        let mut st = SimState::default();
        st.domains
            .insert(("a".into(), "dom".into()), "example.com".into());
        let r = st.create("a", &req(None, None)).unwrap();
        let (local, dom) = r.address.split_once('@').unwrap();
        assert_eq!(dom, SHARED_DOMAIN);
        assert_eq!(local.len(), RANDOM_LOCAL_LEN);
        assert!(local.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(r.id.starts_with("inb_"));
        let c = st.create("a", &req(Some("x"), Some("dom"))).unwrap();
        assert_eq!(c.address, "x@example.com");
        assert_eq!(
            st.create("b", &req(Some("x"), Some("dom")))
                .unwrap_err()
                .status,
            422
        );
        assert_eq!(
            st.create("b", &req(Some("x@example.com"), None))
                .unwrap_err()
                .status,
            400
        );
        for i in 0..5 {
            st.create("a", &req(Some(&format!("n{i}")), None)).unwrap();
        }
        st.create("b", &req(Some("other"), None)).unwrap();
        assert_eq!(
            st.create("b", &req(Some("n1"), None)).unwrap_err().status,
            409
        );
        let (page, total) = st.page("a", 3, 0);
        assert_eq!(total, 7);
        let names: Vec<_> = page.iter().map(|i| i.address.as_str()).collect();
        assert_eq!(
            names,
            ["n4@agentsend.io", "n3@agentsend.io", "n2@agentsend.io"]
        );
        let (page, _) = st.page("a", 3, 6);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].id, r.id);
        assert!(st.page("a", 3, 100).0.is_empty());
        assert!(st.page("nobody", 3, 0).0.is_empty());

        assert!(!st.remove(&c.id, Some("b")), "another account's inbox");
        assert!(st.remove(&c.id, Some("a")));
        assert!(!st.remove(&c.id, None));
        assert_eq!(st.page("a", 100, 0).1, 6);
        // The address is free again.
        st.create("b", &req(Some("x"), Some("dom"))).unwrap_err();
        st.domains
            .insert(("b".into(), "dom".into()), "example.com".into());
        st.create("b", &req(Some("x"), Some("dom"))).unwrap();
    }

    #[test]
    fn update_keeps_id_and_reindexes_address() {
        let mut st = SimState::default();
        let r = st.create("a", &req(Some("x"), None)).unwrap();
        assert!(st.update(&r.id, |i| {
            i.id = "changed".into();
            i.address = "y@agentsend.io".into();
            i.sends_today = Some(7);
        }));
        let got = st.get(&r.id, Some("a")).unwrap();
        assert_eq!(got.inbox.sends_today, Some(7));
        assert!(st.create("a", &req(Some("x"), None)).is_ok());
        assert_eq!(
            st.create("a", &req(Some("y"), None)).unwrap_err().status,
            409
        );
        assert!(!st.update("nope", |_| {}));
    }

    #[test]
    fn timestamps_are_rfc3339_millis_utc() {
        let t = now_rfc3339_millis();
        assert!(t.ends_with('Z'), "{t}");
        assert_eq!(t.len(), "2026-01-02T03:04:05.678Z".len(), "{t}");
        assert!(t.parse::<jiff::Timestamp>().is_ok(), "{t}");
    }
}
