//! From a validated profile to what the engine needs: server settings, folder selection,
//! the run's identity, and the warnings a person must see in the protocol.

use std::time::Duration;

use crate::engine::{FolderSelector, RunSettings};
use crate::imap::ServerConfig;
use crate::resources::{
    namespace_of, ArchiveProfile, Bundle, FilterSpec, FolderSpec, Security, ServerSpec,
};

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
    let mut settings = settings_for(
        namespace,
        profile.metadata.name.clone().unwrap_or_default(),
        run_id,
        &spec.server,
        &spec.folders,
        &spec.filter,
        extra_ca_pem,
    );
    settings.max_parallel = spec.max_parallel_jobs as usize;
    settings
}

/// Run settings from the parts of a profile a run needs, for callers that have no
/// [`Bundle`] (the operator's worker reads them from its run plan). One mailbox at a time;
/// callers that run more set `max_parallel`. The folder patterns must have been validated.
pub fn settings_for(
    namespace: String,
    profile: String,
    run_id: String,
    server: &ServerSpec,
    folders: &FolderSpec,
    filter: &FilterSpec,
    extra_ca_pem: Option<Vec<u8>>,
) -> RunSettings {
    let mut warnings = Vec::new();
    if server.security == Security::None {
        warnings.push(format!(
            "the connection to {} is not encrypted (security: None): passwords cross the network in the clear",
            server.host
        ));
    } else if server.insecure_skip_tls_verify {
        warnings.push(format!(
            "the certificate of {} is not verified (insecureSkipTlsVerify: true)",
            server.host
        ));
    }
    RunSettings {
        namespace,
        profile,
        run_id,
        server: ServerConfig {
            host: server.host.clone(),
            port: server.effective_port(),
            security: server.security,
            insecure_skip_tls_verify: server.insecure_skip_tls_verify,
            extra_ca_pem,
            timeout: Duration::from_secs(u64::from(server.timeout_seconds)),
        },
        folders: FolderSelector::new(folders).expect("validated patterns compile"),
        filter: filter.clone(),
        max_parallel: 1,
        warnings,
    }
}

/// A run's name for local runs: the profile and the start time, to the second.
pub fn local_run_id(profile: &str, now: chrono::DateTime<chrono::Utc>) -> String {
    format!("{profile}-{}", now.format("%Y%m%d%H%M%S"))
}
