//! Reservations on several keys of one store in one atomic step, all or
//! nothing, with a caller's check (a [`Gate`]) in the same step: what the
//! gateway's admission makes of a client bucket, a spend budget and a
//! provider bucket (see [`crate::reserve_together`]).
//!
//! Every part but the last is asked not to wait: it is granted at once or
//! refused, and so a part refused later can be given back exactly (its key's
//! state as it was). The last part may queue; nothing after it can refuse.

use std::sync::LazyLock;

use redis::{Script, Value};
use tollgate_core::ReserveError;

use super::Reserved;

/// The Lua of a [`Gate`] for the Redis store: a chunk that defines two
/// local functions, `gate(KEYS, ARGV)`, which checks (and may write) and
/// returns a table whose first element is 0 to let the reservations go on,
/// anything else to refuse (it then must have written nothing), and
/// `ungate(KEYS, ARGV)`, which undoes what a `gate` that let them go on
/// wrote (run when a part after it is refused). Both run inside the one
/// script call, with the gate's keys and arguments only.
///
/// Build one once (a `static`): its script is loaded by its SHA.
///
/// ```
/// use tollgate::store::GateScript;
/// static NONE: std::sync::LazyLock<GateScript> = std::sync::LazyLock::new(|| {
///     GateScript::new("local function gate(KEYS, ARGV) return {0} end\nlocal function ungate(KEYS, ARGV) end")
/// });
/// # let _ = &*NONE;
/// ```
#[derive(Debug)]
pub struct GateScript {
    pub(crate) script: Script,
}

impl GateScript {
    /// The script of `together.lua` with this gate.
    pub fn new(lua: &str) -> Self {
        GateScript {
            script: Script::new(&format!(
                "{}local function reserve_one(KEYS, ARGV)\n{}\nend\n{lua}\n{}",
                include_str!("redis/state.lua"),
                include_str!("redis/reserve.lua"),
                include_str!("redis/together.lua"),
            )),
        }
    }
}

/// The script of a call without a gate.
pub(crate) static NO_GATE: LazyLock<GateScript> = LazyLock::new(|| {
    GateScript::new(
        "local function gate(KEYS, ARGV) return {0} end\nlocal function ungate(KEYS, ARGV) end",
    )
});

/// A check made in the same atomic step as the reservations, before the
/// part it is placed at (e.g. a spend budget reserved between a client's
/// bucket and a provider's): when it refuses, nothing is reserved.
pub enum Gate<'a> {
    /// On the Redis store: run inside the script call.
    Lua {
        /// Its Lua (see [`GateScript`]).
        script: &'static GateScript,
        /// Its keys (on a standalone server: any).
        keys: Vec<String>,
        /// Its arguments.
        args: Vec<Vec<u8>>,
    },
    /// On the memory store: run while the parts' keys are held.
    Local {
        /// Checks (and may reserve); `true` lets the reservations go on,
        /// `false` refuses (and then must have reserved nothing).
        check: &'a mut (dyn FnMut() -> bool + Send),
        /// Undoes what a `check` that said `true` reserved, when a later
        /// part is refused.
        undo: &'a mut (dyn FnMut() + Send),
    },
}

impl std::fmt::Debug for Gate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gate::Lua { keys, .. } => f.debug_struct("Gate::Lua").field("keys", keys).finish(),
            Gate::Local { .. } => f.write_str("Gate::Local"),
        }
    }
}

/// What a store's joint call did.
#[derive(Debug)]
pub(crate) enum Together {
    /// Every part was granted, in order; the gate's reply (Lua).
    Granted(Vec<Reserved>, Option<Value>),
    /// Part `.0` was refused: nothing is reserved.
    Refused(usize, ReserveError),
    /// The gate refused: nothing is reserved; its reply (Lua).
    Gated(Option<Value>),
}
