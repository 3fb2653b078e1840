//! An admission's budgets as the gate of the limit store's joint
//! reservation (`tollgate::RateLimiter::reserve_together`): on Redis the
//! levels' `reserve.lua` run inside the same script call as the buckets'
//! (`gate.lua`), in memory under the buckets' locks; either way innermost
//! level first, all or nothing, as [`Budgets::reserve_levels`] answers.

use std::sync::LazyLock;

use tollgate::store::GateScript;

use super::redis::RESERVE;
#[cfg(doc)]
use super::Budgets;
use super::{BudgetError, BudgetLimits, Hold, MemoryBudgets, RedisBudgets};

/// `gate.lua` with the budget's `reserve.lua` ahead of it as
/// `reserve_spend(KEYS, ARGV)`.
static GATE: LazyLock<GateScript> = LazyLock::new(|| {
    GateScript::new(&format!(
        "local function reserve_spend(KEYS, ARGV)\n{RESERVE}\nend\n{}",
        include_str!("gate.lua")
    ))
});

/// The gate's script, to load it ahead of the first admission.
pub(crate) fn script() -> &'static GateScript {
    &GATE
}

/// What a gate's refusal means.
#[derive(Debug)]
pub(crate) enum GateAnswer {
    /// A level's budget refused (as [`Budgets::reserve_levels`] would).
    Refused(BudgetError),
    /// The joint call cannot decide it (a month not yet rebuilt from the
    /// ledger, a hold settled before it was made): reserve apart.
    Apart,
}

/// The Lua gate reserving every hold of `holds` (innermost first; only
/// holds that reserve something).
pub(crate) fn lua_gate(
    budgets: &RedisBudgets,
    holds: &[&(Hold, BudgetLimits)],
) -> tollgate::store::Gate<'static> {
    let (mut keys, mut args) = (Vec::new(), Vec::new());
    for (hold, limits) in holds {
        budgets.reserve_parts(hold, *limits, &mut keys, &mut args);
    }
    tollgate::store::Gate::Lua {
        script: &GATE,
        keys,
        args,
    }
}

/// What the Lua gate's refusal (`reply`) of `holds` says.
pub(crate) fn lua_refusal(
    reply: Option<&redis::Value>,
    holds: &[&(Hold, BudgetLimits)],
) -> GateAnswer {
    use redis::Value::{Array, Int};
    let Some(Array(v)) = reply else {
        return GateAnswer::Apart;
    };
    let (Some(Int(l)), Some(Int(status)), Some(Int(day)), Some(Int(month))) =
        (v.first(), v.get(1), v.get(2), v.get(3))
    else {
        return GateAnswer::Apart;
    };
    let Some((hold, limits)) = usize::try_from(*l)
        .ok()
        .and_then(|l| l.checked_sub(1))
        .and_then(|l| holds.get(l))
    else {
        return GateAnswer::Apart;
    };
    GateAnswer::Refused(match status {
        1 => BudgetError::Daily {
            level: hold.level,
            spent: *day,
            limit: limits.daily.unwrap_or(0),
            needed: hold.amount,
        },
        2 => BudgetError::Monthly {
            level: hold.level,
            spent: *month,
            limit: limits.monthly.unwrap_or(0),
            needed: hold.amount,
        },
        _ => return GateAnswer::Apart,
    })
}

/// Reserves every hold of `holds` (innermost first) in memory, all or
/// nothing; the first refusal is answered.
pub(crate) fn reserve_now(
    budgets: &MemoryBudgets,
    holds: &[&(Hold, BudgetLimits)],
) -> Result<(), BudgetError> {
    for (i, (hold, limits)) in holds.iter().enumerate() {
        if let Err(e) = budgets.reserve(hold.clone(), *limits) {
            release_now(budgets, &holds[..i]);
            return Err(e);
        }
    }
    Ok(())
}

/// Gives back what [`reserve_now`] reserved for `holds`.
pub(crate) fn release_now(budgets: &MemoryBudgets, holds: &[&(Hold, BudgetLimits)]) {
    for (hold, _) in holds.iter().rev() {
        budgets.adjust(hold, 0);
    }
}
