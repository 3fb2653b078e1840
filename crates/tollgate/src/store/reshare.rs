//! A change of a lane's share of its bucket, made once in the store (see
//! `tollgate_core::reshare`): on Redis the script of `redis/reshare.rs`,
//! in memory a field of the lane's entry.

use tollgate_core::{Dims, Policy};

/// The arguments of [`Backend::reshare`](super::Backend::reshare): one
/// lane of a shared bucket whose share changes.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReshareCall<'a> {
    /// The lane's key in the store.
    pub key: &'a str,
    /// The whole bucket's validated limits (not the lane's).
    pub policy: &'a Policy,
    /// The lane's share before the change, as the caller had it; the
    /// share the store recorded for the lane at its last change, if any,
    /// is taken instead (its line is in that one).
    pub from: f64,
    /// Its share from now on.
    pub to: f64,
    /// Units per dimension to charge a lane that grows, on top (negative:
    /// room to give it): its part of what the shrinking lanes owe
    /// (`tollgate_core::reshare_extra`).
    pub extra: Dims,
}

impl<'a> ReshareCall<'a> {
    /// Lane `key` of the bucket of `policy` goes from the share `from` to
    /// `to`, charged `extra` units on top when it grows.
    pub fn new(key: &'a str, policy: &'a Policy, from: f64, to: f64, extra: Dims) -> Self {
        ReshareCall {
            key,
            policy,
            from,
            to,
            extra,
        }
    }
}

/// What [`Backend::reshare`](super::Backend::reshare) found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reshare {
    /// Whether this call moved the lane (else the store had it at the new
    /// share already: another process made the change).
    pub moved: bool,
    /// For a lane that shrank, the units per dimension the lanes that grow
    /// owe for it (`tollgate_core::Reshared::owed`), as recorded when the
    /// lane was moved: the same for every caller.
    pub owed: Dims,
    /// The store's time, seconds.
    pub now: f64,
}
