//! Making directory entries durable. A file's fsync does not persist its name: after a power
//! loss, a file created or renamed into a directory that was not fsync'd since may be gone (or
//! still carry its old name). So every create or rename that must survive is followed by an
//! fsync of the directory holding the new entry; `create_dir_durable` does this for each
//! directory it creates.

use std::path::Path;

/// fsyncs the directory `dir` itself (its entries: names of files and subdirectories).
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// `create_dir_all`, then an fsync of the parent of every directory it created, so that the new
/// directories survive a power loss.
pub fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    let missing: Vec<&Path> =
        dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    // Topmost first: each new entry is durable before the next one below it.
    for created in missing.iter().rev() {
        match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent)?,
            _ => fsync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Creates nested directories and syncs existing ones without error; an existing directory
    /// is left alone.
    #[test]
    fn t01_create_and_sync() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_dir_durable(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_durable(&deep).unwrap();
        fsync_dir(root.path()).unwrap();
        assert!(fsync_dir(&root.path().join("missing")).is_err());
    }
}
