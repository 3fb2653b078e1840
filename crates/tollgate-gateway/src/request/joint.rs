//! Admission in one store call: the client's buckets (its organisation's,
//! its own, its key's), its budgets and the provider bucket reserved in one
//! atomic step (`tollgate::RateLimiter::reserve_together`: one script call
//! on a standalone Redis), all or nothing, with the outcome, metrics and
//! headers of the admission asked one bucket at a time (`admit.rs`).
//!
//! It is taken when every bucket but the provider's grants at once: then the
//! answer is the same as when they are asked apart. When one of them would
//! queue (within the tier's wait), a budget's month is not rebuilt from the
//! ledger yet, the store is a Cluster or cannot say in time, a limiter
//! shares its bucket between classes or is in an outage, nothing is
//! reserved and the admission goes the usual way ([`admit`] returns `None`).

use std::sync::Arc;
use std::time::Duration;

use tollgate::store::Gate;
use tollgate::{Joint, JointPart, RateLimiter};

use super::admit::{budget_answer, budget_levels, count_budget, decision, refused};
use super::admit::{Ask, Bucket, Refusal};
use super::settle::{Admission, Books};
use crate::budget::gate::{self as budget_gate, GateAnswer};
use crate::budget::{new_hold, Budgets};
use crate::registry::Key;

/// Admits `adm`'s request in one step; `None` when it was not taken (nothing
/// reserved: admit it apart).
pub(super) async fn admit(
    books: &Books,
    adm: &mut Admission,
    key: Option<&Arc<Key>>,
    ask: &Ask,
) -> Option<Result<(), Refusal>> {
    let client = adm.client().clone();
    let model = adm.model().clone();
    let tier = &client.tier;
    let amount = model
        .price
        .cost_nano(adm.estimate.input, adm.estimate.output);
    // Outermost first, as `reserve_levels` answers them.
    let holds: Vec<_> = budget_levels(&client, key)
        .into_iter()
        .map(|(level, id, limits)| (new_hold(level, id, amount, limits), limits))
        .collect();
    // Innermost first, as they are reserved.
    let reserved: Vec<_> = holds.iter().rev().filter(|(h, _)| h.reserved).collect();
    // The buckets in the order a refusal is told (outermost first), then
    // the provider's.
    let mut buckets: Vec<(Bucket, &RateLimiter)> = Vec::with_capacity(4);
    if let Some(l) = client.org.as_ref().and_then(|o| o.bounds.limiter.as_ref()) {
        buckets.push((Bucket::Org, l));
    }
    buckets.push((Bucket::Client, client.limiter()));
    if let Some(l) = key.and_then(|k| k.bounds().limiter.as_ref()) {
        buckets.push((Bucket::Key, l));
    }
    buckets.push((Bucket::Model, &model.limiter));
    let provider = buckets.len() - 1;
    let parts: Vec<JointPart<'_>> = buckets
        .iter()
        .enumerate()
        .map(|(i, (_, limiter))| JointPart {
            limiter,
            cost: ask.cost,
            options: if i == provider {
                &ask.model_opts
            } else {
                &ask.client_opts
            },
        })
        .collect();
    let mut budget_refusal = None;
    let joint = match (&*books.budgets, reserved.is_empty()) {
        (_, true) => RateLimiter::reserve_together(&parts, None).await,
        (Budgets::Redis(r), false) => {
            // A month not rebuilt from the ledger yet is seeded apart first.
            if !reserved.iter().all(|(h, _)| r.seeded(h)) {
                return None;
            }
            let gate = budget_gate::lua_gate(r, &reserved);
            RateLimiter::reserve_together(&parts, Some((provider, gate))).await
        }
        (Budgets::Memory(m), false) => {
            let mut check = || match budget_gate::reserve_now(m, &reserved) {
                Ok(()) => true,
                Err(e) => {
                    budget_refusal = Some(e);
                    false
                }
            };
            let mut undo = || budget_gate::release_now(m, &reserved);
            let gate = Gate::Local {
                check: &mut check,
                undo: &mut undo,
            };
            RateLimiter::reserve_together(&parts, Some((provider, gate))).await
        }
    };
    let joint = match joint {
        Ok(j) => j,
        Err(e) => {
            // The call may still be applied: its buckets are given back by
            // the store when its reply comes, its holds here (a settled
            // hold is never reserved after).
            tracing::debug!(error = %e, "the admission in one call failed; admitting apart");
            for (hold, _) in &reserved {
                let _ = books.budgets.settle(hold, 0).await;
            }
            return None;
        }
    };
    let granted_before = |upto: usize| {
        for (bucket, _) in &buckets[..upto] {
            decision(books, *bucket, &tier.name, Duration::ZERO);
        }
    };
    match joint {
        Joint::Granted { permits, .. } => {
            for ((bucket, limiter), p) in buckets.iter().zip(permits) {
                decision(books, *bucket, &tier.name, p.waited());
                match bucket {
                    Bucket::Client => {
                        let status = client.limiter().status_at_grant(&p);
                        adm.hold_client(p, status);
                    }
                    Bucket::Model => adm.hold_model(p),
                    Bucket::Org | Bucket::Key => adm.hold_level((*limiter).clone(), p),
                }
            }
            let holds = holds.into_iter().map(|(h, _)| h).collect();
            budget_answer(books, adm, &client, Ok(holds), true).ok()?;
            Some(Ok(()))
        }
        Joint::GateRefused { gate } => {
            let e = match budget_refusal {
                Some(e) => e,
                None => match budget_gate::lua_refusal(gate.as_ref(), &reserved) {
                    GateAnswer::Refused(e) => e,
                    GateAnswer::Apart => return None,
                },
            };
            granted_before(provider);
            client
                .roomy
                .store(false, std::sync::atomic::Ordering::Relaxed);
            Some(budget_answer(books, adm, &client, Err(e), true))
        }
        Joint::Refused { part, error } => {
            granted_before(part);
            let (bucket, limiter) = buckets[part];
            if part == provider {
                count_budget(books, &client, "granted");
            } else {
                client
                    .roomy
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
            Some(Err(
                refused(books, bucket, limiter, ask, error, &client).await
            ))
        }
        _ => None,
    }
}
