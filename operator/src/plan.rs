//! From a validated profile to what the engine needs: server settings, folder selection,
//! the run's identity, and the warnings a person must see in the protocol.

use std::time::Duration;

use crate::engine::{FolderSelector, RunSettings};
use crate::imap::ServerConfig;
use crate::resources::{namespace_of, ArchiveProfile, Bundle, Security};

/// Run settings for `profile`. The profile must have passed `validate_profile`, so its
/// references resolve and its patterns compile.
pub fn run_settings(bundle: &Bundle, profile: &ArchiveProfile, run_id: String) -> RunSettings {
    let spec = &profile.spec;
    let namespace = namespace_of(&profile.metadata).to_string();
    let extra_ca_pem = spec.server.ca_secret_ref.as_ref().and_then(|r| {
        bundle
            .secret(&namespace, &r.name)
            .and_then(|s| s.object.data.get(&r.key).cloned())
    });
    let mut warnings = Vec::new();
    if spec.server.security == Security::None {
        warnings.push(format!(
            "the connection to {} is not encrypted (security: None): passwords cross the network in the clear",
            spec.server.host
        ));
    } else if spec.server.insecure_skip_tls_verify {
        warnings.push(format!(
            "the certificate of {} is not verified (insecureSkipTlsVerify: true)",
            spec.server.host
        ));
    }
    RunSettings {
        namespace,
        profile: profile.metadata.name.clone().unwrap_or_default(),
        run_id,
        server: ServerConfig {
            host: spec.server.host.clone(),
            port: spec.server.effective_port(),
            security: spec.server.security,
            insecure_skip_tls_verify: spec.server.insecure_skip_tls_verify,
            extra_ca_pem,
            timeout: Duration::from_secs(u64::from(spec.server.timeout_seconds)),
        },
        folders: FolderSelector::new(&spec.folders).expect("validated patterns compile"),
        filter: spec.filter.clone(),
        deletion: spec.deletion.clone(),
        dry_run_deletion: false,
        max_parallel: spec.max_parallel_jobs as usize,
        warnings,
    }
}

/// A run's name for local runs: the profile and the start time, to the second.
pub fn local_run_id(profile: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    format!("{profile}-{}", now.format("%Y%m%d%H%M%S"))
}
