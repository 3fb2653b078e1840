//! One ledger row: what a request that reached admission did and cost.
//!
//! Money is integer micro-USD (`i64`), never a float: a row's cost is
//! computed from its tokens and the model's price in integers
//! ([`MicroPrice`]), so a sum of rows is exact and equals the upstream's
//! usage × prices to the micro-dollar.

use serde::{Deserialize, Serialize};

use crate::model::Price;
use crate::outcome::Outcome;

/// One request that reached admission (answered, refused or failed).
///
/// The request id is the primary key: writing the same row twice (a retry,
/// a spool replayed after a crash) leaves one row.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Row {
    /// The gateway's id of the request (UUIDv7), as answered in `x-request-id`.
    pub request_id: uuid::Uuid,
    /// When the request arrived, ms since the Unix epoch (UTC).
    pub started_at_ms: i64,
    /// When it was settled, ms since the Unix epoch (UTC).
    pub finished_at_ms: i64,
    /// The client's id.
    pub client: String,
    /// The client's tier at the time of the request.
    pub tier: String,
    /// How the request was routed: the model it named, or `ROUTE/RULE`
    /// (as `x-tollgate-route` says).
    pub route: String,
    /// The model the request named.
    pub requested_model: String,
    /// The model that answered ("" when none did).
    pub served_model: String,
    /// The route's baseline model, against which routing's savings are told:
    /// the model named, or the first candidate of the route's rule.
    pub baseline_model: String,
    /// Upstream attempts made (0 when refused before forwarding).
    pub attempts: u32,
    /// Input tokens estimated at admission.
    pub est_input_tokens: i64,
    /// Output tokens estimated at admission.
    pub est_output_tokens: i64,
    /// Input tokens the upstream reported (0 when nothing was charged).
    pub input_tokens: i64,
    /// Output tokens the upstream reported.
    pub output_tokens: i64,
    /// What the request cost on the served model, micro-USD.
    pub cost_micro_usd: i64,
    /// What the same tokens would have cost on the baseline model, micro-USD.
    pub baseline_cost_micro_usd: i64,
    /// Time spent waiting for a slot, µs.
    pub queue_wait_us: i64,
    /// Time from sending upstream to the end of the answer, µs (none when
    /// nothing was sent).
    pub upstream_latency_us: Option<i64>,
    /// Time from sending upstream to the first byte of the answer, µs.
    pub first_token_us: Option<i64>,
    /// How the request ended (one of [`Outcome`]'s names).
    pub outcome: String,
    /// The error code answered, when the request failed or was refused.
    pub error_code: Option<String>,
    /// The gateway instance that served it.
    pub instance: String,
    /// The client's organisation, when it has one.
    #[serde(default)]
    pub org: Option<String>,
    /// The id of the issued key the request came with (none for a key of
    /// the config file).
    #[serde(default)]
    pub key_id: Option<String>,
    /// The level whose budget refused the request (`organisation`,
    /// `client` or `key`), when a budget did.
    #[serde(default)]
    pub budget_level: Option<String>,
}

impl Row {
    /// Whether the row is a refusal by the gateway (budget, rate limit,
    /// store, bad request) rather than an answer or an upstream failure.
    pub fn is_refusal(&self) -> bool {
        is_refusal(&self.outcome)
    }
}

/// Whether `outcome` names a refusal by the gateway itself.
pub fn is_refusal(outcome: &str) -> bool {
    [
        Outcome::RateLimited,
        Outcome::BudgetExceeded,
        Outcome::StoreUnavailable,
        Outcome::BadRequest,
        Outcome::Unauthorized,
        Outcome::Overloaded,
    ]
    .iter()
    .any(|o| o.as_str() == outcome)
}

/// A price in integer pico-USD per token (USD per million tokens × 10⁶),
/// exact for prices given with up to six decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MicroPrice {
    /// Pico-USD per input token.
    pub input_pico_per_token: u64,
    /// Pico-USD per output token.
    pub output_pico_per_token: u64,
}

impl MicroPrice {
    /// The integer price of a configured price (USD per million tokens).
    ///
    /// ```
    /// use tollgate_gateway::model::Price;
    /// use tollgate_gateway::ledger::MicroPrice;
    /// let p = MicroPrice::from(Price { input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6 });
    /// // 1000 × 0.15 µUSD + 1000 × 0.6 µUSD = 750 µUSD.
    /// assert_eq!(p.cost_micro_usd(1000, 1000), 750);
    /// // 1 token × 0.15 µUSD rounds up to 1 µUSD.
    /// assert_eq!(p.cost_micro_usd(1, 0), 1);
    /// ```
    pub fn from_usd_per_mtok(input: f64, output: f64) -> Self {
        let pico = |usd: f64| (usd.max(0.0) * 1e6).round() as u64;
        MicroPrice {
            input_pico_per_token: pico(input),
            output_pico_per_token: pico(output),
        }
    }

    /// The cost of `input` and `output` tokens in micro-USD, rounded up
    /// once for the whole request.
    pub fn cost_micro_usd(&self, input: u64, output: u64) -> i64 {
        let pico = u128::from(input) * u128::from(self.input_pico_per_token)
            + u128::from(output) * u128::from(self.output_pico_per_token);
        i64::try_from(pico.div_ceil(1_000_000)).unwrap_or(i64::MAX)
    }
}

impl From<Price> for MicroPrice {
    fn from(p: Price) -> Self {
        MicroPrice::from_usd_per_mtok(p.input_usd_per_mtok, p.output_usd_per_mtok)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The time a UUIDv7 was made, ms since the Unix epoch (none for another
/// version, such as the nil id).
pub fn id_time_ms(id: &uuid::Uuid) -> Option<i64> {
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(secs as i64 * 1000 + i64::from(nanos / 1_000_000))
}

#[cfg(test)]
pub(crate) fn sample(id: uuid::Uuid, client: &str, outcome: Outcome, cost: i64) -> Row {
    let started = id_time_ms(&id).unwrap_or_else(now_ms);
    Row {
        request_id: id,
        started_at_ms: started,
        finished_at_ms: started + 5,
        client: client.into(),
        tier: "free".into(),
        route: "gpt-4o-mini".into(),
        requested_model: "gpt-4o-mini".into(),
        served_model: if outcome == Outcome::Ok {
            "gpt-4o-mini".into()
        } else {
            String::new()
        },
        baseline_model: "gpt-4o-mini".into(),
        attempts: u32::from(outcome == Outcome::Ok),
        est_input_tokens: 12,
        est_output_tokens: 100,
        input_tokens: 10,
        output_tokens: 20,
        cost_micro_usd: cost,
        baseline_cost_micro_usd: cost + 1,
        queue_wait_us: 1500,
        upstream_latency_us: Some(4000),
        first_token_us: None,
        outcome: outcome.as_str().into(),
        error_code: (outcome != Outcome::Ok).then(|| "x".into()),
        instance: "test".into(),
        org: Some("org-1".into()),
        key_id: Some(format!("key_{client}")),
        budget_level: (outcome == Outcome::BudgetExceeded).then(|| "key".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_exact_integers_rounded_up_once() {
        let p = MicroPrice::from_usd_per_mtok(0.15, 0.6);
        assert_eq!(p.input_pico_per_token, 150_000);
        assert_eq!(p.cost_micro_usd(0, 0), 0);
        assert_eq!(p.cost_micro_usd(7, 3), 3); // 1.05 + 1.8 = 2.85 → 3
        assert_eq!(p.cost_micro_usd(1_000_000, 0), 150_000);
        // Summing many rows is exact: no drift where floats would have one.
        let one = MicroPrice::from_usd_per_mtok(0.1, 0.2).cost_micro_usd(10, 10);
        assert_eq!(one, 3);
        assert_eq!((0..1_000_000).map(|_| one).sum::<i64>(), 3_000_000);
    }

    #[test]
    fn a_v7_id_tells_its_time() {
        let before = now_ms();
        let id = uuid::Uuid::now_v7();
        let t = id_time_ms(&id).unwrap();
        assert!(t >= before && t <= now_ms(), "{t} vs {before}");
        assert_eq!(id_time_ms(&uuid::Uuid::nil()), None);
    }
}
