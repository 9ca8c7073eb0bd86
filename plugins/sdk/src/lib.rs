//! A small SDK for writing SPIRE plugins in Rust.
//!
//! SPIRE loads external plugins through hashicorp/go-plugin: it starts the binary, reads
//! one handshake line from its stdout, dials the gRPC server the line names, then talks
//! SPIRE's own Init and Config services before the plugin interface itself. This crate
//! does all of that, so a plugin only writes its interface and its typed configuration.
//!
//! - [`handshake`]: the magic-cookie check and the stdout handshake line.
//! - [`goplugin`]: go-plugin's broker, controller and stdio services.
//! - [`init`]: SPIRE's private Init service (advertises the plugin's service names).
//! - [`config`]: SPIRE's Config service, HCL `plugin_data` parsed into a typed struct.
//! - [`log`]: hclog-style JSON log lines on stderr, so SPIRE logs them at their level.
//! - [`serve`]: the entry point that ties the above together and runs until SPIRE leaves.

pub mod config;
pub mod goplugin;
pub mod handshake;
pub mod init;
pub mod log;
pub mod serve;

pub use config::{parse_hcl, ConfigError, Configurable, CoreConfig};
pub use serve::{run, PluginSpec};
