//! The orchestrator's integration suites, in one test binary (one link instead of eight). Each
//! module is a suite; `make test` selects one by its name (`cargo nextest run -p warmpool
//! --test it -- attacks::`).
//!
//! They run against real parts: their own `redis-server` on a free loopback port, in-process
//! orchestrator replicas or the `warmpool` binary, real agent processes and sandboxes, and a
//! fake Compute Engine on loopback for the official client.

mod common;

mod api;
mod attacks;
mod cli;
mod control;
mod e2e;
mod gce;
mod observability;
mod reconciler;
mod scripts;
mod sim;
