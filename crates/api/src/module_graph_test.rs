//! Keeps the crate's module graph as the crate docs declare it (`lib.rs`, "Module layering"):
//! no import cycles between the api's modules, every import going to the importer's own tier
//! or a lower one, and no interaction importing another.
//!
//! It reads the crate's own sources: modules are found by following the `mod` declarations
//! from `lib.rs` (test-only modules left out), and a module's imports are the `crate::…`,
//! `super::…`, `self::…` and child-module paths in its code (in `use` declarations and
//! anywhere else; comments, strings and `#[cfg(test)]` items are skipped). A path names the
//! deepest module it passes through: `crate::fhir::errors::FhirError` imports `fhir::errors`,
//! `crate::ApiError` imports the crate root. A parent declaring its children (`mod x;`) is not
//! an import; re-exporting from them (`pub use x::…`) is.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The crate root's name in the tables below.
const ROOT: &str = "crate";

/// The tiers, bottom to top, as the crate docs list them. A module is in the tier that names
/// it; in the interaction tier an entry also covers its submodules that no tier names (one
/// interaction may span a folder: `fhir::bundle` is `bundle/mod.rs`, `entries.rs`, `plan.rs`
/// and `execute.rs`).
const TIERS: &[(&str, &[&str])] = &[
    (
        "foundation",
        &[
            "auth",
            "budget",
            "clock",
            "error",
            "fhir::errors",
            "fhir::paging",
            "fhir::render",
            "fhir::request",
            "fhir::served",
            "http_limits",
            "params",
            "smart::scopes",
            "smart::tokens",
        ],
    ),
    (
        "services",
        &[
            "app",
            "fhir::commit",
            "fhir::conditional",
            "fhir::credentials",
            "fhir::directory",
            "patients::common",
            "signed",
            "smart::bearer",
            "visibility",
        ],
    ),
    (
        "interactions",
        &[
            "break_glass",
            "fhir::audit_event",
            "fhir::bundle",
            "fhir::capability",
            "fhir::consent",
            "fhir::crud",
            "fhir::everything",
            "fhir::export",
            "fhir::history",
            "fhir::provenance",
            "fhir::search",
            "patients",
            "portal",
            "records",
            "routes",
            "smart",
        ],
    ),
    ("router", &[ROOT, "admission", "fhir", "server"]),
];

const INTERACTIONS: usize = 2;

/// Where a module sits: its tier and, in the interaction tier, the interaction it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Place {
    tier: usize,
    unit: &'static str,
}

fn place_of(module: &str) -> Option<Place> {
    for (tier, (_, modules)) in TIERS.iter().enumerate() {
        if let Some(unit) = modules.iter().find(|m| **m == module) {
            return Some(Place { tier, unit });
        }
    }
    TIERS[INTERACTIONS]
        .1
        .iter()
        .filter(|unit| module.strip_prefix(**unit).is_some_and(|rest| rest.starts_with("::")))
        .max_by_key(|unit| unit.len())
        .map(|unit| Place { tier: INTERACTIONS, unit })
}

/// `source` with comments, string literals and character literals blanked out (lifetimes
/// and labels kept), so that only code is left to read paths from.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let after_ident = i > 0 && ident(chars[i - 1]);
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if !after_ident && (c == 'r' || (c == 'b' && next == Some('r'))) && raw_string_start(&chars, i).is_some()
        {
            let (hashes, body) = raw_string_start(&chars, i).expect("checked");
            i = body;
            loop {
                if chars[i] == '"' && chars[i + 1..].iter().take(hashes).filter(|h| **h == '#').count() == hashes {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if c == '"' || (c == 'b' && next == Some('"') && !after_ident) {
            i += if c == 'b' { 2 } else { 1 };
            while chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && next == Some('\\') {
            i += 2;
            while chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// At a raw string literal (`r"…"`, `r#"…"#`, `br"…"`): its number of `#`s and where its
/// text starts.
fn raw_string_start(chars: &[char], at: usize) -> Option<(usize, usize)> {
    let mut i = at + if chars[at] == 'b' { 2 } else { 1 };
    let hashes = chars[i..].iter().take_while(|c| **c == '#').count();
    i += hashes;
    (chars.get(i) == Some(&'"')).then_some((hashes, i + 1))
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

fn tokens(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token::PathSep);
            i += 2;
        } else if c.is_whitespace() {
            i += 1;
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

/// `tokens` without the items under `#[cfg(test)]` (test modules and test-only items).
fn without_test_items(tokens: Vec<Token>) -> Vec<Token> {
    let attribute = [
        Token::Punct('#'),
        Token::Punct('['),
        Token::Ident("cfg".into()),
        Token::Punct('('),
        Token::Ident("test".into()),
        Token::Punct(')'),
        Token::Punct(']'),
    ];
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if !tokens[i..].starts_with(&attribute) {
            out.push(tokens[i].clone());
            i += 1;
            continue;
        }
        // Skip the item: up to a `;` outside braces, or to the brace closing its body.
        i += attribute.len();
        let mut depth = 0usize;
        while i < tokens.len() {
            match &tokens[i] {
                Token::Punct('{') => depth += 1,
                Token::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        i += 1;
                        break;
                    }
                }
                Token::Punct(';') if depth == 0 => {
                    i += 1;
                    break;
                }
                _ => {}
            }
            i += 1;
        }
    }
    out
}

/// One module of the crate: its path (`fhir::crud`), file and code tokens.
struct Module {
    path: String,
    tokens: Vec<Token>,
    children: BTreeSet<String>,
}

fn join(parent: &str, child: &str) -> String {
    if parent == ROOT { child.to_owned() } else { format!("{parent}::{child}") }
}

/// Every module reachable from `lib.rs` through `mod` declarations outside `#[cfg(test)]`.
fn modules(src: &Path) -> BTreeMap<String, Module> {
    let mut found = BTreeMap::new();
    let mut pending = vec![(ROOT.to_owned(), src.join("lib.rs"))];
    while let Some((path, file)) = pending.pop() {
        let source = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let tokens = without_test_items(tokens(&code_only(&source)));
        // A module's children live beside `lib.rs`/`mod.rs`, else in the folder named after it.
        let dir: PathBuf = match file.file_name().and_then(|n| n.to_str()) {
            Some("lib.rs" | "mod.rs") => file.parent().expect("a file has a folder").to_owned(),
            _ => file.with_extension(""),
        };
        let mut children = BTreeSet::new();
        for window in tokens.windows(3) {
            if let [Token::Ident(keyword), Token::Ident(name), Token::Punct(';')] = window
                && keyword == "mod"
            {
                let flat = dir.join(format!("{name}.rs"));
                let file = if flat.exists() { flat } else { dir.join(name).join("mod.rs") };
                children.insert(name.clone());
                pending.push((join(&path, name), file));
            }
        }
        found.insert(path.clone(), Module { path, tokens, children });
    }
    found
}

/// The paths of a use tree starting at `tokens[i]` (after a `prefix::`), into `out`; returns
/// where the tree ends.
fn use_tree(tokens: &[Token], mut i: usize, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    match tokens.get(i) {
        Some(Token::Punct('{')) => {
            i += 1;
            while i < tokens.len() && tokens[i] != Token::Punct('}') {
                i = use_tree(tokens, i, prefix, out);
                if tokens.get(i) == Some(&Token::Punct(',')) {
                    i += 1;
                }
            }
            i + 1
        }
        Some(Token::Ident(segment)) => {
            let depth = prefix.len();
            if segment != "self" {
                prefix.push(segment.clone());
            }
            let end = if tokens.get(i + 1) == Some(&Token::PathSep) {
                use_tree(tokens, i + 2, prefix, out)
            } else {
                out.push(prefix.clone());
                i + 1
            };
            prefix.truncate(depth);
            end
        }
        _ => {
            out.push(prefix.clone());
            i + 1
        }
    }
}

/// The modules `module` imports.
fn imports(module: &Module, all: &BTreeMap<String, Module>) -> BTreeSet<String> {
    let segments = |path: &str| -> Vec<String> {
        if path == ROOT { Vec::new() } else { path.split("::").map(str::to_owned).collect() }
    };
    let own = segments(&module.path);
    let tokens = &module.tokens;
    let mut paths = Vec::new();
    for i in 0..tokens.len() {
        let Token::Ident(first) = &tokens[i] else { continue };
        if tokens.get(i + 1) != Some(&Token::PathSep) || (i > 0 && tokens[i - 1] == Token::PathSep) {
            continue;
        }
        // Where the path starts, and where its use tree does.
        let (mut base, mut at) = match first.as_str() {
            "crate" => (Vec::new(), i + 2),
            "self" => (own.clone(), i + 2),
            "super" => (own[..own.len() - 1].to_vec(), i + 2),
            child if module.children.contains(child) => (own.clone(), i),
            _ => continue,
        };
        while tokens.get(at) == Some(&Token::Ident("super".into())) && tokens.get(at + 1) == Some(&Token::PathSep) {
            base.pop();
            at += 2;
        }
        use_tree(tokens, at, &mut base, &mut paths);
    }
    paths
        .iter()
        .map(|path| {
            (0..=path.len())
                .rev()
                .map(|n| if n == 0 { ROOT.to_owned() } else { path[..n].join("::") })
                .find(|candidate| all.contains_key(candidate))
                .expect("the root is a module")
        })
        .filter(|target| *target != module.path)
        .collect()
}

/// A cycle of `graph`, if it has one, as the modules along it (the first repeated last).
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

/// The module names the crate docs list for `tier` (`//! - **tier**: `a`, `b`, …`).
fn documented(lib_rs: &str, tier: &str) -> BTreeSet<String> {
    let docs: Vec<&str> = lib_rs.lines().filter_map(|l| l.strip_prefix("//!")).map(str::trim).collect();
    let marker = format!("- **{tier}**");
    let Some(start) = docs.iter().position(|l| l.starts_with(&marker)) else { return BTreeSet::new() };
    let mut text = docs[start].split_once(':').map_or("", |(_, rest)| rest).to_owned();
    for line in docs[start + 1..].iter().take_while(|l| !l.is_empty() && !l.starts_with("- ")) {
        text.push(' ');
        text.push_str(line);
    }
    text.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

#[test]
fn api_modules_import_without_cycles_and_keep_their_tiers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let all = modules(&src);
    let graph: BTreeMap<String, BTreeSet<String>> = all.values().map(|m| (m.path.clone(), imports(m, &all))).collect();
    // The reading works: a module known to import two others is seen to.
    assert!(graph["fhir::crud"].contains("fhir::errors") && graph[ROOT].contains("fhir"), "{graph:#?}");

    if let Some(cycle) = cycle(&graph) {
        panic!("the api's modules import each other in a circle: {}", cycle.join(" -> "));
    }

    let unplaced: Vec<&String> = all.keys().filter(|m| place_of(m).is_none()).collect();
    assert!(unplaced.is_empty(), "modules in no tier (add them to TIERS and the crate docs): {unplaced:?}");
    let stale: Vec<&str> =
        TIERS.iter().flat_map(|(_, ms)| ms.iter().copied()).filter(|m| !all.contains_key(*m)).collect();
    assert!(stale.is_empty(), "TIERS names modules that do not exist: {stale:?}");

    let mut wrong = Vec::new();
    for (from, targets) in &graph {
        let here = place_of(from).expect("placed");
        for to in targets {
            let there = place_of(to).expect("placed");
            if there.tier > here.tier {
                wrong.push(format!(
                    "{from} ({}) imports {to} ({}), a higher tier",
                    TIERS[here.tier].0, TIERS[there.tier].0
                ));
            } else if here.tier == INTERACTIONS && there.tier == INTERACTIONS && here.unit != there.unit {
                wrong.push(format!("interaction {from} imports another interaction, {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));

    let lib_rs = fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    for (tier, modules) in TIERS {
        let declared: BTreeSet<String> = modules.iter().map(|m| (*m).to_owned()).collect();
        assert_eq!(documented(&lib_rs, tier), declared, "the crate docs' list of the {tier} tier");
    }
}

#[test]
fn only_code_is_read_for_paths() {
    let code = code_only(
        "let a = '\"'; // crate::x\n/* crate::y /* nested */ */ let b = \"crate::z\"; \
         let c = r#\"crate::w\"#; fn f<'a>(x: &'a str) { crate::v::g(b'{') }",
    );
    assert!(!code.contains("crate::x") && !code.contains("crate::y") && !code.contains("crate::z"), "{code}");
    assert!(!code.contains("crate::w") && code.contains("crate::v::g") && code.contains("'a str"), "{code}");
    let mut paths = Vec::new();
    use_tree(&tokens("a::{b, c::{self, d}, e::*};"), 0, &mut Vec::new(), &mut paths);
    assert_eq!(paths, [vec!["a", "b"], vec!["a", "c"], vec!["a", "c", "d"], vec!["a", "e"]]);
}
