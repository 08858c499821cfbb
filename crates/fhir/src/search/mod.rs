//! The pure search layer: which index values a resource yields per search parameter,
//! parsed and validated queries, matching of query values against index values, and sort
//! keys. No storage and no HTTP: the API keeps the index and evaluates queries with these.
//!
//! - [`params`]: the R4 search parameter table (generated from the official SearchParameter
//!   definitions), [`SearchParams::r4`].
//! - [`fhirpath`]: the FHIRPath subset those definitions' expressions need.
//! - [`extract`]: a resource's [`IndexValue`]s.
//! - [`query`]: [`parse_query`], [`Filter::matches`], [`sort_key`].
//!
//! Everything is bounded ([`INDEX_VALUES_MAX`], [`query::QUERY_PARAMS_MAX`], …) and never
//! panics on input. Rules for dates, time zones and strings: `docs/fhir.md`, "Search".

pub mod date;
pub mod extract;
pub mod fhirpath;
pub mod params;
pub mod query;
pub mod value;

pub use extract::{ExtractError, Extraction, INDEX_VALUES_MAX, extract, extract_bytes};
pub use params::{ParamType, SEARCHABLE_TYPES, SearchParam, SearchParams};
pub use query::{
    COUNT_DEFAULT, COUNT_MAX, DateQuery, Filter, Include, ParseOptions, Prefix, Query, ReferenceQuery, SortKey,
    StringMode, Test, TokenQuery, compare_sort_keys, parse_query, sort_key,
};
pub use value::{IndexValue, normalize};
