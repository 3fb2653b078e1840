//! Test support shared by the integration tests: real `redis-server`
//! processes (plain, TLS, Cluster) and certificates generated on the spot.
//!
//! Use from a test file with `mod support;`.
#![allow(dead_code, unused_imports)]

pub mod clock;
pub mod redis_server;
pub mod tls;

pub use clock::TokioClock;
pub use redis_server::{RedisCluster, RedisServer};
pub use tls::TestCerts;
