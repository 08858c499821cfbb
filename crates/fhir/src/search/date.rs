//! FHIR dates, dateTimes and instants as closed intervals of UTC milliseconds.
//!
//! A FHIR date or time is imprecise by design: `2024` means the whole year, `2024-02` the
//! whole month, `2024-02-03T10:00` the whole minute. Search compares such implied ranges
//! (search.html#date), so each value becomes `[low_ms, high_ms]`, both ends included.
//!
//! A value without a time zone (a date, or a search value such as `2024-02-03T10:00`) is read
//! as UTC. R4 says such values are in the server's local time, but a ledger replicated across
//! organisations has no single local time, and every node must index the same bytes the same
//! way; UTC is the one choice all nodes agree on.

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// Days from 1970-01-01 to the proleptic Gregorian `year-month-day` (month and day 1-based):
/// shift to years starting in March so the leap day ends a year, then count 400-year eras
/// of 146,097 days (the inverse of `instant::date_from_days`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let day_of_year = (153 * month_index + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Reads exactly `count` ASCII digits at `*pos`.
fn digits(bytes: &[u8], pos: &mut usize, count: usize) -> Option<u32> {
    let slice = bytes.get(*pos..*pos + count)?;
    let mut value = 0u32;
    for &b in slice {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    *pos += count;
    Some(value)
}

/// Parses `YYYY[-MM[-DD[Thh:mm[:ss[.f+]][Z|(+|-)hh:mm]]]]` into its implied range.
///
/// This accepts what R4 `date`, `dateTime` and `instant` allow, plus what search values
/// may add (a time without seconds, a time without a zone). Anything else is `None`; the
/// caller decides whether that is an error (a query) or simply yields no index value (a
/// resource, which validation has normally checked already).
pub fn parse_range(text: &str) -> Option<(i64, i64)> {
    let bytes = text.as_bytes();
    let mut pos = 0;
    let year = i64::from(digits(bytes, &mut pos, 4)?);
    if year == 0 {
        return None;
    }
    let year_start = days_from_civil(year, 1, 1) * DAY_MS;
    if pos == bytes.len() {
        return Some((year_start, days_from_civil(year + 1, 1, 1) * DAY_MS - 1));
    }
    expect(bytes, &mut pos, b'-')?;
    let month = digits(bytes, &mut pos, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    let month_start = days_from_civil(year, month, 1) * DAY_MS;
    if pos == bytes.len() {
        let next = if month == 12 { days_from_civil(year + 1, 1, 1) } else { days_from_civil(year, month + 1, 1) };
        return Some((month_start, next * DAY_MS - 1));
    }
    expect(bytes, &mut pos, b'-')?;
    let day = digits(bytes, &mut pos, 2)?;
    if day == 0 || day > days_in_month(year, month) {
        return None;
    }
    let day_start = days_from_civil(year, month, day) * DAY_MS;
    if pos == bytes.len() {
        return Some((day_start, day_start + DAY_MS - 1));
    }
    expect(bytes, &mut pos, b'T')?;
    let hour = digits(bytes, &mut pos, 2)?;
    expect(bytes, &mut pos, b':')?;
    let minute = digits(bytes, &mut pos, 2)?;
    if hour > 23 || minute > 59 {
        return None;
    }
    let mut low = day_start + i64::from(hour) * 3_600_000 + i64::from(minute) * 60_000;
    let mut width_ms: i64 = 60_000;
    if bytes.get(pos) == Some(&b':') {
        pos += 1;
        let second = digits(bytes, &mut pos, 2)?;
        if second > 59 {
            return None;
        }
        low += i64::from(second) * 1000;
        width_ms = 1000;
        if bytes.get(pos) == Some(&b'.') {
            pos += 1;
            let start = pos;
            while bytes.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            let fraction = &bytes[start..pos];
            if fraction.is_empty() {
                return None;
            }
            // The precision written sets the width: `.5` is a tenth of a second; digits
            // beyond milliseconds only narrow the range to the millisecond we store.
            let mut ms = 0i64;
            for (i, &d) in fraction.iter().take(3).enumerate() {
                ms += i64::from(d - b'0') * [100, 10, 1][i];
            }
            low += ms;
            width_ms = [100, 10, 1][fraction.len().min(3) - 1];
        }
    }
    let offset_ms = match bytes.get(pos) {
        None => 0,
        Some(b'Z') => {
            pos += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            pos += 1;
            let hours = digits(bytes, &mut pos, 2)?;
            expect(bytes, &mut pos, b':')?;
            let minutes = digits(bytes, &mut pos, 2)?;
            if hours > 14 || minutes > 59 {
                return None;
            }
            let magnitude = i64::from(hours) * 3_600_000 + i64::from(minutes) * 60_000;
            if sign == b'+' { magnitude } else { -magnitude }
        }
        Some(_) => return None,
    };
    if pos != bytes.len() {
        return None;
    }
    // Local time minus its offset from UTC is UTC.
    let low = low - offset_ms;
    Some((low, low + width_ms - 1))
}

fn expect(bytes: &[u8], pos: &mut usize, byte: u8) -> Option<()> {
    if bytes.get(*pos) == Some(&byte) {
        *pos += 1;
        Some(())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS_2024: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 2, 29) * DAY_MS, 951_782_400_000);
        assert_eq!(days_from_civil(2024, 1, 1) * DAY_MS, MS_2024);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(1900, 3, 1), -25_508);
        assert_eq!(
            crate::instant::instant_from_ms(days_from_civil(2100, 3, 1) as u64 * 86_400_000),
            "2100-03-01T00:00:00.000Z"
        );
    }

    #[test]
    fn partial_dates_cover_their_whole_range() {
        let leap_year = 366 * DAY_MS;
        assert_eq!(parse_range("2024"), Some((MS_2024, MS_2024 + leap_year - 1)));
        assert_eq!(parse_range("2024-02"), Some((MS_2024 + 31 * DAY_MS, MS_2024 + 60 * DAY_MS - 1)));
        assert_eq!(parse_range("2023-02").map(|(l, h)| (h - l + 1) / DAY_MS), Some(28));
        assert_eq!(parse_range("2024-12").map(|(_, h)| h + 1), Some(MS_2024 + leap_year));
        assert_eq!(parse_range("2024-01-02"), Some((MS_2024 + DAY_MS, MS_2024 + 2 * DAY_MS - 1)));
        assert_eq!(parse_range("2024-01-01T10:00"), Some((MS_2024 + 36_000_000, MS_2024 + 36_060_000 - 1)));
        assert_eq!(parse_range("2024-01-01T00:00:01Z"), Some((MS_2024 + 1000, MS_2024 + 1999)));
        assert_eq!(parse_range("2024-01-01T00:00:01.5Z"), Some((MS_2024 + 1500, MS_2024 + 1599)));
        assert_eq!(parse_range("2024-01-01T00:00:01.123456Z"), Some((MS_2024 + 1123, MS_2024 + 1123)));
        assert_eq!(parse_range("1950-06"), Some((-618_105_600_000, -615_513_600_001)));
    }

    #[test]
    fn time_zones_convert_to_utc() {
        let utc = parse_range("2024-01-01T10:00:00Z").unwrap();
        assert_eq!(parse_range("2024-01-01T11:00:00+01:00"), Some(utc));
        assert_eq!(parse_range("2024-01-01T05:30:00-04:30"), Some(utc));
        assert_eq!(parse_range("2024-01-01T10:00:00"), Some(utc));
        assert_eq!(parse_range("2024-01-01T00:30:00+14:00").unwrap().0, MS_2024 - 13 * 3_600_000 - 1_800_000);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "24",
            "2024-",
            "2024-1",
            "2024-13",
            "2024-00",
            "2023-02-29",
            "2024-02-30",
            "0000",
            "2024-01-01T",
            "2024-01-01T24:00",
            "2024-01-01T10",
            "2024-01-01T10:60",
            "2024-01-01T10:00:60",
            "2024-01-01T10:00:00.",
            "2024-01-01T10:00:00+1:00",
            "2024-01-01T10:00:00+15:00",
            "2024-01-01T10:00:00Zx",
            "2024-01-01 10:00",
            "2024/01/01",
            "２０２４",
            "2024-01-01T10:00:00+01:00:00",
        ] {
            assert_eq!(parse_range(bad), None, "{bad:?}");
        }
        assert!(parse_range("2024-02-29").is_some());
        assert!(parse_range("2000-02-29").is_some());
        assert!(parse_range("1900-02-29").is_none());
    }
}
