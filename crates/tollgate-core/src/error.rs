//! Errors of the pure model. Each says what to change.

use crate::Dimension;

/// A [`Limits`](crate::Limits) value that cannot describe a bucket.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitsError {
    /// No dimension has a limit.
    #[error("no limits set: give at least one of requests (rpm), tokens (tpm), input_tokens or output_tokens")]
    NoLimits,
    /// The window is zero, negative, or not a number.
    #[error("window must be a positive number of seconds, got {0}")]
    BadWindow(f64),
    /// The burst factor is zero, negative, not a number, or above
    /// [`MAX_BURST`](crate::MAX_BURST).
    #[error(
        "burst must be a positive factor of at most {max} (1.0 = one window's worth), got {0}",
        max = crate::MAX_BURST
    )]
    BadBurst(f64),
    /// The burndown multiplier is negative or not a number.
    #[error("burndown must be a finite number >= 0 (1.0 default, 5.0 for AWS Bedrock), got {0}")]
    BadBurndown(f64),
    /// A burndown other than 1.0 without a combined token limit, which is the
    /// only limit burndown acts on.
    #[error("burndown = {0} applies to the tokens limit, and none is set; set tpm (tokens) or leave burndown at 1.0")]
    BurndownWithoutTokens(f64),
    /// A priority headroom outside (0, 1].
    #[error("priority headroom must be in (0, 1] (1.0 for the top class), got {0}")]
    BadHeadroom(f64),
}

/// Why a reservation was not made. Nothing was written in either case.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReserveError {
    /// The request costs more than the bucket can ever hold.
    #[error("request needs {needed} {unit} but the bucket holds at most {capacity} ({dimension}={limit}, burst={burst}); raise burst or split the request", unit = dimension.unit())]
    TooLarge {
        /// The dimension that cannot hold the request.
        dimension: Dimension,
        /// What the request costs in that dimension.
        needed: f64,
        /// The most the bucket holds (`burst × limit`).
        capacity: f64,
        /// The limit per window.
        limit: u64,
        /// The burst factor.
        burst: f64,
    },
    /// The slot lies further away than the caller is willing to wait.
    #[error("rate limited: the next slot is {retry_after:.3} s away (longer than the allowed wait of {max_wait:.3} s)")]
    WouldWait {
        /// Seconds until the request could start.
        retry_after: f64,
        /// The caller's maximum wait in seconds.
        max_wait: f64,
    },
    /// The queue of the key's class is at its configured length.
    #[error("queue full: {depth} requests are already waiting (max_queue={max_queue}); retry in {retry_after:.3} s")]
    QueueFull {
        /// Requests waiting in the class's queue.
        depth: u64,
        /// The configured cap.
        max_queue: u64,
        /// Seconds until the request could start.
        retry_after: f64,
    },
}

/// A cost the limits cannot charge as they are written. Nothing was written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CostError {
    /// A combined token count on limits that count output tokens on their own:
    /// without the split, the output limit would be charged nothing.
    #[error("Cost::tokens({tokens}) does not say how many tokens are output, so the {dimension}={limit} limit could not be charged; use Cost::split(input, output)")]
    Unsplit {
        /// The combined token count given.
        tokens: u64,
        /// The dimension that needs the split (output tokens).
        dimension: Dimension,
        /// Its limit per window.
        limit: u64,
    },
}

/// Class shares that cannot split a bucket. Each names the class and field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShareError {
    /// Too few or too many classes.
    #[error("class shares: {0} classes given; give between 1 and {max}", max = crate::MAX_CLASSES)]
    Count(usize),
    /// A floor outside [0, 1] or not a number.
    #[error("class {class}: floor must be a share of the bucket in [0, 1], got {value}")]
    BadFloor {
        /// The class (0 = top).
        class: usize,
        /// The floor given.
        value: f64,
    },
    /// A weight that is not positive.
    #[error("class {class}: weight must be a number > 0, got {value}")]
    BadWeight {
        /// The class (0 = top).
        class: usize,
        /// The weight given.
        value: f64,
    },
    /// A lendable part outside [0, 1].
    #[error("class {class}: lendable must be a part of its lane in [0, 1], got {value}")]
    BadLendable {
        /// The class (0 = top).
        class: usize,
        /// The value given.
        value: f64,
    },
    /// The floors add up to more than the whole bucket.
    #[error("the floors of the classes sum to {sum}, more than the whole bucket (1.0); lower some floor")]
    FloorsAboveOne {
        /// Their sum.
        sum: f64,
    },
    /// The other floors take the whole bucket and leave this class nothing.
    #[error("class {class} would have no share: its floor is 0 and the other floors sum to 1; lower a floor or give it one")]
    NoShare {
        /// The class (0 = top).
        class: usize,
    },
}
