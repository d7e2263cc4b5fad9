//! mailvault: archives many IMAP mailboxes at once, declaratively.
//!
//! The same engine serves `mailvault run` on any machine and the Kubernetes operator's
//! archiving Jobs. Data flows resources → sources → engine (imap → store) → protocol.
//! The modules form layers, from the command line (`cli`) over the operator and its
//! workers, the run contract (`runplan`) and the local run (`archiving`), and the engine,
//! down to the parts; dependencies point down only (`tests/layers.rs`, and the README's
//! "How the code is laid out").

pub mod archiving;
pub mod cli;
pub mod engine;
pub mod export;
pub mod imap;
pub mod oauth2;
pub mod operator;
pub mod protocol;
pub mod resources;
pub mod runplan;
pub mod sensitive;
pub mod sources;
pub mod store;
pub mod time;
pub mod tls;
pub mod worker;
