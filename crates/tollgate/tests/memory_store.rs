//! The behavioural suite on the in-memory store.

mod behaviour;

async fn memory() -> (tollgate::Store, ()) {
    (tollgate::Store::memory(), ())
}

suite!(memory);
