//! Civil dates from Unix time, integer-only (proleptic Gregorian, UTC).

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;
/// Milliseconds in an hour.
pub const HOUR_MS: u64 = 3_600_000;

/// A calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    /// Year.
    pub year: i64,
    /// Month, 1–12.
    pub month: u32,
    /// Day of the month, 1–31.
    pub day: u32,
    /// Day of the week, 0 = Monday … 6 = Sunday.
    pub weekday: u32,
    /// Days in this month.
    pub month_days: u32,
}

/// The date of Unix day `days` (days since 1970-01-01). Howard Hinnant's `civil_from_days`.
pub fn date_of_day(days: u64) -> Date {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    // 1970-01-01 was a Thursday (3 with Monday = 0).
    let weekday = ((days + 3) % 7) as u32;
    Date { year, month, day, weekday, month_days }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-02-23T08:15:02.125Z`.
pub fn rfc3339(unix_ms: u64) -> String {
    let d = date_of_day(unix_ms / DAY_MS);
    let ms_of_day = unix_ms % DAY_MS;
    let (h, m, s, ms) =
        (ms_of_day / HOUR_MS, ms_of_day / 60_000 % 60, ms_of_day / 1_000 % 60, ms_of_day % 1_000);
    format!("{:04}-{:02}-{:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z", d.year, d.month, d.day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(crate::params::START_UNIX_MS_DEFAULT), "2026-02-23T00:00:00.000Z");
        let d = date_of_day(crate::params::START_UNIX_MS_DEFAULT / DAY_MS);
        assert_eq!((d.weekday, d.month_days), (0, 28), "a Monday in a 28-day February");
        assert_eq!(rfc3339(951_782_400_000 + 3_723_004), "2000-02-29T01:02:03.004Z");
    }
}
