//! Table tests of the credentials decisions: which key, which account, quotas and policies.

use super::*;
use crate::api::common::AccountRef;
use crate::api::inbox::{CredentialsSpec, InboxSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const OPS: &str = "ops";

fn key_ref(name: &str) -> SecretKeyRef {
    SecretKeyRef {
        name: name.into(),
        key: "apiKey".into(),
    }
}

fn inbox(f: impl FnOnce(&mut InboxSpec)) -> Inbox {
    let mut spec = InboxSpec::default();
    f(&mut spec);
    let mut i = Inbox::new("mail", spec);
    i.metadata.namespace = Some("team-a".into());
    i.metadata.uid = Some("uid-me".into());
    i.metadata.creation_timestamp = Some(Time("2026-01-02T00:00:00Z".parse().unwrap()));
    i
}

fn cluster_ref(name: &str) -> Option<AccountRef> {
    Some(AccountRef {
        kind: AccountKind::ClusterAccount,
        name: name.into(),
    })
}

fn shared(f: impl FnOnce(&mut Rules)) -> AccountInfo {
    let mut a = AccountInfo::cluster(
        "shared",
        &ClusterAccountSpec {
            secret_ref: key_ref("shared-key"),
            ..Default::default()
        },
        OPS,
    );
    f(&mut a.rules);
    a
}

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn peer(name: &str, created: &str, holds: bool, r: Option<AccountRef>) -> Peer {
    Peer {
        name: name.into(),
        seniority: (Some(created.parse().unwrap()), format!("uid-{name}")),
        holds_inbox: holds,
        deleting: false,
        account_ref: r,
        has_credentials: false,
        domain_id: None,
    }
}

fn via_shared() -> Source {
    Source::Secret {
        namespace: OPS.into(),
        secret: key_ref("shared-key"),
        account: cluster_ref("shared"),
    }
}

/// What the resolution answers, in short: "shared", "default-key", "own-secret",
/// "account", or the refusal's message ("refused: ...") / "missing: ...".
fn short(s: &Source) -> String {
    match s {
        Source::Secret { account: None, .. } => "own-secret".into(),
        Source::Secret {
            account: Some(a), ..
        } => a.name.clone(),
        Source::OperatorDefault => "default-key".into(),
        Source::Refused(m) => format!("refused: {m}"),
        Source::Missing(m) => format!("missing: {m}"),
    }
}

#[test]
fn resolution_table() {
    let selector = LabelSelector {
        match_labels: Some([("tenant".to_string(), "yes".to_string())].into()),
        ..Default::default()
    };
    let by_ref = |f: fn(&mut InboxSpec)| {
        inbox(|s| {
            s.account_ref = cluster_ref("shared").map(Box::new);
            f(s)
        })
    };
    let plain = inbox(|_| {});
    let own = inbox(|s| {
        s.credentials = Some(Box::new(CredentialsSpec {
            secret_ref: key_ref("mine"),
        }))
    });
    let both = inbox(|s| {
        s.account_ref = cluster_ref("shared").map(Box::new);
        s.credentials = Some(Box::new(CredentialsSpec {
            secret_ref: key_ref("mine"),
        }))
    });
    let account = inbox(|s| {
        s.account_ref = Some(Box::new(AccountRef {
            kind: AccountKind::Account,
            name: "team".into(),
        }))
    });
    let ns_named = shared(|r| r.namespaces = Some(vec!["team-a".into()]));
    let ns_other = shared(|r| r.namespaces = Some(vec!["team-b".into()]));
    let ns_selected = shared(|r| r.namespace_selector = Some(selector.clone()));
    let ns_either = shared(|r| {
        r.namespaces = Some(vec!["team-b".into()]);
        r.namespace_selector = Some(selector.clone());
    });
    let domains = shared(|r| r.allowed_domain_ids = Some(vec!["dom_ok".into()]));
    let quota = |n| shared(|r| r.max_inboxes_per_namespace = Some(n));
    let older_holding = peer("old", "2026-01-01T00:00:00Z", true, cluster_ref("shared"));
    let older_waiting = peer(
        "early",
        "2026-01-01T00:00:00Z",
        false,
        cluster_ref("shared"),
    );
    let younger_waiting = peer("late", "2026-01-03T00:00:00Z", false, cluster_ref("shared"));
    let elsewhere = peer("other", "2026-01-01T00:00:00Z", true, cluster_ref("other"));
    let implicit = peer("implicit", "2026-01-01T00:00:00Z", true, None);
    let team = AccountInfo::namespaced("team", "team-a", &key_ref("team-key"));

    let cases: Vec<(&str, Inbox, Inputs, &str)> = vec![
        (
            "accountRef to a ClusterAccount without rules",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(shared(|_| {})),
                ..Default::default()
            },
            "shared",
        ),
        (
            "accountRef to a missing ClusterAccount",
            by_ref(|_| {}),
            Inputs::default(),
            r#"refused: ClusterAccount "shared" not found"#,
        ),
        (
            "accountRef to a missing Account",
            account.clone(),
            Inputs::default(),
            r#"refused: Account "team" not found in namespace "team-a""#,
        ),
        (
            "accountRef to an Account",
            account.clone(),
            Inputs {
                referenced: Some(team.clone()),
                ..Default::default()
            },
            "team",
        ),
        (
            "both set",
            both.clone(),
            Inputs {
                referenced: Some(shared(|_| {})),
                ..Default::default()
            },
            "refused: spec.accountRef and spec.credentials are both set; keep one",
        ),
        (
            "named namespace",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(ns_named.clone()),
                ..Default::default()
            },
            "shared",
        ),
        (
            "namespace not named",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(ns_other.clone()),
                ..Default::default()
            },
            r#"refused: ClusterAccount "shared" does not allow namespace "team-a": it is not in spec.namespaces"#,
        ),
        (
            "selected namespace",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(ns_selected.clone()),
                namespace_labels: labels(&[("tenant", "yes")]),
                ..Default::default()
            },
            "shared",
        ),
        (
            "namespace not selected",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(ns_selected.clone()),
                namespace_labels: labels(&[("tenant", "no")]),
                ..Default::default()
            },
            r#"refused: ClusterAccount "shared" does not allow namespace "team-a": its labels do not match spec.namespaceSelector (tenant=yes)"#,
        ),
        (
            "labels unreadable",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(ns_selected.clone()),
                ..Default::default()
            },
            r#"refused: ClusterAccount "shared" does not allow namespace "team-a": its labels cannot be read to check spec.namespaceSelector (the operator needs get on namespaces)"#,
        ),
        (
            "names or selector: selector",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(ns_either.clone()),
                namespace_labels: labels(&[("tenant", "yes")]),
                ..Default::default()
            },
            "shared",
        ),
        (
            "names or selector: neither",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(ns_either),
                namespace_labels: labels(&[]),
                ..Default::default()
            },
            r#"refused: ClusterAccount "shared" does not allow namespace "team-a": it is not in spec.namespaces, and its labels do not match spec.namespaceSelector (tenant=yes)"#,
        ),
        (
            "allowed domain",
            by_ref(|s| s.domain_id = Some("dom_ok".into())),
            Inputs {
                referenced: Some(domains.clone()),
                ..Default::default()
            },
            "shared",
        ),
        (
            "refused domain",
            by_ref(|s| s.domain_id = Some("dom_x".into())),
            Inputs {
                referenced: Some(domains.clone()),
                ..Default::default()
            },
            r#"refused: ClusterAccount "shared" does not allow domainId "dom_x": allowedDomainIds is [dom_ok]"#,
        ),
        (
            "shared domain with a domain list",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(domains.clone()),
                ..Default::default()
            },
            r#"refused: ClusterAccount "shared" does not allow the shared domain (no domainId): allowedDomainIds is [dom_ok]"#,
        ),
        (
            "quota: a slot is free",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(quota(2)),
                peers: vec![
                    older_holding.clone(),
                    younger_waiting.clone(),
                    elsewhere.clone(),
                ],
                ..Default::default()
            },
            "shared",
        ),
        (
            "quota: full",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(quota(1)),
                peers: vec![older_holding.clone(), elsewhere.clone()],
                ..Default::default()
            },
            r#"refused: ClusterAccount "shared" allows at most 1 Inboxes per namespace (maxInboxesPerNamespace), and namespace "team-a" has 1 (old)"#,
        ),
        (
            "quota: an older waiting Inbox goes first",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(quota(1)),
                peers: vec![older_waiting.clone()],
                ..Default::default()
            },
            r#"refused: ClusterAccount "shared" allows at most 1 Inboxes per namespace (maxInboxesPerNamespace), and namespace "team-a" has 1 (early)"#,
        ),
        (
            "quota: an older Inbox refused its domain takes no slot",
            by_ref(|s| s.domain_id = Some("dom_ok".into())),
            Inputs {
                referenced: Some(shared(|r| {
                    r.max_inboxes_per_namespace = Some(1);
                    r.allowed_domain_ids = Some(vec!["dom_ok".into()]);
                })),
                peers: vec![Peer {
                    domain_id: Some("dom_x".into()),
                    ..older_waiting.clone()
                }],
                ..Default::default()
            },
            "shared",
        ),
        (
            "quota: a younger waiting Inbox does not",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(quota(1)),
                peers: vec![younger_waiting.clone()],
                ..Default::default()
            },
            "shared",
        ),
        (
            "quota: an Inbox holding its inbox keeps it",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(quota(0)),
                peers: vec![older_holding.clone()],
                holds_inbox: true,
                ..Default::default()
            },
            "shared",
        ),
        (
            "adoptionPolicy Deny: spec.inboxId adoption refused, no API call",
            by_ref(|s| s.inbox_id = Some("inb_1".into())),
            Inputs {
                referenced: Some(shared(|r| r.adoption_policy = AdoptionPolicy::Deny)),
                ..Default::default()
            },
            r#"refused: ClusterAccount "shared" refuses spec.inboxId adoption (adoptionPolicy: Deny): Inboxes on it get only inboxes the operator creates for them; remove spec.inboxId and managementPolicy Observe, or use another account"#,
        ),
        (
            "adoptionPolicy Deny: Observe binding refused",
            by_ref(|s| s.management_policy = crate::api::inbox::ManagementPolicy::Observe),
            Inputs {
                referenced: Some(shared(|r| r.adoption_policy = AdoptionPolicy::Deny)),
                ..Default::default()
            },
            r#"refused: ClusterAccount "shared" refuses managementPolicy Observe (adoptionPolicy: Deny): Inboxes on it get only inboxes the operator creates for them; remove spec.inboxId and managementPolicy Observe, or use another account"#,
        ),
        (
            "adoptionPolicy Deny: creating is fine",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(shared(|r| r.adoption_policy = AdoptionPolicy::Deny)),
                ..Default::default()
            },
            "shared",
        ),
        (
            "adoptionPolicy Deny set after an adoption: the bound Inbox keeps its inbox",
            by_ref(|s| s.inbox_id = Some("inb_1".into())),
            Inputs {
                referenced: Some(shared(|r| r.adoption_policy = AdoptionPolicy::Deny)),
                holds_inbox: true,
                ..Default::default()
            },
            "shared",
        ),
        (
            "quota: zero",
            by_ref(|_| {}),
            Inputs {
                referenced: Some(quota(0)),
                ..Default::default()
            },
            r#"refused: ClusterAccount "shared" allows at most 0 Inboxes per namespace (maxInboxesPerNamespace), and namespace "team-a" has 0 ()"#,
        ),
        (
            "own Secret",
            own.clone(),
            Inputs {
                defaults: vec![shared(|_| {})],
                ..Default::default()
            },
            "own-secret",
        ),
        (
            "the default ClusterAccount",
            plain.clone(),
            Inputs {
                defaults: vec![shared(|_| {})],
                ..Default::default()
            },
            "shared",
        ),
        (
            "the default does not allow the namespace: the operator's key",
            plain.clone(),
            Inputs {
                defaults: vec![ns_other.clone()],
                ..Default::default()
            },
            "default-key",
        ),
        (
            "the default allows the namespace, refuses the domain",
            inbox(|s| s.domain_id = Some("dom_x".into())),
            Inputs {
                defaults: vec![domains.clone()],
                ..Default::default()
            },
            r#"refused: ClusterAccount "shared" does not allow domainId "dom_x": allowedDomainIds is [dom_ok]"#,
        ),
        (
            "the default's quota counts implicit Inboxes",
            plain.clone(),
            Inputs {
                defaults: vec![quota(1)],
                peers: vec![implicit.clone()],
                ..Default::default()
            },
            r#"refused: ClusterAccount "shared" allows at most 1 Inboxes per namespace (maxInboxesPerNamespace), and namespace "team-a" has 1 (implicit)"#,
        ),
        (
            "no account at all",
            plain.clone(),
            Inputs::default(),
            "default-key",
        ),
        (
            "deleting: no rules",
            by_ref(|s| s.domain_id = Some("dom_x".into())),
            Inputs {
                referenced: Some(domains.clone()),
                cleanup: true,
                ..Default::default()
            },
            "shared",
        ),
        (
            "deleting: a missing account is a missing key",
            by_ref(|_| {}),
            Inputs {
                cleanup: true,
                ..Default::default()
            },
            r#"missing: ClusterAccount "shared" not found"#,
        ),
        (
            "deleting in a namespace the default does not allow: the operator's key (created with it)",
            plain.clone(),
            Inputs {
                defaults: vec![ns_other],
                cleanup: true,
                ..Default::default()
            },
            "default-key",
        ),
        (
            "deleting in a namespace the default allows: the default, its domain rule aside",
            inbox(|s| s.domain_id = Some("dom_x".into())),
            Inputs {
                defaults: vec![domains.clone()],
                cleanup: true,
                ..Default::default()
            },
            "shared",
        ),
    ];
    for (name, inbox, inputs, want) in cases {
        assert_eq!(short(&resolve(&inbox, &inputs)), want, "{name}");
    }
}

/// Two Inboxes created in the same second, the second with the smaller UID (so the
/// "older" by the tie-break): the first, let past while the second was not yet cached,
/// holds its slot through the reservation, so the second is refused — not let past too.
#[test]
fn a_slot_reserved_by_this_process_counts_before_the_cache_shows_it() {
    let account = shared(|r| r.max_inboxes_per_namespace = Some(1));
    let me = inbox(|s| s.account_ref = cluster_ref("shared").map(Box::new));
    let first = peer(
        "first",
        "2026-01-02T00:00:00Z",
        false,
        cluster_ref("shared"),
    );
    let first = Peer {
        seniority: (first.seniority.0, "uid-zzz".into()),
        ..first
    };
    let decide = |peers: Vec<Peer>, reserved: &[&str]| {
        let mut inputs = Inputs {
            referenced: Some(account.clone()),
            peers,
            ..Default::default()
        };
        let reserved = reserved.iter().map(|u| u.to_string()).collect();
        count_reserved(&mut inputs.peers, &reserved);
        matches!(resolve(&me, &inputs), Source::Refused(_))
    };
    assert!(
        !decide(vec![first.clone()], &[]),
        "without the reservation: both pass"
    );
    assert!(decide(vec![first], &["uid-zzz"]), "with it: refused");
}

/// A key longer than any AgentSend key is refused with a message, not kept as
/// per-account state.
#[test]
fn an_oversized_key_is_missing_not_used() {
    let source = Source::Secret {
        namespace: "team-a".into(),
        secret: key_ref("mine"),
        account: None,
    };
    let huge = "k".repeat(MAX_KEY_LEN + 1);
    let got = credentials(&source, Some(Some(huge)), None, false);
    assert!(
        matches!(&got, Credentials::Missing(m) if m.contains("longer than 512 bytes")),
        "{got:?}"
    );
    let fine = credentials(&source, Some(Some("k".repeat(MAX_KEY_LEN))), None, false);
    assert!(matches!(fine, Credentials::Key(_)));
}

/// What holds a quota slot: proven bindings and proven pending creates, never a tenant's
/// annotations.
#[test]
fn only_proven_bindings_and_creates_hold_a_slot() {
    use crate::api::inbox::{ANNOTATION_CREATE_PENDING, ANNOTATION_CREATE_PENDING_PROOF};
    use crate::api::inbox::{ANNOTATION_INBOX_ID, ANNOTATION_INBOX_ID_PROOF};
    use crate::controller::ownership::proof::Origin;
    use kube::ResourceExt;
    let pk = ProofKey::from_bytes(&[3u8; 32]).unwrap();
    let with = |pairs: &[(&str, String)]| {
        let mut i = inbox(|_| {});
        i.metadata.name = Some("mail".into());
        for (k, v) in pairs {
            i.annotations_mut().insert(k.to_string(), v.clone());
        }
        i
    };
    let ns = "team-a";
    let rows = [
        ("nothing", with(&[]), false),
        (
            "a forged inbox-id",
            with(&[(ANNOTATION_INBOX_ID, "inb_1".into())]),
            false,
        ),
        (
            "a forged pending mark",
            with(&[(ANNOTATION_CREATE_PENDING, "a@agentsend.io".into())]),
            false,
        ),
        (
            "a proven binding",
            with(&[
                (ANNOTATION_INBOX_ID, "inb_1".into()),
                (
                    ANNOTATION_INBOX_ID_PROOF,
                    pk.binding_proof(ns, "mail", "inb_1", "fp"),
                ),
            ]),
            true,
        ),
        (
            "a proven pending create",
            with(&[
                (ANNOTATION_CREATE_PENDING, "a@agentsend.io".into()),
                (
                    ANNOTATION_CREATE_PENDING_PROOF,
                    pk.pending_proof(ns, "mail", "a@agentsend.io", Origin::Random),
                ),
            ]),
            true,
        ),
    ];
    for (what, i, holds) in rows {
        assert_eq!(holds_inbox(&i, &pk), holds, "{what}");
    }
}

#[test]
fn labels_are_read_only_when_a_selector_may_apply() {
    let sel = shared(|r| r.namespace_selector = Some(LabelSelector::default()));
    for (inputs, want) in [
        (Inputs::default(), false),
        (
            Inputs {
                referenced: Some(shared(|_| {})),
                ..Default::default()
            },
            false,
        ),
        (
            Inputs {
                referenced: Some(sel.clone()),
                ..Default::default()
            },
            true,
        ),
        (
            Inputs {
                defaults: vec![sel.clone()],
                ..Default::default()
            },
            true,
        ),
        (
            Inputs {
                defaults: vec![sel.clone()],
                cleanup: true,
                ..Default::default()
            },
            true,
        ),
        (
            Inputs {
                referenced: Some(sel),
                cleanup: true,
                ..Default::default()
            },
            false,
        ),
    ] {
        assert_eq!(needs_namespace_labels(&inputs), want, "{inputs:?}");
    }
}

#[test]
fn peers_are_listed_only_when_a_quota_may_apply() {
    let quota = shared(|r| r.max_inboxes_per_namespace = Some(2));
    for (case, inputs, want) in [
        ("no account", Inputs::default(), false),
        (
            "account without a quota",
            Inputs {
                referenced: Some(shared(|_| {})),
                ..Default::default()
            },
            false,
        ),
        (
            "referenced account with a quota",
            Inputs {
                referenced: Some(quota.clone()),
                ..Default::default()
            },
            true,
        ),
        (
            "default account with a quota",
            Inputs {
                defaults: vec![quota.clone()],
                ..Default::default()
            },
            true,
        ),
        (
            "deleting",
            Inputs {
                referenced: Some(quota),
                cleanup: true,
                ..Default::default()
            },
            false,
        ),
    ] {
        assert_eq!(needs_peers(&inputs), want, "{case}");
    }
}

#[test]
fn credentials_table() {
    let key = || ApiKey::new("k-1").unwrap();
    let own = Source::Secret {
        namespace: "team-a".into(),
        secret: key_ref("mine"),
        account: None,
    };
    /// (case, source, Secret value read, operator default, deleting, credentials).
    type Case = (
        &'static str,
        Source,
        Option<Option<String>>,
        Option<ApiKey>,
        bool,
        Credentials,
    );
    let cases: Vec<Case> = vec![
        ("account key read", via_shared(), Some(Some("k-1".into())), None, false, Credentials::Key(key())),
        ("account Secret missing: refused", via_shared(), None, None, false, Credentials::Refused(r#"the key Secret of ClusterAccount "shared" "shared-key" not found in namespace "ops""#.into())),
        ("account Secret without the key: refused", via_shared(), Some(None), None, false, Credentials::Refused(r#"the key Secret of ClusterAccount "shared" "shared-key" has no non-empty key "apiKey""#.into())),
        ("account Secret missing while deleting: missing", via_shared(), None, None, true, Credentials::Missing(r#"the key Secret of ClusterAccount "shared" "shared-key" not found in namespace "ops""#.into())),
        ("own Secret missing: missing", own.clone(), None, None, false, Credentials::Missing(r#"credentials Secret "mine" not found in namespace "team-a""#.into())),
        ("own Secret empty key", own, Some(Some(String::new())), None, false, Credentials::Missing(r#"credentials Secret "mine" has no non-empty key "apiKey""#.into())),
        ("operator default", Source::OperatorDefault, None, Some(key()), false, Credentials::Key(key())),
        ("refused stays refused", Source::Refused("no".into()), None, Some(key()), false, Credentials::Refused("no".into())),
    ];
    for (name, source, value, default, cleanup, want) in cases {
        assert_eq!(
            credentials(&source, value, default, cleanup),
            want,
            "{name}"
        );
    }
    let missing = credentials(&Source::OperatorDefault, None, None, false);
    assert!(matches!(missing, Credentials::Missing(m) if m.contains("no default API key")));
}

#[test]
fn what_an_inbox_uses_and_may_use() {
    let secret = |ns: &str, n: &str| InUse::Secret {
        namespace: ns.into(),
        name: n.into(),
    };
    let cluster = InUse::ClusterAccount {
        name: "shared".into(),
    };
    assert_eq!(
        in_use(&via_shared(), "team-a"),
        vec![secret(OPS, "shared-key"), cluster.clone()]
    );
    assert!(in_use(&Source::OperatorDefault, "team-a").is_empty());
    let a = shared(|_| {});
    let by_ref = inbox(|s| s.account_ref = cluster_ref("shared").map(Box::new));
    assert_eq!(
        may_use(&by_ref, Some(&a), None),
        vec![cluster.clone(), secret(OPS, "shared-key")]
    );
    assert_eq!(
        may_use(&by_ref, None, None),
        vec![cluster.clone()],
        "the account is gone: only its name"
    );
    let plain = inbox(|_| {});
    assert_eq!(
        may_use(&plain, None, Some(&a)),
        vec![cluster.clone(), secret(OPS, "shared-key")]
    );
    assert!(may_use(&plain, None, None).is_empty());
    let own = inbox(|s| {
        s.credentials = Some(Box::new(CredentialsSpec {
            secret_ref: key_ref("mine"),
        }))
    });
    assert_eq!(
        may_use(&own, None, Some(&a)),
        vec![secret("team-a", "mine")]
    );
    let targets = [cluster.clone(), secret(OPS, "shared-key")];
    assert_eq!(
        unused(&targets, std::slice::from_ref(&cluster)),
        vec![&secret(OPS, "shared-key")]
    );
}

#[test]
fn the_oldest_default_wins() {
    use crate::api::account::ANNOTATION_DEFAULT_ACCOUNT;
    let ca = |name: &str, created: &str, default: bool| {
        let mut c = ClusterAccount::new(name, ClusterAccountSpec::default());
        c.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
        if default {
            c.metadata.annotations =
                Some([(ANNOTATION_DEFAULT_ACCOUNT.to_string(), "true".to_string())].into());
        }
        std::sync::Arc::new(c)
    };
    let all = [
        ca("new", "2026-03-01T00:00:00Z", true),
        ca("old", "2026-01-01T00:00:00Z", true),
        ca("oldest-not-default", "2025-01-01T00:00:00Z", false),
    ];
    let names: Vec<String> = defaults(&all, OPS).into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["old", "new"]);
}
