//! Parsing a FHIR search query into typed filters and result parameters, and matching
//! filters against index values (search.html, R4).
//!
//! A server must not silently ignore a parameter it does not support: unknown parameters,
//! modifiers and result parameters are `not-supported` errors unless the client asked for
//! lenient handling (`Prefer: handling=lenient`), in which case they become warnings in
//! [`Query::ignored`]. Malformed values are errors either way.

use super::date::parse_range;
use super::params::{ParamType, SearchParam, SearchParams};
use super::value::{IndexValue, is_id, normalize, parse_reference};
use crate::model::Model;
use crate::validate::{Issue, IssueCode, Severity};

/// Page size when `_count` is absent.
pub const COUNT_DEFAULT: u32 = 20;
/// Largest page; a larger `_count` is lowered to it (servers may return fewer than asked).
pub const COUNT_MAX: u32 = 500;
/// Largest `_offset` (deep paging beyond it should narrow the search instead).
pub const OFFSET_MAX: u32 = 100_000;
/// Most query parameters, comma-separated values per parameter and `_include`s plus
/// `_revinclude`s: each filter costs a pass over candidates, so the work is bounded.
pub const QUERY_PARAMS_MAX: usize = 64;
pub const VALUES_PER_PARAM_MAX: usize = 64;
pub const INCLUDES_MAX: usize = 16;
pub const SORT_KEYS_MAX: usize = 4;

const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// `Prefer: handling=lenient`: unsupported parameters are ignored with a warning.
    pub lenient: bool,
}

/// A parsed, validated search on one resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub resource_type: String,
    /// All must match (a repeated parameter is AND); each is an OR of its values.
    pub filters: Vec<Filter>,
    /// `_count`, at most [`COUNT_MAX`]; 0 asks for the total only.
    pub count: u32,
    /// `_offset`: matches to skip (for `next` links).
    pub offset: u32,
    /// `_sort`, most significant first; empty means the server's order.
    pub sort: Vec<SortKey>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    /// `_summary=count`: the total only, no entries.
    pub summary_count: bool,
    /// `_format` as given, for the API to check against what it serves.
    pub format: Option<String>,
    /// Parameters ignored under lenient handling, as warnings for the response.
    pub ignored: Vec<Issue>,
}

/// One search parameter occurrence: matches when the test holds for the resource's values
/// of `param`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub param: String,
    pub param_type: ParamType,
    /// `_id` / `_lastUpdated`: the API supplies their values from server metadata.
    pub server_managed: bool,
    pub test: Test,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    /// `:missing=true` (no value at all) or `:missing=false` (at least one).
    Missing(bool),
    /// Any value matches any of these; with `not` (`:not`), no value matches any of them.
    Token {
        any_of: Vec<TokenQuery>,
        not: bool,
    },
    /// Values already normalised for [`StringMode::StartsWith`] and
    /// [`StringMode::Contains`], as written for [`StringMode::Exact`].
    String {
        any_of: Vec<String>,
        mode: StringMode,
    },
    Date {
        any_of: Vec<DateQuery>,
    },
    Reference {
        any_of: Vec<ReferenceQuery>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenQuery {
    /// `code`: the code in any system (or none).
    Code(String),
    /// `system|code`.
    SystemCode { system: String, code: String },
    /// `|code`: the code with no system.
    NoSystem(String),
    /// `system|`: any code of the system.
    System(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMode {
    /// Default: a value starts with the query, ignoring case, accents and extra whitespace.
    StartsWith,
    /// `:exact`: a value equals the query exactly (case and accents matter).
    Exact,
    /// `:contains`: a value contains the query, ignoring case and accents.
    Contains,
}

/// Date comparison prefixes (search.html#prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A date search value: its prefix and the closed interval its precision implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateQuery {
    pub prefix: Prefix,
    pub low_ms: i64,
    pub high_ms: i64,
}

/// A reference search value; `resource_type` is `None` for a bare id on a parameter with
/// several target types (any type with that id matches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceQuery {
    pub resource_type: Option<String>,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    /// A date parameter of the type, or `_lastUpdated`.
    pub param: String,
    pub descending: bool,
}

/// `_include` / `_revinclude` `=source_type:param[:target_type]` (one level, no `:iterate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub source_type: String,
    /// A reference parameter of `source_type`.
    pub param: String,
    pub target_type: Option<String>,
}

fn error(code: IssueCode, diagnostics: String) -> Issue {
    Issue { severity: Severity::Error, code, expression: None, diagnostics }
}

struct Context<'o> {
    options: &'o ParseOptions,
    errors: Vec<Issue>,
    ignored: Vec<Issue>,
}

impl Context<'_> {
    fn invalid(&mut self, diagnostics: String) {
        self.errors.push(error(IssueCode::Invalid, diagnostics));
    }

    /// Unsupported features are errors unless the client asked for lenient handling.
    fn not_supported(&mut self, diagnostics: String) {
        if self.options.lenient {
            self.ignored.push(Issue {
                severity: Severity::Warning,
                code: IssueCode::NotSupported,
                expression: None,
                diagnostics: format!("{diagnostics}; ignored (lenient handling)"),
            });
        } else {
            self.errors.push(error(IssueCode::NotSupported, diagnostics));
        }
    }
}

/// Parses the query parameters of a search on `resource_type` (names and values already
/// percent-decoded, in request order).
pub fn parse_query(
    resource_type: &str,
    params: &[(String, String)],
    options: &ParseOptions,
) -> Result<Query, Vec<Issue>> {
    let table = SearchParams::r4();
    if !table.is_searchable(resource_type) {
        return Err(vec![error(IssueCode::NotSupported, format!("search is not supported on {resource_type}"))]);
    }
    if params.len() > QUERY_PARAMS_MAX {
        return Err(vec![error(IssueCode::TooLong, format!("more than {QUERY_PARAMS_MAX} query parameters"))]);
    }
    let mut query = Query {
        resource_type: resource_type.to_string(),
        filters: Vec::new(),
        count: COUNT_DEFAULT,
        offset: 0,
        sort: Vec::new(),
        includes: Vec::new(),
        revincludes: Vec::new(),
        summary_count: false,
        format: None,
        ignored: Vec::new(),
    };
    let mut cx = Context { options, errors: Vec::new(), ignored: Vec::new() };
    let mut seen_once: Vec<&str> = Vec::new();
    for (name, value) in params {
        let (base, modifier) = match name.split_once(':') {
            Some((base, modifier)) => (base, Some(modifier)),
            None => (name.as_str(), None),
        };
        // Result parameters take one value and no modifier (except the include family).
        if matches!(base, "_count" | "_offset" | "_sort" | "_summary" | "_format" | "_pretty") {
            if seen_once.contains(&base) {
                cx.invalid(format!("{base} given more than once"));
                continue;
            }
            seen_once.push(base);
            if let Some(modifier) = modifier {
                cx.not_supported(format!("modifier :{modifier} on {base}"));
                continue;
            }
        }
        match base {
            "_count" => match value.parse::<u32>() {
                Ok(count) => query.count = count.min(COUNT_MAX),
                Err(_) => cx.invalid(format!("_count must be a non-negative integer, not {value:?}")),
            },
            "_offset" => match value.parse::<u32>() {
                Ok(offset) if offset <= OFFSET_MAX => query.offset = offset,
                _ => cx.invalid(format!("_offset must be an integer from 0 to {OFFSET_MAX}, not {value:?}")),
            },
            "_sort" => parse_sort(table, resource_type, value, &mut query, &mut cx),
            "_summary" => match value.as_str() {
                "count" => query.summary_count = true,
                "false" => {}
                other => cx.not_supported(format!("_summary={other} (only count and false)")),
            },
            "_format" => query.format = Some(value.clone()),
            // Whitespace in the response body changes no meaning.
            "_pretty" => {}
            "_include" | "_revinclude" => {
                if let Some(modifier) = modifier {
                    cx.not_supported(format!("{base}:{modifier} (one level only)"));
                } else if query.includes.len() + query.revincludes.len() == INCLUDES_MAX {
                    cx.invalid(format!("more than {INCLUDES_MAX} _include and _revinclude parameters"));
                } else if let Some(include) = parse_include(table, resource_type, base == "_revinclude", value, &mut cx)
                {
                    if base == "_include" { query.includes.push(include) } else { query.revincludes.push(include) }
                }
            }
            _ if base.contains('.') || base.starts_with("_has") => {
                cx.not_supported(format!("chained parameter {base}"));
            }
            _ => match table.get(resource_type, base) {
                None => cx.not_supported(format!("unknown search parameter {base} for {resource_type}")),
                Some(param) => {
                    // R4: a parameter with an empty value is ignored.
                    if value.is_empty() {
                        continue;
                    }
                    if let Some(test) = parse_test(param, modifier, value, &mut cx) {
                        query.filters.push(Filter {
                            param: param.code.clone(),
                            param_type: param.param_type,
                            server_managed: param.server_managed,
                            test,
                        });
                    }
                }
            },
        }
    }
    if !cx.errors.is_empty() {
        return Err(cx.errors);
    }
    query.ignored = cx.ignored;
    Ok(query)
}

fn parse_sort(table: &SearchParams, resource_type: &str, value: &str, query: &mut Query, cx: &mut Context<'_>) {
    for item in value.split(',') {
        let (descending, code) = match item.strip_prefix('-') {
            Some(code) => (true, code),
            None => (false, item),
        };
        match table.get(resource_type, code) {
            Some(param) if param.param_type == ParamType::Date => {
                if query.sort.len() == SORT_KEYS_MAX {
                    cx.invalid(format!("more than {SORT_KEYS_MAX} _sort keys"));
                    return;
                }
                query.sort.push(SortKey { param: param.code.clone(), descending });
            }
            _ => cx.not_supported(format!("_sort by {code:?} (only date parameters and _lastUpdated)")),
        }
    }
}

fn parse_include(
    table: &SearchParams,
    resource_type: &str,
    reverse: bool,
    value: &str,
    cx: &mut Context<'_>,
) -> Option<Include> {
    let name = if reverse { "_revinclude" } else { "_include" };
    if value == "*" {
        cx.not_supported(format!("{name}=* (wildcard)"));
        return None;
    }
    let mut parts = value.split(':');
    let (Some(source_type), Some(code)) = (parts.next(), parts.next()) else {
        cx.invalid(format!("{name} must be Type:parameter[:target], not {value:?}"));
        return None;
    };
    let target_type = parts.next();
    if parts.next().is_some() || source_type.is_empty() || code.is_empty() || target_type == Some("") {
        cx.invalid(format!("{name} must be Type:parameter[:target], not {value:?}"));
        return None;
    }
    if code == "*" {
        cx.not_supported(format!("{name}={value} (wildcard)"));
        return None;
    }
    if !reverse && source_type != resource_type {
        cx.not_supported(format!("_include from {source_type} on a {resource_type} search (one level only)"));
        return None;
    }
    if !table.is_searchable(source_type) {
        cx.not_supported(format!("{name} from {source_type}, which is not searchable"));
        return None;
    }
    let Some(param) = table.get(source_type, code) else {
        cx.not_supported(format!("unknown search parameter {code} for {source_type} in {name}"));
        return None;
    };
    if param.param_type != ParamType::Reference {
        cx.invalid(format!("{name}: {source_type}:{code} is not a reference parameter"));
        return None;
    }
    if let Some(target) = target_type
        && !param.targets.iter().any(|t| t == target)
    {
        cx.invalid(format!("{name}: {source_type}:{code} cannot refer to {target}"));
        return None;
    }
    if reverse && (!param.targets.iter().any(|t| t == resource_type) || target_type.is_some_and(|t| t != resource_type))
    {
        cx.invalid(format!("_revinclude: {source_type}:{code} cannot refer to {resource_type}"));
        return None;
    }
    Some(Include {
        source_type: source_type.to_string(),
        param: param.code.clone(),
        target_type: target_type.map(str::to_string),
    })
}

/// Splits at `separator` except where escaped with `\` (search.html#escaping); the parts
/// keep their escapes.
fn split_escaped(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == separator {
            parts.push(&text[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Removes the escapes of `\,`, `\|`, `\$` and `\\`; other backslashes stay as written.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next @ (',' | '|' | '$' | '\\')) = chars.peek()
        {
            out.push(next);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

fn parse_test(param: &SearchParam, modifier: Option<&str>, value: &str, cx: &mut Context<'_>) -> Option<Test> {
    let code = &param.code;
    if modifier == Some("missing") {
        return match value {
            "true" => Some(Test::Missing(true)),
            "false" => Some(Test::Missing(false)),
            _ => {
                cx.invalid(format!("{code}:missing must be true or false, not {value:?}"));
                None
            }
        };
    }
    let values = split_escaped(value, ',');
    if values.len() > VALUES_PER_PARAM_MAX {
        cx.invalid(format!("{code} has more than {VALUES_PER_PARAM_MAX} values"));
        return None;
    }
    if values.iter().any(|v| v.is_empty()) {
        cx.invalid(format!("{code} has an empty value in {value:?}"));
        return None;
    }
    let unsupported = |cx: &mut Context<'_>, modifier: &str| {
        cx.not_supported(format!("modifier :{modifier} on {} parameter {code}", param.param_type.as_str()));
        None
    };
    match param.param_type {
        ParamType::Token => {
            let not = match modifier {
                None => false,
                Some("not") => true,
                Some(other) => return unsupported(cx, other),
            };
            let mut any_of = Vec::new();
            for v in values {
                let token = match split_escaped(v, '|').as_slice() {
                    [code] => TokenQuery::Code(unescape(code)),
                    ["", ""] => {
                        cx.invalid(format!("{code}: {v:?} names neither a system nor a code"));
                        return None;
                    }
                    ["", code] => TokenQuery::NoSystem(unescape(code)),
                    [system, ""] => TokenQuery::System(unescape(system)),
                    [system, code] => TokenQuery::SystemCode { system: unescape(system), code: unescape(code) },
                    _ => {
                        cx.invalid(format!("{code}: {v:?} has more than one unescaped |"));
                        return None;
                    }
                };
                any_of.push(token);
            }
            Some(Test::Token { any_of, not })
        }
        ParamType::String => {
            let mode = match modifier {
                None => StringMode::StartsWith,
                Some("exact") => StringMode::Exact,
                Some("contains") => StringMode::Contains,
                Some(other) => return unsupported(cx, other),
            };
            let mut any_of = Vec::new();
            for v in values {
                let text = unescape(v);
                let text = if mode == StringMode::Exact { text } else { normalize(&text) };
                if text.is_empty() {
                    cx.invalid(format!("{code}: {v:?} is blank"));
                    return None;
                }
                any_of.push(text);
            }
            Some(Test::String { any_of, mode })
        }
        ParamType::Date => {
            if let Some(other) = modifier {
                return unsupported(cx, other);
            }
            let mut any_of = Vec::new();
            for v in values {
                let (prefix, rest) = split_prefix(v);
                let Some((low_ms, high_ms)) = parse_range(rest) else {
                    cx.invalid(format!("{code}: {v:?} is not a date (yyyy[-mm[-dd[Thh:mm[:ss[.sss]][Z|±hh:mm]]]])"));
                    return None;
                };
                any_of.push(DateQuery { prefix, low_ms, high_ms });
            }
            Some(Test::Date { any_of })
        }
        ParamType::Reference => {
            // `subject:Patient=abc` types a bare id.
            let forced = match modifier {
                None => None,
                Some(t) if param.targets.iter().any(|target| target == t) => Some(t),
                Some(other) if Model::r4().is_r4_resource_type(other) => {
                    cx.invalid(format!("{code} cannot refer to {other}"));
                    return None;
                }
                Some(other) => return unsupported(cx, other),
            };
            let mut any_of = Vec::new();
            for v in values {
                let v = unescape(v);
                let reference = if is_id(&v) {
                    let only_target = match param.targets.as_slice() {
                        [only] => Some(only.as_str()),
                        _ => None,
                    };
                    ReferenceQuery { resource_type: forced.or(only_target).map(str::to_string), id: v }
                } else if let Some((resource_type, id)) = parse_reference(&v) {
                    if !param.targets.iter().any(|t| t == resource_type) || forced.is_some_and(|f| f != resource_type) {
                        cx.invalid(format!("{code} cannot refer to {resource_type}"));
                        return None;
                    }
                    ReferenceQuery { resource_type: Some(resource_type.to_string()), id: id.to_string() }
                } else {
                    cx.invalid(format!("{code}: {v:?} is not an id, Type/id or an absolute reference"));
                    return None;
                };
                any_of.push(reference);
            }
            Some(Test::Reference { any_of })
        }
    }
}

/// A date value's two-letter prefix, `eq` when absent.
fn split_prefix(value: &str) -> (Prefix, &str) {
    let prefix = match value.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, value),
    };
    (prefix, &value[2..])
}

impl Filter {
    /// Whether a resource whose values of this parameter are `values` passes the filter:
    /// any value matching any query value (`:not` and `:missing` aside).
    pub fn matches(&self, values: &[IndexValue]) -> bool {
        match &self.test {
            Test::Missing(missing) => values.is_empty() == *missing,
            Test::Token { any_of, not } => {
                let found = values.iter().any(|v| any_of.iter().any(|q| q.matches(v)));
                found != *not
            }
            Test::String { any_of, mode } => values.iter().any(|v| {
                let IndexValue::String { normalized, exact } = v else { return false };
                any_of.iter().any(|q| match mode {
                    StringMode::StartsWith => normalized.starts_with(q.as_str()),
                    StringMode::Contains => normalized.contains(q.as_str()),
                    StringMode::Exact => exact == q,
                })
            }),
            Test::Date { any_of } => values.iter().any(|v| {
                let IndexValue::Date { low_ms, high_ms } = v else { return false };
                any_of.iter().any(|q| q.matches(*low_ms, *high_ms))
            }),
            Test::Reference { any_of } => values.iter().any(|v| {
                let IndexValue::Reference { resource_type, id } = v else { return false };
                any_of.iter().any(|q| {
                    q.id == *id
                        && (q.resource_type.is_none() || resource_type.is_none() || q.resource_type == *resource_type)
                })
            }),
        }
    }
}

impl TokenQuery {
    pub fn matches(&self, value: &IndexValue) -> bool {
        let IndexValue::Token { system, code } = value else { return false };
        match self {
            TokenQuery::Code(c) => c == code,
            TokenQuery::SystemCode { system: s, code: c } => c == code && system.as_deref() == Some(s.as_str()),
            TokenQuery::NoSystem(c) => c == code && system.is_none(),
            TokenQuery::System(s) => system.as_deref() == Some(s.as_str()),
        }
    }
}

impl DateQuery {
    /// R4 prefix semantics between this value's range `S` and a resource's range `T`
    /// (search.html#prefix), both closed intervals.
    pub fn matches(&self, low_ms: i64, high_ms: i64) -> bool {
        let (sl, sh) = (self.low_ms, self.high_ms);
        let contained = sl <= low_ms && high_ms <= sh;
        match self.prefix {
            // S fully contains T.
            Prefix::Eq => contained,
            Prefix::Ne => !contained,
            // The range above S overlaps T.
            Prefix::Gt => high_ms > sh,
            // The range below S overlaps T.
            Prefix::Lt => low_ms < sl,
            Prefix::Ge => high_ms > sh || contained,
            Prefix::Le => low_ms < sl || contained,
            // T starts after S ends / ends before S starts.
            Prefix::Sa => low_ms > sh,
            Prefix::Eb => high_ms < sl,
            // R4 suggests 10% of the distance to now; this layer has no clock, so S is widened
            // by 10% of its own width, at least a day each side, and T must overlap it.
            Prefix::Ap => {
                let margin = ((sh.saturating_sub(sl)) / 10).max(DAY_MS);
                low_ms <= sh.saturating_add(margin) && high_ms >= sl.saturating_sub(margin)
            }
        }
    }
}

/// The key to order a resource by for one date parameter, from its values of that parameter:
/// ascending orders by the earliest start, descending by the latest end (so an open-ended
/// Period sorts as the latest). `None` (no date values) sorts after every key in both
/// directions.
pub fn sort_key(values: &[IndexValue], descending: bool) -> Option<i64> {
    let dates = values.iter().filter_map(|v| match v {
        IndexValue::Date { low_ms, high_ms } => Some((*low_ms, *high_ms)),
        _ => None,
    });
    if descending { dates.map(|(_, high)| high).max() } else { dates.map(|(low, _)| low).min() }
}

/// Compares two resources' sort keys for one [`SortKey`] (see [`sort_key`]): ascending or
/// descending by key, resources without a key last.
pub fn compare_sort_keys(a: Option<i64>, b: Option<i64>, descending: bool) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Some(a), Some(b)) if descending => b.cmp(&a),
        (Some(a), Some(b)) => a.cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}
