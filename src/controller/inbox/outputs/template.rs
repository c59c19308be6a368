//! Shaped outputs: extra Secret keys rendered from the inbox's fields (`spec.secret.template`),
//! e.g. `SMTP_FROM: '{{ displayName }} <{{ address }}>'`.
//!
//! Rendering is pure and happens before anything is written: a template that does not render,
//! a key that a Secret cannot hold, or a key that would replace a default key is an error that
//! names the key, and the Secret is left as it was.
//!
//! Templates come from tenants, and one tenant's template must not cost the others their
//! service, so they are bounded in time and memory before and while they render:
//! - only a subset of MiniJinja is accepted ([`check_syntax`]): the five fields, string
//!   literals, the filters in [`FILTERS`] and `{% if %}`/`{% elif %}`/`{% else %}`/`{% endif %}`
//!   — no numbers, operators, attribute access, loops, assignments or functions, which is where
//!   a short template could allocate gigabytes (`{{ address * 99999999 }}`);
//! - the environment has no built-in filter, test or function; the allowed filters are this
//!   module's own, and each refuses, before allocating it, a result over
//!   [`MAX_RENDERED_BYTES`] (`replace` computes its result's length first);
//! - rendering runs on a fuel budget, and the value is checked against the bound again.

use std::collections::BTreeMap;

use minijinja::{Environment, ErrorKind, UndefinedBehavior};

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

/// The filters a template may use: `upper`, `lower`, `title`, `capitalize`, `trim`,
/// `replace(old, new)` and `default(value)` (the value when the input is empty).
pub const FILTERS: [&str; 7] = [
    "upper",
    "lower",
    "title",
    "capitalize",
    "trim",
    "replace",
    "default",
];

/// The longest string literal a template may contain.
pub const MAX_LITERAL_CHARS: usize = 256;

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
    /// The template uses something outside the allowed subset.
    #[error(
        "template {key:?} is not allowed: {message}; templates may use the fields {fields}, string literals, the filters {filters}, and if/elif/else/endif",
        fields = listed(&FIELDS),
        filters = listed(&FILTERS)
    )]
    NotAllowed { key: String, message: String },
}

/// `a, b and c`: how the error messages list [`FIELDS`] and [`FILTERS`].
fn listed(items: &[&str]) -> String {
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
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
    /// Fields of a typical inbox, to check templates before any inbox exists.
    pub fn sample() -> Self {
        Fields {
            address: "sample@agentsend.io".into(),
            local_part: "sample".into(),
            domain: "agentsend.io".into(),
            display_name: "Sample".into(),
            inbox_id: "inb_sample".into(),
        }
    }

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
    let env = environment();
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
            check_syntax(source).map_err(|message| TemplateError::NotAllowed {
                key: named(key),
                message,
            })?;
            let value = env.render_str(source, fields).map_err(|e| {
                if e.kind() == ErrorKind::InvalidOperation && e.detail() == Some(TOO_LARGE) {
                    TemplateError::TooLarge { key: named(key) }
                } else {
                    TemplateError::Render {
                        key: named(key),
                        message: describe(&e),
                    }
                }
            })?;
            if value.len() > MAX_RENDERED_BYTES {
                return Err(TemplateError::TooLarge { key: named(key) });
            }
            Ok((key.clone(), value))
        })
        .collect()
}

/// Check templates before any inbox exists (before the first AgentSend call): every key, the
/// syntax, and a render over sample fields (a parse error or an unknown field shows there).
pub fn check(templates: &BTreeMap<String, String>) -> Result<(), TemplateError> {
    render(templates, &Fields::sample()).map(|_| ())
}

/// The detail of the error a filter returns for a result over the bound.
const TOO_LARGE: &str = "the result would exceed the size bound";

/// An environment with no built-ins: strict about unknown fields, on a fuel budget, with only
/// this module's size-checked filters.
fn environment() -> Environment<'static> {
    let mut env = Environment::empty();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.add_filter("upper", |s: String| bounded(s.to_uppercase()));
    env.add_filter("lower", |s: String| bounded(s.to_lowercase()));
    env.add_filter("trim", |s: String| s.trim().to_string());
    env.add_filter("capitalize", |s: String| {
        let mut chars = s.chars();
        let first: String = chars
            .next()
            .map(|c| c.to_uppercase().collect())
            .unwrap_or_default();
        bounded(first + &chars.as_str().to_lowercase())
    });
    env.add_filter("title", |s: String| bounded(title(&s)));
    env.add_filter("replace", |s: String, old: String, new: String| {
        let count = if old.is_empty() {
            s.chars().count() + 1
        } else {
            s.matches(old.as_str()).count()
        };
        let len = (s.len() - count.saturating_mul(old.len()))
            .saturating_add(count.saturating_mul(new.len()));
        if len > MAX_RENDERED_BYTES {
            return Err(too_large());
        }
        Ok(s.replace(old.as_str(), &new))
    });
    env.add_filter(
        "default",
        |s: String, fallback: String| {
            if s.is_empty() { fallback } else { s }
        },
    );
    env
}

fn too_large() -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, TOO_LARGE)
}

/// `s`, unless it is over the bound.
fn bounded(s: String) -> Result<String, minijinja::Error> {
    if s.len() > MAX_RENDERED_BYTES {
        Err(too_large())
    } else {
        Ok(s)
    }
}

/// Each word's first letter upper case, the rest lower case.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        start = !c.is_alphanumeric();
    }
    out
}

/// Whether `source` keeps to the allowed subset; the error says what it found instead.
pub fn check_syntax(source: &str) -> Result<(), String> {
    let mut rest = source;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let (close, is_block) = match after.chars().next() {
            Some('{') => ("}}", false),
            Some('%') => ("%}", true),
            Some('#') => {
                let end = after.find("#}").ok_or("a comment is not closed")?;
                rest = &after[end + 2..];
                continue;
            }
            _ => {
                rest = after;
                continue;
            }
        };
        let (inside, remainder) = tag_body(&after[1..], close)?;
        check_tag(inside, is_block)?;
        rest = remainder;
    }
    Ok(())
}

/// The body of a tag up to its `close` (string literals may contain it), and what follows.
fn tag_body<'s>(s: &'s str, close: &str) -> Result<(&'s str, &'s str), String> {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if s[i..].starts_with(close) => return Ok((&s[..i], &s[i + close.len()..])),
            None => {}
        }
    }
    Err(format!("a tag is not closed with {close}"))
}

/// The tokens of one tag: names (fields, filters, `not`, `and`, `or`), string literals of at
/// most [`MAX_LITERAL_CHARS`], `|`, `(`, `)`, `,`, and whitespace control (`-`) at the ends;
/// a block tag starts with `if`, `elif`, `else` or `endif`.
fn check_tag(inside: &str, is_block: bool) -> Result<(), String> {
    let body = inside.strip_prefix('-').unwrap_or(inside);
    let body = body.strip_suffix('-').unwrap_or(body);
    let mut chars = body.char_indices().peekable();
    let mut first_word = true;
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '|' | '(' | ')' | ',' => {}
            '\'' | '"' => {
                let mut len = 0;
                let mut closed = false;
                let mut escaped = false;
                for (_, d) in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if d == '\\' {
                        escaped = true;
                    } else if d == c {
                        closed = true;
                        break;
                    }
                    len += 1;
                }
                if !closed {
                    return Err("a string literal is not closed".into());
                }
                if len > MAX_LITERAL_CHARS {
                    return Err(format!(
                        "a string literal is longer than {MAX_LITERAL_CHARS} characters"
                    ));
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = i + c.len_utf8();
                while let Some((j, d)) = chars.peek().copied() {
                    if d.is_ascii_alphanumeric() || d == '_' {
                        end = j + d.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                let word = &body[i..end];
                if is_block && first_word && !matches!(word, "if" | "elif" | "else" | "endif") {
                    return Err(format!(
                        "the tag {{% {word} %}} (only if, elif, else and endif)"
                    ));
                }
                // Other names are left to the renderer: an unknown field or filter fails there
                // with a message that lists the known ones (the environment has nothing else).
                first_word = false;
            }
            other => {
                return Err(format!(
                    "{other:?} (no numbers, operators or attribute access)"
                ));
            }
        }
    }
    Ok(())
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
                matches!(e, TemplateError::NotAllowed { .. })
            }),
            (
                "OUT",
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
                |e| matches!(e, TemplateError::NotAllowed { .. }),
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
                matches!(e, TemplateError::NotAllowed { .. })
            }),
        ];
        for (key, source, expected) in table {
            let e = one(key, source).expect_err(source);
            assert!(expected(&e), "{source}: {e:?}");
            assert!(e.to_string().contains(&format!("{key:?}")), "{e}");
        }
    }

    #[test]
    fn a_value_over_the_bound_is_refused_before_it_is_built() {
        let wide = "x".repeat(MAX_LITERAL_CHARS);
        let source = format!("{{{{ address | replace('', '{wide}') | replace('', '{wide}') }}}}");
        let e = one("BIG", &source).unwrap_err();
        assert_eq!(e, TemplateError::TooLarge { key: "BIG".into() });
        let once = format!("{{{{ address | replace('', '{wide}') }}}}");
        assert!(
            one("OK", &once).is_ok(),
            "one replace stays under the bound"
        );
    }

    /// The template bombs of the review, and their relatives: each is refused before it
    /// allocates anything large (no numbers, operators, loops or functions; filters check the
    /// size of their result first).
    #[test]
    fn template_bombs_are_refused() {
        let bombs = [
            "{{ address|indent(99999999999) }}",
            "{{ address * 99999999 }}",
            "{{ address ~ address ~ address }}",
            "{{ address + address }}",
            "{{ [address] * 99999999 }}",
            "{{ address.__class__ }}",
            "{{ address[0] }}",
            "{% for i in range(99999999) %}x{% endfor %}",
            "{% set a = address %}{{ a }}",
            "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
            "{% raw %}{{ address }}{% endraw %}",
            "{{ range(99999999) }}",
            "{{ address | indent }}",
            "{{ address | join }}",
            "{{ lipsum(99999999) }}",
            "{{ address if address else address * 9 }}",
            "{{ 'unterminated }}",
            "{{ address",
            "{# open comment",
        ];
        for source in bombs {
            let e = one("OUT", source).expect_err(source);
            assert!(
                matches!(
                    e,
                    TemplateError::NotAllowed { .. } | TemplateError::Render { .. }
                ),
                "{source}: {e:?}"
            );
        }
    }

    #[test]
    fn the_allowed_filters_and_conditionals_render() {
        let table = [
            ("{{ address | upper }}", "SALES@EXAMPLE.COM"),
            ("{{ displayName | lower }}", "sales bot"),
            ("{{ localPart | capitalize }}", "Sales"),
            ("{{ 'sales bot' | title }}", "Sales Bot"),
            ("{{ '  x ' | trim }}", "x"),
            (
                "{{ address | replace('@', ' at ') }}",
                "sales at example.com",
            ),
            ("{{ '' | default('none') }}", "none"),
            (
                "{% if displayName and not inboxId %}a{% elif domain %}b{% else %}c{% endif %}",
                "b",
            ),
            ("{{- address -}}", "sales@example.com"),
            ("{# a note #}{{ domain }}", "example.com"),
            ("{{ 'a }} b' }}", "a }} b"),
        ];
        for (source, want) in table {
            let got = one("OUT", source).unwrap_or_else(|e| panic!("{source}: {e}"));
            assert_eq!(got["OUT"], want, "{source}");
        }
    }

    #[test]
    fn check_refuses_before_any_inbox_exists() {
        let bad = BTreeMap::from([("OUT".to_string(), "{% if address %}x".to_string())]);
        assert!(matches!(check(&bad), Err(TemplateError::Render { .. })));
        let good = BTreeMap::from([("OUT".to_string(), "<{{ address }}>".to_string())]);
        assert_eq!(check(&good), Ok(()));
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
