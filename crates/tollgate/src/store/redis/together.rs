//! Reservations on several keys in one call of `together.lua` (see
//! `store::together`), on a standalone server: all its keys are on one
//! node. A Cluster would need every key in one slot (they each carry their
//! own hash tag), so it is not asked: the caller reserves one key at a time.

use redis::Value;

use super::handover::InFlight;
use super::scripts::{self, Invocation};
use super::{Orphan, RedisConnection, RedisStore};
use crate::store::together::{GateScript, Together, NO_GATE};
use crate::store::{ReserveCall, StoreError};

/// A Lua gate: the part it comes before, its script, keys and arguments.
pub(crate) type LuaGate<'a> = (usize, &'static GateScript, &'a [String], &'a [Vec<u8>]);

/// Where `together.lua` stopped (see its reply).
enum Stop {
    Granted,
    Refused(usize),
    Gated,
}

impl RedisStore {
    /// Places `calls` (every one but the last asked with a longest wait of
    /// 0) and runs `gate` before part `gate.0`, in one script call, all or
    /// nothing. `None` when this store cannot (a Cluster, or a call that
    /// could never fit its bucket): nothing was sent.
    pub(crate) async fn reserve_together(
        &self,
        calls: &[ReserveCall<'_>],
        gate: Option<LuaGate<'_>>,
    ) -> Option<Result<Together, StoreError>> {
        if matches!(self.conn, RedisConnection::Cluster(_))
            || calls.is_empty()
            || calls.iter().any(|c| scripts::too_large_for(c).is_some())
        {
            return None;
        }
        Some(self.send_together(calls, gate).await)
    }

    async fn send_together(
        &self,
        calls: &[ReserveCall<'_>],
        gate: Option<LuaGate<'_>>,
    ) -> Result<Together, StoreError> {
        let (gate_at, script, gate_keys, gate_args) = match gate {
            Some((at, script, keys, args)) => (at + 1, script, keys, args),
            None => (0, &*NO_GATE, &[][..], &[][..]),
        };
        let mut epoch_key = String::new();
        let mut states = Vec::with_capacity(calls.len());
        let mut args = Vec::with_capacity(calls.len());
        for call in calls {
            let at = self.reserving(call.key);
            args.push(scripts::reserve_args(&at.context(), call)?);
            states.push(at.keys.state());
            epoch_key = at.epoch_key.into_owned();
        }
        let mut inv = Invocation::new(&script.script, 1 + calls.len() + gate_keys.len());
        inv.arg(&epoch_key).arg(&states[..]).arg(gate_keys);
        inv.arg(calls.len()).arg(gate_at).arg(gate_keys.len());
        for a in &args {
            inv.arg(a.bytes());
        }
        inv.arg(gate_args);
        // Parts granted by a reply nobody waits for any more are cancelled
        // when it comes (the caller undoes what its gate wrote).
        let owners: Vec<Orphan> = calls.iter().map(|c| Orphan::of(self, c)).collect();
        let store = self.clone();
        let sent = InFlight::new(async move { store.run_unbounded(inv).await }, {
            move |reply| async move {
                if let Ok(Ok((Stop::Granted, _, records))) = reply.map(|v| together_reply(&v)) {
                    for (owner, record) in owners.into_iter().zip(&records) {
                        owner.cancel(record);
                    }
                }
            }
        });
        let reply = self.bounded("reserve together", sent).await?;
        let (stop, gate_reply, records) = together_reply(&reply)?;
        let settings = &*self.settings;
        match stop {
            Stop::Granted => {
                let mut granted = Vec::with_capacity(calls.len());
                for (call, record) in calls.iter().zip(&records) {
                    match settings.took(record, call, &epoch_key)? {
                        Ok(r) => granted.push(r),
                        Err(_) => return Err(bad_reply(&reply)),
                    }
                }
                Ok(Together::Granted(granted, gate_reply))
            }
            Stop::Refused(i) => {
                let (call, record) = calls
                    .get(i)
                    .zip(records.get(i))
                    .ok_or_else(|| bad_reply(&reply))?;
                match scripts::reserve_reply(record, call)? {
                    Err(e) => Ok(Together::Refused(i, e)),
                    Ok(_) => Err(bad_reply(&reply)),
                }
            }
            Stop::Gated => Ok(Together::Gated(gate_reply)),
        }
    }
}

fn bad_reply(value: &Value) -> StoreError {
    StoreError::Failed(format!(
        "together.lua answered {value:?}; is another program (or another version of tollgate) using the key prefix?"
    ))
}

/// Where the call stopped, the gate's reply and the parts' records.
fn together_reply(value: &Value) -> Result<(Stop, Option<Value>, Vec<Value>), StoreError> {
    let Value::Array(items) = value else {
        return Err(bad_reply(value));
    };
    let (Some(Value::Int(stop)), Some(gate)) = (items.first(), items.get(1)) else {
        return Err(bad_reply(value));
    };
    let records = items[2..].to_vec();
    let stop = match *stop {
        0 => Stop::Granted,
        i if i > 0 && i as usize == records.len() => Stop::Refused(i as usize - 1),
        i if i < 0 && (-i) as usize == records.len() + 1 => Stop::Gated,
        _ => return Err(bad_reply(value)),
    };
    let gate = match gate {
        Value::Int(0) => None,
        other => Some(other.clone()),
    };
    Ok((stop, gate, records))
}
