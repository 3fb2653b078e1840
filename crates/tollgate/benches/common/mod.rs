//! The calls the `memory_store` bench and the `memory_decisions` example
//! make (the example counts instructions of the bench's cases); their
//! settlements are `ReserveCall::settlement`.

use tollgate::store::ReserveCall;
use tollgate::{Cost, Policy};

/// A top-class reservation of `cost` on `key`.
pub fn call<'a>(
    key: &'a str,
    policy: &'a Policy,
    cost: Cost,
    max_wait: Option<f64>,
) -> ReserveCall<'a> {
    ReserveCall {
        key,
        policy,
        class: 0,
        headroom: 1.0,
        cost: policy.units(cost),
        max_wait,
        max_queue: None,
        lease: None,
    }
}
