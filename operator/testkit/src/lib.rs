//! Private servers and sample mail for mailvault's integration tests, benchmarks and demo:
//! Dovecot, OpenLDAP slapd, Garage (S3), fakekube (a fake Kubernetes API server), a fake
//! cloud (Microsoft's and Google's OAuth2 token endpoints and directories) and a
//! fault-injecting proxy, each started privately on free loopback ports. A dev-dependency
//! only: nothing here is part of the product.

pub mod cloud;
pub mod dovecot;
#[cfg(unix)]
pub mod fakekube;
pub mod garage;
pub mod mail;
pub mod proxy;
#[cfg(unix)]
pub mod slapd;
