//! Civil dates and UTC times, computed from a fixed base so output never depends on the clock.

/// Every generated date lies before this day: `BASE_DATE` in seconds since 1970-01-01 UTC.
pub(crate) const BASE_EPOCH_SECONDS: i64 = days_from_civil(2026, 1, 1) * SECONDS_PER_DAY;

pub(crate) const SECONDS_PER_MINUTE: i64 = 60;
pub(crate) const SECONDS_PER_HOUR: i64 = 60 * SECONDS_PER_MINUTE;
pub(crate) const SECONDS_PER_DAY: i64 = 24 * SECONDS_PER_HOUR;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
pub(crate) const fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// (year, month, day) of a day count since 1970-01-01 (Hinnant's `civil_from_days`).
pub(crate) const fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

/// FHIR `date`: `YYYY-MM-DD`.
pub(crate) fn date(epoch_seconds: i64) -> String {
    let (year, month, day) = civil_from_days(epoch_seconds.div_euclid(SECONDS_PER_DAY));
    format!("{year:04}-{month:02}-{day:02}")
}

/// FHIR `dateTime` / `instant` in UTC with seconds: `YYYY-MM-DDThh:mm:ssZ`.
pub(crate) fn date_time(epoch_seconds: i64) -> String {
    let seconds_of_day = epoch_seconds.rem_euclid(SECONDS_PER_DAY);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        date(epoch_seconds),
        seconds_of_day / SECONDS_PER_HOUR,
        seconds_of_day % SECONDS_PER_HOUR / SECONDS_PER_MINUTE,
        seconds_of_day % SECONDS_PER_MINUTE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(BASE_EPOCH_SECONDS, 1_767_225_600);
        assert_eq!(date(BASE_EPOCH_SECONDS), crate::BASE_DATE);
        assert_eq!(date_time(BASE_EPOCH_SECONDS - 1), "2025-12-31T23:59:59Z");
        assert_eq!(date(days_from_civil(2024, 2, 29) * SECONDS_PER_DAY), "2024-02-29");
        assert_eq!(date(-SECONDS_PER_DAY), "1969-12-31");
        for days in -40_000..40_000 {
            let (year, month, day) = civil_from_days(days);
            assert_eq!(days_from_civil(year, month, day), days);
        }
    }
}
