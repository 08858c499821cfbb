//! R4 `instant` text for a point in time (what `meta.lastUpdated` carries).

/// `YYYY-MM-DDThh:mm:ss.sssZ` (UTC, millisecond precision) for milliseconds since the Unix
/// epoch.
pub fn instant_from_ms(ms: u64) -> String {
    let seconds = ms / 1000;
    let (year, month, day) = date_from_days((seconds / 86_400) as i64);
    let in_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60,
        ms % 1000
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01: shift to a calendar whose years
/// start in March (so the leap day ends a year), split into 400-year eras of 146,097 days,
/// then into years and a day of year, and map March-based months back.
fn date_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(instant_from_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(instant_from_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(instant_from_ms(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(instant_from_ms(1_798_761_600_123), "2027-01-01T00:00:00.123Z");
        assert_eq!(instant_from_ms(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn consecutive_days_never_skip_or_repeat() {
        let mut previous = date_from_days(-1);
        for days in 0..200_000 {
            let date = date_from_days(days);
            assert_ne!(date, previous);
            if date.2 != 1 {
                assert_eq!((date.0, date.1, date.2 - 1), previous, "day {days}");
            }
            previous = date;
        }
    }
}
