//! The Lua scripts: their keys and arguments, and reading their replies.
//!
//! The scripts (next to this file) port `tollgate_core::reserve` and
//! `tollgate_core::settle` operation for operation; the numbers of
//! `reserve.lua` and `settle.lua` cross the wire both ways as little-endian
//! doubles (their replies are one string of binary records: Redis turns a
//! table reply into its answer at a cost of about a sixth of a lone call),
//! the others' as decimal strings that convert back to the same `f64`.

use std::sync::LazyLock;

use redis::{Cmd, Script, ToRedisArgs, Value};
use tollgate_core::{
    settle_vacated, Dimension, Dims, KeyState, Mark, Policy, ReserveError, Settled, Vacated,
    DIMENSIONS,
};

use crate::store::{Advance, AdvanceCall, Advanced, ReserveCall, Reserved, SettleCall, StoreError};

/// `reserve.lua` with the reading and writing of a key's state ahead of it.
pub(crate) const RESERVE_LUA: &str =
    concat!(include_str!("state.lua"), include_str!("reserve.lua"));

pub(crate) static RESERVE: LazyLock<Script> = LazyLock::new(|| Script::new(RESERVE_LUA));
/// `settle.lua` as a function of its keys and arguments, run by
/// `settle_many.lua` once per settlement of a call.
pub(crate) static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("state.lua"),
        "local function settle_one(KEYS, ARGV)\n",
        include_str!("settle.lua"),
        "\nend\n",
        include_str!("settle_many.lua")
    ))
});
pub(crate) static SNAPSHOT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("snapshot.lua")));
pub(crate) static ADVANCE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("advance.lua")));

/// One `EVALSHA` of a script, its keys and arguments written straight into the
/// command (one buffer; `redis::ScriptInvocation` would copy them twice).
pub(crate) struct Invocation {
    /// The script, to load it after `NOSCRIPT`.
    pub(crate) script: &'static Script,
    /// `EVALSHA <sha> <numkeys> <keys…> <args…>`.
    pub(crate) cmd: Cmd,
}

impl Invocation {
    pub(crate) fn new(script: &'static Script, keys: usize) -> Self {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.get_hash()).arg(keys);
        Invocation { script, cmd }
    }

    pub(crate) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.cmd.arg(arg);
        self
    }
}

/// Classes whose queues a snapshot counts (the limiter allows 16).
pub(crate) const MAX_CLASSES: u8 = 16;

/// The Redis key names of one limiter key. Every name carries the hash tag
/// `{<key>}`, so one script only ever touches one Cluster slot.
pub(crate) struct Keys<'a> {
    prefix: &'a str,
    key: &'a str,
}

impl<'a> Keys<'a> {
    pub(crate) fn new(prefix: &'a str, key: &'a str) -> Self {
        Keys { prefix, key }
    }

    /// The state hash: `<prefix>:{<key>}:s`.
    pub(crate) fn state(&self) -> String {
        format!("{}:{{{}}}:s", self.prefix, self.key)
    }

    /// The queue of one class: `<prefix>:{<key>}:q<class>`.
    pub(crate) fn queue(&self, class: u8) -> String {
        format!("{}:{{{}}}:q{class}", self.prefix, self.key)
    }

    /// The store's epoch (see `reserve.lua`): `<prefix>:epoch`, one for the
    /// whole store; on a Cluster `<prefix>:{<key>}:epoch`, one per key, in
    /// the key's slot (a script touches one slot, and a node that restarts
    /// empty loses only its own slots).
    pub(crate) fn epoch(&self, cluster: bool) -> String {
        if cluster {
            format!("{}:{{{}}}:epoch", self.prefix, self.key)
        } else {
            format!("{}:epoch", self.prefix)
        }
    }
}

fn check_class(class: u8) -> Result<(), StoreError> {
    if class >= MAX_CLASSES {
        return Err(StoreError::Failed(format!(
            "priority class {class} is out of range: the Redis store keeps classes 0 to {}",
            MAX_CLASSES - 1
        )));
    }
    Ok(())
}

/// What a reservation's invocation needs besides the call.
pub(crate) struct ReserveContext<'a> {
    /// Idle margin, ms.
    pub(crate) idle_ms: u64,
    /// The caller's deadline on the server's clock.
    pub(crate) deadline: Option<f64>,
    /// Whether a key of a store that lost its state starts drained.
    pub(crate) drained: bool,
    /// The epoch this process last saw ("" for none).
    pub(crate) epoch: &'a str,
    /// The highest TAT per dimension this process was told for the key.
    pub(crate) known: Option<Dims>,
}

/// The dimension a call costs more than the bucket holds in, checked here so
/// the script never sees such a call (it could never run; nothing is written).
pub(crate) fn too_large_for(call: &ReserveCall<'_>) -> Option<ReserveError> {
    let policy = call.policy;
    Dimension::ALL
        .into_iter()
        .find(|&d| policy.increment[d.index()] > 0.0 && call.cost[d.index()] > policy.capacity(d))
        .map(|d| too_large(policy, d, call.cost[d.index()]))
}

/// The argument of one reservation in a call of `reserve.lua`: the lengths
/// of the epoch and the costs (a byte each), the numbers (doubles), the
/// epoch this process last saw and the costs as text (only read with a
/// lease). One argument, not three: Redis makes a string of each argument
/// for the script, which cost more than the script's `HGET` for the two
/// more.
pub(crate) struct ReserveArgs {
    nums: Vec<u8>,
}

/// Where the deadline is in [`ReserveArgs`]: after the two lengths and five
/// doubles.
const DEADLINE_AT: usize = 2 + 5 * 8;

impl ReserveArgs {
    /// The argument as sent.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.nums
    }

    /// Sets the caller's deadline on the server's clock (see
    /// [`ReserveContext::deadline`]): a reservation that waited on its lane
    /// gets it when it is sent.
    pub(crate) fn set_deadline(&mut self, deadline: Option<f64>) {
        let bytes = deadline.unwrap_or(-1.0).to_le_bytes();
        self.nums[DEADLINE_AT..DEADLINE_AT + 8].copy_from_slice(&bytes);
    }
}

/// The arguments of `reserve.lua` for a call.
pub(crate) fn reserve_args(
    ctx: &ReserveContext<'_>,
    call: &ReserveCall<'_>,
) -> Result<ReserveArgs, StoreError> {
    check_class(call.class)?;
    let policy = call.policy;
    let limited = (0..DIMENSIONS)
        .filter(|&i| policy.increment[i] > 0.0)
        .count();
    // The costs as text, space-separated, as `f64`'s `Display` writes them.
    let mut costs = Vec::new();
    if call.lease.is_some() {
        for i in (0..DIMENSIONS).filter(|&i| policy.increment[i] > 0.0) {
            if !costs.is_empty() {
                costs.push(b' ');
            }
            write_cost(&mut costs, call.cost[i]);
        }
    }
    let (Ok(epoch_len), Ok(costs_len)) = (u8::try_from(ctx.epoch.len()), u8::try_from(costs.len()))
    else {
        return Err(StoreError::Failed(format!(
            "the epoch {:?} or the costs {:?} are longer than reserve.lua takes (255 bytes); is another program using the key prefix?",
            ctx.epoch,
            String::from_utf8_lossy(&costs)
        )));
    };
    // Sized once: growing it a double at a time cost more than the rest.
    let mut buf = Vec::with_capacity(2 + 8 * (8 + 3 * limited) + ctx.epoch.len() + costs.len());
    buf.extend_from_slice(&[epoch_len, costs_len]);
    let mut nums = Doubles(buf);
    nums.push(policy.tau * call.headroom)
        .push(call.max_wait.unwrap_or(-1.0))
        .push(call.max_queue.map_or(-1.0, |q| q as f64))
        .push(ctx.idle_ms as f64)
        .push(f64::from(call.class))
        .push(ctx.deadline.unwrap_or(-1.0))
        .push(if ctx.drained { policy.tau } else { 0.0 })
        .push(call.lease.unwrap_or(-1.0));
    for d in Dimension::ALL {
        let i = d.index();
        if policy.increment[i] > 0.0 {
            nums.push(i as f64)
                .push(call.cost[i] * policy.increment[i])
                .push(ctx.known.map_or(-1.0, |k| k[i]));
        }
    }
    let mut nums = nums.0;
    nums.extend_from_slice(ctx.epoch.as_bytes());
    nums.extend_from_slice(&costs);
    Ok(ReserveArgs { nums })
}

/// Appends `cost` as `f64`'s `Display` writes it. A whole number (what a
/// cost mostly is) is written as the integer it is, which is the same text
/// without the float formatting's cost.
fn write_cost(out: &mut Vec<u8>, cost: f64) {
    use std::io::Write;
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if cost.fract() == 0.0 && (0.0..EXACT).contains(&cost) && cost.is_sign_positive() {
        let _ = write!(out, "{}", cost as u64);
    } else {
        let _ = write!(out, "{cost}");
    }
}

/// The invocation of `reserve.lua` placing reservations of one class of one
/// key, in the order given (one reply each, see [`reserve_replies`]). The
/// class's queue and headroom index are named by the script from the state's
/// key (see `reserve.lua`).
pub(crate) fn reserve_invocation<'a>(
    keys: &Keys<'_>,
    cluster: bool,
    items: impl IntoIterator<Item = &'a ReserveArgs>,
) -> Invocation {
    let mut inv = Invocation::new(&RESERVE, 2);
    inv.arg(keys.state()).arg(keys.epoch(cluster));
    for item in items {
        inv.arg(&item.nums[..]);
    }
    inv
}

/// The replies of a call of `reserve.lua` that placed `count` reservations:
/// one record per reservation, in order (see `reserve.lua`), each as a bulk
/// string read by [`reserve_reply`].
pub(crate) fn reserve_replies(value: &Value, count: usize) -> Result<Vec<Value>, StoreError> {
    let bad = || {
        StoreError::Failed(format!(
            "reserve.lua answered {value:?} instead of {count} replies; is another program (or another version of tollgate) using the key prefix?"
        ))
    };
    let Value::BulkString(b) = value else {
        return Err(bad());
    };
    let mut items = Vec::with_capacity(count);
    let mut rest = &b[..];
    while !rest.is_empty() {
        let len = match rest[0] {
            GRANTED => {
                let head = rest.get(..GRANTED_HEAD).ok_or_else(bad)?;
                let (epoch, state, counters) = (head[41], head[42], head[43]);
                GRANTED_HEAD + usize::from(epoch) + usize::from(state) + 8 * usize::from(counters)
            }
            WOULD_WAIT => 9,
            QUEUE_FULL => 17,
            LATE => 1,
            _ => return Err(bad()),
        };
        let record = rest.get(..len).ok_or_else(bad)?;
        items.push(Value::BulkString(record.to_vec()));
        rest = &rest[len..];
    }
    if items.len() != count {
        return Err(bad());
    }
    Ok(items)
}

/// The codes of `reserve.lua`'s records.
const GRANTED: u8 = 1;
const WOULD_WAIT: u8 = 3;
const QUEUE_FULL: u8 = 4;
const LATE: u8 = 5;
/// Bytes of a granted record before its epoch, state and counters: the
/// code, five doubles, three lengths.
const GRANTED_HEAD: usize = 44;

/// A record of a script's reply (one string, see `reserve.lua`), read in order.
struct Record<'v> {
    bytes: &'v [u8],
    at: usize,
    script: &'static str,
}

impl<'v> Record<'v> {
    fn new(value: &'v Value, script: &'static str) -> Result<Self, StoreError> {
        match value {
            Value::BulkString(bytes) if !bytes.is_empty() => Ok(Record {
                bytes,
                at: 0,
                script,
            }),
            other => Err(StoreError::Failed(format!(
                "{script}.lua answered {other:?} instead of a record; is another program (or another version of tollgate) using the key prefix?"
            ))),
        }
    }

    fn bad(&self) -> StoreError {
        StoreError::Failed(format!(
            "{}.lua answered a record that ends early or is malformed at byte {} ({:?}); is another program (or another version of tollgate) using the key prefix?",
            self.script, self.at, self.bytes
        ))
    }

    fn bytes(&mut self, n: usize) -> Result<&'v [u8], StoreError> {
        let b = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or_else(|| self.bad())?;
        self.at += n;
        Ok(b)
    }

    fn byte(&mut self) -> Result<u8, StoreError> {
        Ok(self.bytes(1)?[0])
    }

    fn f64(&mut self) -> Result<f64, StoreError> {
        let b = self.bytes(8)?;
        Ok(f64::from_le_bytes(b.try_into().expect("eight bytes")))
    }

    /// A whole number sent as a double (exact below 2^53).
    fn u64(&mut self) -> Result<u64, StoreError> {
        let v = self.f64()?;
        if v >= 0.0 && v.fract() == 0.0 && v < 9_007_199_254_740_992.0 {
            Ok(v as u64)
        } else {
            self.at -= 8;
            Err(self.bad())
        }
    }

    /// The script's clock, as the scripts add its `TIME` seconds and microseconds.
    fn time(&mut self) -> Result<f64, StoreError> {
        Ok(self.f64()? + self.f64()? / 1_000_000.0)
    }

    /// A key's state of `len` bytes as the scripts store it (0: none).
    fn state(&mut self, len: u8) -> Result<KeyState, StoreError> {
        if len == 0 {
            return Ok(KeyState::default());
        }
        let at = self.at;
        let b = self.bytes(usize::from(len))?;
        decode_state(b).ok_or_else(|| {
            self.at = at;
            self.bad()
        })
    }

    fn end(&self) -> Result<(), StoreError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(self.bad())
        }
    }
}

/// Numbers for a script, as little-endian doubles in one argument: exact,
/// and far cheaper for Redis's Lua to read than decimal text.
#[derive(Default)]
struct Doubles(Vec<u8>);

impl Doubles {
    fn push(&mut self, v: f64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

/// The argument of one settlement in a call of `settle.lua`: the length of
/// the reservation's id (a byte), the id as text, then the numbers
/// (doubles). The class's queue is named by the script from the state's key.
pub(crate) struct SettleArgs {
    nums: Vec<u8>,
}

/// The arguments of `settle.lua` for a call.
pub(crate) fn settle_args(
    call: &SettleCall<'_>,
    idle_ms: u64,
    deadline: Option<f64>,
) -> Result<SettleArgs, StoreError> {
    use std::io::Write;
    check_class(call.class)?;
    let policy = call.policy;
    let cancelled = call.actual.iter().all(|&a| a == 0.0);
    // Sized once for the longest (a cancellation passing every dimension);
    // the id's length goes first, then its digits (a u64 has at most 20).
    let mut buf = Vec::with_capacity(1 + 20 + 8 * (5 + 7 * DIMENSIONS));
    buf.push(0);
    let _ = write!(buf, "{}", call.id);
    buf[0] = (buf.len() - 1) as u8;
    let mut nums = Doubles(buf);
    nums.push(idle_ms as f64)
        .push(f64::from(call.class))
        .push(call.slot)
        .push(deadline.unwrap_or(-1.0))
        .push(if cancelled { 1.0 } else { 0.0 });
    // The products as tollgate_core::settle_vacated forms them; a dimension
    // used as estimated changes nothing and is left out, but a cancellation
    // passes every one (it gives back the gap its slot skipped, and what was
    // vacated ahead of it, even where it cost nothing).
    let mark = &call.mark;
    for i in 0..DIMENSIONS {
        let inc = policy.increment[i];
        let delta = call.actual[i] - mark.cost[i];
        if inc > 0.0 && (delta != 0.0 || cancelled) {
            let gap = if cancelled { mark.gap[i] } else { 0.0 };
            let (charge, most) = if delta > 0.0 {
                (delta * inc, 0.0)
            } else {
                (0.0, -delta * inc + gap)
            };
            nums.push(i as f64)
                .push(charge)
                .push(most)
                .push(mark.cost[i] * inc + gap)
                .push(mark.end[i])
                .push(mark.refunded_at[i])
                .push(mark.end[i] - mark.cost[i] * inc - gap);
        }
    }
    Ok(SettleArgs { nums: nums.0 })
}

/// The invocation of `settle.lua` settling reservations of one key, in the
/// order given (one reply each, see [`settle_replies`]).
pub(crate) fn settle_invocation<'a>(
    keys: &Keys<'_>,
    items: impl IntoIterator<Item = &'a SettleArgs>,
) -> Invocation {
    let mut inv = Invocation::new(&SETTLE, 1);
    inv.arg(keys.state());
    for item in items {
        inv.arg(&item.nums[..]);
    }
    inv
}

/// The replies of a call of `settle.lua` that settled `count` reservations,
/// each as a bulk string read by [`settle_reply`]: one alone is the whole
/// reply, several come each after its length (see `settle_many.lua`).
pub(crate) fn settle_replies(value: &Value, count: usize) -> Result<Vec<Value>, StoreError> {
    if count == 1 {
        return Ok(vec![value.clone()]);
    }
    let bad = || {
        StoreError::Failed(format!(
            "settle.lua answered {value:?} instead of {count} replies; is another program (or another version of tollgate) using the key prefix?"
        ))
    };
    let Value::BulkString(b) = value else {
        return Err(bad());
    };
    let mut items = Vec::with_capacity(count);
    let mut rest = &b[..];
    while !rest.is_empty() {
        let len = usize::from(u16::from_le_bytes(
            rest.get(..2)
                .ok_or_else(bad)?
                .try_into()
                .expect("two bytes"),
        ));
        items.push(Value::BulkString(
            rest.get(2..2 + len).ok_or_else(bad)?.to_vec(),
        ));
        rest = &rest[2 + len..];
    }
    if items.len() != count {
        return Err(bad());
    }
    Ok(items)
}

/// The invocation of `advance.lua` for a call.
pub(crate) fn advance_invocation(
    keys: &Keys<'_>,
    call: &AdvanceCall<'_>,
) -> Result<Invocation, StoreError> {
    check_class(call.class)?;
    let policy = call.policy;
    let mut inv = Invocation::new(&ADVANCE, 2);
    inv.arg(keys.state())
        .arg(keys.queue(call.class))
        .arg(call.id)
        .arg(policy.tau * call.headroom)
        .arg(call.class)
        .arg(call.lease.map_or(String::new(), |l| l.to_string()))
        .arg(call.slot);
    for i in 0..DIMENSIONS {
        if policy.increment[i] > 0.0 {
            inv.arg(i)
                .arg(policy.increment[i])
                .arg(call.mark.cost[i])
                .arg(call.mark.before[i])
                .arg(call.mark.class_refunds_at[i])
                .arg(call.mark.gap[i])
                .arg(call.mark.refunded_at[i]);
        }
    }
    Ok(inv)
}

/// A reservation whose lease ran out, to cancel (see `advance.lua`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lapsed {
    pub(crate) id: u64,
    pub(crate) class: u8,
    pub(crate) slot: f64,
    pub(crate) mark: Mark,
}

/// Reads the reply of `advance.lua`: what became of the reservation, and
/// the reservations of others whose lease ran out.
pub(crate) fn advance_reply(
    value: &Value,
    policy: &Policy,
) -> Result<(Advance, Vec<Lapsed>), StoreError> {
    let r = Reply::new(value, "advance")?;
    let (outcome, rest) = match r.u64(0)? {
        0 => (Advance::Stays, 1),
        1 => (
            Advance::Moved(Advanced {
                slot: r.f64(1)?,
                now: r.time(2)?,
            }),
            4,
        ),
        2 => (Advance::Lost, 1),
        3 => (Advance::First, 1),
        _ => return Err(r.bad(0)),
    };
    let lapsed = (rest..r.items.len())
        .map(|at| lapsed(&r, at, policy))
        .collect::<Result<_, _>>()?;
    Ok((outcome, lapsed))
}

/// Reads "<id> <slot now> <class> <slot> <costs…>\n<state before>" (see
/// `advance.lua` and `reserve.lua`).
fn lapsed(r: &Reply<'_>, at: usize, policy: &Policy) -> Result<Lapsed, StoreError> {
    let Some(Value::BulkString(b)) = r.items.get(at) else {
        return Err(r.bad(at));
    };
    let newline = b
        .iter()
        .position(|&c| c == b'\n')
        .ok_or_else(|| r.bad(at))?;
    let head = std::str::from_utf8(&b[..newline]).map_err(|_| r.bad(at))?;
    let mut words = head.split(' ');
    let mut next = || words.next().ok_or_else(|| r.bad(at));
    let id: u64 = next()?.parse().map_err(|_| r.bad(at))?;
    let slot_now: f64 = next()?.parse().map_err(|_| r.bad(at))?;
    let class: u8 = next()?.parse().map_err(|_| r.bad(at))?;
    let slot: f64 = next()?.parse().map_err(|_| r.bad(at))?;
    let mut cost = [0.0; DIMENSIONS];
    for (i, c) in cost.iter_mut().enumerate() {
        if policy.increment[i] > 0.0 {
            *c = next()?.parse().map_err(|_| r.bad(at))?;
        }
    }
    let blob = Value::BulkString(b[newline + 1..].to_vec());
    let items = [if blob == Value::BulkString(Vec::new()) {
        Value::Nil
    } else {
        blob
    }];
    let before = Reply {
        items: &items,
        script: "advance",
    }
    .state(0)?;
    // The mark follows from the slot it was given; it is cancelled at the
    // slot it has now (it may have moved earlier).
    Ok(Lapsed {
        id,
        class,
        slot: slot_now,
        mark: mark_of(policy, &cost, slot, &before, [0.0; DIMENSIONS]),
    })
}

/// A reservation's mark from the key's state before its charge, as in
/// `tollgate_core::reserve`.
fn mark_of(
    policy: &Policy,
    cost: &Dims,
    slot: f64,
    before: &KeyState,
    class_refunds_at: Dims,
) -> Mark {
    let (tat, refunded_at) = (before.tat, before.refunded);
    let mut end = tat;
    let mut gap = [0.0; DIMENSIONS];
    for i in 0..DIMENSIONS {
        let inc = policy.increment[i];
        if inc > 0.0 {
            end[i] = tat[i].max(slot) + cost[i] * inc;
            gap[i] = (-(tat[i] - slot)).max(0.0);
        }
    }
    Mark {
        cost: *cost,
        end,
        refunded_at,
        gap,
        before: tat,
        class_refunds_at,
    }
}

/// The invocation of `snapshot.lua` for a key.
pub(crate) fn snapshot_invocation(keys: &Keys<'_>) -> Invocation {
    let mut inv = Invocation::new(&SNAPSHOT, 1 + MAX_CLASSES as usize);
    inv.arg(keys.state());
    for class in 0..MAX_CLASSES {
        inv.arg(keys.queue(class));
    }
    inv
}

/// A script reply, read field by field.
struct Reply<'v> {
    items: &'v [Value],
    script: &'static str,
}

impl<'v> Reply<'v> {
    fn new(value: &'v Value, script: &'static str) -> Result<Self, StoreError> {
        match value {
            Value::Array(items) => Ok(Reply { items, script }),
            other => Err(StoreError::Failed(format!(
                "{script}.lua answered {other:?} instead of an array; is another program using the key prefix?"
            ))),
        }
    }

    fn bad(&self, at: usize) -> StoreError {
        StoreError::Failed(format!(
            "{}.lua answered {:?} at position {at}, not a number; is another program (or another version of tollgate) using the key prefix?",
            self.script,
            self.items.get(at)
        ))
    }

    fn text(&self, at: usize) -> Option<&'v str> {
        match self.items.get(at)? {
            Value::BulkString(b) => std::str::from_utf8(b).ok(),
            Value::SimpleString(s) => Some(s),
            _ => None,
        }
    }

    fn f64(&self, at: usize) -> Result<f64, StoreError> {
        match self.items.get(at) {
            Some(Value::Int(n)) => Ok(*n as f64),
            _ => self
                .text(at)
                .and_then(|s| s.parse::<f64>().ok())
                .ok_or_else(|| self.bad(at)),
        }
    }

    fn u64(&self, at: usize) -> Result<u64, StoreError> {
        match self.items.get(at) {
            Some(Value::Int(n)) if *n >= 0 => Ok(*n as u64),
            _ => self
                .text(at)
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| self.bad(at)),
        }
    }

    /// The script's clock: `TIME` seconds and microseconds, as the scripts add them.
    fn time(&self, at: usize) -> Result<f64, StoreError> {
        Ok(self.f64(at)? + self.f64(at + 1)? / 1_000_000.0)
    }

    /// A key's state as the scripts store it (field `s`, see `state.lua`):
    /// id sequence, expiry, classes, TATs and refunds; all zeros for nil.
    fn state(&self, at: usize) -> Result<KeyState, StoreError> {
        match self.items.get(at) {
            Some(Value::Nil) => Ok(KeyState::default()),
            Some(Value::BulkString(b)) => decode_state(b).ok_or_else(|| self.bad(at)),
            _ => Err(self.bad(at)),
        }
    }
}

/// Reads field `s` as `state.lua` writes it: seven bytes of id sequence,
/// six of expiry, two of classes (little-endian integers), a byte of the
/// dimensions that follow, then TAT and refunds (doubles) of each.
fn decode_state(b: &[u8]) -> Option<KeyState> {
    let (head, mut rest) = (b.get(..16)?, b.get(16..)?);
    let dims = head[15];
    let mut state = KeyState::default();
    for i in 0..DIMENSIONS {
        if dims & (1 << i) != 0 {
            let (pair, more) = (rest.get(..16)?, rest.get(16..)?);
            state.tat[i] = f64::from_le_bytes(pair[..8].try_into().ok()?);
            state.refunded[i] = f64::from_le_bytes(pair[8..].try_into().ok()?);
            rest = more;
        }
    }
    (rest.is_empty() && dims < 1 << DIMENSIONS).then_some(state)
}

/// What a granted reservation's reply tells besides the reservation.
#[derive(Debug, Default)]
pub(crate) struct ReserveNews {
    /// The store's epoch, when the script read it (a key without state).
    pub(crate) epoch: Option<String>,
}

/// Reads one record of the reply of `reserve.lua`.
pub(crate) fn reserve_reply(
    value: &Value,
    call: &ReserveCall<'_>,
) -> Result<Result<(Reserved, ReserveNews), ReserveError>, StoreError> {
    let mut r = Record::new(value, "reserve")?;
    let outcome = match r.byte()? {
        GRANTED => {
            let slot = r.f64()?;
            let now = r.time()?;
            let id = r.u64()?;
            let position = r.u64()?;
            let (epoch_len, state_len, counters) = (r.byte()?, r.byte()?, r.byte()?);
            let epoch = std::str::from_utf8(r.bytes(usize::from(epoch_len))?)
                .map_err(|_| r.bad())?
                .to_string();
            // The key's state before the charge.
            let stored = r.state(state_len)?;
            let policy = call.policy;
            let mut class_refunds_at = [0.0; DIMENSIONS];
            if counters > 0 {
                for (i, c) in class_refunds_at.iter_mut().enumerate() {
                    if policy.increment[i] > 0.0 {
                        *c = r.f64()?;
                    }
                }
            }
            // The mark follows from them exactly as in `tollgate_core::reserve`.
            let mark = mark_of(policy, &call.cost, slot, &stored, class_refunds_at);
            let news = ReserveNews {
                epoch: (!epoch.is_empty()).then_some(epoch),
            };
            Ok((
                Reserved {
                    slot,
                    now,
                    id,
                    position,
                    mark,
                },
                news,
            ))
        }
        WOULD_WAIT => Err(ReserveError::WouldWait {
            retry_after: r.f64()?,
            max_wait: call.max_wait.unwrap_or(0.0),
        }),
        QUEUE_FULL => Err(ReserveError::QueueFull {
            retry_after: r.f64()?,
            depth: r.u64()?,
            max_queue: call.max_queue.unwrap_or(0),
        }),
        LATE => return Err(late()),
        _ => {
            r.at = 0;
            return Err(r.bad());
        }
    };
    r.end()?;
    Ok(outcome)
}

/// The message of a call that reached Redis after its caller's deadline.
const LATE_MESSAGE: &str =
    "the call reached Redis after its deadline (the caller had timed out); nothing was written";

/// A call that reached Redis after its caller's deadline: it wrote nothing.
fn late() -> StoreError {
    StoreError::Unavailable(LATE_MESSAGE.into())
}

/// Whether `e` is a reservation that reached Redis after its deadline
/// (nothing was written: it may be sent again).
pub(crate) fn is_late(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(m) if m == LATE_MESSAGE)
}

fn too_large(policy: &Policy, dimension: Dimension, needed: f64) -> ReserveError {
    ReserveError::TooLarge {
        dimension,
        needed,
        capacity: policy.capacity(dimension),
        limit: policy.limit(dimension).unwrap_or(0),
        burst: policy.limits().burst,
    }
}

/// Reads the reply of `settle.lua` (one record, see there): the key's state
/// before and the headroom the reservations queued behind need, from which
/// `tollgate_core::settle` gives the outcome the script wrote.
pub(crate) fn settle_reply(
    value: &Value,
    call: &SettleCall<'_>,
) -> Result<(Settled, f64), StoreError> {
    let mut r = Record::new(value, "settle")?;
    match r.byte()? {
        0 => {}
        5 => return Err(late()),
        7 => {
            // Cancelled already: nothing was written.
            let now = r.time()?;
            r.end()?;
            return Ok((Settled::unchanged(KeyState::default()), now));
        }
        _ => {
            r.at = 0;
            return Err(r.bad());
        }
    }
    let now = r.time()?;
    let queued = match r.byte()? {
        0 => false,
        1 => true,
        _ => return Err(r.bad()),
    };
    let (later_bits, state_len, ahead_len) = (r.byte()?, r.byte()?, r.byte()?);
    // Per dimension the headroom of those queued behind.
    let mut later_at = [f64::INFINITY; DIMENSIONS];
    for (i, l) in later_at.iter_mut().enumerate() {
        if later_bits & (1 << i) != 0 {
            *l = r.f64()?;
        }
    }
    let state = r.state(state_len)?;
    let mut later = later_at;
    for (l, refunded) in later.iter_mut().zip(state.refunded) {
        // As the memory store: less the refunds made since.
        if l.is_finite() {
            *l -= refunded;
        }
    }
    let mut ahead = [0.0; DIMENSIONS];
    match ahead_len {
        0 => {}
        32 => {
            for v in &mut ahead {
                *v = r.f64()?;
            }
        }
        _ => return Err(r.bad()),
    }
    r.end()?;
    let vacated = Vacated {
        queued,
        slot: call.slot,
        ahead,
    };
    let settled = settle_vacated(
        call.policy,
        &state,
        now,
        &call.mark,
        &call.actual,
        &later,
        &vacated,
    );
    Ok((settled, now))
}

/// Reads the reply of `snapshot.lua`: store time, state, queue depth.
pub(crate) fn snapshot_reply(value: &Value) -> Result<(f64, KeyState, u64), StoreError> {
    let r = Reply::new(value, "snapshot")?;
    Ok((r.time(0)?, r.state(2)?, r.u64(3)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_limiter_shares_one_hash_tag() {
        let k = Keys::new("tollgate", "openai/gpt-4o");
        assert_eq!(k.state(), "tollgate:{openai/gpt-4o}:s");
        assert_eq!(k.queue(3), "tollgate:{openai/gpt-4o}:q3");
    }

    #[test]
    fn reads_a_granted_reservation() {
        // The state: id 5, expiry, no classes; tokens: tat 1700000001.1,
        // refunded 0.1; the rest 0.
        let mut blob = Vec::new();
        blob.extend_from_slice(&5u64.to_le_bytes()[..7]);
        blob.extend_from_slice(&1_700_000_060_000u64.to_le_bytes()[..6]);
        blob.extend_from_slice(&[0, 0, 0b10]);
        blob.extend_from_slice(&1_700_000_001.1f64.to_le_bytes());
        blob.extend_from_slice(&0.1f64.to_le_bytes());
        let now = 1_700_000_000.0 + 250_000.0 / 1e6;
        let mut record = vec![GRANTED];
        for v in [
            now,
            1_700_000_000.0,
            250_000.0,
            1_700_000_000_250_001.0,
            2.0,
        ] {
            record.extend_from_slice(&f64::to_le_bytes(v));
        }
        record.extend_from_slice(&[0, blob.len() as u8, 0]);
        record.extend_from_slice(&blob);
        let policy = tollgate_core::Limits::new()
            .requests(60)
            .tokens(600)
            .validate()
            .unwrap();
        let call = ReserveCall {
            key: "k",
            policy: &policy,
            class: 0,
            headroom: 1.0,
            cost: [1.0, 10.0, 10.0, 0.0],
            max_wait: None,
            max_queue: None,
            lease: None,
        };
        // Two records in one reply: this one and a refusal.
        let mut reply = record.clone();
        reply.push(WOULD_WAIT);
        reply.extend_from_slice(&1.5f64.to_le_bytes());
        let items = reserve_replies(&Value::BulkString(reply), 2).unwrap();
        assert_eq!(items[0], Value::BulkString(record));
        let (r, news) = reserve_reply(&items[0], &call).unwrap().unwrap();
        assert_eq!(
            news.epoch, None,
            "an empty epoch: the script did not read it"
        );
        assert_eq!(r.now, 1_700_000_000.25);
        assert_eq!(r.slot, r.now);
        assert_eq!(r.id, 1_700_000_000_250_001);
        assert_eq!(r.position, 2);
        assert_eq!(
            r.mark.end[0],
            r.now + 1.0,
            "an idle bucket starts at the slot"
        );
        assert_eq!(r.mark.gap[0], r.now, "a fresh key skipped all time since 0");
        assert_eq!(r.mark.end[1], 1_700_000_001.1 + 1.0);
        assert_eq!(r.mark.gap[1], 0.0);
        assert_eq!(r.mark.end[2], 0.0, "unlimited dimensions keep their TAT");
        assert_eq!(r.mark.refunded_at[1], 0.1);
        match reserve_reply(&items[1], &call).unwrap() {
            Err(ReserveError::WouldWait { retry_after, .. }) => assert_eq!(retry_after, 1.5),
            other => panic!("a refusal to wait 1.5 s was read as {other:?}"),
        }
        assert!(reserve_reply(&Value::Int(3), &call).is_err());
    }

    #[test]
    fn a_reply_that_ends_early_or_runs_on_is_an_error() {
        let mut record = vec![GRANTED];
        record.extend_from_slice(&[0; 43]);
        // The state's length says 16 bytes follow: none do.
        record[42] = 16;
        assert!(reserve_replies(&Value::BulkString(record.clone()), 1).is_err());
        // A wait of 1 s and a stray byte: not two records.
        let mut refused = vec![WOULD_WAIT];
        refused.extend_from_slice(&1.0f64.to_le_bytes());
        refused.push(9);
        assert!(reserve_replies(&Value::BulkString(refused), 1).is_err());
        // One record where two were sent.
        assert!(reserve_replies(&Value::BulkString(vec![LATE]), 2).is_err());
        assert!(reserve_replies(&Value::Array(Vec::new()), 0).is_err());
    }

    #[test]
    fn costs_are_written_as_display_writes_them() {
        let exact = 9_007_199_254_740_992.0;
        for cost in [
            0.0,
            -0.0,
            1.0,
            7.0,
            1000.0,
            123_456_789.0,
            exact - 1.0,
            exact,
            1e300,
            0.5,
            1.25,
            1.0 / 3.0,
            f64::INFINITY,
        ] {
            let mut out = Vec::new();
            write_cost(&mut out, cost);
            assert_eq!(String::from_utf8(out).unwrap(), cost.to_string(), "{cost}");
        }
    }
}
