//! The object stores a test runs against: a local directory and S3 (a private Garage), and
//! `on_both_backends!`, which makes each listed test a test on each of them, so that the
//! backends cannot drift apart.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use mailvault::sensitive::Sensitive;
use mailvault::store::local::LocalStore;
use mailvault::store::s3::{S3Config, S3Credentials, S3Store};
use mailvault::store::ObjectStore;
use mailvault_testkit::garage::Garage;

/// A store under test, and what keeps it alive.
pub struct Backend {
    pub store: Arc<dyn ObjectStore>,
    _dir: Option<tempfile::TempDir>,
    _garage: Option<Garage>,
}

pub async fn local() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path().join("archive")).unwrap();
    Backend {
        store: Arc::new(store),
        _dir: Some(dir),
        _garage: None,
    }
}

pub async fn s3() -> Backend {
    let garage = Garage::start().unwrap();
    // Under a prefix, so that every test also checks that keys map in and out of it.
    let store = S3Store::open(&s3_config(&garage, garage.bucket(), "mail/archive"))
        .await
        .unwrap();
    Backend {
        store: Arc::new(store),
        _dir: None,
        _garage: Some(garage),
    }
}

/// The S3 settings for `bucket` of `garage`, under `prefix`, with its key.
pub fn s3_config(garage: &Garage, bucket: &str, prefix: &str) -> S3Config {
    S3Config {
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
        region: Some(garage.region().to_string()),
        endpoint: Some(garage.endpoint()),
        force_path_style: true,
        credentials: Some(S3Credentials {
            access_key_id: garage.access_key_id().to_string(),
            secret_access_key: Sensitive::new(garage.secret_access_key()),
        }),
        server_side_encryption: None,
    }
}

/// `on_both_backends!(a, b)`: the async tests `a(backend)` and `b(backend)` of this file run
/// as `local::a`, `s3::a`, `local::b`, `s3::b`.
#[allow(unused_macros)] // a test binary that needs only the S3 settings does not run it
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(crate::backends::local().await).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(crate::backends::s3().await).await
                }
            )*
        }
    };
}
