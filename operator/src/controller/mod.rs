//! The Kubernetes operator: controllers for ArchiveProfile and MailboxSet, and the pure
//! decisions they are made of (schedule, names, shards, summaries, conditions), which are
//! tested with a fake clock and no API server.

pub mod api;
pub mod conditions;
pub mod context;
pub mod job;
pub mod mailboxset;
pub mod metrics;
pub mod names;
pub mod profile;
pub mod run;
pub mod runs;
pub mod schedule;
