//! From a validated profile, or the parts of one in a run plan, to the engine's
//! [`RunSettings`]: server settings, folder selection, the run's identity, and the warnings
//! about the IMAP connection that a person must see in the protocol.

use std::time::Duration;

use super::{FolderSelector, RunSettings};
use crate::imap::ServerConfig;
use crate::resources::{
    namespace_of, ArchiveProfile, Bundle, DeletionSpec, FilterSpec, FolderSpec, Security,
    ServerSpec,
};

/// The parts of a profile's spec that a run needs.
pub struct RunParts<'a> {
    pub server: &'a ServerSpec,
    pub folders: &'a FolderSpec,
    pub filter: &'a FilterSpec,
    pub deletion: &'a DeletionSpec,
}

impl RunSettings {
    /// Run settings for `profile`, `maxParallelJobs` mailboxes at a time. The profile must
    /// have passed `validate_profile`, so its references resolve and its patterns compile.
    pub fn for_profile(bundle: &Bundle, profile: &ArchiveProfile, run_id: String) -> RunSettings {
        let spec = &profile.spec;
        let namespace = namespace_of(&profile.metadata).to_string();
        let extra_ca_pem = spec.server.ca_secret_ref.as_ref().and_then(|r| {
            bundle
                .secret(&namespace, &r.name)
                .and_then(|s| s.object.data.get(&r.key).cloned())
        });
        let mut settings = RunSettings::from_parts(
            namespace,
            profile.metadata.name.clone().unwrap_or_default(),
            run_id,
            RunParts {
                server: &spec.server,
                folders: &spec.folders,
                filter: &spec.filter,
                deletion: &spec.deletion,
            },
            extra_ca_pem,
        );
        settings.max_parallel = spec.max_parallel_jobs as usize;
        settings
    }

    /// Run settings from the parts of a profile a run needs, for callers that have no
    /// [`Bundle`] (the operator's worker reads them from its run plan). One mailbox at a
    /// time; callers that run more set `max_parallel`. The folder patterns must have been
    /// validated.
    pub fn from_parts(
        namespace: String,
        profile: String,
        run_id: String,
        parts: RunParts<'_>,
        extra_ca_pem: Option<Vec<u8>>,
    ) -> RunSettings {
        let RunParts {
            server,
            folders,
            filter,
            deletion,
        } = parts;
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
            deletion: deletion.clone(),
            dry_run_deletion: false,
            max_parallel: 1,
            warnings,
        }
    }
}
