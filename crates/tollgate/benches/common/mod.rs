//! The calls the `memory_store` bench and the `memory_decisions` example
//! make (the example counts instructions of the bench's cases).

use tollgate::store::{ReserveCall, Reserved, SettleCall};
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

/// The settlement of reservation `r` of `call` with `actual` units.
pub fn settlement<'a>(call: &ReserveCall<'a>, r: Reserved, actual: [f64; 4]) -> SettleCall<'a> {
    SettleCall {
        key: call.key,
        policy: call.policy,
        class: call.class,
        id: r.id,
        slot: r.slot,
        mark: r.mark,
        actual,
    }
}
