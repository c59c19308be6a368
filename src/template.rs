//! Shaped outputs: extra Secret keys rendered from the inbox's fields (`spec.secret.template`),
//! e.g. `SMTP_FROM: '{{ displayName }} <{{ address }}>'`.
//!
//! Rendering is pure and happens before anything is written: a template that does not render,
//! a key that a Secret cannot hold, or a key that would replace a default key is an error that
//! names the key, and the Secret is left as it was. Templates come from tenants, so rendering
//! runs on a fuel budget (no template can loop for long) and its output is bounded.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};

use crate::agentsend::RemoteInbox;

/// The fields a template can use, by the names it uses them.
pub const FIELDS: [&str; 5] = ["address", "localPart", "domain", "displayName", "inboxId"];

/// The keys every output holds already; a template may not replace them.
pub const DEFAULT_KEYS: [&str; 3] = ["address", "inboxId", "domainId"];

/// The most bytes one rendered value may have.
pub const MAX_RENDERED_BYTES: usize = 64 * 1024;

/// Evaluation steps one template may take (minijinja's fuel): plenty for substitutions,
/// conditionals and filters, far too few for a runaway loop.
const FUEL: u64 = 20_000;

/// Why a template cannot be used; every variant names the template's key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The key is not a valid Secret/ConfigMap data key.
    #[error(
        "template key {key:?} is not a valid data key: use at most 253 letters, digits, '-', '_' or '.'"
    )]
    InvalidKey { key: String },
    /// The key would replace one of the default keys.
    #[error(
        "template key {key:?} would replace a default key (address, inboxId, domainId): choose another key"
    )]
    DefaultKey { key: String },
    /// The template does not parse, uses an unknown field, or fails while rendering.
    #[error(
        "template {key:?} does not render: {message}; templates can use {{{{ address }}}}, {{{{ localPart }}}}, {{{{ domain }}}}, {{{{ displayName }}}} and {{{{ inboxId }}}}"
    )]
    Render { key: String, message: String },
    /// The rendered value is too large.
    #[error("template {key:?} renders more than {MAX_RENDERED_BYTES} bytes")]
    TooLarge { key: String },
}

/// The values a template sees for one inbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fields {
    pub address: String,
    pub local_part: String,
    pub domain: String,
    /// Empty when the inbox has no display name.
    pub display_name: String,
    pub inbox_id: String,
}

impl Fields {
    /// The fields of an AgentSend inbox.
    pub fn of(remote: &RemoteInbox) -> Self {
        let (local_part, domain) = remote
            .address
            .rsplit_once('@')
            .unwrap_or((remote.address.as_str(), ""));
        Fields {
            address: remote.address.clone(),
            local_part: local_part.to_string(),
            domain: domain.to_string(),
            display_name: remote.display_name.clone().unwrap_or_default(),
            inbox_id: remote.id.clone(),
        }
    }
}

/// Whether `key` may name an entry of a Secret's or ConfigMap's data.
pub fn is_valid_data_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Check every key and render every template; the first problem, in key order, is the error.
pub fn render(
    templates: &BTreeMap<String, String>,
    fields: &Fields,
) -> Result<BTreeMap<String, String>, TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    templates
        .iter()
        .map(|(key, source)| {
            let named = |key: &str| key.to_string();
            if !is_valid_data_key(key) {
                return Err(TemplateError::InvalidKey { key: named(key) });
            }
            if DEFAULT_KEYS.contains(&key.as_str()) {
                return Err(TemplateError::DefaultKey { key: named(key) });
            }
            let value = env
                .render_str(source, fields)
                .map_err(|e| TemplateError::Render {
                    key: named(key),
                    message: describe(&e),
                })?;
            if value.len() > MAX_RENDERED_BYTES {
                return Err(TemplateError::TooLarge { key: named(key) });
            }
            Ok((key.clone(), value))
        })
        .collect()
}

/// minijinja's message without the template source it may quote at length.
fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => format!("{} ({detail})", e.kind()),
        None => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Fields {
        Fields {
            address: "sales@example.com".into(),
            local_part: "sales".into(),
            domain: "example.com".into(),
            display_name: "Sales Bot".into(),
            inbox_id: "inb_1".into(),
        }
    }

    fn one(key: &str, source: &str) -> Result<BTreeMap<String, String>, TemplateError> {
        render(&BTreeMap::from([(key.into(), source.into())]), &fields())
    }

    #[test]
    fn fields_of_an_inbox() {
        let remote: RemoteInbox = serde_json::from_value(serde_json::json!({
            "id": "inb_1", "address": "sales@example.com"
        }))
        .unwrap();
        let f = Fields::of(&remote);
        assert_eq!(f.local_part, "sales");
        assert_eq!(f.domain, "example.com");
        assert_eq!(f.display_name, "");
        assert_eq!(f.inbox_id, "inb_1");
    }

    #[test]
    fn every_field_renders() {
        let table = [
            ("{{ address }}", "sales@example.com"),
            ("{{ localPart }}", "sales"),
            ("{{ domain }}", "example.com"),
            (
                "{{ displayName }} <{{ address }}>",
                "Sales Bot <sales@example.com>",
            ),
            ("{{ inboxId }}", "inb_1"),
            ("mailto:{{ address | upper }}", "mailto:SALES@EXAMPLE.COM"),
            ("{% if displayName %}named{% endif %}", "named"),
            ("plain text", "plain text"),
        ];
        for (source, want) in table {
            let got = one("OUT", source).unwrap_or_else(|e| panic!("{source}: {e}"));
            assert_eq!(got["OUT"], want, "{source}");
        }
    }

    #[test]
    fn bad_templates_name_their_key() {
        type Expect = fn(&TemplateError) -> bool;
        let table: [(&str, &str, Expect); 7] = [
            ("OUT", "{{ nope }}", |e| {
                matches!(e, TemplateError::Render { .. })
            }),
            ("OUT", "{{ address ", |e| {
                matches!(e, TemplateError::Render { .. })
            }),
            (
                "OUT",
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
                |e| matches!(e, TemplateError::Render { .. }),
            ),
            ("bad key", "{{ address }}", |e| {
                matches!(e, TemplateError::InvalidKey { .. })
            }),
            ("..", "{{ address }}", |e| {
                matches!(e, TemplateError::InvalidKey { .. })
            }),
            ("address", "{{ address }}", |e| {
                matches!(e, TemplateError::DefaultKey { .. })
            }),
            ("BIG", "{{ address * 10000 }}", |e| {
                matches!(
                    e,
                    TemplateError::TooLarge { .. } | TemplateError::Render { .. }
                )
            }),
        ];
        for (key, source, expected) in table {
            let e = one(key, source).expect_err(source);
            assert!(expected(&e), "{source}: {e:?}");
            assert!(e.to_string().contains(&format!("{key:?}")), "{e}");
        }
    }

    #[test]
    fn a_value_over_the_bound_is_refused() {
        let source = format!("{{{{ '{}' }}}}", "x".repeat(MAX_RENDERED_BYTES + 1));
        let e = one("BIG", &source).unwrap_err();
        assert_eq!(e, TemplateError::TooLarge { key: "BIG".into() });
    }

    #[test]
    fn an_unknown_field_lists_the_known_ones() {
        let e = one("OUT", "{{ adress }}").unwrap_err();
        let text = e.to_string();
        for field in FIELDS {
            assert!(text.contains(field), "{text}");
        }
    }
}
