//! KeyGrid core: the CA service.
//!
//! Requests flow one way through these modules: an API ([`api`]) authenticates the caller,
//! [`issuance`] decides, the CA ([`ca`]) signs with a key from a backend ([`keys`]), and the
//! [`store`] records the result before the API answers.

pub mod admin_client;
pub mod api;
pub mod audit;
pub mod bench;
pub mod ca;
pub mod config;
pub mod control_plane;
pub mod default_identity;
pub mod dev;
pub mod est;
pub mod federation;
pub mod http;
pub mod identity;
pub mod issuance;
pub mod jwt;
pub mod keys;
pub mod kubeadm;
pub mod policy;
pub mod revocation;
pub mod sa_bench;
pub mod sa_signer;
pub mod server;
pub mod spire_credential;
pub mod store;
pub mod store_cli;
