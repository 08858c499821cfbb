//! The lean FHIR R4 model: for each supported resource and data type, every element with its
//! cardinality and allowed types.
//!
//! The model is three small text files compiled into the binary: `r4-resources.txt` is
//! generated from the official StructureDefinitions (`tests/model_fresh.rs` keeps it fresh),
//! `r4-resources-handwritten.txt` holds the resources whose definitions we lack, and
//! `r4-datatypes.txt` the data types, written from the specification. Parsing them once at
//! first use costs well under a millisecond and keeps the model reviewable as plain text.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

const GENERATED: &str = include_str!("../model/r4-resources.txt");
const HANDWRITTEN: &str = include_str!("../model/r4-resources-handwritten.txt");
const DATATYPES: &str = include_str!("../model/r4-datatypes.txt");

/// The FHIR R4 primitive types (datatypes.html#primitive), checked in `primitive.rs`.
pub const PRIMITIVES: &[&str] = &[
    "boolean",
    "integer",
    "positiveInt",
    "unsignedInt",
    "decimal",
    "string",
    "code",
    "id",
    "uri",
    "url",
    "canonical",
    "oid",
    "uuid",
    "markdown",
    "base64Binary",
    "instant",
    "date",
    "dateTime",
    "time",
    "xhtml",
];

pub fn is_primitive(type_code: &str) -> bool {
    PRIMITIVES.contains(&type_code)
}

/// Upper bound of an element's cardinality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Max {
    One,
    Many,
}

/// One allowed type of an element. `targets` lists the resource types a Reference may point
/// to (`Resource` means any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeRef {
    pub code: String,
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementDef {
    /// Full path, e.g. `Observation.component.value[x]`.
    pub path: String,
    /// JSON name without `[x]`, e.g. `value`.
    pub name: String,
    /// A choice element (`value[x]`): the JSON name is `name` + the type, capitalised.
    pub choice: bool,
    pub min: u32,
    pub max: Max,
    pub types: Vec<TypeRef>,
    /// Where the children of this element are defined: its own path for backbone elements,
    /// the target of a content reference (`Observation.component.referenceRange` reuses
    /// `Observation.referenceRange`), or `None` when the type defines them.
    pub children_path: Option<String>,
}

impl ElementDef {
    /// The type selected by a JSON key for this element, if the key names it.
    pub fn type_for_key(&self, key: &str) -> Option<&TypeRef> {
        if !self.choice {
            return if key == self.name { self.types.first() } else { None };
        }
        let suffix = key.strip_prefix(self.name.as_str())?;
        self.types.iter().find(|t| {
            let mut chars = t.code.chars();
            chars.next().is_some_and(|first| {
                suffix.len() == t.code.len()
                    && suffix.starts_with(first.to_ascii_uppercase())
                    && suffix[first.len_utf8()..] == *chars.as_str()
            })
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A resource; `domain` when it derives from DomainResource (text, contained, extensions).
    Resource { domain: bool },
    /// A complex data type.
    DataType,
}

#[derive(Debug, Default)]
pub struct Model {
    kinds: HashMap<String, Kind>,
    aliases: HashMap<String, String>,
    /// Children by parent path (a type name or a backbone element path), in definition order.
    children: HashMap<String, Vec<ElementDef>>,
    r4_resource_types: HashSet<String>,
}

impl Model {
    /// The model compiled into this crate.
    pub fn r4() -> &'static Model {
        static MODEL: OnceLock<Model> = OnceLock::new();
        MODEL.get_or_init(|| {
            let mut model = Model::default();
            for (name, text) in [
                ("r4-datatypes.txt", DATATYPES),
                ("r4-resources.txt", GENERATED),
                ("r4-resources-handwritten.txt", HANDWRITTEN),
            ] {
                // The files are part of the source; a malformed line is a build defect that
                // the model tests catch, never something input can cause.
                if let Err(message) = model.load(text) {
                    panic!("{name}: {message}");
                }
            }
            model
        })
    }

    /// Whether `name` is a resource type this model validates.
    pub fn is_supported_resource(&self, name: &str) -> bool {
        matches!(self.kinds.get(name), Some(Kind::Resource { .. }))
    }

    /// Whether `name` is any FHIR R4 resource type (supported or not).
    pub fn is_r4_resource_type(&self, name: &str) -> bool {
        self.r4_resource_types.contains(name)
    }

    pub fn kind(&self, name: &str) -> Option<Kind> {
        self.kinds.get(self.resolve_alias(name)).copied()
    }

    /// The type whose structure `name` shares (`Age` → `Quantity`).
    pub fn resolve_alias<'a>(&'a self, name: &'a str) -> &'a str {
        self.aliases.get(name).map_or(name, String::as_str)
    }

    /// Supported resource types, sorted.
    pub fn supported_resources(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .kinds
            .iter()
            .filter(|(_, kind)| matches!(kind, Kind::Resource { .. }))
            .map(|(name, _)| name.as_str())
            .collect();
        names.sort_unstable();
        names
    }

    /// The elements of a type or backbone element.
    pub fn children(&self, parent: &str) -> &[ElementDef] {
        self.children.get(self.resolve_alias(parent)).map_or(&[], Vec::as_slice)
    }

    /// Every element definition, for model consistency checks.
    pub fn all_elements(&self) -> impl Iterator<Item = &ElementDef> {
        self.children.values().flatten()
    }

    fn load(&mut self, text: &str) -> Result<(), String> {
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            self.load_line(line).map_err(|e| format!("line {}: {e}: {line}", number + 1))?;
        }
        Ok(())
    }

    fn load_line(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["r4-resource-types", names @ ..] => {
                self.r4_resource_types.extend(names.iter().map(|n| n.to_string()));
            }
            ["resource", name, base] => {
                let domain = match *base {
                    "DomainResource" => true,
                    "Resource" => false,
                    _ => return Err("unknown resource base".into()),
                };
                self.kinds.insert(name.to_string(), Kind::Resource { domain });
                self.add_resource_base(name, domain);
            }
            ["datatype", name, base] => {
                self.kinds.insert(name.to_string(), Kind::DataType);
                let backbone = match *base {
                    "Element" => false,
                    "BackboneElement" => true,
                    _ => return Err("unknown data type base".into()),
                };
                self.add_element_base(name, backbone);
            }
            ["alias", name, target] => {
                self.aliases.insert(name.to_string(), target.to_string());
            }
            [path, cardinality, types] => self.add_element(path, cardinality, types)?,
            _ => return Err("unrecognised line".into()),
        }
        Ok(())
    }

    fn push(&mut self, parent: &str, element: ElementDef) {
        self.children.entry(parent.to_string()).or_default().push(element);
    }

    fn implied(&mut self, parent: &str, name: &str, min: u32, max: Max, code: &str) {
        let element = ElementDef {
            path: format!("{parent}.{name}"),
            name: name.to_string(),
            choice: false,
            min,
            max,
            types: vec![TypeRef { code: code.to_string(), targets: Vec::new() }],
            children_path: None,
        };
        self.push(parent, element);
    }

    fn add_resource_base(&mut self, name: &str, domain: bool) {
        self.implied(name, "id", 0, Max::One, "id");
        self.implied(name, "meta", 0, Max::One, "Meta");
        self.implied(name, "implicitRules", 0, Max::One, "uri");
        self.implied(name, "language", 0, Max::One, "code");
        if domain {
            self.implied(name, "text", 0, Max::One, "Narrative");
            self.implied(name, "contained", 0, Max::Many, "Resource");
            self.implied(name, "extension", 0, Max::Many, "Extension");
            self.implied(name, "modifierExtension", 0, Max::Many, "Extension");
        }
    }

    fn add_element_base(&mut self, path: &str, backbone: bool) {
        self.implied(path, "id", 0, Max::One, "string");
        self.implied(path, "extension", 0, Max::Many, "Extension");
        if backbone {
            self.implied(path, "modifierExtension", 0, Max::Many, "Extension");
        }
    }

    fn add_element(&mut self, path: &str, cardinality: &str, types: &str) -> Result<(), String> {
        let (parent, last) = path.rsplit_once('.').ok_or("element path without a parent")?;
        let (min, max) = cardinality.split_once("..").ok_or("bad cardinality")?;
        let min: u32 = min.parse().map_err(|_| "bad minimum")?;
        let max = match max {
            "1" => Max::One,
            "*" => Max::Many,
            _ => return Err("bad maximum".into()),
        };
        let (name, choice) = match last.strip_suffix("[x]") {
            Some(name) => (name, true),
            None => (last, false),
        };
        let mut element = ElementDef {
            path: path.to_string(),
            name: name.to_string(),
            choice,
            min,
            max,
            types: Vec::new(),
            children_path: None,
        };
        if let Some(target) = types.strip_prefix('=') {
            element.children_path = Some(target.to_string());
            element.types.push(TypeRef { code: "BackboneElement".into(), targets: Vec::new() });
        } else {
            for t in types.split('|') {
                let type_ref = match t.split_once('(') {
                    Some((code, rest)) => {
                        let targets = rest.strip_suffix(')').ok_or("unclosed target list")?;
                        TypeRef { code: code.to_string(), targets: targets.split(',').map(str::to_string).collect() }
                    }
                    None => TypeRef { code: t.to_string(), targets: Vec::new() },
                };
                element.types.push(type_ref);
            }
            if let [only] = element.types.as_slice()
                && (only.code == "BackboneElement" || only.code == "Element")
            {
                let backbone = only.code == "BackboneElement";
                element.children_path = Some(path.to_string());
                self.add_element_base(path, backbone);
            }
        }
        self.push(parent, element);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_used_is_defined() {
        let model = Model::r4();
        assert_eq!(model.supported_resources().len(), 22, "{:?}", model.supported_resources());
        for element in model.all_elements() {
            for t in &element.types {
                let code = t.code.as_str();
                let known = is_primitive(code)
                    || matches!(code, "BackboneElement" | "Element" | "Resource")
                    || model.kind(code) == Some(Kind::DataType);
                assert!(known, "{}: unknown type {code}", element.path);
                for target in &t.targets {
                    assert!(
                        target == "Resource" || model.is_r4_resource_type(target),
                        "{}: unknown target {target}",
                        element.path
                    );
                }
            }
            if let Some(children) = &element.children_path {
                assert!(!model.children(children).is_empty(), "{}: no children at {children}", element.path);
            }
            assert!(!element.choice || element.types.len() > 1 || element.path.ends_with("[x]"));
        }
        for name in model.supported_resources() {
            assert!(model.is_r4_resource_type(name), "{name}");
        }
        assert_eq!(model.r4_resource_types.len(), 146);
    }

    #[test]
    fn choice_keys_select_their_type() {
        let model = Model::r4();
        let value = model.children("Observation").iter().find(|e| e.name == "value").unwrap();
        assert!(value.choice);
        assert_eq!(value.type_for_key("valueQuantity").unwrap().code, "Quantity");
        assert_eq!(value.type_for_key("valueDateTime").unwrap().code, "dateTime");
        assert!(value.type_for_key("valuedateTime").is_none());
        assert!(value.type_for_key("value").is_none());
        assert!(value.type_for_key("valueMoney").is_none());
        let component = model.children("Observation").iter().find(|e| e.name == "component").unwrap();
        let range = model.children(component.children_path.as_deref().unwrap());
        let range = range.iter().find(|e| e.name == "referenceRange").unwrap();
        assert_eq!(range.children_path.as_deref(), Some("Observation.referenceRange"));
        assert_eq!(model.children("Age").len(), model.children("Quantity").len());
    }
}
