//! Query parsing (accepted and refused queries) and matching tables: tokens, strings,
//! references, and every date prefix against instants, partial dates, Periods and time zones.

use medledger_fhir::IssueCode;
use medledger_fhir::search::date::parse_range;
use medledger_fhir::search::{
    COUNT_DEFAULT, COUNT_MAX, DateQuery, Filter, IndexValue, ParseOptions, Prefix, Query, ReferenceQuery, SortKey,
    StringMode, Test, TokenQuery, compare_sort_keys, parse_query, sort_key,
};

fn pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            (name.to_string(), value.to_string())
        })
        .collect()
}

fn parse(resource_type: &str, query: &str) -> Result<Query, Vec<medledger_fhir::Issue>> {
    parse_query(resource_type, &pairs(query), &ParseOptions::default())
}

fn only_filter(resource_type: &str, query: &str) -> Filter {
    let mut parsed = parse(resource_type, query).unwrap_or_else(|e| panic!("{query}: {e:?}"));
    assert_eq!(parsed.filters.len(), 1, "{query}");
    parsed.filters.remove(0)
}

#[test]
fn accepted_queries() {
    let token = |t| Test::Token { any_of: vec![t], not: false };
    let cases: Vec<(&str, &str, Test)> = vec![
        (
            "Observation",
            "code=http://loinc.org|15074-8",
            token(TokenQuery::SystemCode { system: "http://loinc.org".into(), code: "15074-8".into() }),
        ),
        ("Observation", "code=15074-8", token(TokenQuery::Code("15074-8".into()))),
        ("Observation", "code=|15074-8", token(TokenQuery::NoSystem("15074-8".into()))),
        ("Observation", "code=http://loinc.org|", token(TokenQuery::System("http://loinc.org".into()))),
        ("Observation", "status:not=final", Test::Token { any_of: vec![TokenQuery::Code("final".into())], not: true }),
        (
            "Observation",
            "identifier=a\\|b|c\\,d",
            token(TokenQuery::SystemCode { system: "a|b".into(), code: "c,d".into() }),
        ),
        (
            "Observation",
            "category=laboratory,vital-signs",
            Test::Token {
                any_of: vec![TokenQuery::Code("laboratory".into()), TokenQuery::Code("vital-signs".into())],
                not: false,
            },
        ),
        ("Patient", "name=Jos%C3%A9", Test::String { any_of: vec!["jos%c3%a9".into()], mode: StringMode::StartsWith }),
        ("Patient", "family=  MÜLLER ", Test::String { any_of: vec!["muller".into()], mode: StringMode::StartsWith }),
        ("Patient", "family:exact=Müller", Test::String { any_of: vec!["Müller".into()], mode: StringMode::Exact }),
        ("Patient", "given:contains=ete", Test::String { any_of: vec!["ete".into()], mode: StringMode::Contains }),
        ("Patient", "gender:missing=true", Test::Missing(true)),
        ("Observation", "subject:missing=false", Test::Missing(false)),
        (
            "Observation",
            "subject=Patient/abc",
            Test::Reference {
                any_of: vec![ReferenceQuery { resource_type: Some("Patient".into()), id: "abc".into() }],
            },
        ),
        (
            "Observation",
            "subject=abc",
            Test::Reference { any_of: vec![ReferenceQuery { resource_type: None, id: "abc".into() }] },
        ),
        (
            "Observation",
            "subject:Patient=abc",
            Test::Reference {
                any_of: vec![ReferenceQuery { resource_type: Some("Patient".into()), id: "abc".into() }],
            },
        ),
        (
            "MedicationRequest",
            "encounter=e1",
            Test::Reference {
                any_of: vec![ReferenceQuery { resource_type: Some("Encounter".into()), id: "e1".into() }],
            },
        ),
        (
            "Observation",
            "patient=https://other.example/fhir/Patient/p9/_history/2",
            Test::Reference { any_of: vec![ReferenceQuery { resource_type: Some("Patient".into()), id: "p9".into() }] },
        ),
        ("Observation", "_id=abc", token(TokenQuery::Code("abc".into()))),
        (
            "Claim",
            "patient=p1",
            Test::Reference { any_of: vec![ReferenceQuery { resource_type: Some("Patient".into()), id: "p1".into() }] },
        ),
        (
            "ExplanationOfBenefit",
            "claim=c1",
            Test::Reference { any_of: vec![ReferenceQuery { resource_type: Some("Claim".into()), id: "c1".into() }] },
        ),
        (
            "Location",
            "identifier=https://github.com/synthetichealth/synthea|0b9875ba",
            token(TokenQuery::SystemCode {
                system: "https://github.com/synthetichealth/synthea".into(),
                code: "0b9875ba".into(),
            }),
        ),
        (
            "Location",
            "address-city=Burlington",
            Test::String { any_of: vec!["burlington".into()], mode: StringMode::StartsWith },
        ),
        (
            "Device",
            "udi-di=96702913868313",
            Test::String { any_of: vec!["96702913868313".into()], mode: StringMode::StartsWith },
        ),
    ];
    for (resource_type, query, expected) in cases {
        assert_eq!(only_filter(resource_type, query).test, expected, "{query}");
    }

    let date = only_filter("Observation", "date=ge2024-02");
    let Test::Date { any_of } = &date.test else { panic!() };
    let (low_ms, _) = parse_range("2024-02").unwrap();
    let (_, high_ms) = parse_range("2024-02-29").unwrap();
    assert_eq!(any_of, &[DateQuery { prefix: Prefix::Ge, low_ms, high_ms }]);
    let last_updated = only_filter("Patient", "_lastUpdated=lt2024-01-01T00:00:00Z");
    assert!(last_updated.server_managed);

    // Repeats are AND: two filters on the same parameter.
    let q = parse("Observation", "date=ge2024-01-01&date=lt2024-02-01&patient=p1").unwrap();
    assert_eq!(q.filters.len(), 3);
    assert_eq!((q.count, q.offset, q.summary_count), (COUNT_DEFAULT, 0, false));

    let q = parse(
        "Observation",
        "_count=1000&_offset=40&_sort=-date,_lastUpdated&_include=Observation:patient&_include=Observation:subject:Patient\
         &_revinclude=DiagnosticReport:result&_summary=count&_format=json&_pretty=true&code=",
    )
    .unwrap();
    assert_eq!(q.count, COUNT_MAX);
    assert_eq!(q.offset, 40);
    assert!(q.filters.is_empty(), "an empty value is ignored");
    assert_eq!(
        q.sort,
        [
            SortKey { param: "date".into(), descending: true },
            SortKey { param: "_lastUpdated".into(), descending: false }
        ]
    );
    assert_eq!(q.includes.len(), 2);
    assert_eq!(q.includes[1].target_type.as_deref(), Some("Patient"));
    assert_eq!(q.revincludes[0].source_type, "DiagnosticReport");
    assert!(q.summary_count);
    assert_eq!(q.format.as_deref(), Some("json"));
    assert_eq!(parse("Patient", "_count=0").unwrap().count, 0);
    assert_eq!(parse("Patient", "_sort=birthdate").unwrap().sort[0].param, "birthdate");
    assert_eq!(parse("Patient", "_revinclude=Observation:subject").unwrap().revincludes.len(), 1);
    assert_eq!(parse("Patient", "_revinclude=Observation:subject:Patient").unwrap().revincludes.len(), 1);
    assert_eq!(parse("Patient", "_revinclude=ExplanationOfBenefit:patient").unwrap().revincludes.len(), 1);
    assert_eq!(parse("Claim", "_sort=-created&_include=Claim:provider:Organization").unwrap().includes.len(), 1);
}

#[test]
fn refused_queries() {
    let cases: &[(&str, &str, IssueCode)] = &[
        ("Observation", "foo=bar", IssueCode::NotSupported),
        ("Observation", "code:in=http://vs", IssueCode::NotSupported),
        ("Observation", "code:text=glucose", IssueCode::NotSupported),
        ("Patient", "name:phonetic=x", IssueCode::NotSupported),
        ("Observation", "date:exact=2024", IssueCode::NotSupported),
        ("Observation", "subject:identifier=x|y", IssueCode::NotSupported),
        ("Observation", "subject.name=peter", IssueCode::NotSupported),
        ("Patient", "_has:Observation:patient:code=x", IssueCode::NotSupported),
        ("Observation", "_elements=code", IssueCode::NotSupported),
        ("Observation", "_summary=true", IssueCode::NotSupported),
        ("Observation", "_total=accurate", IssueCode::NotSupported),
        ("Observation", "_sort=code", IssueCode::NotSupported),
        ("Observation", "_sort=nope", IssueCode::NotSupported),
        ("Observation", "_include=*", IssueCode::NotSupported),
        ("Observation", "_include=Observation:*", IssueCode::NotSupported),
        ("Observation", "_include:iterate=Observation:patient", IssueCode::NotSupported),
        ("Observation", "_include=Encounter:patient", IssueCode::NotSupported),
        ("Observation", "_revinclude=Coverage:beneficiary", IssueCode::NotSupported),
        ("Coverage", "beneficiary=x", IssueCode::NotSupported),
        // Claim:patient can only point at a Patient; Location `near` is a special parameter.
        ("Observation", "_revinclude=Claim:patient", IssueCode::Invalid),
        ("Location", "near=42.25|-83.69|10|km", IssueCode::NotSupported),
        ("Observation", "_include=Observation:code", IssueCode::Invalid),
        ("Observation", "_include=Observation:subject:Claim", IssueCode::Invalid),
        ("Observation", "_include=Observation", IssueCode::Invalid),
        ("Observation", "_include=Observation:subject:Patient:x", IssueCode::Invalid),
        ("Patient", "_revinclude=Observation:encounter", IssueCode::Invalid),
        ("Patient", "_revinclude=Observation:subject:Group", IssueCode::Invalid),
        ("Observation", "_count=-1", IssueCode::Invalid),
        ("Observation", "_count=ten", IssueCode::Invalid),
        ("Observation", "_count=1&_count=2", IssueCode::Invalid),
        ("Observation", "_offset=100001", IssueCode::Invalid),
        ("Observation", "date=2024-13", IssueCode::Invalid),
        ("Observation", "date=xx2024", IssueCode::Invalid),
        ("Observation", "date=ge", IssueCode::Invalid),
        ("Observation", "date=2024,", IssueCode::Invalid),
        ("Observation", "code=|", IssueCode::Invalid),
        ("Observation", "code=a|b|c", IssueCode::Invalid),
        ("Observation", "subject:missing=yes", IssueCode::Invalid),
        ("Observation", "subject=Encounter/e1", IssueCode::Invalid),
        ("Observation", "subject:Patient=Group/g1", IssueCode::Invalid),
        ("Observation", "subject:Encounter=e1", IssueCode::Invalid),
        ("Observation", "subject=a b", IssueCode::Invalid),
        ("Observation", "subject=urn:uuid:x", IssueCode::Invalid),
        ("Patient", "name=  ", IssueCode::Invalid),
    ];
    for (resource_type, query, code) in cases {
        let issues = parse(resource_type, query).err().unwrap_or_else(|| panic!("{query} should be refused"));
        assert_eq!(issues[0].code, *code, "{query}: {issues:?}");
        assert!(!issues[0].diagnostics.is_empty());
    }
    // Every problem is reported, not just the first.
    assert_eq!(parse("Observation", "foo=1&bar=2&date=x").unwrap_err().len(), 3);
    // Bounds on the query's size.
    let many = (0..65).map(|i| format!("code={i}")).collect::<Vec<_>>().join("&");
    assert_eq!(parse("Observation", &many).unwrap_err()[0].code, IssueCode::TooLong);
    let wide = format!("code={}", (0..65).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
    assert_eq!(parse("Observation", &wide).unwrap_err()[0].code, IssueCode::Invalid);
    let includes = (0..17).map(|_| "_include=Observation:patient").collect::<Vec<_>>().join("&");
    assert!(parse("Observation", &includes).is_err());
}

#[test]
fn lenient_handling_ignores_only_what_is_unsupported() {
    let lenient = ParseOptions { lenient: true };
    let q = parse_query("Observation", &pairs("foo=bar&code:in=x&_elements=id&status=final"), &lenient).unwrap();
    assert_eq!(q.filters.len(), 1);
    assert_eq!(q.ignored.len(), 3);
    assert!(
        q.ignored.iter().all(|i| i.code == IssueCode::NotSupported && i.severity == medledger_fhir::Severity::Warning)
    );
    // Malformed values stay errors.
    assert!(parse_query("Observation", &pairs("foo=bar&date=2024-99"), &lenient).is_err());
}

fn token(system: Option<&str>, code: &str) -> IndexValue {
    IndexValue::token(system, code)
}

#[test]
fn token_string_and_reference_matching() {
    let loinc = token(Some("http://loinc.org"), "15074-8");
    let bare = token(None, "15074-8");
    let cases: Vec<(&str, Vec<IndexValue>, bool)> = vec![
        ("code=15074-8", vec![loinc.clone()], true),
        ("code=15074-8", vec![bare.clone()], true),
        ("code=http://loinc.org|15074-8", vec![loinc.clone()], true),
        ("code=http://loinc.org|15074-8", vec![bare.clone()], false),
        ("code=http://snomed.info/sct|15074-8", vec![loinc.clone()], false),
        ("code=|15074-8", vec![bare.clone()], true),
        ("code=|15074-8", vec![loinc.clone()], false),
        ("code=http://loinc.org|", vec![loinc.clone()], true),
        ("code=http://loinc.org|", vec![bare.clone()], false),
        ("code=15074-9,15074-8", vec![loinc.clone()], true),
        ("code=15074-9", vec![bare.clone(), loinc.clone()], false),
        ("code=15074-8", vec![], false),
        ("code:missing=true", vec![], true),
        ("code:missing=true", vec![bare.clone()], false),
        ("code:missing=false", vec![bare.clone()], true),
        ("status:not=final", vec![token(None, "amended")], true),
        ("status:not=final", vec![token(None, "final")], false),
        ("status:not=final", vec![], true),
        // Token codes are case-sensitive.
        ("status=FINAL", vec![token(None, "final")], false),
    ];
    for (query, values, expected) in cases {
        assert_eq!(only_filter("Observation", query).matches(&values), expected, "{query} on {values:?}");
    }

    let names = [IndexValue::string("Chalmers"), IndexValue::string("Peter"), IndexValue::string("José María")];
    let cases: &[(&str, bool)] = &[
        ("name=chal", true),
        ("name=CHALMERS", true),
        ("name=chalmersx", false),
        ("name=halm", false),
        ("name:contains=halm", true),
        ("name:contains=ALM", true),
        ("name=jose", true),
        ("name=jose%20maria", false),
        ("name=Jose  Maria", true),
        ("name=josé m", true),
        ("name:exact=Peter", true),
        ("name:exact=peter", false),
        ("name:exact=Pete", false),
        ("name:exact=José María", true),
        ("name:exact=Jose Maria", false),
        ("name=xyz,pet", true),
    ];
    for (query, expected) in cases {
        assert_eq!(only_filter("Patient", query).matches(&names), *expected, "{query}");
    }

    let subject = [IndexValue::reference("Patient", "p1")];
    let cases: &[(&str, bool)] = &[
        ("subject=Patient/p1", true),
        ("subject=p1", true),
        ("subject=Group/p1", false),
        ("subject=Patient/p2", false),
        ("subject:Patient=p1", true),
        ("subject:Group=p1", false),
        ("patient=p1", true),
        ("patient=http://other.example/fhir/Patient/p1", true),
        ("subject=p2,p1", true),
    ];
    for (query, expected) in cases {
        assert_eq!(only_filter("Observation", query).matches(&subject), *expected, "{query}");
    }
    // A filter never matches values of another kind.
    assert!(!only_filter("Observation", "subject=p1").matches(&[token(None, "p1")]));
    assert!(!only_filter("Observation", "date=2024").matches(&[token(None, "2024")]));
}

fn date_value(text: &str) -> IndexValue {
    let (low_ms, high_ms) = parse_range(text).unwrap();
    IndexValue::Date { low_ms, high_ms }
}

fn period(start: Option<&str>, end: Option<&str>) -> IndexValue {
    IndexValue::Date {
        low_ms: start.map_or(i64::MIN, |s| parse_range(s).unwrap().0),
        high_ms: end.map_or(i64::MAX, |e| parse_range(e).unwrap().1),
    }
}

#[test]
fn date_prefix_matching() {
    let instant = date_value("2024-02-10T12:00:00Z");
    let day = date_value("2024-02-10");
    let month = date_value("2024-02");
    let year = date_value("2024");
    let feb = period(Some("2024-02-01"), Some("2024-02-29"));
    let ongoing = period(Some("2024-02-05"), None);
    let until = period(None, Some("2024-02-05"));
    let late_evening_berlin = date_value("2024-02-10T23:30:00+01:00"); // 22:30Z, same UTC day
    let after_midnight_berlin = date_value("2024-02-11T00:30:00+01:00"); // 23:30Z on the 10th
    let new_york_evening = date_value("2024-02-10T20:00:00-05:00"); // 01:00Z on the 11th

    // (query, value, expected)
    let cases: &[(&str, &IndexValue, bool)] = &[
        // eq: the search range contains the value's range.
        ("2024-02-10", &instant, true),
        ("eq2024-02-10", &instant, true),
        ("2024-02", &instant, true),
        ("2024", &instant, true),
        ("2024-02-11", &instant, false),
        ("2024-02-10", &month, false),
        ("2024-02-10", &day, true),
        ("2024-02-10T00:00", &day, false),
        ("2024-02", &month, true),
        ("2024-02", &feb, true),
        ("2024-02-10", &feb, false),
        ("2024-02-10T12:00:00Z", &instant, true),
        ("2024-02-10T13:00:00+01:00", &instant, true),
        ("2024-02-10T12:00", &instant, true),
        ("2024-02-10T12:01", &instant, false),
        ("2024", &ongoing, false),
        // Time zones: the value is compared in UTC.
        ("2024-02-10", &late_evening_berlin, true),
        ("2024-02-10", &after_midnight_berlin, true),
        ("2024-02-11", &after_midnight_berlin, false),
        ("2024-02-10", &new_york_evening, false),
        ("2024-02-11", &new_york_evening, true),
        // ne
        ("ne2024-02-10", &instant, false),
        ("ne2024-02-11", &instant, true),
        ("ne2024-02-10", &month, true),
        // gt: part of the value lies after the search range.
        ("gt2024-02-09", &instant, true),
        ("gt2024-02-10", &instant, false),
        ("gt2024-02-10", &month, true),
        ("gt2024-02", &month, false),
        ("gt2024-02-10T11:59:59Z", &instant, true),
        ("gt2030", &ongoing, true),
        ("gt2024-02-05", &until, false),
        // lt: part of the value lies before the search range.
        ("lt2024-02-11", &instant, true),
        ("lt2024-02-10", &instant, false),
        ("lt2024-02-10", &month, true),
        ("lt1900", &until, true),
        ("lt2024-02-05", &ongoing, false),
        // ge / le: as gt / lt, or contained.
        ("ge2024-02-10", &instant, true),
        ("ge2024-02-11", &instant, false),
        ("ge2024-02", &feb, true),
        ("ge2024-02-15", &feb, true),
        ("ge2024-03", &feb, false),
        ("le2024-02-10", &instant, true),
        ("le2024-02-09", &instant, false),
        ("le2024-02-15", &feb, true),
        ("le2024-01", &feb, false),
        ("ge2024-02-10T12:00:00Z", &instant, true),
        ("le2024-02-10T12:00:00Z", &instant, true),
        ("ge2024-02-10T12:00:01Z", &instant, false),
        ("ge2024", &year, true),
        ("le2023", &year, false),
        // sa / eb: wholly after / before.
        ("sa2024-02-09", &instant, true),
        ("sa2024-02-10", &instant, false),
        ("sa2024-01", &feb, true),
        ("sa2024-02-01", &feb, false),
        ("eb2024-02-11", &instant, true),
        ("eb2024-02-10", &instant, false),
        ("eb2024-03", &feb, true),
        ("eb2030", &ongoing, false),
        ("sa1900", &until, false),
        // ap: overlap with the search range widened by 10% of its width, at least a day.
        ("ap2024-02-10", &instant, true),
        ("ap2024-02-11", &instant, true),
        ("ap2024-02-12", &instant, false),
        ("ap2024", &date_value("2024-12-31T23:00:00Z"), true),
        ("ap2023", &date_value("2024-01-20"), true),
        ("ap2023", &date_value("2024-02-10"), false),
        ("ap2022", &date_value("2024-02-10"), false),
        // Multiple values are OR.
        ("lt2020,gt2024-02-10", &month, true),
        ("2023,2025", &instant, false),
    ];
    for (query, value, expected) in cases {
        let filter = only_filter("Observation", &format!("date={query}"));
        assert_eq!(filter.matches(std::slice::from_ref(value)), *expected, "date={query} on {value:?}");
    }
    // Any value matches: one of two dates in range is enough.
    let filter = only_filter("Observation", "date=2024-02-10");
    assert!(filter.matches(&[date_value("2020"), instant.clone()]));
    assert!(!filter.matches(&[]));
}

#[test]
fn sort_keys_order_by_start_or_end() {
    let values = [period(Some("2024-01-01"), Some("2024-03-01")), date_value("2023-06-01")];
    assert_eq!(sort_key(&values, false), Some(parse_range("2023-06-01").unwrap().0));
    assert_eq!(sort_key(&values, true), Some(parse_range("2024-03-01").unwrap().1));
    assert_eq!(sort_key(&[period(Some("2024-01-01"), None)], true), Some(i64::MAX));
    assert_eq!(sort_key(&[IndexValue::token(None, "x")], false), None);
    assert_eq!(sort_key(&[], true), None);

    let mut keys = vec![Some(3), None, Some(1), Some(2)];
    keys.sort_by(|a, b| compare_sort_keys(*a, *b, false));
    assert_eq!(keys, [Some(1), Some(2), Some(3), None]);
    keys.sort_by(|a, b| compare_sort_keys(*a, *b, true));
    assert_eq!(keys, [Some(3), Some(2), Some(1), None]);
}

/// Random queries from a small alphabet of names, modifiers and values: parsing returns a
/// query or issues and matching answers, never a panic.
#[test]
fn random_queries_never_panic() {
    let names =
        ["code", "date", "subject", "name", "status:not", "date:missing", "_count", "_sort", "_include", "_id", "x.y"];
    let pieces = [
        "ge",
        "2024",
        "-02",
        "-10",
        "T10:00",
        "Z",
        "+01:00",
        "|",
        ",",
        "\\",
        "Patient/",
        "p1",
        "é",
        "-",
        ":",
        " ",
        "_lastUpdated",
    ];
    let values = [
        date_value("2024-02-10"),
        IndexValue::token(Some("s"), "p1"),
        IndexValue::string("Éa"),
        IndexValue::reference("Patient", "p1"),
        period(None, None),
    ];
    let mut state: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut parsed = 0;
    for _ in 0..20_000 {
        let name = names[next(names.len())];
        let value: String = (0..next(6)).map(|_| pieces[next(pieces.len())]).collect();
        let resource_type = if next(2) == 0 { "Observation" } else { "Patient" };
        if let Ok(query) = parse_query(resource_type, &[(name.to_string(), value)], &ParseOptions::default()) {
            parsed += 1;
            for filter in &query.filters {
                filter.matches(&values);
                filter.matches(&[]);
            }
        }
    }
    assert!(parsed > 1_000, "{parsed}");
}
