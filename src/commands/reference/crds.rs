//! `docs/reference/{inbox,account,clusteraccount}.md`: one page per CRD, read from the schema
//! the API server enforces ([`crate::commands::crd::crd_files`]'s objects): names, printer
//! columns, and every field with its type, whether it is required, its description and its
//! validation (lengths, patterns, enums, defaults, CEL rules).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::{Map, Value};

use super::markdown::{code, header, table};
use crate::api::account::{Account, ClusterAccount};

/// `(file name, page)` for each CRD.
pub(super) fn pages() -> Vec<(String, String)> {
    [
        ("inbox.md", crate::api::inbox::crd(), "src/api/inbox.rs"),
        ("account.md", Account::crd(), "src/api/account.rs"),
        (
            "clusteraccount.md",
            ClusterAccount::crd(),
            "src/api/account.rs",
        ),
    ]
    .into_iter()
    .map(|(file, crd, source)| (file.to_string(), page(&crd, source)))
    .collect()
}

fn page(crd: &CustomResourceDefinition, source: &str) -> String {
    let names = &crd.spec.names;
    let version = &crd.spec.versions[0];
    let source = format!("the `{}` CRD (`{source}`)", names.kind);
    let mut out = header(&names.kind, &source);
    let mut facts = vec![
        format!(
            "API version {}",
            code(&format!("{}/{}", crd.spec.group, version.name))
        ),
        format!("kind {}", code(&names.kind)),
        format!("resource {}", code(&names.plural)),
        crd.spec.scope.to_lowercase(),
    ];
    if let Some(short) = &names.short_names {
        facts.push(format!("short names {}", list(short)));
    }
    if let Some(categories) = &names.categories {
        facts.push(format!("categories {}", list(categories)));
    }
    out.push_str(&format!("{}.\n\n", facts.join(", ")));
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    if let Some(d) = schema.get("description").and_then(Value::as_str) {
        out.push_str(&format!("{d}\n\n"));
    }
    out.push_str(&columns(crd));
    out.push_str(
        "## Fields\n\nEvery field of `spec` and `status`, as the API server validates it. The \
         status is written by the operator only (through the status subresource).\n\n",
    );
    let root = schema.get("properties").and_then(Value::as_object);
    let required = required_of(&schema);
    for (name, field) in root.into_iter().flatten() {
        if !matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
            fields(name, field, required.contains(name), &mut out);
        }
    }
    out
}

/// The columns `kubectl get` prints.
fn columns(crd: &CustomResourceDefinition) -> String {
    let version = &crd.spec.versions[0];
    let rows: Vec<[String; 3]> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| {
            let wide = c.priority.is_some_and(|p| p > 0);
            let name = if wide {
                format!("{} (`-o wide`)", c.name)
            } else {
                c.name.clone()
            };
            [name, code(&c.json_path), c.type_.clone()]
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "## Columns\n\nWhat `kubectl get {}` prints:\n\n{}",
        crd.spec.names.plural,
        table(["Column", "JSON path", "Type"], &rows)
    )
}

/// One section per field, depth first: `path`, then its properties and its items'.
fn fields(path: &str, schema: &Value, required: bool, out: &mut String) {
    out.push_str(&format!("### {}\n\n", code(path)));
    let parent = path.rsplit_once('.').map(|(p, _)| p.trim_end_matches("[]"));
    let presence = match (required, parent) {
        (false, _) => "optional".to_string(),
        (true, None) => "required".to_string(),
        (true, Some(parent)) => format!("required in {}", code(parent)),
    };
    out.push_str(&format!("**{}** · {presence}\n\n", type_of(schema)));
    if let Some(d) = schema.get("description").and_then(Value::as_str) {
        out.push_str(&format!("{}\n\n", d.trim()));
    }
    let checks = validation(schema);
    if !checks.is_empty() {
        out.push_str("Validation:\n\n");
        for c in checks {
            out.push_str(&format!("- {c}\n"));
        }
        out.push('\n');
    }
    let required = required_of(schema);
    for (name, field) in properties(schema) {
        fields(
            &format!("{path}.{name}"),
            field,
            required.contains(name),
            out,
        );
    }
    if let Some(items) = schema.get("items") {
        let required = required_of(items);
        for (name, field) in properties(items) {
            let path = format!("{path}[].{name}");
            fields(&path, field, required.contains(name), out);
        }
    }
}

fn properties(schema: &Value) -> impl Iterator<Item = (&String, &Value)> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(Map::iter)
}

fn required_of(schema: &Value) -> Vec<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// `string`, `integer (int64)`, `[]string`, `map[string]string`, `object`, …
fn type_of(schema: &Value) -> String {
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("any");
    match ty {
        "array" => format!("[]{}", schema.get("items").map(type_of).unwrap_or_default()),
        "object" => match schema.get("additionalProperties") {
            Some(values) if values.is_object() => format!("map[string]{}", type_of(values)),
            _ => "object".to_string(),
        },
        _ => match schema.get("format").and_then(Value::as_str) {
            Some(format) => format!("{ty} ({format})"),
            None => ty.to_string(),
        },
    }
}

/// What the API server checks of a value, one line each.
fn validation(schema: &Value) -> Vec<String> {
    let mut out = constraints(schema);
    if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
        let of_values = constraints(values);
        if !of_values.is_empty() {
            out.push(format!("each value: {}", of_values.join("; ")));
        }
    }
    if let Some(items) = schema.get("items") {
        let of_items = constraints(items);
        if !of_items.is_empty() {
            out.push(format!("each item: {}", of_items.join("; ")));
        }
    }
    if let Some(kind) = schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        let keys = schema
            .get("x-kubernetes-list-map-keys")
            .and_then(Value::as_array)
            .map(|k| {
                k.iter()
                    .filter_map(Value::as_str)
                    .map(code)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        out.push(match kind {
            "map" => format!("a list keyed by {keys} (one entry per key)"),
            other => format!("list type {}", code(other)),
        });
    }
    for rule in schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let message = rule.get("message").and_then(Value::as_str).unwrap_or("");
        let expr = rule.get("rule").and_then(Value::as_str).unwrap_or("");
        out.push(format!("rule {}: {message}", code(expr)));
    }
    out
}

/// The checks on a value itself: enum, default, lengths, pattern, bounds, sizes.
fn constraints(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let num = |key: &str| schema.get(key).and_then(Value::as_f64).map(number);
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values.iter().map(|v| code(&plain(v))).collect();
        out.push(format!("one of {}", names.join(", ")));
    }
    if let Some(d) = schema.get("default") {
        out.push(format!("default {}", code(&plain(d))));
    }
    match (num("minLength"), num("maxLength")) {
        (Some(min), Some(max)) => out.push(format!("{min} to {max} characters")),
        (Some(min), None) => out.push(format!("at least {min} characters")),
        (None, Some(max)) => out.push(format!("at most {max} characters")),
        (None, None) => {}
    }
    if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
        out.push(format!("matches {}", code(p)));
    }
    if let Some(min) = num("minimum") {
        out.push(format!("at least {min}"));
    }
    if let Some(max) = num("maximum") {
        out.push(format!("at most {max}"));
    }
    if let Some(max) = num("maxItems") {
        out.push(format!("at most {max} items"));
    }
    if let Some(max) = num("maxProperties") {
        out.push(format!("at most {max} entries"));
    }
    out
}

/// A number as written by hand: `0`, not `0.0`.
fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// A JSON value as text: strings without their quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list(items: &[String]) -> String {
    items.iter().map(|s| code(s)).collect::<Vec<_>>().join(", ")
}
