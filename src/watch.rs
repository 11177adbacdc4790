//! Noticing that a file changed: secrets, client keys, the config file.
//!
//! We watch the *directory*, not the file. Kubernetes updates a mounted Secret or ConfigMap by
//! writing a new timestamped directory and atomically swapping the `..data` symlink: the
//! file's own inode never changes and an inotify watch on it would never fire. Any event in
//! the directory triggers a re-read; the caller compares contents, so spurious events cost a
//! read and nothing else.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Events are coalesced for this long: an editor or Kubernetes writes several in a burst.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Keeps the watch alive; drop it to stop watching.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
}

/// Call `on_change` (on the tokio runtime) after any change in the directories of `files`.
pub fn watch_files<F>(files: &[PathBuf], on_change: F) -> notify::Result<FileWatch>
where
    F: Fn() + Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only changes count. Reading the files (which the reload itself does) produces
        // access events; reacting to those would reload forever.
        if let Ok(event) = res
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    })?;
    let dirs: BTreeSet<PathBuf> = files.iter().map(|f| parent_dir(f)).collect();
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            on_change();
        }
    });
    Ok(FileWatch { _watcher: watcher })
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn kubernetes_style_symlink_swap_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The layout kubelet creates: ..2026_v1/password, ..data -> ..2026_v1, password -> ..data/password
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/password"), "one").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/password", d.join("password")).unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let _w = watch_files(&[d.join("password")], move || {
            h.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        // Swap as kubelet does: new dir, new symlink, rename over ..data.
        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(d.join("..v2/password"), "two").unwrap();
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        for _ in 0..400 {
            if hits.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(hits.load(Ordering::SeqCst) > 0, "swap not noticed");
        assert_eq!(std::fs::read_to_string(d.join("password")).unwrap(), "two");
    }

    #[tokio::test]
    async fn reading_the_files_does_not_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.toml");
        std::fs::write(&f, "x").unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let path = f.clone();
        // The callback reads the file, as a reload does: that must not cause another call.
        let _w = watch_files(std::slice::from_ref(&f), move || {
            h.fetch_add(1, Ordering::SeqCst);
            let _ = std::fs::read_to_string(&path);
        })
        .unwrap();
        std::fs::write(&f, "y").unwrap();
        for _ in 0..200 {
            if hits.load(Ordering::SeqCst) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(hits.load(Ordering::SeqCst) > 0, "change not noticed");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let n = hits.load(Ordering::SeqCst);
        assert!(
            n <= 2,
            "reading the file re-triggered the watch: {n} calls for one change"
        );
    }
}
