//! Files written whole or not at all: the server's stored keys, the tokens file that `hexray
//! token revoke` rewrites, and the command line's key pair. A crash at any point leaves the
//! old file or the new one, never half of either.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Write;
use std::path::Path;

use rand::RngCore;

/// Who may read the new file.
pub enum Readers<'a> {
    /// As the process's umask allows (a stored evaluation key: public by nature).
    Umask,
    /// Its owner alone (a secret key).
    Owner,
    /// Whoever could read the file it replaces: the same mode, user and group (a tokens file
    /// that root rewrites for the server's user to read).
    As(&'a Metadata),
}

/// Writes `bytes` to `path` in a unique temporary file beside it (writers of one path never
/// share one), fsynced, renamed over `path`, and the directory fsynced so that the rename
/// itself survives. The directory must exist.
pub fn write_durably(path: &Path, bytes: &[u8], readers: Readers) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut nonce = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let partial = dir.join(format!(
        ".{name}.{:016x}.partial",
        u64::from_le_bytes(nonce)
    ));
    let result = (|| {
        let mut file = create(&partial, &readers)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&partial, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// A new file that `readers` may read from its creation on.
fn create(path: &Path, readers: &Readers) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let mode = match readers {
            Readers::Umask => 0o666,
            Readers::Owner => 0o600,
            Readers::As(old) => old.mode() & 0o777,
        };
        options.mode(mode);
        let file = options.open(path)?;
        if let Readers::As(old) = readers {
            // umask may have narrowed the mode; the owner is kept where this user may set it.
            file.set_permissions(old.permissions())?;
            std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()))?;
        }
        Ok(file)
    }
    #[cfg(not(unix))]
    options.open(path)
}
