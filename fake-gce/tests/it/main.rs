//! The fake Compute Engine's integration suites, in one test binary: the official client
//! against it over HTTP, its agents as processes, its metadata server.

mod common;

mod agents;
mod client;
mod http;
mod metadata;
