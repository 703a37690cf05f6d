//! warmpool-testkit: what the integration suites of every crate share, so each wait, process
//! helper and fixture is written once.
//!
//! # Layout
//! - [`wait`]: conditions polled with a deadline (never a sleep as synchronisation).
//! - [`process`]: the processes of a uid, of a command line; stopping a child cleanly.
//! - [`redis`]: the Redis fixture: a private `redis-server` on a free loopback port (killed
//!   on drop, even when a test fails), a connected store, the pool settings replicas publish.

pub mod process;
pub mod redis;
pub mod wait;

pub use redis::{free_port, RedisServer};
pub use wait::{eventually, settled, until_ok};
