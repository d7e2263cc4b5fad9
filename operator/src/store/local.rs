//! The archive in a local directory (the default store).
//!
//! Objects are files. A put writes a temporary file and renames it into place, so readers
//! and concurrent writers only ever see whole files. Durability is batched: instead of one
//! fsync per message, [`ObjectStore::sync`] flushes the whole file system once (`syncfs`),
//! which makes every rename before it durable together with its data.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::{BlockingObjects, ObjectStore, StoreError};

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens (creating if needed) the archive directory.
    pub fn open(root: impl Into<PathBuf>) -> Result<LocalStore, StoreError> {
        let root = root.into();
        let store = LocalStore { root };
        fs::create_dir_all(store.root.join("tmp")).map_err(|e| store.error("create", "tmp/", e))?;
        Ok(store)
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
        self.root.join(key)
    }

    /// Writes `bytes` to a fresh temporary file and renames it to `key`.
    fn write_atomic(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let target = self.path(key);
        let tmp = self
            .root
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string());
        let result = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            drop(file);
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

    async fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LocalStore) -> T + Send + 'static,
    ) -> T {
        let store = LocalStore {
            root: self.root.clone(),
        };
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .expect("local store operations do not panic")
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
        self.root.display().to_string()
    }

    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let key = key.to_string();
        self.run_blocking(move |s| s.write_atomic(&key, &bytes))
            .await
    }

    async fn put_immutable(&self, key: &str, bytes: Bytes) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.run_blocking(move |s| BlockingObjects::put_immutable(s, &key, &bytes))
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
        let key = key.to_string();
        self.run_blocking(move |s| {
            use std::io::{Read, Seek, SeekFrom};
            let mut file = match fs::File::open(s.path(&key)) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(s.error("read", &key, e)),
            };
            let mut bytes = Vec::new();
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.take(len).read_to_end(&mut bytes))
                .map_err(|e| s.error("read", &key, e))?;
            Ok(Some(Bytes::from(bytes)))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.run_blocking(move |s| match fs::remove_file(s.path(&key)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(s.error("delete", &key, e)),
            _ => Ok(()),
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
            let dir = fs::File::open(&s.root).map_err(|e| s.error("sync", "", e))?;
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs takes a valid open file descriptor, which `dir` holds until
            // after the call.
            let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
            if rc != 0 {
                return Err(s.error("sync", "", std::io::Error::last_os_error()));
            }
            Ok(())
        })
        .await
    }

    fn blocking(&self) -> Option<&dyn BlockingObjects> {
        Some(self)
    }
}

impl BlockingObjects for LocalStore {
    fn put_immutable(&self, key: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        // A crash before the last sync can leave a truncated file under the final name; a
        // size mismatch is rewritten rather than trusted.
        match fs::metadata(self.path(key)) {
            Ok(meta) if meta.len() == bytes.len() as u64 => Ok(false),
            _ => self.write_atomic(key, bytes).map(|()| true),
        }
    }
}
