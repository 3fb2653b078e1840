//! UTC days and months for budgets.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The UTC day and month a charge belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Period {
    /// Days since 1970-01-01.
    pub day: i64,
    /// `year * 100 + month`, e.g. 202506.
    pub month: i64,
    /// Seconds since the Unix epoch when this was taken.
    pub at: f64,
}

impl Period {
    /// The current period on the system clock.
    pub fn now() -> Period {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Period::at(secs)
    }

    /// The period of a Unix time.
    pub fn at(secs: f64) -> Period {
        let day = (secs / 86_400.0).floor() as i64;
        let (y, m, _) = civil_from_days(day);
        Period {
            day,
            month: y * 100 + m,
            at: secs,
        }
    }

    /// Time until the next UTC midnight.
    pub fn until_tomorrow(&self) -> Duration {
        Duration::from_secs_f64(((self.day + 1) as f64 * 86_400.0 - self.at).max(1.0))
    }

    /// Time until the first of next month, 00:00 UTC.
    pub fn until_next_month(&self) -> Duration {
        let (y, m) = (self.month / 100, self.month % 100);
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        let start = days_from_civil(ny, nm, 1) as f64 * 86_400.0;
        Duration::from_secs_f64((start - self.at).max(1.0))
    }
}

/// Howard Hinnant's `civil_from_days`: (year, month, day) of a day number.
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The inverse of [`civil_from_days`].
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_and_months() {
        // 2024-02-29 12:00 UTC.
        let p = Period::at(1_709_208_000.0);
        assert_eq!(p.month, 202_402);
        assert_eq!(civil_from_days(p.day), (2024, 2, 29));
        assert_eq!(p.until_tomorrow(), Duration::from_secs(43_200));
        assert_eq!(p.until_next_month(), Duration::from_secs(43_200));
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }
}
