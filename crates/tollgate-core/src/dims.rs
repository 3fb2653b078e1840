//! The four dimensions a key may limit.

use std::fmt;

/// Number of dimensions (requests, tokens, input tokens, output tokens).
pub const DIMENSIONS: usize = 4;

/// One value per [`Dimension`], indexed by `Dimension as usize`.
pub type Dims = [f64; DIMENSIONS];

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// Requests: every request costs 1.
    Requests = 0,
    /// Combined tokens: input + burndown × output.
    Tokens = 1,
    /// Input (prompt) tokens.
    InputTokens = 2,
    /// Output (completion) tokens.
    OutputTokens = 3,
}

impl Dimension {
    /// All dimensions in index order.
    pub const ALL: [Dimension; DIMENSIONS] = [
        Dimension::Requests,
        Dimension::Tokens,
        Dimension::InputTokens,
        Dimension::OutputTokens,
    ];

    /// The index of this dimension in a [`Dims`] array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The short name used in errors and headers (`rpm`, `tpm`, `itpm`, `otpm`).
    pub fn short_name(self) -> &'static str {
        match self {
            Dimension::Requests => "rpm",
            Dimension::Tokens => "tpm",
            Dimension::InputTokens => "input_tpm",
            Dimension::OutputTokens => "output_tpm",
        }
    }

    /// The unit this dimension counts, for messages.
    pub fn unit(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::Tokens => "tokens",
            Dimension::InputTokens => "input tokens",
            Dimension::OutputTokens => "output tokens",
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}
