//! The archive in a local directory (the default store).
//!
//! Objects are files. A put writes a temporary file and renames it into place, so readers
//! and concurrent writers only ever see whole files. Durability is batched: instead of one
//! fsync per message, [`ObjectStore::sync`] flushes the whole file system once (`syncfs`),
//! which makes every rename before it durable together with its data.
//!
//! Errors are never lost on the way: a write's `close` is checked (network file systems
//! report write errors there), and `syncfs` runs on a descriptor held since the store was
//! opened, so that it reports every write-back error since then, also one that happened
//! in the background before the sync was asked for.
//!
//! Each process writes its temporary files into a directory of its own under `tmp/`,
//! locked (`flock`) while the process lives. Before its first write, a process removes the
//! directories whose lock is free: those of runs that were killed. A concurrent writer's
//! files are never touched, since its lock is held.

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{ObjectStore, StoreError};

/// The lock file, in `tmp/` (held while a process cleans up and creates its directory)
/// and in each process's directory (held while the process lives).
const LOCK: &str = "lock";
/// Loose files in `tmp/` (from versions without per-process directories) older than this
/// are leftovers; a concurrent writer of such a version finishes a file in far less.
const LOOSE_TEMP_AGE: Duration = Duration::from_secs(3600);

pub struct LocalStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    /// This process's directory for temporary files, `tmp/<random>/`, and the lock held on
    /// it; claimed at the first write, so that an archive on a read-only medium can still
    /// be listed, exported and verified.
    tmp: Mutex<Option<Claimed>>,
    /// The root, open since the store was: `syncfs` on it reports every write-back error
    /// of the file system since then.
    root_fd: fs::File,
}

struct Claimed {
    dir: PathBuf,
    _lock: Option<fs::File>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let claimed = self.tmp.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(claimed) = claimed {
            let _ = fs::remove_dir_all(&claimed.dir);
        }
    }
}

impl LocalStore {
    /// Opens (creating if needed) the archive directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalStore, StoreError> {
        let root = root.into();
        let error = |operation, e: std::io::Error| StoreError::Backend {
            store: root.display().to_string(),
            operation,
            key: String::new(),
            message: e.to_string(),
        };
        fs::create_dir_all(&root).map_err(|e| error("create", e))?;
        let root_fd = fs::File::open(&root).map_err(|e| error("open", e))?;
        Ok(LocalStore {
            inner: Arc::new(Inner {
                root,
                tmp: Mutex::new(None),
                root_fd,
            }),
        })
    }

    /// This process's directory for temporary files, created (after removing what killed
    /// runs left behind) at the first call.
    fn tmp_dir(&self) -> std::io::Result<PathBuf> {
        let mut tmp = self
            .inner
            .tmp
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(claimed) = tmp.as_ref() {
            return Ok(claimed.dir.clone());
        }
        let tmp_root = self.inner.root.join("tmp");
        fs::create_dir_all(&tmp_root)?;
        let (dir, lock) = claim_tmp(&tmp_root)?;
        *tmp = Some(Claimed {
            dir: dir.clone(),
            _lock: lock,
        });
        Ok(dir)
    }

    fn error(&self, operation: &'static str, key: &str, e: impl ToString) -> StoreError {
        StoreError::Backend {
            store: self.describe(),
            operation,
            key: key.to_string(),
            message: e.to_string(),
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.inner.root.join(key)
    }

    /// Writes `bytes` to a fresh temporary file and renames it to `key`.
    fn write_atomic(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let target = self.path(key);
        let tmp = self
            .tmp_dir()
            .map_err(|e| self.error("create", "tmp/", e))?
            .join(uuid::Uuid::new_v4().simple().to_string());
        let result = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            close(file)?;
            match fs::rename(&tmp, &target) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir_all(target.parent().expect("keys have a directory"))?;
                    fs::rename(&tmp, &target)
                }
                other => other,
            }
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| self.error("write", key, e))
    }

    /// Reads a file from the disk rather than the page cache: its cached pages (clean,
    /// after a sync) are dropped first, so the read goes to the device.
    fn read_from_disk(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        self.read_range(key, 0, u64::MAX, true)
    }

    /// Up to `len` bytes of a file from `offset` on; `from_disk`: dropped from the page
    /// cache first, so that the bytes come from the disk, not from memory of the write.
    fn read_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        from_disk: bool,
    ) -> std::io::Result<Option<Vec<u8>>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = match fs::File::open(self.path(key)) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if from_disk {
            // Only the range, so that reading one message back does not evict a pack.
            let (start, span) = (
                libc::off_t::try_from(offset).unwrap_or(libc::off_t::MAX),
                libc::off_t::try_from(len).unwrap_or(0),
            );
            // SAFETY: `file` holds a valid open descriptor for the duration of the call.
            let rc = unsafe {
                libc::posix_fadvise(file.as_raw_fd(), start, span, libc::POSIX_FADV_DONTNEED)
            };
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
        }
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(offset))?;
        file.take(len).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// [`Self::read_range`] on a blocking thread, for `get_range` and `read_back_range`.
    async fn range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        from_disk: bool,
    ) -> Result<Option<Bytes>, StoreError> {
        let key = key.to_string();
        let action = if from_disk { "read back" } else { "read" };
        self.run_blocking(move |s| {
            s.read_range(&key, offset, len, from_disk)
                .map(|bytes| bytes.map(Bytes::from))
                .map_err(|e| s.error(action, &key, e))
        })
        .await
    }

    async fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LocalStore) -> T + Send + 'static,
    ) -> T {
        let store = LocalStore {
            inner: self.inner.clone(),
        };
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .expect("local store operations do not panic")
    }
}

/// Closes a file and reports what `close` says: on network file systems, the write errors
/// that `write` did not.
fn close(file: fs::File) -> std::io::Result<()> {
    let fd = file.into_raw_fd();
    // SAFETY: `fd` came from `into_raw_fd`, so it is open and nothing else closes it.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates this process's directory for temporary files under `tmp_root` and locks it;
/// first removes the directories of processes that are gone (their locks are free).
/// Both happen under the lock on `tmp/lock`, so a directory is never seen between its
/// creation and its lock. Where the file system has no locks, nothing is removed.
fn claim_tmp(tmp_root: &Path) -> std::io::Result<(PathBuf, Option<fs::File>)> {
    let guard = open_lock(&tmp_root.join(LOCK))?;
    let locked = lock(&guard, true)?;
    if locked {
        remove_leftovers(tmp_root);
    } else {
        tracing::warn!(
            dir = %tmp_root.display(),
            "the file system does not support locks: temporary files of killed runs are not removed"
        );
    }
    let tmp = tmp_root.join(uuid::Uuid::new_v4().simple().to_string());
    fs::create_dir(&tmp)?;
    let own = open_lock(&tmp.join(LOCK))?;
    let own = if locked && lock(&own, false)? {
        Some(own)
    } else {
        None
    };
    // Dropping `guard` releases the lock on `tmp/lock`.
    Ok((tmp, own))
}

fn open_lock(path: &Path) -> std::io::Result<fs::File> {
    // Opened for writing: network file systems lock only files open for writing.
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// Takes an exclusive lock, waiting for it if `wait`. `Ok(false)`: held by someone else
/// (without `wait`), or locks are not supported.
fn lock(file: &fs::File, wait: bool) -> std::io::Result<bool> {
    let operation = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: `file` holds a valid open descriptor for the duration of the call.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK | libc::ENOLCK | libc::EOPNOTSUPP) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Removes what killed runs left in `tmp/`: directories whose lock nobody holds, and loose
/// files of earlier versions older than [`LOOSE_TEMP_AGE`]. Best effort: what cannot be
/// removed now is tried again by the next run.
fn remove_leftovers(tmp_root: &Path) {
    let Ok(entries) = fs::read_dir(tmp_root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name() == LOCK {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            // A directory without its lock file is one whose creator died right after
            // creating it (both happen under the `tmp/lock` we hold).
            let gone = match fs::OpenOptions::new().write(true).open(path.join(LOCK)) {
                Ok(file) => lock(&file, false).unwrap_or(false),
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            };
            if gone {
                tracing::debug!(dir = %path.display(), "removing temporary files of a killed run");
                let _ = fs::remove_dir_all(&path);
            }
        } else {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| SystemTime::now().duration_since(modified).ok())
                .is_some_and(|age| age > LOOSE_TEMP_AGE);
            if old {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

fn list_recursive(dir: &Path, prefix: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let key = format!("{prefix}{name}");
        if entry.file_type()?.is_dir() {
            list_recursive(&entry.path(), &format!("{key}/"), out)?;
        } else {
            out.push(key);
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        self.inner.root.display().to_string()
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let key = key.to_string();
        self.run_blocking(move |s| s.write_atomic(&key, &bytes))
            .await
    }

    async fn put_immutable(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.run_blocking(move |s| s.put_immutable_blocking(&key, &bytes))
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let key = key.to_string();
        self.run_blocking(move |s| match fs::read(s.path(&key)) {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(s.error("read", &key, e)),
        })
        .await
    }

    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        self.range(key, offset, len, false).await
    }

    async fn read_back_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        self.range(key, offset, len, true).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.run_blocking(move |s| match fs::remove_file(s.path(&key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(s.error("delete", &key, e)),
            _ => Ok(()),
        })
        .await
    }

    async fn read_back(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let key = key.to_string();
        self.run_blocking(move |s| {
            s.read_from_disk(&key)
                .map(|bytes| bytes.map(Bytes::from))
                .map_err(|e| s.error("read back", &key, e))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_string();
        self.run_blocking(move |s| {
            // List the deepest directory the prefix names, then filter by the remainder.
            let (dir, _) = prefix.rsplit_once('/').unwrap_or(("", &prefix));
            let dir_prefix = if dir.is_empty() {
                String::new()
            } else {
                format!("{dir}/")
            };
            let mut keys = Vec::new();
            list_recursive(&s.path(dir), &dir_prefix, &mut keys)
                .map_err(|e| s.error("list", &prefix, e))?;
            keys.retain(|k| k.starts_with(&prefix) && !k.starts_with("tmp/"));
            keys.sort();
            Ok(keys)
        })
        .await
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.run_blocking(|s| {
            // SAFETY: syncfs takes a valid open file descriptor, which the store holds
            // while it is open.
            let rc = unsafe { libc::syncfs(s.inner.root_fd.as_raw_fd()) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                return Err(s.error("sync", "(the file system)", e));
            }
            Ok(())
        })
        .await
    }
}

impl LocalStore {
    fn put_immutable_blocking(&self, key: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        // A crash before the last sync can leave a truncated file under the final name; a
        // size mismatch is rewritten rather than trusted.
        match fs::metadata(self.path(key)) {
            Ok(meta) if meta.len() == bytes.len() as u64 => Ok(false),
            _ => self.write_atomic(key, bytes).map(|()| true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_dirs(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(root.join("tmp"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn leftovers_of_dead_writers_go_and_live_writers_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("archive");
        let live = LocalStore::open(&root).unwrap();
        let live_dir = live.tmp_dir().unwrap();
        fs::write(live_dir.join("in-flight"), b"half a message").unwrap();
        // A killed run: its directory, its lock file, nobody holding the lock.
        let dead = root.join("tmp").join("0123456789abcdef");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join(LOCK), b"").unwrap();
        fs::write(dead.join("partial"), b"half").unwrap();
        // One that died between creating its directory and its lock file.
        fs::create_dir(root.join("tmp").join("fedcba9876543210")).unwrap();
        // A loose file of an earlier version, old, and a fresh one.
        let old = root.join("tmp").join("old-loose");
        fs::write(&old, b"x").unwrap();
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - 2 * LOOSE_TEMP_AGE)
            .unwrap();
        fs::write(root.join("tmp").join("new-loose"), b"x").unwrap();

        let second = LocalStore::open(&root).unwrap();
        let second_dir = second.tmp_dir().unwrap();
        let mut expected = vec![
            live_dir.file_name().unwrap().to_string_lossy().into_owned(),
            second_dir
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        ];
        expected.sort();
        assert_eq!(tmp_dirs(&root), expected);
        assert!(live_dir.join("in-flight").exists(), "a live writer's file");
        assert!(!old.exists());
        assert!(root.join("tmp").join("new-loose").exists());

        // Closing a store removes its own directory.
        drop(live);
        drop(second);
        assert_eq!(tmp_dirs(&root), Vec::<String>::new());
    }

    #[tokio::test]
    async fn reading_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert_eq!(store.list("").await.unwrap(), Vec::<String>::new());
        assert_eq!(store.get("users/x").await.unwrap(), None);
        assert!(!dir.path().join("tmp").exists());
    }

    #[tokio::test]
    async fn read_back_reads_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        ObjectStore::put(&store, "messages/ab/x", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        store.sync().await.unwrap();
        assert_eq!(
            store.read_back("messages/ab/x").await.unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(store.read_back("messages/ab/y").await.unwrap(), None);
    }
}
