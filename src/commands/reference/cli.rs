//! `docs/reference/cli.md`: every subcommand and flag, read from the clap definition
//! ([`crate::cli::Cli`]): the flag, its environment variable, its default, its values and its
//! help text (which states the accepted range).

use clap::{Arg, Command, CommandFactory};

use super::markdown::{code, header, table};
use crate::cli::Cli;

/// The page.
pub(super) fn page() -> String {
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = header("Command line", "the clap definition in `src/cli.rs`");
    out.push_str(&about(&cmd));
    out.push_str(
        "\n\nEvery flag of `inbox-operator run` can also be set through the environment variable \
         named beside it; a flag given on the command line wins. Durations take a unit (`30s`, \
         `5m`, `1h`). Values are checked at start-up: a value out of range stops the operator with \
         a message naming the flag and its limit.\n\n\
         Two settings have no flag: the default API key may come from `AGENTSEND_API_KEY` (it \
         is never a flag value; `--api-key-file` is preferred), and `RUST_LOG` sets the log \
         levels (default `info`).\n\n",
    );
    for sub in cmd.get_subcommands() {
        out.push_str(&subcommand(sub));
    }
    out
}

fn about(cmd: &Command) -> String {
    let text = cmd
        .get_long_about()
        .or(cmd.get_about())
        .map(|s| s.to_string())
        .unwrap_or_default();
    sentence(&text)
}

/// `text` trimmed and ending in a full stop (clap drops the one of a one-line doc comment).
fn sentence(text: &str) -> String {
    let text = text.trim();
    match text.chars().last() {
        None => String::new(),
        Some('.' | ')' | ':') => text.to_string(),
        Some(_) => format!("{text}."),
    }
}

fn subcommand(sub: &Command) -> String {
    let name = format!("inbox-operator {}", sub.get_name());
    let mut out = format!("## {}\n\n{}\n\n", code(&name), about(sub));
    let rows: Vec<[String; 4]> = sub
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !matches!(a.get_id().as_str(), "help" | "version"))
        .map(|a| {
            [
                flag(a),
                a.get_env()
                    .map(|e| code(&e.to_string_lossy()))
                    .unwrap_or_default(),
                default(a),
                description(a),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("No flags.\n\n");
    } else {
        out.push_str(&table(
            ["Flag", "Environment", "Default", "Description"],
            &rows,
        ));
    }
    out
}

/// `--name <VALUE>`, `--name[=<VALUE>]` (an optional value), or `--name` (a switch).
fn flag(a: &Arg) -> String {
    let long = format!("--{}", a.get_long().unwrap_or(a.get_id().as_str()));
    if !a.get_action().takes_values() {
        return code(&long);
    }
    let value = a
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| a.get_id().as_str().to_uppercase());
    let optional = a.get_num_args().is_some_and(|n| n.min_values() == 0);
    if optional {
        code(&format!("{long}[=<{value}>]"))
    } else {
        code(&format!("{long} <{value}>"))
    }
}

fn default(a: &Arg) -> String {
    let values: Vec<String> = a
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    match values.as_slice() {
        [] if a.is_required_set() => "required".to_string(),
        [] => String::new(),
        _ => code(&values.join(",")),
    }
}

/// The help text, then the values a value-enum accepts (each with its own help).
fn description(a: &Arg) -> String {
    let help = a.get_long_help().or(a.get_help()).map(|s| s.to_string());
    let mut text = sentence(&help.unwrap_or_default());
    let values = a.get_possible_values();
    let switch = values
        .iter()
        .all(|v| ["true", "false"].contains(&v.get_name()));
    if !switch {
        let listed: Vec<String> = values
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| match v.get_help() {
                Some(help) => format!(
                    "{}: {}",
                    code(v.get_name()),
                    help.to_string().trim_end_matches('.')
                ),
                None => code(v.get_name()),
            })
            .collect();
        text.push_str(&format!(" Values: {}.", listed.join("; ")));
    }
    text
}
