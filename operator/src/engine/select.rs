//! Pure decisions of a run: which folders to archive, and which messages.

use chrono::{DateTime, Duration, Utc};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::imap::{Folder, MessageMeta, SpecialUse};
use crate::resources::{FilterSpec, FolderSpec};
use crate::store::Direction;

/// Folder names left out by `excludeDefaults` (compared case-insensitively, at the top level
/// or under INBOX, as servers differ in where they put them).
const DEFAULT_EXCLUDED: &[&str] = &[
    "Trash",
    "Deleted Items",
    "Deleted Messages",
    "Junk",
    "Junk E-mail",
    "Spam",
    "Drafts",
    "Outbox",
];

/// Names taken for the sent-items folder when the profile names none and the server flags
/// none as `\Sent`.
const DEFAULT_SENT: &[&str] = &["Sent", "Sent Items", "Sent Messages"];

/// Chooses folders by the profile's include / exclude patterns.
///
/// Patterns are globs on the UTF-8 path with `/` between levels: `*` stays within one
/// level, `**` crosses levels. A pattern that matches a folder also matches its
/// subfolders, so `exclude: [Archive]` leaves out `Archive/2019` too.
pub struct FolderSelector {
    include: Option<GlobSet>,
    exclude: GlobSet,
    exclude_defaults: bool,
    sent_items: Option<String>,
}

impl FolderSelector {
    pub fn new(spec: &FolderSpec) -> Result<FolderSelector, globset::Error> {
        let build = |patterns: &[String]| -> Result<GlobSet, globset::Error> {
            let mut set = GlobSetBuilder::new();
            for p in patterns {
                set.add(GlobBuilder::new(p).literal_separator(true).build()?);
            }
            set.build()
        };
        Ok(FolderSelector {
            include: if spec.include.is_empty() {
                None
            } else {
                Some(build(&spec.include)?)
            },
            exclude: build(&spec.exclude)?,
            exclude_defaults: spec.exclude_defaults,
            sent_items: spec.sent_items.clone(),
        })
    }

    /// The folders to archive, each with the direction of its messages.
    pub fn select(&self, folders: Vec<Folder>) -> Vec<(Folder, Direction)> {
        let flagged_sent = folders
            .iter()
            .any(|f| f.special_use == Some(SpecialUse::Sent));
        folders
            .into_iter()
            .filter(|f| self.wanted(f))
            .map(|f| {
                let direction = if self.is_sent(&f, flagged_sent) {
                    Direction::Outgoing
                } else {
                    Direction::Incoming
                };
                (f, direction)
            })
            .collect()
    }

    fn wanted(&self, folder: &Folder) -> bool {
        let ancestors: Vec<String> = (1..=folder.segments.len())
            .map(|n| folder.segments[..n].join("/"))
            .collect();
        if self.exclude_defaults {
            let special = matches!(
                folder.special_use,
                Some(SpecialUse::Trash | SpecialUse::Junk | SpecialUse::Drafts)
            );
            let named = ancestors.iter().any(|path| {
                let path = path.to_lowercase();
                let path = path.strip_prefix("inbox/").unwrap_or(&path);
                DEFAULT_EXCLUDED.iter().any(|d| d.to_lowercase() == path)
            });
            if special || named {
                return false;
            }
        }
        if ancestors.iter().any(|p| self.exclude.is_match(p)) {
            return false;
        }
        match &self.include {
            None => true,
            Some(include) => ancestors.iter().any(|p| include.is_match(p)),
        }
    }

    fn is_sent(&self, folder: &Folder, server_flags_sent: bool) -> bool {
        let path = folder.path();
        match &self.sent_items {
            Some(sent) => path.eq_ignore_ascii_case(sent.trim_matches('/')),
            None if server_flags_sent => folder.special_use == Some(SpecialUse::Sent),
            None => {
                let path = path.to_lowercase();
                let path = path.strip_prefix("inbox/").unwrap_or(&path);
                DEFAULT_SENT.iter().any(|s| s.to_lowercase() == path)
            }
        }
    }
}

/// What to do with one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Archive,
    /// Left out by the filter: too large, too old, or too young (archived by a later run).
    Skip,
}

/// Applies the profile's filter to a message's size and INTERNALDATE.
pub fn decide(meta: &MessageMeta, filter: &FilterSpec, now: DateTime<Utc>) -> Decision {
    if filter.max_message_bytes.is_some_and(|max| meta.size > max) {
        return Decision::Skip;
    }
    if let Some(date) = meta.internal_date {
        let age = now.signed_duration_since(date);
        if filter
            .min_age_days
            .is_some_and(|days| age < Duration::days(i64::from(days)))
        {
            return Decision::Skip;
        }
        if filter
            .max_age_days
            .is_some_and(|days| age > Duration::days(i64::from(days)))
        {
            return Decision::Skip;
        }
    }
    Decision::Archive
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(path: &str, special_use: Option<SpecialUse>) -> Folder {
        Folder::from_listing(path.to_string(), Some("/"), special_use)
    }

    fn selected(spec: FolderSpec, folders: Vec<Folder>) -> Vec<(String, Direction)> {
        FolderSelector::new(&spec)
            .unwrap()
            .select(folders)
            .into_iter()
            .map(|(f, d)| (f.path(), d))
            .collect()
    }

    fn mailbox() -> Vec<Folder> {
        vec![
            folder("INBOX", None),
            folder("INBOX/Spam", None),
            folder("Bin", Some(SpecialUse::Trash)),
            folder("Drafts", None),
            folder("Gesendet", Some(SpecialUse::Sent)),
            folder("Sent", None),
            folder("Archive", None),
            folder("Archive/2019", None),
            folder("Archive/2019/Q1", None),
            folder("Trash/Old", None),
        ]
    }

    #[test]
    fn defaults_leave_out_trash_junk_drafts_and_use_the_sent_flag() {
        let got = selected(FolderSpec::default(), mailbox());
        use Direction::*;
        assert_eq!(
            got,
            [
                ("INBOX".to_string(), Incoming),
                ("Gesendet".into(), Outgoing),
                ("Sent".into(), Incoming),
                ("Archive".into(), Incoming),
                ("Archive/2019".into(), Incoming),
                ("Archive/2019/Q1".into(), Incoming),
            ]
        );
    }

    #[test]
    fn patterns_cover_subfolders_and_exclude_wins() {
        let spec = FolderSpec {
            include: vec!["Archive".into(), "INBOX".into()],
            exclude: vec!["Archive/*/Q?".into()],
            exclude_defaults: false,
            sent_items: Some("Archive".into()),
        };
        let got: Vec<_> = selected(spec, mailbox()).into_iter().collect();
        assert_eq!(
            got,
            [
                ("INBOX".to_string(), Direction::Incoming),
                ("INBOX/Spam".into(), Direction::Incoming),
                ("Archive".into(), Direction::Outgoing),
                ("Archive/2019".into(), Direction::Incoming),
            ]
        );
    }

    #[test]
    fn filter_by_size_and_age() {
        let now = Utc::now();
        let meta = |size: u64, days_old: i64| MessageMeta {
            uid: 1,
            size,
            internal_date: Some((now - Duration::days(days_old)).fixed_offset()),
            flags: vec![],
        };
        let filter = FilterSpec {
            min_age_days: Some(7),
            max_age_days: Some(365),
            max_message_bytes: Some(1000),
        };
        assert_eq!(decide(&meta(10, 30), &filter, now), Decision::Archive);
        assert_eq!(decide(&meta(1001, 30), &filter, now), Decision::Skip);
        assert_eq!(decide(&meta(10, 3), &filter, now), Decision::Skip);
        assert_eq!(decide(&meta(10, 400), &filter, now), Decision::Skip);
        assert_eq!(
            decide(&meta(10, 3), &FilterSpec::default(), now),
            Decision::Archive
        );
    }
}
