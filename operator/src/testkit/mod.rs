//! Private servers and sample mail for the integration tests, the benchmarks and the demo.
//! Built only with the `testkit` feature; nothing here is part of the product.

pub mod cloud;
pub mod dovecot;
pub mod garage;
pub mod mail;
pub mod proxy;
#[cfg(unix)]
pub mod slapd;
