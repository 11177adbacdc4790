//! The house rules of `src/`, checked by reading the files (no build, no network):
//!
//! - no file holds more than [`MAX_CODE_LINES`] lines of code, not counting blank lines,
//!   comments and `#[cfg(test)]` items (unit tests may be as long as they need);
//! - the library's top-level modules (`src/X.rs` or `src/X/` is module `X`) depend on each
//!   other without a cycle: `X -> Y` for every `crate::Y` (or `super::` path that climbs to
//!   the crate root and down into `Y`) in `X`'s code outside comments, strings and tests.
//!   `lib.rs` and `main.rs` are roots, not modules; the binary's own `cli/` is one like any
//!   other (its `crate::` paths only ever name itself).
//!
//! The source is read with a small lexer (comments, strings, raw strings, char literals and
//! lifetimes) rather than line patterns, so that a `{` or a `crate::x` inside a string or a
//! comment never moves a test item's end or invents a dependency. The `self_check` tests
//! below show both rules failing on a deliberately bad tree.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Lines of non-test code above which a file must be split by role.
const MAX_CODE_LINES: usize = 500;

#[test]
fn no_file_in_src_holds_more_than_500_lines_of_code() {
    let files = rust_files(&src_dir());
    assert!(
        files.len() > 10,
        "found only {} files under src/",
        files.len()
    );
    let report = oversized(&src_dir());
    assert!(
        report.is_empty(),
        "files over {MAX_CODE_LINES} lines of code (blank, comment and #[cfg(test)] lines \
         not counted); split them by role:\n{report}"
    );
}

#[test]
fn top_level_modules_have_no_cycle() {
    let graph = module_graph(&src_dir());
    // A sanity check that the reading works: these dependencies exist today.
    assert!(
        graph
            .get("app")
            .is_some_and(|deps| deps.contains_key("config")),
        "app -> config not found; graph: {:?}",
        graph.keys().collect::<Vec<_>>()
    );
    let report = cycles(&graph);
    assert!(
        report.is_empty(),
        "module cycles (dependencies must point one way, down):\n{report}"
    );
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
                .path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn relative(path: &Path, root: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// One line per file over the limit, `src/...: N lines of code`; empty if none.
fn oversized(root: &Path) -> String {
    let mut report = String::new();
    for path in rust_files(root) {
        let n = code_lines(&read(&path));
        if n > MAX_CODE_LINES {
            let _ = writeln!(report, "  src/{}: {n} lines of code", relative(&path, root));
        }
    }
    report
}

// ---- reading Rust source ----

/// `text` with comments blanked, the contents of string and char literals replaced by `x`
/// (whitespace and line breaks kept), and `#[cfg(test)]` items blanked: line for line the
/// same shape, so line numbers still hold, and free of anything that looks like code but is
/// not.
fn code_only(text: &str) -> String {
    strip_test_items(&strip_comments_and_literals(text))
}

/// Lines of code: non-blank once comments and test items are gone.
fn code_lines(text: &str) -> usize {
    code_only(text)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn strip_comments_and_literals(text: &str) -> String {
    let s: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    // Literal content: keep the line structure, hide the characters.
    let hide = |c: char, out: &mut String| out.push(if c.is_whitespace() { c } else { 'x' });
    let blank = |c: char, out: &mut String| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < s.len() {
                if s[i] == '/' && s.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(s[i], &mut out);
                    i += 1;
                }
            }
        } else if let Some((open, hashes)) = raw_string_start(&s, i) {
            // No escapes: the string ends at a quote followed by as many `#`s.
            out.extend(&s[i..i + open]);
            i += open;
            while i < s.len() {
                let closes = s[i] == '"'
                    && s.len() > i + hashes
                    && s[i + 1..=i + hashes].iter().all(|c| *c == '#');
                if closes {
                    out.extend(&s[i..=i + hashes]);
                    i += 1 + hashes;
                    break;
                }
                hide(s[i], &mut out);
                i += 1;
            }
        } else if c == '"' {
            out.push('"');
            i += 1;
            while i < s.len() {
                match s[i] {
                    '\\' => {
                        hide(s[i], &mut out);
                        if let Some(&e) = s.get(i + 1) {
                            hide(e, &mut out);
                        }
                        i += 2;
                    }
                    '"' => {
                        out.push('"');
                        i += 1;
                        break;
                    }
                    other => {
                        hide(other, &mut out);
                        i += 1;
                    }
                }
            }
        } else if c == '\'' && !prev_ident_quote(&s, i) {
            // A char literal ('x', '\n', '\u{7f}', b'{') or a lifetime / label ('a, 'static).
            match (next, s.get(i + 2)) {
                (Some('\\'), _) => {
                    // The backslash and the escaped character, then up to the quote.
                    out.push('\'');
                    i += 1;
                    for _ in 0..2 {
                        if let Some(&ch) = s.get(i) {
                            hide(ch, &mut out);
                            i += 1;
                        }
                    }
                    while i < s.len() && s[i] != '\'' {
                        hide(s[i], &mut out);
                        i += 1;
                    }
                    if i < s.len() {
                        out.push('\'');
                        i += 1;
                    }
                }
                (Some(ch), Some('\'')) if ch != '\n' => {
                    out.push('\'');
                    hide(ch, &mut out);
                    out.push('\'');
                    i += 3;
                }
                _ => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Does an identifier (other than a `b` prefix, as in `b'x'`) end right before the quote at
/// `s[i]`? Then the quote cannot open a char literal.
fn prev_ident_quote(s: &[char], i: usize) -> bool {
    i > 0 && is_ident(s[i - 1]) && !(s[i - 1] == 'b' && (i < 2 || !is_ident(s[i - 2])))
}

/// At `s[i]`, does a raw string (`r"`, `r#"`, `br##"`, `cr"`) start? The length of its
/// opening (prefix, `r`, hashes, quote) and its number of `#`s. (`r#type`, a raw
/// identifier, is not one.)
fn raw_string_start(s: &[char], i: usize) -> Option<(usize, usize)> {
    if i > 0 && is_ident(s[i - 1]) {
        return None;
    }
    let r = match s[i] {
        'r' => i,
        'b' | 'c' if s.get(i + 1) == Some(&'r') => i + 1,
        _ => return None,
    };
    let hashes = s[r + 1..].iter().take_while(|c| **c == '#').count();
    (s.get(r + 1 + hashes) == Some(&'"')).then_some((r + hashes + 2 - i, hashes))
}

/// Blank every item under `#[cfg(test)]` (to its closing `}` or its `;`), and the whole
/// file under `#![cfg(test)]`. Runs on comment- and literal-free text, so braces balance.
fn strip_test_items(code: &str) -> String {
    if code.contains("#![cfg(test)]") {
        return code
            .chars()
            .map(|c| if c == '\n' { '\n' } else { ' ' })
            .collect();
    }
    let mut s: Vec<char> = code.chars().collect();
    let attr: Vec<char> = "#[cfg(test)]".chars().collect();
    let mut i = 0;
    while i + attr.len() <= s.len() {
        if s[i..i + attr.len()] != attr[..] {
            i += 1;
            continue;
        }
        // The item ends at a `;` outside any bracket, or at the `}` closing a body opened
        // outside any bracket (then with the `;` right after it, if any).
        let mut j = i + attr.len();
        let mut open: Vec<char> = Vec::new();
        while j < s.len() {
            match s[j] {
                c @ ('(' | '[' | '{') => open.push(c),
                ')' | ']' => {
                    open.pop();
                }
                '}' => {
                    open.pop();
                    if open.is_empty() {
                        let rest = s[j + 1..].iter().position(|c| !c.is_whitespace());
                        if let Some(k) = rest.filter(|k| s[j + 1 + k] == ';') {
                            j += 1 + k;
                        }
                        break;
                    }
                }
                ';' if open.is_empty() => break,
                _ => {}
            }
            j += 1;
        }
        let end = j.min(s.len() - 1);
        for c in &mut s[i..=end] {
            if *c != '\n' {
                *c = ' ';
            }
        }
        i = end + 1;
    }
    s.into_iter().collect()
}

// ---- the module graph ----

/// Dependencies between top-level modules: `from -> to -> where` (the first `file:line`).
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// A file's module path: `src/a.rs` and `src/a/mod.rs` are `[a]`, `src/a/b.rs` is `[a, b]`.
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" {
            parts.push(stem.to_owned());
        }
    }
    parts
}

fn module_graph(root: &Path) -> Graph {
    let mut graph = Graph::new();
    for path in rust_files(root) {
        let rel = relative(&path, root);
        if rel == "lib.rs" || rel == "main.rs" {
            continue;
        }
        let module = module_path(&rel);
        let Some(top) = module.first().cloned() else {
            continue;
        };
        let deps = graph.entry(top.clone()).or_default();
        for (to, line) in crate_paths(&module, &code_only(&read(&path))) {
            if to != top {
                deps.entry(to)
                    .or_insert_with(|| format!("src/{rel}:{line}"));
            }
        }
    }
    graph
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

/// Tokens of code-only text, each with its line (1-based).
fn tokens(code: &str) -> Vec<(Token, usize)> {
    let s: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if is_ident(c) {
            let start = i;
            while i < s.len() && is_ident(s[i]) {
                i += 1;
            }
            out.push((Token::Ident(s[start..i].iter().collect()), line));
        } else if c == ':' && s.get(i + 1) == Some(&':') {
            out.push((Token::PathSep, line));
            i += 2;
        } else {
            out.push((Token::Punct(c), line));
            i += 1;
        }
    }
    out
}

/// The top-level modules that paths in `code` (a file of module `module`) name, with the
/// line of each: `crate::Y...`, `crate::{Y, Z::..}`, and `super::` chains that climb to the
/// crate root. Inline `mod name { .. }` blocks deepen the module `super` starts from.
fn crate_paths(module: &[String], code: &str) -> Vec<(String, usize)> {
    let toks = tokens(code);
    let mut found = Vec::new();
    // Inline modules: (name, brace depth inside them).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let (tok, line) = &toks[i];
        match tok {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Token::Ident(kw) if kw == "mod" => {
                if let (Some((Token::Ident(name), _)), Some((Token::Punct('{'), _))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    inline.push((name.clone(), depth + 1));
                }
            }
            Token::Ident(root)
                if (root == "crate" || root == "super")
                    && toks.get(i + 1).map(|t| &t.0) == Some(&Token::PathSep)
                    && (i == 0 || toks[i - 1].0 != Token::PathSep) =>
            {
                // Where the path starts: the crate root, or `super`s up from here.
                let mut j = i;
                let mut level = module.len() + inline.len();
                if root == "crate" {
                    level = 0;
                    j += 2;
                } else {
                    while toks.get(j).map(|t| &t.0) == Some(&Token::Ident("super".into()))
                        && toks.get(j + 1).map(|t| &t.0) == Some(&Token::PathSep)
                    {
                        level = level.saturating_sub(1);
                        j += 2;
                    }
                }
                if level == 0 {
                    for name in first_segments(&toks, j) {
                        if name != "self" && name != "super" && name != "crate" {
                            found.push((name, *line));
                        }
                    }
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// The first segment of the path at `toks[at]`: one identifier, or for a `{..}` group the
/// first identifier of each of its elements.
fn first_segments(toks: &[(Token, usize)], at: usize) -> Vec<String> {
    match toks.get(at).map(|t| &t.0) {
        Some(Token::Ident(name)) => vec![name.clone()],
        Some(Token::Punct('{')) => {
            let mut names = Vec::new();
            let mut depth = 0;
            // The next token starts an element of the outermost group.
            let mut element = false;
            for (tok, _) in &toks[at..] {
                match tok {
                    Token::Punct('{') => {
                        depth += 1;
                        element = depth == 1;
                    }
                    Token::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Token::Punct(',') if depth == 1 => element = true,
                    Token::Ident(name) if element => {
                        names.push(name.clone());
                        element = false;
                    }
                    _ => element = false,
                }
            }
            names
        }
        _ => Vec::new(),
    }
}

/// Every cycle between modules, one per strongly connected component, with where each of
/// its dependencies is written; empty if none.
fn cycles(graph: &Graph) -> String {
    let mut report = String::new();
    for component in strongly_connected(graph) {
        if component.len() < 2 {
            continue;
        }
        let Some(cycle) = shortest_cycle(graph, &component) else {
            continue;
        };
        let _ = writeln!(report, "  {}", cycle.join(" -> "));
        for pair in cycle.windows(2) {
            let at = &graph[&pair[0]][&pair[1]];
            let _ = writeln!(report, "    {} -> {}: {at}", pair[0], pair[1]);
        }
    }
    report
}

/// Tarjan's strongly connected components.
fn strongly_connected(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct Tarjan<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<BTreeSet<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flat_map(|d| d.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.insert(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                self.out.push(component);
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

/// The shortest cycle through the component's first module, staying inside the component:
/// `[a, b, .., a]`.
fn shortest_cycle(graph: &Graph, component: &BTreeSet<String>) -> Option<Vec<String>> {
    let start = component.first()?;
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start.as_str()]);
    while let Some(v) = queue.pop_front() {
        for w in graph.get(v).into_iter().flat_map(|d| d.keys()) {
            if !component.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![v.to_owned()];
                let mut at = v;
                while at != start {
                    at = came_from[at];
                    path.push(at.to_owned());
                }
                path.reverse();
                path.push(start.clone());
                return Some(path);
            }
            if w != start && !came_from.contains_key(w.as_str()) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    None
}

/// Both rules fail when they should: on synthetic sources and on a deliberately bad tree.
mod self_check {
    use super::*;

    #[test]
    fn comments_blank_lines_and_test_items_are_not_code() {
        let text = r##"//! Module doc.
use std::fmt; // trailing comment

/// Doc.
/* block
   comment */
fn f() -> [u8; 2] {
    let s = "a string with { and // and crate::x";
    let r = r#"raw { "quoted" "#;
    let c = ('{', b'"', '\'', '\\');
    [1, 2]
}

#[cfg(test)]
const FIXTURE: [u8; 2] = [1, 2];

#[cfg(test)]
mod tests {
    #[test]
    fn unbalanced_in_strings() {
        let _ = "{{{ not a brace";
        let _ = '}';
    }
}

fn after_tests<'a>(x: &'a str) -> &'a str {
    x
}
"##;
        let code = code_only(text);
        // `use`, `fn f` (7 lines), `fn after_tests` (3 lines).
        assert_eq!(code_lines(text), 10, "code seen:\n{code}");
        assert!(!code.contains("crate::x") && !code.contains("FIXTURE") && !code.contains("not a"));
        assert!(code.contains("fn after_tests"));
        assert_eq!(
            code.lines().count(),
            text.lines().count(),
            "line numbers kept"
        );
    }

    #[test]
    fn a_file_with_a_test_only_attribute_has_no_code() {
        assert_eq!(code_lines("//! Helpers.\n#![cfg(test)]\nfn a() {}\n"), 0);
    }

    #[test]
    fn paths_to_other_modules_are_found_in_every_spelling() {
        let code = code_only(
            r#"use crate::{alpha::A, beta, gamma::{x, y}, self as me};
use super::delta;
pub(crate) fn f() -> crate::epsilon::E { todo!() }
mod inner {
    use super::super::zeta; // from [m, inner]: the crate root
    use super::own; // m itself
}
// crate::in_comment
const S: &str = "crate::in_string";
#[cfg(test)]
mod tests {
    use crate::in_tests;
}
"#,
        );
        let found: Vec<(String, usize)> = crate_paths(&["m".to_owned()], &code);
        let names: BTreeSet<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            BTreeSet::from(["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]),
            "{found:?}"
        );
        assert!(
            found.contains(&("epsilon".to_owned(), 3)),
            "line numbers: {found:?}"
        );
        // From a nested file, one `super` stays inside the top-level module.
        let nested = crate_paths(&["m".into(), "n".into()], "use super::sibling;\n");
        assert!(nested.is_empty(), "{nested:?}");
    }

    #[test]
    fn a_bad_tree_fails_both_rules() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let write = |rel: &str, text: String| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n".into());
        write("a.rs", "use crate::b::B;\n".into());
        write("b/mod.rs", "mod inner;\n".into());
        write("b/inner.rs", "//! Inner.\n\nuse super::super::c;\n".into());
        write("c.rs", "pub fn c() {\n    crate::a::f();\n}\n".into());
        let body: String = (0..MAX_CODE_LINES)
            .map(|i| format!("    let _x{i} = {i};\n"))
            .collect();
        let tests: String = (0..600).map(|i| format!("    fn t{i}() {{}}\n")).collect();
        // Exactly at the limit (498 + 2 lines): fine; one line more: too long.
        let at_limit: String = body.lines().skip(2).map(|l| format!("{l}\n")).collect();
        write(
            "ok.rs",
            format!("fn f() {{\n{at_limit}}}\n#[cfg(test)]\nmod tests {{\n{tests}}}\n"),
        );
        write(
            "big.rs",
            format!("// {}\nfn f() {{\n{body}}}\n", "comment ".repeat(3)),
        );

        let report = oversized(root);
        assert!(report.contains("src/big.rs: 502 lines of code"), "{report}");
        assert!(!report.contains("ok.rs"), "{report}");

        let graph = module_graph(root);
        let report = cycles(&graph);
        assert!(report.contains("a -> b -> c -> a"), "{report}");
        assert!(report.contains("b -> c: src/b/inner.rs:3"), "{report}");
        assert!(report.contains("c -> a: src/c.rs:2"), "{report}");

        // Break the cycle and it passes.
        write("c.rs", "pub fn c() {}\n".into());
        assert_eq!(cycles(&module_graph(root)), "");
    }
}
