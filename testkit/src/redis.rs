//! The Redis fixture: every test starts its own `redis-server` on a free loopback port and
//! never touches one it did not start (nor port 6379). The server is the one `warmpool dev`
//! starts (`warmpool::redis_server`), killed when the fixture drops.

use std::time::Duration;

pub use warmpool::redis_server::{free_port, RedisServer};
use warmpool_core::store::{settings, RedisSettings, Store};

/// A store of pool `pool` on `redis_url`, with the test timeouts.
pub async fn store(redis_url: &str, pool: &str) -> Store {
    Store::connect(
        &RedisSettings {
            url: redis_url.to_string(),
            pool_size: 2,
            command_timeout: Duration::from_secs(2),
        },
        pool,
    )
    .await
    .expect("connect to the test redis")
}

/// Publishes the pool settings a replica with the default configuration publishes when it
/// starts: what agents receive when they register, for tests that run agents or their scripts
/// without a replica.
pub async fn publish_default_settings(store: &Store) {
    let defaults = warmpool::config::Config::defaults().pool_settings();
    settings::publish(store, &defaults)
        .await
        .expect("publish the pool settings");
}
