//! CA tests.
