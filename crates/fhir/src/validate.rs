//! Structural FHIR R4 validation of a resource given as the exact bytes received.
//!
//! Checks, in one walk over the parsed tree: a known `resourceType`; no unknown elements;
//! cardinality and JSON shape (array vs object vs primitive); primitive lexical rules (decimals
//! stay lexemes); required elements; one type per choice element; no empty objects, arrays or
//! strings; primitive extensions (`_birthDate`) paired with their values; reference formats
//! and allowed target types; contained resources and Bundle entries recursively; and a few
//! invariants that cost nothing extra (ext-1, ref-1, qty-3, dom-2, dom-4, obs-6, pat-1,
//! cpl-3, bdl-1..5, bdl-7, bdl-8).
//!
//! Not checked: terminology bindings, most FHIRPath invariants, profiles (see docs/fhir.md).
//! The walk does constant work per JSON value (model lookups scan a type's fixed list of
//! elements) and recurses at most as deep as the JSON parser allows.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::rc::Rc;

pub use crate::issue::{Issue, IssueCode, Severity};
use crate::json::{self, Kind, Limits, Member, Value};
use crate::model::{self, ElementDef, Max, Model, TypeRef};
use crate::primitive;

/// R4 limits a `string` (and `markdown`) to 1 MiB (datatypes.html#string).
pub const STRING_BYTES_MAX: usize = 1024 * 1024;

/// Most issues reported for one input; the rest are summarised in one final issue, so an
/// OperationOutcome stays small whatever the input.
pub const ISSUES_MAX: usize = 100;

/// What a `reference` string points at, parsed once here so the API need not re-parse it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceKind {
    /// `Type/id` or `Type/id/_history/version`, relative to the server base.
    Relative { resource_type: String, id: String, version: Option<String> },
    /// An absolute URL (`https://other.example/fhir/Patient/1`).
    Absolute,
    /// `urn:uuid:…`, usually a Bundle entry's `fullUrl`.
    Uuid,
    /// `urn:oid:…`
    Oid,
    /// `#id`, a contained resource (`#` alone is the containing resource).
    Contained { id: String },
    /// `Type?search`: a conditional reference the server must resolve to exactly one match.
    Conditional { resource_type: String, query: String },
}

/// A `Reference.reference` found in a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceSite {
    /// Path of the string relative to its resource, e.g. `Observation.subject.reference` or
    /// `Observation.contained[0].patient.reference`.
    pub path: String,
    pub reference: String,
    pub kind: ReferenceKind,
}

/// One `Bundle.entry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEntry {
    pub full_url: Option<String>,
    pub request_method: Option<String>,
    pub request_url: Option<String>,
    /// Byte range of `entry.resource` in the input: the entry's exact bytes, to be stored as
    /// received.
    pub resource_span: Option<Range<usize>>,
    /// `entry.resource.resourceType`, also for types this model does not validate.
    pub resource_type: Option<String>,
    /// The validated resource; `None` when absent or of an unsupported type (which is then a
    /// `not-supported` warning on the Bundle).
    pub resource: Option<Box<Validated>>,
}

/// A structurally valid resource and the facts the API needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub resource_type: String,
    pub id: Option<String>,
    pub version_id: Option<String>,
    pub last_updated: Option<String>,
    /// Every `Reference.reference` of the resource and its contained resources, in document
    /// order (a Bundle's entries carry their own).
    pub references: Vec<ReferenceSite>,
    /// Bundle entries in order; empty for other resources.
    pub entries: Vec<BundleEntry>,
    /// Findings that do not make the resource invalid (e.g. a contained or entry resource of a
    /// type this model cannot validate). Always empty on entries: they are reported here at
    /// the top, with full paths.
    pub warnings: Vec<Issue>,
}

/// Validates `bytes` as one FHIR R4 resource in JSON with the default JSON limits.
pub fn validate(bytes: &[u8]) -> Result<Validated, Vec<Issue>> {
    validate_with_limits(bytes, &Limits::default())
}

pub fn validate_with_limits(bytes: &[u8], limits: &Limits) -> Result<Validated, Vec<Issue>> {
    let root = match json::parse(bytes, limits) {
        Ok(root) => root,
        Err(error) => return Err(vec![json_issue(&error)]),
    };
    let model = Model::r4();
    let mut walker = Walker {
        model,
        issues: Vec::new(),
        issues_dropped: 0,
        has_error: false,
        path: String::new(),
        scopes: Vec::new(),
    };
    let Some(resource_type) = walker.resource_type(&root, true) else {
        return Err(walker.issues);
    };
    walker.path.push_str(resource_type);
    let validated = walker.resource(&root, resource_type, Context::Top);
    if walker.issues_dropped > 0 {
        let dropped = walker.issues_dropped;
        walker.issues.push(Issue {
            severity: Severity::Information,
            code: IssueCode::TooLong,
            expression: None,
            diagnostics: format!("{dropped} further issues not reported"),
        });
    }
    if walker.has_error {
        // Errors first, each group in document order.
        walker.issues.sort_by_key(|i| i.severity);
        return Err(walker.issues);
    }
    let mut validated = validated;
    validated.warnings = walker.issues;
    Ok(validated)
}

fn json_issue(error: &crate::Error) -> Issue {
    let code = match error {
        crate::Error::Json {
            reason:
                json::Syntax::TooLarge { .. }
                | json::Syntax::TooDeep { .. }
                | json::Syntax::StringTooLong { .. }
                | json::Syntax::ArrayTooLong { .. }
                | json::Syntax::TooManyMembers { .. },
            ..
        } => IssueCode::TooLong,
        _ => IssueCode::Invalid,
    };
    Issue { severity: Severity::Fatal, code, expression: None, diagnostics: error.to_string() }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Top,
    Contained,
    Entry,
    /// Another element of type Resource (e.g. `Bundle.entry.response.outcome`).
    Other,
}

/// Per-resource state while walking it.
struct Scope {
    /// Reference paths are relative to this resource: the `Walker::path` length where it
    /// starts and its type. Contained resources use their container's.
    root_len: usize,
    resource_type: String,
    /// Ids of the contained resources that `#id` references may point to.
    contained_ids: Rc<HashSet<String>>,
    /// Whether this scope is a contained resource (only those may reference `#`).
    contained: bool,
    references: Vec<ReferenceSite>,
    /// Validated entries by the start offset of their resource, for Bundles.
    entries: HashMap<usize, Validated>,
}

struct Walker<'m> {
    model: &'m Model,
    issues: Vec<Issue>,
    issues_dropped: usize,
    /// Whether any error was found, including one dropped beyond `ISSUES_MAX`.
    has_error: bool,
    path: String,
    scopes: Vec<Scope>,
}

impl Walker<'_> {
    fn record(&mut self, issue: Issue) {
        self.has_error |= issue.severity <= Severity::Error;
        if self.issues.len() < ISSUES_MAX {
            self.issues.push(issue);
        } else {
            self.issues_dropped += 1;
        }
    }

    fn issue(&mut self, severity: Severity, code: IssueCode, suffix: &str, diagnostics: impl Into<String>) {
        self.record(Issue {
            severity,
            code,
            expression: Some(format!("{}{suffix}", self.path)),
            diagnostics: diagnostics.into(),
        });
    }

    fn error(&mut self, code: IssueCode, suffix: &str, diagnostics: impl Into<String>) {
        self.issue(Severity::Error, code, suffix, diagnostics);
    }

    /// The `resourceType` of a resource object, if it is one the model validates. Unsupported
    /// R4 types are errors at the top and warnings inside (contained, Bundle entries).
    fn resource_type<'v>(&mut self, value: &'v Value<'_>, top: bool) -> Option<&'v str> {
        if value.as_object().is_none() {
            self.record(Issue {
                severity: Severity::Error,
                code: IssueCode::Structure,
                expression: (!top).then(|| self.path.clone()),
                diagnostics: format!("a resource must be a JSON object, found {}", value.type_name()),
            });
            return None;
        }
        let resource_type = match value.get("resourceType").map(|v| &v.kind) {
            Some(Kind::String(s)) => s.as_ref(),
            Some(_) => {
                self.push_resource_issue(top, Severity::Error, IssueCode::Structure, "resourceType must be a string");
                return None;
            }
            None => {
                self.push_resource_issue(top, Severity::Error, IssueCode::Required, "resourceType is missing");
                return None;
            }
        };
        if self.model.is_supported_resource(resource_type) {
            return Some(resource_type);
        }
        if self.model.is_r4_resource_type(resource_type) {
            let severity = if top { Severity::Error } else { Severity::Warning };
            let diagnostics = format!("resource type {resource_type} is not supported by this server");
            self.push_resource_issue(top, severity, IssueCode::NotSupported, &diagnostics);
        } else {
            let diagnostics = format!("{resource_type:?} is not a FHIR R4 resource type");
            self.push_resource_issue(top, Severity::Error, IssueCode::NotSupported, &diagnostics);
        }
        None
    }

    fn push_resource_issue(&mut self, top: bool, severity: Severity, code: IssueCode, diagnostics: &str) {
        let expression =
            if top { Some("resourceType".to_string()) } else { Some(format!("{}.resourceType", self.path)) };
        self.record(Issue { severity, code, expression, diagnostics: diagnostics.to_string() });
    }

    /// Walks a resource whose path is already in `self.path`.
    fn resource(&mut self, value: &Value<'_>, resource_type: &str, context: Context) -> Validated {
        let members = value.as_object().unwrap_or(&[]);
        // `#id` references resolve against the contained resources of the outermost resource;
        // contained resources share their container's set.
        // Shared, not copied, so many contained resources cost linear work.
        let mut contained_ids = Rc::new(HashSet::new());
        let mut root = (self.path.len(), resource_type.to_string());
        if context == Context::Contained {
            if let Some(scope) = self.scopes.last() {
                contained_ids = Rc::clone(&scope.contained_ids);
                root = (scope.root_len, scope.resource_type.clone());
            }
        } else if let Some(contained) = value.get("contained").and_then(Value::as_array) {
            let ids = contained.iter().filter_map(|r| r.get("id").and_then(Value::as_str)).map(str::to_string);
            contained_ids = Rc::new(ids.collect());
        }
        self.scopes.push(Scope {
            root_len: root.0,
            resource_type: root.1,
            contained_ids,
            contained: context == Context::Contained,
            references: Vec::new(),
            entries: HashMap::new(),
        });
        if context == Context::Contained {
            self.contained_rules(value);
        }
        self.members(members, resource_type, true);
        match resource_type {
            "Observation"
                if value.get("dataAbsentReason").is_some() && members.iter().any(|m| m.key.starts_with("value")) =>
            {
                self.error(
                    IssueCode::Invariant,
                    ".dataAbsentReason",
                    "obs-6: dataAbsentReason SHALL only be present if Observation.value[x] is not present",
                );
            }
            "Bundle" => self.bundle_rules(value),
            _ => {}
        }
        let scope = self.scopes.pop().unwrap_or_else(|| Scope {
            root_len: 0,
            resource_type: String::new(),
            contained_ids: Rc::new(HashSet::new()),
            contained: false,
            references: Vec::new(),
            entries: HashMap::new(),
        });
        let meta = value.get("meta");
        let meta_str = |key: &str| meta.and_then(|m| m.get(key)).and_then(Value::as_str).map(str::to_string);
        let mut entries = Vec::new();
        let mut scope_entries = scope.entries;
        if resource_type == "Bundle"
            && let Some(items) = value.get("entry").and_then(Value::as_array)
        {
            for entry in items {
                let text = |v: Option<&Value<'_>>| v.and_then(Value::as_str).map(str::to_string);
                let resource = entry.get("resource");
                let request = entry.get("request");
                entries.push(BundleEntry {
                    full_url: text(entry.get("fullUrl")),
                    request_method: text(request.and_then(|r| r.get("method"))),
                    request_url: text(request.and_then(|r| r.get("url"))),
                    resource_span: resource.map(|r| r.start..r.end),
                    resource_type: text(resource.and_then(|r| r.get("resourceType"))),
                    resource: resource.and_then(|r| scope_entries.remove(&r.start)).map(Box::new),
                });
            }
        }
        Validated {
            resource_type: resource_type.to_string(),
            id: value.get("id").and_then(Value::as_str).map(str::to_string),
            version_id: meta_str("versionId"),
            last_updated: meta_str("lastUpdated"),
            references: scope.references,
            entries,
            warnings: Vec::new(),
        }
    }

    /// Rules for contained resources (dom-2, dom-4).
    fn contained_rules(&mut self, value: &Value<'_>) {
        if value.get("contained").is_some() {
            self.error(IssueCode::Invariant, ".contained", "dom-2: a contained resource SHALL NOT contain resources");
        }
        if let Some(meta) = value.get("meta")
            && (meta.get("versionId").is_some() || meta.get("lastUpdated").is_some())
        {
            self.error(
                IssueCode::Invariant,
                ".meta",
                "dom-4: a contained resource SHALL NOT have a meta.versionId or a meta.lastUpdated",
            );
        }
    }

    fn bundle_rules(&mut self, value: &Value<'_>) {
        let bundle_type = value.get("type").and_then(Value::as_str).unwrap_or("");
        if value.get("total").is_some() && !matches!(bundle_type, "searchset" | "history") {
            self.error(IssueCode::Invariant, ".total", "bdl-1: total only when a search or history");
        }
        let needs_request = matches!(bundle_type, "batch" | "transaction" | "history");
        let needs_response = matches!(bundle_type, "batch-response" | "transaction-response" | "history");
        let mut full_urls = HashSet::new();
        let Some(entries) = value.get("entry").and_then(Value::as_array) else { return };
        for (index, entry) in entries.iter().enumerate() {
            if entry.as_object().is_none() {
                continue;
            }
            let at = format!(".entry[{index}]");
            if entry.get("search").is_some() && bundle_type != "searchset" {
                self.error(IssueCode::Invariant, &at, "bdl-2: entry.search only when a search");
            }
            if entry.get("request").is_some() != needs_request {
                let rule = if needs_request { "is mandatory" } else { "is not allowed" };
                self.error(
                    IssueCode::Invariant,
                    &at,
                    format!("bdl-3: entry.request {rule} for a {bundle_type:?} Bundle (mandatory for batch, transaction and history only)"),
                );
            }
            if entry.get("response").is_some() != needs_response {
                let rule = if needs_response { "is mandatory" } else { "is not allowed" };
                self.error(
                    IssueCode::Invariant,
                    &at,
                    format!("bdl-4: entry.response {rule} for a {bundle_type:?} Bundle (mandatory for batch-response, transaction-response and history only)"),
                );
            }
            if entry.get("resource").is_none() && entry.get("request").is_none() && entry.get("response").is_none() {
                self.error(
                    IssueCode::Invariant,
                    &at,
                    "bdl-5: an entry must have a resource or a request or a response",
                );
            }
            if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) {
                if full_url.contains("/_history/") {
                    self.error(
                        IssueCode::Invariant,
                        &format!("{at}.fullUrl"),
                        "bdl-8: fullUrl cannot be a version specific reference",
                    );
                }
                // bdl-7: a fullUrl may repeat only for different versions of one resource
                // (each entry then has its own meta.versionId), and freely in a history.
                let version = entry
                    .get("resource")
                    .and_then(|r| r.get("meta"))
                    .and_then(|m| m.get("versionId"))
                    .and_then(Value::as_str);
                if bundle_type != "history" && !full_urls.insert((full_url, version)) {
                    self.error(
                        IssueCode::Invariant,
                        &format!("{at}.fullUrl"),
                        format!("bdl-7: fullUrl {full_url:?} appears more than once"),
                    );
                }
            }
        }
    }

    /// Checks the members of an object against the elements of `parent`.
    fn members(&mut self, members: &[Member<'_>], parent: &str, resource_root: bool) {
        let model = self.model;
        let children = model.children(parent);
        let by_key: HashMap<&str, &Value<'_>> = members.iter().map(|m| (m.key.as_ref(), &m.value)).collect();
        // For each element: the key that supplied it (to enforce one type per choice).
        let mut present: Vec<Option<&str>> = vec![None; children.len()];
        for member in members {
            let key = member.key.as_ref();
            if resource_root && key == "resourceType" {
                continue;
            }
            let (name, is_extension) = match key.strip_prefix('_') {
                Some(name) => (name, true),
                None => (key, false),
            };
            let found = children.iter().enumerate().find_map(|(i, e)| e.type_for_key(name).map(|t| (i, e, t)));
            let Some((index, element, type_ref)) = found else {
                self.error(IssueCode::Structure, &format!(".{key}"), format!("unknown element {key:?} in {parent}"));
                continue;
            };
            match present[index] {
                Some(other) if other != name => {
                    self.error(
                        IssueCode::Structure,
                        &format!(".{key}"),
                        format!("only one of the {}[x] types may be present, found {other} and {name}", element.name),
                    );
                }
                _ => present[index] = Some(name),
            }
            if is_extension {
                if !model::is_primitive(&type_ref.code) {
                    self.error(
                        IssueCode::Structure,
                        &format!(".{key}"),
                        format!("{name} is not a primitive element, so {key} is not allowed"),
                    );
                    continue;
                }
                self.primitive_extension(&member.value, element, key, by_key.get(name).copied());
            } else {
                let extension = by_key.get(format!("_{key}").as_str()).copied();
                self.element(&member.value, element, type_ref, key, extension);
            }
        }
        for (element, present) in children.iter().zip(&present) {
            if element.min > 0 && present.is_none() {
                let name = if element.choice { format!("{}[x]", element.name) } else { element.name.clone() };
                self.error(
                    IssueCode::Required,
                    &format!(".{name}"),
                    format!("{} is required (minimum {})", element.path, element.min),
                );
            }
        }
    }

    /// One element's value: an array when the element repeats, a single value otherwise.
    fn element(
        &mut self,
        value: &Value<'_>,
        element: &ElementDef,
        type_ref: &TypeRef,
        key: &str,
        extension: Option<&Value<'_>>,
    ) {
        let saved = self.path.len();
        self.path.push('.');
        self.path.push_str(key);
        match (element.max, &value.kind) {
            (Max::Many, Kind::Array(items)) => {
                if items.is_empty() {
                    self.error(IssueCode::Structure, "", "empty arrays are not allowed; omit the element");
                } else if (items.len() as u64) < u64::from(element.min) {
                    self.error(IssueCode::Structure, "", format!("at least {} items are required", element.min));
                }
                let extensions = extension.and_then(Value::as_array);
                for (index, item) in items.iter().enumerate() {
                    let item_saved = self.path.len();
                    self.path.push_str(&format!("[{index}]"));
                    let has_extension = extensions.and_then(|e| e.get(index)).is_some_and(|e| e.as_object().is_some());
                    if matches!(item.kind, Kind::Null) && model::is_primitive(&type_ref.code) && has_extension {
                        // A null value is how JSON aligns an array item that has only extensions.
                    } else {
                        self.single(item, element, type_ref);
                    }
                    self.path.truncate(item_saved);
                }
            }
            (Max::Many, _) => {
                self.error(IssueCode::Structure, "", format!("{} repeats, so it must be a JSON array", element.path));
            }
            (Max::One, Kind::Array(_)) => {
                self.error(
                    IssueCode::Structure,
                    "",
                    format!("{} has at most one value, so it must not be an array", element.path),
                );
            }
            (Max::One, _) => self.single(value, element, type_ref),
        }
        self.path.truncate(saved);
    }

    /// `_name`: the id and extensions of a primitive, aligned item by item with its array.
    fn primitive_extension(
        &mut self,
        value: &Value<'_>,
        element: &ElementDef,
        key: &str,
        primitive: Option<&Value<'_>>,
    ) {
        let saved = self.path.len();
        self.path.push('.');
        self.path.push_str(key);
        match (element.max, &value.kind) {
            (Max::Many, Kind::Array(items)) => {
                let values = primitive.and_then(Value::as_array);
                if let Some(values) = values
                    && values.len() != items.len()
                {
                    self.error(
                        IssueCode::Structure,
                        "",
                        format!("{key} has {} items but {} has {}", items.len(), &key[1..], values.len()),
                    );
                }
                for (index, item) in items.iter().enumerate() {
                    let item_saved = self.path.len();
                    self.path.push_str(&format!("[{index}]"));
                    let value_present =
                        values.and_then(|v| v.get(index)).is_some_and(|v| !matches!(v.kind, Kind::Null));
                    match &item.kind {
                        Kind::Null if value_present => {}
                        Kind::Null => {
                            self.error(IssueCode::Structure, "", "a null item needs a value at the same position")
                        }
                        _ => {
                            self.element_object(item, "Element");
                        }
                    }
                    self.path.truncate(item_saved);
                }
            }
            (Max::Many, _) => self.error(IssueCode::Structure, "", format!("{key} must be a JSON array")),
            (Max::One, Kind::Array(_)) => self.error(IssueCode::Structure, "", format!("{key} must not be an array")),
            (Max::One, _) => {
                self.element_object(value, "Element");
            }
        }
        self.path.truncate(saved);
    }

    /// A non-empty JSON object checked against the elements of `parent`.
    fn element_object(&mut self, value: &Value<'_>, parent: &str) -> bool {
        match &value.kind {
            Kind::Object(members) if members.is_empty() => {
                self.error(IssueCode::Structure, "", "empty objects are not allowed; omit the element");
                false
            }
            Kind::Object(members) => {
                self.members(members, parent, false);
                true
            }
            _ => {
                self.error(
                    IssueCode::Structure,
                    "",
                    format!("expected a JSON object for {parent}, found {}", value.type_name()),
                );
                false
            }
        }
    }

    /// One value of one type (never an array).
    fn single(&mut self, value: &Value<'_>, element: &ElementDef, type_ref: &TypeRef) {
        let code = type_ref.code.as_str();
        if matches!(value.kind, Kind::Null) {
            self.error(IssueCode::Structure, "", "null is not allowed here");
            return;
        }
        if model::is_primitive(code) {
            if let Err(diagnostics) = primitive::check(code, value) {
                let code = match value.kind {
                    Kind::Object(_) | Kind::Array(_) => IssueCode::Structure,
                    _ => IssueCode::Value,
                };
                self.error(code, "", diagnostics);
            } else if let Some(text) = value.as_str()
                && matches!(code, "string" | "markdown")
                && text.len() > STRING_BYTES_MAX
            {
                self.error(IssueCode::TooLong, "", format!("a {code} is limited to {STRING_BYTES_MAX} bytes"));
            }
            return;
        }
        if code == "Resource" {
            let context = match element.path.as_str() {
                "Bundle.entry.resource" => Context::Entry,
                p if p.ends_with(".contained") => Context::Contained,
                _ => Context::Other,
            };
            self.nested_resource(value, context);
            return;
        }
        if let Some(children_path) = &element.children_path {
            if self.element_object(value, children_path) {
                self.backbone_rules(value, children_path);
            }
            return;
        }
        if !self.element_object(value, code) {
            return;
        }
        match self.model.resolve_alias(code) {
            "Reference" => self.reference(value, type_ref),
            "Extension" => {
                let has_value = value.as_object().unwrap_or(&[]).iter().any(|m| m.key.starts_with("value"));
                if has_value == value.get("extension").is_some() {
                    self.error(
                        IssueCode::Invariant,
                        "",
                        "ext-1: an extension must have either extensions or value[x], not both",
                    );
                }
            }
            "Quantity" | "SimpleQuantity" if value.get("code").is_some() && value.get("system").is_none() => {
                self.error(
                    IssueCode::Invariant,
                    "",
                    "qty-3: if a code for the unit is present, the system SHALL also be present",
                );
            }
            _ => {}
        }
    }

    fn backbone_rules(&mut self, value: &Value<'_>, path: &str) {
        match path {
            "Patient.contact"
                if ["name", "telecom", "address", "organization"].iter().all(|k| value.get(k).is_none()) =>
            {
                self.error(
                    IssueCode::Invariant,
                    "",
                    "pat-1: a contact SHALL contain a contact's details or a reference to an organization",
                );
            }
            "CarePlan.activity" if value.get("detail").is_some() && value.get("reference").is_some() => {
                self.error(IssueCode::Invariant, "", "cpl-3: provide a reference or detail, not both");
            }
            _ => {}
        }
    }

    fn nested_resource(&mut self, value: &Value<'_>, context: Context) {
        let Some(resource_type) = self.resource_type(value, false) else {
            if context == Context::Contained && value.as_object().is_some() {
                self.contained_rules(value);
            }
            return;
        };
        let resource_type = resource_type.to_string();
        let validated = self.resource(value, &resource_type, context);
        if context == Context::Entry
            && let Some(scope) = self.scopes.last_mut()
        {
            scope.entries.insert(value.start, validated);
        } else if context == Context::Contained
            && let Some(scope) = self.scopes.last_mut()
        {
            // References inside contained resources belong to the container.
            scope.references.extend(validated.references);
        }
    }

    fn reference(&mut self, value: &Value<'_>, type_ref: &TypeRef) {
        let Some(reference) = value.get("reference").and_then(Value::as_str) else { return };
        let kind = match parse_reference(reference, self.model) {
            Ok(kind) => kind,
            Err(diagnostics) => {
                self.error(IssueCode::Value, ".reference", diagnostics);
                return;
            }
        };
        let target_type = match &kind {
            ReferenceKind::Relative { resource_type, .. } | ReferenceKind::Conditional { resource_type, .. } => {
                Some(resource_type.as_str())
            }
            ReferenceKind::Absolute => absolute_target_type(reference, self.model),
            _ => None,
        };
        if let Some(target_type) = target_type
            && !type_ref.targets.is_empty()
            && !type_ref.targets.iter().any(|t| t == "Resource" || t == target_type)
        {
            self.error(
                IssueCode::Structure,
                ".reference",
                format!("a reference to {target_type} is not allowed here (allowed: {})", type_ref.targets.join(", ")),
            );
        }
        if let ReferenceKind::Contained { id } = &kind {
            let scope = self.scopes.last();
            if id.is_empty() {
                if !scope.is_some_and(|s| s.contained) {
                    self.error(
                        IssueCode::Invariant,
                        ".reference",
                        "\"#\" names the container, so only contained resources may use it",
                    );
                }
            } else if !scope.is_some_and(|s| s.contained_ids.contains(id)) {
                self.error(IssueCode::Invariant, ".reference", format!("ref-1: no contained resource has id {id:?}"));
            }
        }
        if let Some(scope) = self.scopes.last_mut() {
            let path = format!("{}{}.reference", scope.resource_type, &self.path[scope.root_len..]);
            scope.references.push(ReferenceSite { path, reference: reference.to_string(), kind });
        }
    }
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Parses a `Reference.reference` string (references.html#literal).
pub fn parse_reference(reference: &str, model: &Model) -> Result<ReferenceKind, String> {
    let invalid = || {
        format!(
            "{reference:?} is not a valid reference (expected Type/id, Type/id/_history/version, an absolute URL, urn:uuid:, urn:oid:, #id or Type?search)"
        )
    };
    if reference.chars().any(char::is_whitespace) {
        return Err(invalid());
    }
    if let Some(id) = reference.strip_prefix('#') {
        return if id.is_empty() || is_id(id) {
            Ok(ReferenceKind::Contained { id: id.to_string() })
        } else {
            Err(invalid())
        };
    }
    if reference.starts_with("urn:uuid:") {
        return if primitive::is_uuid(reference) { Ok(ReferenceKind::Uuid) } else { Err(invalid()) };
    }
    if reference.starts_with("urn:oid:") {
        return if primitive::is_oid(reference) { Ok(ReferenceKind::Oid) } else { Err(invalid()) };
    }
    // A conditional reference's query may itself hold URLs, so it is recognised first.
    if let Some((resource_type, query)) = reference.split_once('?')
        && model.is_r4_resource_type(resource_type)
    {
        if query.is_empty() {
            return Err(invalid());
        }
        return Ok(ReferenceKind::Conditional { resource_type: resource_type.to_string(), query: query.to_string() });
    }
    if let Some((scheme, rest)) = reference.split_once("://") {
        let scheme_ok = scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        return if scheme_ok && !rest.is_empty() { Ok(ReferenceKind::Absolute) } else { Err(invalid()) };
    }
    let parts: Vec<&str> = reference.split('/').collect();
    let (resource_type, id, version) = match parts.as_slice() {
        [t, id] => (*t, *id, None),
        [t, id, "_history", version] if is_id(version) => (*t, *id, Some(version.to_string())),
        _ => return Err(invalid()),
    };
    if !model.is_r4_resource_type(resource_type) || !is_id(id) {
        return Err(invalid());
    }
    Ok(ReferenceKind::Relative { resource_type: resource_type.to_string(), id: id.to_string(), version })
}

/// The resource type of an absolute RESTful URL (`…/Type/id` or `…/Type/id/_history/v`).
fn absolute_target_type<'a>(url: &'a str, model: &Model) -> Option<&'a str> {
    let mut parts = url.rsplit('/').skip(1);
    let candidate = parts.next()?;
    // `…/Type/id/_history/v`: skip the id to reach the type.
    let resource_type = if candidate == "_history" { parts.nth(1)? } else { candidate };
    model.is_r4_resource_type(resource_type).then_some(resource_type)
}
