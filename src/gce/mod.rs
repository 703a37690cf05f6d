//! Compute Engine: the pool's VMs as GCE instances, through the official
//! `google-cloud-compute-v1` client.
//!
//! # Expected flow
//! - **create**: the leader records VM `POOL-N`, then inserts instance `wp-POOL-N` with labels
//!   `warmpool-pool=POOL`, `warmpool-vm=POOL-N` and the metadata its agent boots from, in the
//!   first zone of `WARMPOOL_GCE_ZONES`; it waits for the zone operation (with a deadline).
//!   A stockout or quota error moves it to the next zone; a rate limit, a 5xx or no answer is
//!   retried with backoff and jitter under the same request id; a configuration error (image,
//!   machine type, permission) fails the VM and pauses creates (see the reconciler).
//! - **delete**: by name in the zone the instance is known to be in (or every zone); the
//!   operation is not awaited: a list finds the instance again if it survives.
//! - **list**: every zone, filtered by the pool label, all pages.
//!
//! # Guarantees
//! - One instance per VM record: the instance name is the record's id, and each insert carries
//!   a request id derived from project, zone, name and attempt, so a retry after a lost answer
//!   gets the first attempt's operation and a retry after a name clash finds the instance
//!   (409) rather than making another.
//! - Insert calls, retries included, stay under `WARMPOOL_GCE_MAX_INSERTS_PER_MIN`.
//!
//! # Caveats
//! - After a Redis data loss the VM counter restarts: a new record can be given the name of a
//!   surviving instance, which is then taken as that VM (its agent registers under that id).

pub mod config;
pub mod errors;
pub mod limiter;
mod provider;

pub use config::{GceConfig, GceSettings};
pub use provider::{CallCounts, GceProvider};
