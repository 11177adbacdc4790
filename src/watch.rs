//! Noticing that a file changed: secrets, client keys, the config file.
//!
//! We watch the *directory*, not the file. Kubernetes updates a mounted Secret or ConfigMap by
//! writing a new timestamped directory and atomically swapping the `..data` symlink: the
//! file's own inode never changes and an inotify watch on it would never fire. Of the events
//! in those directories only the ones about a watched file's name, or the `..data` swap, count:
//! anything else there (the proxy's own log file when stderr goes next to the config, an
//! editor's swap file) would otherwise trigger a reload whose log line triggers the next one.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Events are coalesced for this long: an editor or Kubernetes writes several in a burst.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// The name kubelet swaps atomically to publish a new version of a mounted volume.
const KUBERNETES_DATA: &str = "..data";

/// Keeps the watch alive; drop it to stop watching.
pub struct FileWatch {
    _watcher: notify::RecommendedWatcher,
}

/// The files a watch is about, as (directory, name): the form inotify reports paths in.
#[derive(Debug, Clone)]
pub struct Targets {
    files: BTreeSet<(PathBuf, OsString)>,
    dirs: BTreeSet<PathBuf>,
}

impl Targets {
    /// The targets for `files` (relative paths are taken in the working directory; a path
    /// without a file name, such as `/`, is left out). Their directories are what gets
    /// watched.
    pub fn new(files: &[PathBuf]) -> Targets {
        let files: BTreeSet<(PathBuf, OsString)> = files
            .iter()
            .filter_map(|f| Some((parent_dir(f), f.file_name()?.to_owned())))
            .collect();
        let dirs = files.iter().map(|(d, _)| d.clone()).collect();
        Targets { files, dirs }
    }

    /// Does `event` say something about a watched file?
    pub fn concerns(&self, event: &notify::Event) -> bool {
        // Reading the files (which the reload itself does) produces access events.
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return false;
        }
        // The kernel's queue overflowed: we cannot know what changed, so look.
        if event.need_rescan() {
            return true;
        }
        event.paths.iter().any(|p| {
            let Some(name) = p.file_name() else {
                return false;
            };
            let dir = parent_dir(p);
            (name == KUBERNETES_DATA && self.dirs.contains(&dir))
                || self.files.contains(&(dir, name.to_owned()))
        })
    }

    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        self.dirs.iter()
    }
}

/// Call `on_change` (on the tokio runtime) after a change to one of `files`, or a Kubernetes
/// `..data` swap in the directory of one.
pub fn watch_files<F>(files: &[PathBuf], on_change: F) -> notify::Result<FileWatch>
where
    F: Fn() + Send + 'static,
{
    let targets = Targets::new(files);
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let filter = targets.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && filter.concerns(&event)
        {
            let _ = tx.send(());
        }
    })?;
    for dir in targets.dirs() {
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

    fn event(kind: notify::EventKind, paths: &[&str]) -> notify::Event {
        let mut e = notify::Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        e
    }

    fn modify() -> notify::EventKind {
        notify::EventKind::Modify(notify::event::ModifyKind::Data(
            notify::event::DataChange::Any,
        ))
    }

    #[test]
    fn only_the_watched_names_and_the_kubernetes_swap_count() {
        let t = Targets::new(&[
            PathBuf::from("/etc/p/config.toml"),
            PathBuf::from("/run/secrets/password"),
        ]);
        let concerned = [
            event(modify(), &["/etc/p/config.toml"]),
            event(modify(), &["/run/secrets/password"]),
            // An editor's atomic save: rename of a temporary file over the config.
            event(
                notify::EventKind::Modify(notify::event::ModifyKind::Name(
                    notify::event::RenameMode::Both,
                )),
                &["/etc/p/.config.toml.tmp", "/etc/p/config.toml"],
            ),
            event(
                notify::EventKind::Create(notify::event::CreateKind::File),
                &["/etc/p/config.toml"],
            ),
            event(
                notify::EventKind::Modify(notify::event::ModifyKind::Name(
                    notify::event::RenameMode::To,
                )),
                &["/run/secrets/..data"],
            ),
        ];
        let unconcerned = [
            // The proxy's own log next to the config: the loop of issue 15.
            event(modify(), &["/etc/p/proxy.log"]),
            event(modify(), &["/etc/p/.config.toml.swp"]),
            event(modify(), &["/etc/p/config.toml.bak"]),
            event(modify(), &["/run/secrets/other-secret"]),
            // `..data` counts only in a directory holding a watched file.
            event(modify(), &["/elsewhere/..data"]),
            // The same name in another directory.
            event(modify(), &["/etc/config.toml"]),
            event(
                notify::EventKind::Access(notify::event::AccessKind::Read),
                &["/etc/p/config.toml"],
            ),
        ];
        let yes = concerned.iter().filter(|e| t.concerns(e)).count();
        let no = unconcerned.iter().filter(|e| t.concerns(e)).count();
        assert_eq!((yes, no), (concerned.len(), 0));
    }

    #[test]
    fn a_bare_file_name_is_in_the_current_directory() {
        let t = Targets::new(&[PathBuf::from("config.toml")]);
        assert!(t.concerns(&event(modify(), &["./config.toml"])));
        assert!(!t.concerns(&event(modify(), &["./proxy.log"])));
    }

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
