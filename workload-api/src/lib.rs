//! KeyGrid node agent: attests itself to core, attests local workloads, and serves them
//! their identities over the SPIFFE Workload API.
//!
//! Data flows one way: [`node_client`] holds the node credential and talks to core,
//! [`cache`] keeps an SVID per entry current, [`attestor`] identifies callers, and
//! [`workload`] answers them from the cache.

pub mod attestor;
pub mod cache;
pub mod config;
pub mod node_client;
pub mod server;
pub mod workload;
