//! Kubernetes object-metadata rules the operator must respect when it writes Secrets: label
//! values, qualified names (label and annotation keys), and a label value that stands for a
//! name too long to be one. Pure functions, no I/O.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Longest name part of a qualified name (after the optional `prefix/`).
pub const MAX_QUALIFIED_NAME_LEN: usize = 63;
/// Longest prefix of a qualified name (a DNS subdomain).
pub const MAX_PREFIX_LEN: usize = 253;
/// Largest total size of an object's annotations (keys and values) Kubernetes accepts.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// Characters of the name kept in front of the hash by [`label_value_for_name`].
const HASHED_PREFIX_LEN: usize = 50;
/// Hex characters of SHA-256 appended by [`label_value_for_name`].
const HASH_HEX_LEN: usize = 12;

/// Why a label or annotation that the spec asks for would be refused by Kubernetes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MetaError {
    /// A key that is not a qualified name (`[prefix/]name`).
    #[error(
        "{field}: key {key:?} is not a valid qualified name ([DNS-subdomain prefix/]name, name at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric)"
    )]
    InvalidKey {
        /// `spec.secret.labels` or `spec.secret.annotations`.
        field: &'static str,
        /// The key (truncated).
        key: String,
    },
    /// A label value that is too long or has characters labels cannot hold.
    #[error(
        "{field}: value of {key:?} is not a valid label value (at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric)"
    )]
    InvalidLabelValue {
        /// `spec.secret.labels`.
        field: &'static str,
        /// The key whose value is refused (truncated).
        key: String,
    },
    /// Annotations larger in total than Kubernetes stores.
    #[error(
        "spec.secret.annotations: {bytes} bytes in total, more than the 262144 Kubernetes accepts"
    )]
    AnnotationsTooLarge {
        /// Total size of keys and values.
        bytes: usize,
    },
}

/// A label value naming `name`: the name itself when it is a valid label value, else its first
/// 50 characters, `-`, and 12 hex characters of its SHA-256 (63 characters, distinct per name).
pub fn label_value_for_name(name: &str) -> String {
    if is_label_value(name) {
        return name.to_string();
    }
    let hex = short_hash(name, HASH_HEX_LEN);
    let head: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(HASHED_PREFIX_LEN)
        .collect();
    // The value must start alphanumeric; the hash always ends it alphanumeric.
    let head = head.trim_start_matches(['-', '_', '.']);
    if head.is_empty() {
        hex
    } else {
        format!("{head}-{hex}")
    }
}

/// The first `len` lowercase hex characters of the SHA-256 of `text`: a short, stable tag.
pub fn short_hash(text: &str, len: usize) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .take(len)
        .map(|n| char::from_digit(u32::from(n), 16).unwrap_or('0'))
        .collect()
}

/// Whether `v` is a valid label value (empty, or ≤ 63 of `[A-Za-z0-9-_.]` with alphanumeric ends).
pub fn is_label_value(v: &str) -> bool {
    v.is_empty() || is_name_part(v)
}

/// Whether `k` is a qualified name: an optional DNS-subdomain prefix (≤ 253) and `/`, then a
/// name part (≤ 63 of `[A-Za-z0-9-_.]`, alphanumeric ends). Label and annotation keys are these.
pub fn is_qualified_name(k: &str) -> bool {
    match k.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_name_part(name),
        None => is_name_part(k),
    }
}

fn is_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_QUALIFIED_NAME_LEN
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PREFIX_LEN
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// The first reason Kubernetes would refuse these Secret labels and annotations, if any.
pub fn check_secret_metadata(
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<(), MetaError> {
    check_metadata(
        ("spec.secret.labels", "spec.secret.annotations"),
        labels,
        annotations,
    )
}

/// The first reason Kubernetes would refuse these labels and annotations, if any; errors
/// name the spec fields in `fields` (labels, annotations).
pub fn check_metadata(
    fields: (&'static str, &'static str),
    labels: Option<&BTreeMap<String, String>>,
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<(), MetaError> {
    let short = |s: &str| crate::agentsend::truncate(s, 80);
    for (k, v) in labels.into_iter().flatten() {
        let field = fields.0;
        if !is_qualified_name(k) {
            return Err(MetaError::InvalidKey {
                field,
                key: short(k),
            });
        }
        if !is_label_value(v) {
            return Err(MetaError::InvalidLabelValue {
                field,
                key: short(k),
            });
        }
    }
    let bytes: usize = annotations
        .into_iter()
        .flatten()
        .map(|(k, v)| k.len().saturating_add(v.len()))
        .fold(0, usize::saturating_add);
    if bytes > MAX_ANNOTATIONS_BYTES {
        return Err(MetaError::AnnotationsTooLarge { bytes });
    }
    for k in annotations.into_iter().flatten().map(|(k, _)| k) {
        if !is_qualified_name(k) {
            let field = fields.1;
            return Err(MetaError::InvalidKey {
                field,
                key: short(k),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_their_own_label() {
        assert_eq!(label_value_for_name("support"), "support");
        let max = "a".repeat(63);
        assert_eq!(label_value_for_name(&max), max);
    }

    #[test]
    fn long_names_are_shortened_with_a_hash() {
        let long = format!("{}.x", "a-b".repeat(40));
        let v = label_value_for_name(&long);
        assert_eq!(v.len(), 63, "{v}");
        assert!(is_label_value(&v), "{v}");
        assert!(v.starts_with(&long[..50]));
        let other = format!("{}.y", "a-b".repeat(40));
        assert_ne!(label_value_for_name(&other), v, "same head, different hash");
        assert_eq!(label_value_for_name(&long), v, "stable");
        // Whatever comes in, the value is valid.
        for odd in [
            "-".repeat(300),
            "ü".repeat(100),
            String::new(),
            "x/y".into(),
        ] {
            assert!(is_label_value(&label_value_for_name(&odd)), "{odd}");
        }
    }

    #[test]
    fn qualified_names() {
        for ok in [
            "team",
            "a.b_c-d",
            "example.com/team",
            "x/Y",
            &"k".repeat(63),
        ] {
            assert!(is_qualified_name(ok), "{ok}");
        }
        let long_prefix = format!("{}/x", "a".repeat(254));
        for bad in [
            "",
            "-team",
            "team-",
            "a/b/c",
            "/x",
            "Example.com/x",
            "bad key",
            &"k".repeat(64),
            &long_prefix,
        ] {
            assert!(!is_qualified_name(bad), "{bad}");
        }
    }

    #[test]
    fn secret_metadata_errors_name_the_field() {
        let m = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(check_secret_metadata(Some(&m("team", "a")), Some(&m("note", "any text"))).is_ok());
        let e = check_secret_metadata(Some(&m("team", &"v".repeat(64))), None).unwrap_err();
        assert!(e.to_string().contains("spec.secret.labels"), "{e}");
        let e = check_secret_metadata(Some(&m("bad key", "v")), None).unwrap_err();
        assert!(matches!(e, MetaError::InvalidKey { .. }));
        let e = check_secret_metadata(None, Some(&m("a/b/c", "v"))).unwrap_err();
        assert!(e.to_string().contains("spec.secret.annotations"), "{e}");
        let huge = m("note", &"x".repeat(MAX_ANNOTATIONS_BYTES));
        let e = check_secret_metadata(None, Some(&huge)).unwrap_err();
        assert!(matches!(e, MetaError::AnnotationsTooLarge { .. }), "{e}");
    }
}
