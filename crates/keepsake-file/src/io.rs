//! Small filesystem helpers: I/O errors that name their path, private modes,
//! atomic replacement and the per-shard lock.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use rand::RngCore as _;

/// An I/O failure together with what was being done and to which path.
#[derive(Debug)]
pub(crate) struct IoError {
    action: &'static str,
    path: PathBuf,
    source: io::Error,
}

impl IoError {
    pub(crate) fn new(action: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not {} `{}`", self.action, self.path.display())
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Attaches an action and a path to an I/O result.
pub(crate) trait Context<T> {
    fn context(self, action: &'static str, path: &Path) -> Result<T, IoError>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, action: &'static str, path: &Path) -> Result<T, IoError> {
        self.map_err(|e| IoError::new(action, path, e))
    }
}

/// Creates one directory (mode 0700 on unix); an existing one is fine.
pub(crate) fn create_dir(path: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        other => other,
    }
}

/// Creates a directory and its missing parents (each mode 0700 on unix).
pub(crate) fn create_dir_all(path: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// Options that create a private file (mode 0600 on unix).
pub(crate) fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// The prefix of temporary files. Session files are named by 64 hex
/// characters, so a name with this prefix can never be mistaken for one.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

/// The name of each shard directory's lock file.
pub(crate) const LOCK_FILE: &str = ".lock";

/// A fresh temporary file name.
pub(crate) fn temp_name() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TEMP_PREFIX}{}", hex::encode(bytes))
}

/// Replaces `target` with `bytes` atomically: the bytes go to a temporary
/// file in the same directory, which is flushed to disk (when `sync`) and
/// renamed over `target`; then the directory is flushed (when `sync`). A
/// crash at any point leaves either the old file or the new one.
pub(crate) fn write_atomic(
    dir: &Path,
    target: &Path,
    bytes: &[u8],
    sync: bool,
) -> Result<(), IoError> {
    let temp = dir.join(temp_name());
    let result = (|| {
        let mut file = private_file()
            .create_new(true)
            .open(&temp)
            .context("create temporary file", &temp)?;
        file.write_all(bytes)
            .context("write temporary file", &temp)?;
        if sync {
            file.sync_data().context("flush temporary file", &temp)?;
        }
        drop(file);
        fs::rename(&temp, target).context("rename temporary file onto", target)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result?;
    if sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Flushes a directory's entries to disk (unix; elsewhere a no-op).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), IoError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .context("flush directory", dir)?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// An exclusive advisory lock on a shard, released when dropped.
///
/// The lock is taken on the shard's `.lock` file, which is never renamed or
/// deleted: locking the session file itself would not do, because each write
/// replaces it with a new inode by `rename`, and a lock on the old inode does
/// not exclude a writer that opened the new one.
#[derive(Debug)]
pub(crate) struct ShardLock {
    _file: File,
}

impl ShardLock {
    /// Blocks until this process holds the lock of the shard directory `dir`.
    /// Each call opens the lock file anew, so two threads (or two stores in
    /// one process) exclude each other as two processes do.
    pub(crate) fn acquire(dir: &Path) -> io::Result<Self> {
        let file = private_file()
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))?;
        fs4::FileExt::lock(&file)?;
        Ok(Self { _file: file })
    }
}
