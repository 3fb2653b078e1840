//! A provider that says wait is waited for: an upstream 429 or 503 with
//! `Retry-After` (or `retry-after-ms`) pauses that provider model for that
//! long on every instance sharing the store. No request is sent to it
//! meanwhile; a request that comes during the pause waits for its end when
//! its tier's `max_wait_ms` allows, else is answered with the upstream's
//! status and the time left as `Retry-After`.
//!
//! With Redis the pause is a key `tollgate:hold:model:PROVIDER/NAME` whose
//! value is the status and whose TTL is the pause (so instances need not
//! agree on the time); each instance also remembers the pauses it has seen,
//! so a paused model costs no round trip there, and reads the key of a model
//! at most every [`RECHECK`]: a pause started on one instance holds back the
//! others' requests that come from that long after. With the memory store
//! the remembered pause is all there is.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tollgate::Store;

/// The longest pause honoured, whatever the upstream asks.
pub const MAX_HOLD: Duration = Duration::from_secs(60);

/// How long an instance trusts the store's answer that a model is not
/// paused (one read per model per this interval, not one per request).
pub const RECHECK: Duration = Duration::from_millis(10);

/// How long an instance does not ask a store that failed to answer (the
/// provider bucket still limits meanwhile).
pub const AFTER_ERROR: Duration = Duration::from_secs(1);

/// Sets the pause unless a longer one is already there. KEYS[1] = the key;
/// ARGV[1] = the pause in ms; ARGV[2] = the status. Returns 1.
const HOLD_SCRIPT: &str = r"
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
end
return 1
";

/// A pause in force: the upstream's status and the time left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paused {
    /// 429 or 503, as the upstream answered.
    pub status: u16,
    /// Time left.
    pub left: Duration,
}

/// The pause state of one provider model.
#[derive(Debug)]
pub struct Hold {
    key: String,
    local: Mutex<Known>,
    /// Reads of the store that failed ([`Hold::failed_reads`]).
    failed_reads: AtomicU64,
}

/// What this instance knows of a model's pause.
#[derive(Debug, Default)]
struct Known {
    /// The pause: until when, with which status.
    pause: Option<(Instant, u16)>,
    /// Until when the store is not asked again: [`RECHECK`] after it said
    /// there is no pause, [`AFTER_ERROR`] after it could not say.
    ask_after: Option<Instant>,
}

impl Hold {
    /// The hold of the provider bucket with limiter key `limiter_key`
    /// (`model:PROVIDER/NAME`).
    pub fn new(limiter_key: &str) -> Hold {
        Hold {
            key: format!("tollgate:hold:{limiter_key}"),
            local: Mutex::new(Known::default()),
            failed_reads: AtomicU64::new(0),
        }
    }

    /// The pause this instance knows of: `Ok(Some)` a pause, `Ok(None)`
    /// none known and the store not to be asked yet, `Err` ask the store.
    fn local(&self) -> Result<Option<Paused>, ()> {
        let now = Instant::now();
        let mut local = self.local.lock();
        if let Some((until, status)) = local.pause {
            let left = until.saturating_duration_since(now);
            if !left.is_zero() {
                return Ok(Some(Paused { status, left }));
            }
            local.pause = None;
        }
        match local.ask_after {
            Some(at) if now < at => Ok(None),
            _ => Err(()),
        }
    }

    fn remember(&self, p: Paused) {
        let until = Instant::now() + p.left;
        let mut local = self.local.lock();
        if local.pause.is_none_or(|(u, _)| u < until) {
            local.pause = Some((until, p.status));
        }
    }

    /// The pause in force, if any. A store that cannot be asked within
    /// `timeout` (judged as every store call is:
    /// [`RedisStore::await_command`](tollgate::store::RedisStore::await_command), so a read that only waits in this
    /// process behind a burst keeps waiting) holds nothing back (logged,
    /// counted in [`Hold::failed_reads`]) and is not asked again for
    /// [`AFTER_ERROR`]: the provider bucket still limits.
    pub async fn check(&self, store: &Store, timeout: Duration) -> Option<Paused> {
        if let Ok(known) = self.local() {
            return known;
        }
        let Store::Redis(store) = store else {
            return None;
        };
        let mut conn = store.connection().clone();
        let asked = Instant::now();
        let mut pipe = redis::pipe();
        pipe.cmd("PTTL").arg(&self.key).cmd("GET").arg(&self.key);
        let read = pipe.query_async::<(i64, Option<u16>)>(&mut conn);
        let reply = store
            .await_command("reading the upstream pause", timeout, read)
            .await;
        match reply {
            Ok((ms, status)) if ms > 0 => {
                let p = Paused {
                    status: status.unwrap_or(429),
                    left: Duration::from_millis(ms as u64),
                };
                self.remember(p);
                Some(p)
            }
            Ok(_) => {
                self.local.lock().ask_after = Some(asked + RECHECK);
                None
            }
            Err(e) => {
                self.local.lock().ask_after = Some(Instant::now() + AFTER_ERROR);
                self.failed_reads.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %self.key, error = %e, "could not read the upstream pause; not holding back, asking again in 1 s");
                None
            }
        }
    }

    /// Reads of the store's pause that failed so far (each let requests
    /// through that a pause might have held back).
    pub fn failed_reads(&self) -> u64 {
        self.failed_reads.load(Ordering::Relaxed)
    }

    /// Starts a pause of `d` (at most [`MAX_HOLD`]) after an upstream
    /// `status`, here and for every instance on `store` (if it answers
    /// within `timeout`, judged as [`Hold::check`]'s read is).
    pub async fn start(&self, store: &Store, timeout: Duration, status: u16, d: Duration) {
        let p = Paused {
            status,
            left: d.min(MAX_HOLD),
        };
        self.remember(p);
        let Store::Redis(store) = store else {
            return;
        };
        let mut conn = store.connection().clone();
        let ms = p.left.as_millis().max(1) as u64;
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(HOLD_SCRIPT));
        let mut call = SCRIPT.key(&self.key);
        call.arg(ms).arg(status);
        let write = call.invoke_async::<i64>(&mut conn);
        let r = store
            .await_command("sharing the upstream pause", timeout, write)
            .await;
        if let Err(e) = r {
            tracing::warn!(key = %self.key, error = %e, "could not share the upstream pause; it holds on this instance only");
        }
    }
}

/// The pause an upstream answer asks for: `retry-after-ms`, else
/// `Retry-After` in seconds or as an HTTP date; `None` without either.
pub fn asked_pause(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::trim);
    let secs = if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        ms / 1000.0
    } else {
        let v = get("retry-after")?;
        match v.parse::<f64>() {
            Ok(s) => s,
            Err(_) => http_date_from_now(v)?,
        }
    };
    (secs.is_finite() && secs > 0.0)
        .then(|| Duration::from_secs_f64(secs.min(MAX_HOLD.as_secs_f64())))
}

/// Seconds from now to an IMF-fixdate (`Wed, 21 Oct 2015 07:28:00 GMT`).
fn http_date_from_now(v: &str) -> Option<f64> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| x == month)? as i64 + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').filter_map(|x| x.parse().ok()).collect();
    let [hh, mm, ss] = hms.as_slice() else {
        return None;
    };
    let days = crate::budget::days_from_civil(y, m, d);
    let at = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some(at as f64 - now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn headers(k: &'static str, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(k, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn reads_retry_after_in_its_three_forms() {
        assert_eq!(
            asked_pause(&headers("retry-after", "7")),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            asked_pause(&headers("retry-after-ms", "250")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(asked_pause(&headers("retry-after", "3600")), Some(MAX_HOLD));
        assert_eq!(asked_pause(&headers("retry-after", "soon")), None);
        assert_eq!(asked_pause(&HeaderMap::new()), None);
        let past = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(asked_pause(&headers("retry-after", past)), None);
        let at = std::time::SystemTime::now() + Duration::from_secs(30);
        let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // 1970-01-01 was a Thursday; the weekday is not checked.
        let date = crate::budget::civil_from_days(days);
        let v = format!(
            "Thu, {:02} {} {} {:02}:{:02}:{:02} GMT",
            date.2,
            ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
                [date.1 as usize - 1],
            date.0,
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        );
        let d = asked_pause(&headers("retry-after", &v)).expect("a date 30 s ahead");
        assert!(
            d > Duration::from_secs(27) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }

    const T: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_pause_is_kept_until_it_ends_and_never_shortened() {
        let store = Store::memory();
        let h = Hold::new("model:p/m");
        assert_eq!(h.check(&store, T).await, None);
        h.start(&store, T, 503, Duration::from_millis(80)).await;
        h.start(&store, T, 429, Duration::from_millis(10)).await;
        let p = h.check(&store, T).await.expect("paused");
        assert_eq!(p.status, 503);
        assert!(p.left > Duration::from_millis(40), "{p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(h.check(&store, T).await, None);
    }
}
