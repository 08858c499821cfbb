//! The FHIRPath subset that the R4 SearchParameter expressions we use are written in, compiled
//! against the model so that evaluation is a plain walk over the JSON tree.
//!
//! Supported: paths from a type name (`Observation.code.coding`), unions (`a | b`),
//! `as T` / `.as(T)` / `.ofType(T)` on choice elements (`Observation.effective as dateTime`
//! reads `effectiveDateTime`; a choice element without them reads every type), parentheses
//! around a path (`(Observation.value as CodeableConcept).text`),
//! `.where(resolve() is T)` on references (decided from the reference's type, never by
//! resolving it) and `.where(element = 'literal')`. Anything else fails to compile; the search
//! table is compiled when generated and when loaded, so an expression this subset cannot
//! evaluate is a test failure, never a surprise at run time.

use crate::json::{Kind, Value};
use crate::model::Model;

/// One compiled union branch: a walk from the resource root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPath {
    /// The resource type the path starts from.
    pub root: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Descend into an element; a choice element lists one JSON key per allowed type.
    Member(Vec<Choice>),
    /// Keep References whose `reference` names this resource type.
    ReferenceTypeIs(String),
    /// Keep objects whose primitive member `key` equals `literal`.
    WhereEquals { key: String, literal: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The JSON member name, e.g. `effectiveDateTime`.
    pub key: String,
    /// The FHIR type found under that key, e.g. `dateTime`.
    pub type_code: String,
    /// Where the model defines the children: a type name or a backbone element path.
    children: String,
}

/// An element found by evaluating a path, with its FHIR type.
#[derive(Debug, Clone, Copy)]
pub struct Node<'v, 'a, 't> {
    pub value: &'v Value<'a>,
    pub type_code: &'t str,
}

/// Compiles a whole expression (a union of paths) against the model.
pub fn compile(expression: &str, model: &Model) -> Result<Vec<CompiledPath>, String> {
    let tokens = tokenize(expression)?;
    let mut parser = Parser { tokens, pos: 0 };
    let mut branches = vec![parser.path()?];
    while parser.eat(&Token::Pipe) {
        branches.push(parser.path()?);
    }
    if parser.pos != parser.tokens.len() {
        return Err(format!("unexpected {:?} in {expression:?}", parser.tokens[parser.pos]));
    }
    branches.iter().map(|branch| resolve(branch, model).map_err(|e| format!("{e} in {expression:?}"))).collect()
}

/// Evaluates a compiled path on a resource, appending at most `limit` nodes to `out`
/// (work is bounded by the tree size: each step visits each matching node once).
pub fn evaluate<'v, 'a, 't>(
    path: &'t CompiledPath,
    resource: &'v Value<'a>,
    limit: usize,
    out: &mut Vec<Node<'v, 'a, 't>>,
) {
    let mut current: Vec<Node<'v, 'a, 't>> = vec![Node { value: resource, type_code: &path.root }];
    for step in &path.steps {
        let mut next = Vec::new();
        for node in &current {
            match step {
                Step::Member(choices) => {
                    for choice in choices {
                        let Some(child) = node.value.get(&choice.key) else { continue };
                        match &child.kind {
                            Kind::Array(items) => {
                                for item in items.iter().filter(|v| !matches!(v.kind, Kind::Null)) {
                                    next.push(Node { value: item, type_code: &choice.type_code });
                                }
                            }
                            Kind::Null => {}
                            _ => next.push(Node { value: child, type_code: &choice.type_code }),
                        }
                    }
                }
                Step::ReferenceTypeIs(wanted) => {
                    let named =
                        node.value.get("reference").and_then(Value::as_str).and_then(super::value::parse_reference);
                    if named.is_some_and(|(resource_type, _)| resource_type == wanted) {
                        next.push(*node);
                    }
                }
                Step::WhereEquals { key, literal } => {
                    if node.value.get(key).and_then(Value::as_str) == Some(literal.as_str()) {
                        next.push(*node);
                    }
                }
            }
            if next.len() >= limit {
                next.truncate(limit);
                break;
            }
        }
        current = next;
        if current.is_empty() {
            return;
        }
    }
    let room = limit.saturating_sub(out.len());
    out.extend(current.into_iter().take(room));
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Literal(String),
    Dot,
    Pipe,
    Open,
    Close,
    Equals,
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        match c {
            ' ' => {}
            '.' => tokens.push(Token::Dot),
            '|' => tokens.push(Token::Pipe),
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            '=' => tokens.push(Token::Equals),
            '\'' => {
                let mut literal = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\'')) => break,
                        Some((_, '\\')) => return Err("escapes in string literals are not supported".into()),
                        Some((_, c)) => literal.push(c),
                        None => return Err("unterminated string literal".into()),
                    }
                }
                tokens.push(Token::Literal(literal));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut end = start + c.len_utf8();
                while let Some(&(i, c)) = chars.peek() {
                    if !(c.is_ascii_alphanumeric() || c == '_') {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                tokens.push(Token::Ident(text[start..end].to_string()));
            }
            other => return Err(format!("unsupported character {other:?}")),
        }
    }
    Ok(tokens)
}

/// A parsed path before it is checked against the model.
#[derive(Debug, Clone)]
struct Path {
    root: String,
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
enum Op {
    Child(String),
    As(String),
    WhereResolveIs(String),
    WhereEquals(String, String),
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn eat(&mut self, token: &Token) -> bool {
        if self.tokens.get(self.pos) == Some(token) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &Token) -> Result<(), String> {
        if self.eat(token) { Ok(()) } else { Err(format!("expected {token:?}")) }
    }

    fn ident(&mut self) -> Result<String, String> {
        match self.tokens.get(self.pos) {
            Some(Token::Ident(name)) => {
                self.pos += 1;
                Ok(name.clone())
            }
            other => Err(format!("expected a name, found {other:?}")),
        }
    }

    /// `primary ('.' step)* ('as' Type)?` where primary is a type name or `( path )`.
    fn path(&mut self) -> Result<Path, String> {
        let mut path = if self.eat(&Token::Open) {
            let inner = self.path()?;
            self.expect(&Token::Close)?;
            inner
        } else {
            Path { root: self.ident()?, ops: Vec::new() }
        };
        while self.eat(&Token::Dot) {
            let name = self.ident()?;
            if !self.eat(&Token::Open) {
                path.ops.push(Op::Child(name));
                continue;
            }
            let op = match name.as_str() {
                "as" | "ofType" => Op::As(self.ident()?),
                "where" => self.where_argument()?,
                other => return Err(format!("unsupported function {other}()")),
            };
            self.expect(&Token::Close)?;
            path.ops.push(op);
        }
        if self.tokens.get(self.pos) == Some(&Token::Ident("as".into())) {
            self.pos += 1;
            path.ops.push(Op::As(self.ident()?));
        }
        Ok(path)
    }

    /// `resolve() is T` or `name = 'literal'`.
    fn where_argument(&mut self) -> Result<Op, String> {
        let name = self.ident()?;
        if name == "resolve" {
            self.expect(&Token::Open)?;
            self.expect(&Token::Close)?;
            if self.ident()? != "is" {
                return Err("expected `is` after resolve()".into());
            }
            return Ok(Op::WhereResolveIs(self.ident()?));
        }
        self.expect(&Token::Equals)?;
        match self.tokens.get(self.pos) {
            Some(Token::Literal(literal)) => {
                self.pos += 1;
                Ok(Op::WhereEquals(name, literal.clone()))
            }
            other => Err(format!("expected a string literal, found {other:?}")),
        }
    }
}

fn capitalize(type_code: &str) -> String {
    let mut chars = type_code.chars();
    chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
}

/// Checks a parsed path against the model and turns it into JSON steps.
fn resolve(path: &Path, model: &Model) -> Result<CompiledPath, String> {
    if !model.is_supported_resource(&path.root) {
        return Err(format!("{} is not a supported resource type", path.root));
    }
    let mut steps: Vec<Step> = Vec::new();
    // Where the current elements' children are defined; `None` after a choice element whose
    // type has not been narrowed, which cannot be navigated further.
    let mut children: Option<String> = Some(path.root.clone());
    let mut current_types: Vec<String> = vec![path.root.clone()];
    for op in &path.ops {
        match op {
            Op::Child(name) => {
                let parent = children
                    .as_deref()
                    .ok_or_else(|| format!("navigating into a choice element ({name}) needs as()"))?;
                let element = model
                    .children(parent)
                    .iter()
                    .find(|e| e.name == *name)
                    .ok_or_else(|| format!("{parent} has no element {name}"))?;
                let choices: Vec<Choice> = if element.choice {
                    element
                        .types
                        .iter()
                        .map(|t| Choice {
                            key: format!("{name}{}", capitalize(&t.code)),
                            type_code: t.code.clone(),
                            children: t.code.clone(),
                        })
                        .collect()
                } else {
                    let type_code = element.types.first().map(|t| t.code.clone()).ok_or("element without a type")?;
                    let children = element.children_path.clone().unwrap_or_else(|| type_code.clone());
                    vec![Choice { key: name.clone(), type_code, children }]
                };
                current_types = choices.iter().map(|c| c.type_code.clone()).collect();
                children = match choices.as_slice() {
                    [only] => Some(only.children.clone()),
                    _ => None,
                };
                steps.push(Step::Member(choices));
            }
            Op::As(wanted) => {
                let Some(Step::Member(choices)) = steps.last_mut() else {
                    return Err(format!("as({wanted}) must follow an element"));
                };
                choices.retain(|c| c.type_code == *wanted);
                let [only] = choices.as_slice() else {
                    return Err(format!("the element cannot be a {wanted}"));
                };
                children = Some(only.children.clone());
                current_types = vec![wanted.clone()];
            }
            Op::WhereResolveIs(wanted) => {
                if current_types.iter().any(|t| t != "Reference") {
                    return Err("resolve() is only supported on References".into());
                }
                if !model.is_r4_resource_type(wanted) {
                    return Err(format!("{wanted} is not a resource type"));
                }
                steps.push(Step::ReferenceTypeIs(wanted.clone()));
            }
            Op::WhereEquals(key, literal) => {
                let parent = children.as_deref().ok_or("where() on a choice element")?;
                let element = model
                    .children(parent)
                    .iter()
                    .find(|e| e.name == *key && !e.choice)
                    .ok_or_else(|| format!("{parent} has no element {key}"))?;
                if !element.types.iter().all(|t| crate::model::is_primitive(&t.code)) {
                    return Err(format!("where({key} = ...) needs a primitive element"));
                }
                steps.push(Step::WhereEquals { key: key.clone(), literal: literal.clone() });
            }
        }
    }
    if steps.is_empty() {
        return Err("a path must select an element".into());
    }
    Ok(CompiledPath { root: path.root.clone(), steps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{Limits, parse};

    fn keys(path: &CompiledPath) -> Vec<String> {
        path.steps
            .iter()
            .map(|s| match s {
                Step::Member(choices) => choices.iter().map(|c| c.key.as_str()).collect::<Vec<_>>().join("/"),
                Step::ReferenceTypeIs(t) => format!("is {t}"),
                Step::WhereEquals { key, literal } => format!("{key}={literal}"),
            })
            .collect()
    }

    #[test]
    fn compiles_the_forms_the_definitions_use() {
        let model = Model::r4();
        let cases: &[(&str, &[&[&str]])] = &[
            ("Observation.code", &[&["code"]]),
            ("Patient.name.given | Patient.name.family", &[&["name", "given"], &["name", "family"]]),
            ("Observation.subject.where(resolve() is Patient)", &[&["subject", "is Patient"]]),
            ("(Observation.effective as dateTime)", &[&["effectiveDateTime"]]),
            ("Observation.effective", &[&["effectiveDateTime/effectivePeriod/effectiveTiming/effectiveInstant"]]),
            ("Condition.onset.as(dateTime) | Condition.onset.as(Period)", &[&["onsetDateTime"], &["onsetPeriod"]]),
            ("Condition.onset.ofType(string)", &[&["onsetString"]]),
            ("(Observation.value as CodeableConcept).text", &[&["valueCodeableConcept", "text"]]),
            ("Patient.telecom.where(system='phone')", &[&["telecom", "system=phone"]]),
            ("Observation.component.referenceRange.low", &[&["component", "referenceRange", "low"]]),
            ("MedicationRequest.dosageInstruction.timing.event", &[&["dosageInstruction", "timing", "event"]]),
        ];
        for (expression, expected) in cases {
            let compiled = compile(expression, model).unwrap_or_else(|e| panic!("{e}"));
            let got: Vec<Vec<String>> = compiled.iter().map(keys).collect();
            assert_eq!(got, *expected, "{expression}");
        }
    }

    #[test]
    fn rejects_what_it_cannot_evaluate() {
        let model = Model::r4();
        for expression in [
            "Patient.deceased.exists() and Patient.deceased != false",
            "Observation.extension('http://x')",
            "Observation.nope",
            "Observation.value.text",
            "Observation.code as Period",
            "Observation.code.where(resolve() is Patient)",
            "Observation.subject.where(resolve() is Nothing)",
            "(Observation.code | Observation.category).text",
            "Coverage.beneficiary",
            "Observation",
            "Observation.code[0]",
            "Observation.telecom.where(system='x",
            "",
        ] {
            assert!(compile(expression, model).is_err(), "{expression}");
        }
    }

    #[test]
    fn evaluates_choices_arrays_and_filters() {
        let model = Model::r4();
        let text = br#"{"resourceType":"Patient","telecom":[{"system":"phone","value":"1"},{"system":"email","value":"a@b"},
            {"system":"phone","value":"2"}],"generalPractitioner":[{"reference":"Practitioner/p"},{"reference":"Organization/o"}],
            "deceasedDateTime":"2020","name":[{"given":["A","B"]},{"given":["C"]}]}"#;
        let resource = parse(text, &Limits::default()).unwrap();
        let run = |expression: &str, limit: usize| -> Vec<String> {
            let compiled = compile(expression, model).unwrap();
            let mut nodes = Vec::new();
            for path in &compiled {
                evaluate(path, &resource, limit, &mut nodes);
            }
            nodes
                .iter()
                .map(|n| {
                    format!("{}:{}", n.type_code, &std::str::from_utf8(&text[n.value.start..n.value.end]).unwrap())
                })
                .collect()
        };
        assert_eq!(run("Patient.telecom.where(system='phone').value", 10), ["string:\"1\"", "string:\"2\""]);
        assert_eq!(run("Patient.generalPractitioner.where(resolve() is Organization)", 10).len(), 1);
        assert_eq!(run("Patient.deceased as dateTime", 10), ["dateTime:\"2020\""]);
        assert_eq!(run("Patient.deceased", 10), ["dateTime:\"2020\""]);
        assert_eq!(run("Patient.name.given", 10), ["string:\"A\"", "string:\"B\"", "string:\"C\""]);
        assert_eq!(run("Patient.name.given", 2).len(), 2);
        assert_eq!(run("Patient.name.given | Patient.telecom", 4).len(), 4);
    }
}
