//! Markdown that renders the same on the docs site (Python-Markdown) and on GitHub: table
//! cells, and the line that marks a page as generated.

/// The first lines of a generated page: a comment naming the source and how to regenerate,
/// then the title.
pub(super) fn header(title: &str, source: &str) -> String {
    format!(
        "<!-- Generated from {source} by `make docs`; do not edit: a test fails when this page \
         differs from what the code generates. -->\n\n# {title}\n\n"
    )
}

/// `text` as one table cell: whitespace (newlines included) collapsed, and every `|` made
/// harmless. Outside code spans a `|` is escaped (`\|`, read the same by both renderers);
/// a code span holding a `|` becomes `<code>` with the pipe as an entity, because the two
/// renderers disagree on `\|` inside backticks.
pub(super) fn cell(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split('`').enumerate() {
        let in_code = i % 2 == 1;
        match (in_code, part.contains('|')) {
            (false, _) => out.push_str(&part.replace('|', "\\|")),
            (true, false) => {
                out.push('`');
                out.push_str(part);
                out.push('`');
            }
            (true, true) => {
                out.push_str("<code>");
                out.push_str(&html_escape(part).replace('|', "&#124;"));
                out.push_str("</code>");
            }
        }
    }
    if out.is_empty() {
        "—".to_string()
    } else {
        out
    }
}

/// A table: a header row and its rows, each cell through [`cell`].
pub(super) fn table<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> String {
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let mut out = line(&head.map(cell));
    out.push_str(&format!("|{}\n", "---|".repeat(N)));
    for row in rows {
        out.push_str(&line(&row.clone().map(|c| cell(&c))));
    }
    out.push('\n');
    out
}

/// `s` in a code span (backticks inside are doubled around).
pub(super) fn code(s: &str) -> String {
    if s.contains('`') {
        format!("`` {s} ``")
    } else {
        format!("`{s}`")
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_keep_pipes_out_of_the_table_syntax() {
        assert_eq!(cell("a\n  b"), "a b");
        assert_eq!(cell("x | y"), "x \\| y");
        assert_eq!(
            cell("rule `a || b` holds"),
            "rule <code>a &#124;&#124; b</code> holds"
        );
        assert_eq!(cell("`k<v>`"), "`k<v>`");
        assert_eq!(cell(""), "—");
    }

    #[test]
    fn tables_have_a_separator_per_column() {
        let t = table(["a", "b"], &[["1".into(), "2".into()]]);
        assert_eq!(t, "| a | b |\n|---|---|\n| 1 | 2 |\n\n");
    }
}
