//! Spend in this process.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{BudgetError, BudgetLimits, Hold, Level, Period, Spend};

#[derive(Debug, Default, Clone, Copy)]
struct Account {
    day: i64,
    day_spent: i64,
    month: i64,
    month_spent: i64,
}

impl Account {
    /// Starts a new day or month when the period has moved on.
    fn roll(&mut self, p: Period) {
        if self.day != p.day {
            self.day = p.day;
            self.day_spent = 0;
        }
        if self.month != p.month {
            self.month = p.month;
            self.month_spent = 0;
        }
    }
}

/// Spend per client (organisation, key), in this process.
#[derive(Debug, Clone, Default)]
pub struct MemoryBudgets {
    accounts: Arc<Mutex<HashMap<(Level, String), Account>>>,
}

impl MemoryBudgets {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn reserve(&self, hold: Hold, limits: BudgetLimits) -> Result<Hold, BudgetError> {
        let amount = hold.amount;
        let mut accounts = self.accounts.lock();
        let a = accounts
            .entry((hold.level, hold.client.clone()))
            .or_default();
        a.roll(hold.period);
        if let Some(limit) = limits.daily {
            if a.day_spent.saturating_add(amount) > limit {
                return Err(BudgetError::Daily {
                    level: hold.level,
                    spent: a.day_spent,
                    limit,
                    needed: amount,
                });
            }
        }
        if let Some(limit) = limits.monthly {
            if a.month_spent.saturating_add(amount) > limit {
                return Err(BudgetError::Monthly {
                    level: hold.level,
                    spent: a.month_spent,
                    limit,
                    needed: amount,
                });
            }
        }
        a.day_spent = a.day_spent.saturating_add(amount);
        a.month_spent = a.month_spent.saturating_add(amount);
        Ok(hold)
    }

    pub(crate) fn adjust(&self, hold: &Hold, actual: i64) {
        let delta = actual - hold.amount;
        if delta == 0 {
            return;
        }
        let mut accounts = self.accounts.lock();
        // Without a budget nothing was reserved: the account may be new.
        let a = accounts
            .entry((hold.level, hold.client.clone()))
            .or_insert_with(|| {
                let mut a = Account::default();
                a.roll(hold.period);
                a
            });
        // A charge whose day (month) has passed stays with that day (month).
        if a.day == hold.period.day {
            a.day_spent = a.day_spent.saturating_add(delta).max(0);
        }
        if a.month == hold.period.month {
            a.month_spent = a.month_spent.saturating_add(delta).max(0);
        }
    }

    /// Raises `client`'s spend in `p` to at least `spend` (what the ledger
    /// holds): a process that starts again does not start from zero.
    pub fn seed(&self, client: &str, p: Period, spend: Spend) {
        self.seed_level(Level::Client, client, p, spend);
    }

    /// [`MemoryBudgets::seed`] of `level`'s `id`.
    pub fn seed_level(&self, level: Level, id: &str, p: Period, spend: Spend) {
        let mut accounts = self.accounts.lock();
        let a = accounts.entry((level, id.to_string())).or_default();
        a.roll(p);
        a.day_spent = a.day_spent.max(spend.today);
        a.month_spent = a.month_spent.max(spend.month);
    }

    pub(crate) fn spend_at(&self, level: Level, id: &str, p: Period) -> Spend {
        let accounts = self.accounts.lock();
        match accounts.get(&(level, id.to_string())) {
            Some(a) => Spend {
                today: if a.day == p.day { a.day_spent } else { 0 },
                month: if a.month == p.month { a.month_spent } else { 0 },
            },
            None => Spend::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(client: &str, period: Period, amount: i64) -> Hold {
        Hold {
            id: rand::random(),
            reserved: true,
            client: client.into(),
            level: Level::Client,
            period,
            amount,
        }
    }

    #[test]
    fn reserves_against_what_remains_and_settles() {
        let b = MemoryBudgets::new();
        let p = Period::at(1_700_000_000.0);
        let limits = BudgetLimits {
            daily: Some(100),
            monthly: Some(150),
        };
        let h = b.reserve(hold("a", p, 80), limits).unwrap();
        assert!(matches!(
            b.reserve(hold("a", p, 30), limits),
            Err(BudgetError::Daily { spent: 80, .. })
        ));
        b.adjust(&h, 50);
        let h2 = b.reserve(hold("a", p, 50), limits).unwrap();
        assert_eq!(
            b.spend_at(Level::Client, "a", p),
            Spend {
                today: 100,
                month: 100
            }
        );
        b.adjust(&h2, 50);
        let next_day = Period::at(1_700_000_000.0 + 86_400.0);
        assert!(matches!(
            b.reserve(hold("a", next_day, 60), limits),
            Err(BudgetError::Monthly { .. })
        ));
    }
}
