//! mailvault: archives many IMAP mailboxes at once, declaratively.
//!
//! The same engine serves `mailvault run` on any machine and the Kubernetes operator's
//! archiving Jobs. Data flows resources → sources → engine (imap → store) → protocol.

pub mod cli;
pub mod controller;
pub mod engine;
pub mod export;
pub mod imap;
pub mod oauth2;
pub mod plan;
pub mod protocol;
pub mod resources;
pub mod secret;
pub mod sources;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;
pub mod worker;
