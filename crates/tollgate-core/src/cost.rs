//! What a request costs, before (estimate) and after (actual usage) the call.

/// The estimated cost of one request.
///
/// Either a precomputed token count, or input and output tokens separately (the
/// combined token dimension then charges `input + burndown × output`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cost {
    /// A precomputed combined token count, with no input/output split.
    ///
    /// The combined limit (tpm) and the input limit (input_tpm) are charged all
    /// of it, as if it were all input: the input limit errs on the safe side.
    /// An output limit (output_tpm) cannot be charged without the split, so the
    /// limiter refuses `Cost::Tokens(n)` with `n > 0` on limits that have one
    /// ([`CostError::Unsplit`](crate::CostError::Unsplit)); use [`Cost::Split`]
    /// there. `Cost::Tokens(0)` ([`Cost::request_only`]) fits any limits.
    Tokens(u64),
    /// Input and output tokens.
    Split {
        /// Prompt tokens.
        input: u64,
        /// Completion tokens (estimate: `max_tokens` or a default).
        output: u64,
    },
}

impl Cost {
    /// A precomputed combined token count (see [`Cost::Tokens`]: refused on
    /// limits with an output token limit).
    pub fn tokens(n: u64) -> Self {
        Cost::Tokens(n)
    }

    /// Separate input and output tokens.
    pub fn split(input: u64, output: u64) -> Self {
        Cost::Split { input, output }
    }

    /// A request that counts only against the request limit.
    pub fn request_only() -> Self {
        Cost::Tokens(0)
    }
}

/// What a call actually used, reported when it is settled. Same shape as [`Cost`].
pub type Usage = Cost;
