//! KeyGrid node agent: attests itself to core, attests local workloads, and serves them
//! their identities over the SPIFFE Workload API.
//!
//! Data flows one way: [`node_client`] holds the node credential and talks to core,
//! [`cache`] keeps an SVID per entry (and per pod default identity) current, [`attestor`]
//! identifies callers, [`identity`] decides what they get, and [`workload`] answers them
//! from the cache ([`jwt`] for JWT-SVIDs); [`health`] reports readiness on the same socket.
//! With `[est]`, [`est_client`] enrolls the node with its TPM ([`tpm_key`]) and [`kubelet`]
//! keeps the kubelet's certificate files current.

pub mod attestor;
pub mod cache;
pub mod config;
pub mod est_client;
pub mod health;
pub mod identity;
pub mod jwt;
pub mod kubelet;
pub mod node_client;
pub mod sds;
pub mod server;
pub mod tpm_key;
pub mod workload;
