//! The proxy binary as a child process: run to completion ([`run`]), or kept running
//! ([`Proc`]) with its stderr collected line by line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::wait::{self, LONG};

pub const BIN: &str = env!("CARGO_BIN_EXE_medusa-auth-proxy");

/// What a finished run of the binary left: its exit code (`None` if killed by a signal),
/// stdout and stderr.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub out: String,
    pub err: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// `(succeeded, stdout, stderr)`.
    pub fn split(self) -> (bool, String, String) {
        (self.ok(), self.out, self.err)
    }
}

/// Runs the binary with exactly `args` to completion, with `env` set and without the
/// variables a caller's shell could leak in: `RUST_LOG`, `MEDUSA_AUTH_PROXY_CONFIG` and the
/// tests' own `MAP_*` secrets. Blocking: from async code use [`run_async`].
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Ran {
    run_in(None, args, env)
}

/// [`run`] in the working directory `cwd` (the test's own when `None`): relative paths in
/// arguments and config files are taken there.
pub fn run_in(cwd: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut cmd = Command::new(BIN);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("MEDUSA_AUTH_PROXY_CONFIG");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MAP_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Ran {
        code: out.status.code(),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// [`run`] on a blocking thread, so the runtime keeps serving (the fake Medusa the binary
/// talks to may run on it).
pub async fn run_async(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&args, &env)
    })
    .await
    .unwrap()
}

/// A running proxy binary whose stderr is collected line by line. Killed on drop.
pub struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Set when stderr goes to a file (as `2> file` would): the log is read from there.
    log_file: Option<PathBuf>,
}

impl Proc {
    /// `medusa-auth-proxy run --config cfg`, without `RUST_LOG` and with `env` set.
    pub fn start(cfg: &Path, env: &[(&str, &str)]) -> Proc {
        Proc::start_limited(cfg, env, None)
    }

    /// Like [`Proc::start`], with soft and hard `RLIMIT_NOFILE` set to `nofile` (as
    /// `ulimit -n` does) when given.
    pub fn start_limited(cfg: &Path, env: &[(&str, &str)], nofile: Option<u64>) -> Proc {
        Proc::spawn(cfg, env, nofile.map(|n| (n, n)), None)
    }

    /// Like [`Proc::start`], with the soft `RLIMIT_NOFILE` at `soft` and the hard one at
    /// `hard` (as `prlimit --nofile=soft:hard` does): the proxy may raise the one to the
    /// other. The caller's own hard limit must be at least `hard`.
    pub fn start_soft_limited(cfg: &Path, env: &[(&str, &str)], soft: u64, hard: u64) -> Proc {
        Proc::spawn(cfg, env, Some((soft, hard)), None)
    }

    /// Like [`Proc::start_args`], with soft and hard `RLIMIT_NOFILE` set to `nofile`.
    pub fn start_args_limited(args: &[String], env: &[(&str, &str)], nofile: u64) -> Proc {
        Proc::spawn_args(args, env, Some((nofile, nofile)), None)
    }

    /// Like [`Proc::start`], with stderr appended to `log_file` (`2>> log_file`), as an
    /// operator who keeps the log next to the config does.
    pub fn start_logging_to(cfg: &Path, env: &[(&str, &str)], log_file: &Path) -> Proc {
        Proc::spawn(cfg, env, None, Some(log_file))
    }

    /// The binary with exactly `args` (no `run --config` added), without `RUST_LOG` and
    /// `MEDUSA_AUTH_PROXY_CONFIG`, with `env` set.
    pub fn start_args(args: &[String], env: &[(&str, &str)]) -> Proc {
        Proc::spawn_args(args, env, None, None)
    }

    /// `nofile`: the soft and hard `RLIMIT_NOFILE` to run under, if given.
    fn spawn(
        cfg: &Path,
        env: &[(&str, &str)],
        nofile: Option<(u64, u64)>,
        log_file: Option<&Path>,
    ) -> Proc {
        let args = [
            "run".to_owned(),
            "--config".to_owned(),
            cfg.display().to_string(),
        ];
        Proc::spawn_args(&args, env, nofile, log_file)
    }

    fn spawn_args(
        args: &[String],
        env: &[(&str, &str)],
        nofile: Option<(u64, u64)>,
        log_file: Option<&Path>,
    ) -> Proc {
        // The attack suite's figures can be taken on a release build.
        let bin = std::env::var("MEDUSA_AUTH_PROXY_BIN").unwrap_or_else(|_| BIN.to_owned());
        let mut cmd = Command::new(bin);
        if let Some((soft, hard)) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(args)
            .env_remove("RUST_LOG")
            .env_remove("MEDUSA_AUTH_PROXY_CONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(path) = log_file {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            let child = cmd.stderr(file).stdout(Stdio::null()).spawn().unwrap();
            return Proc {
                child,
                lines,
                log_file: Some(path.to_path_buf()),
            };
        }
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Proc {
            child,
            lines,
            log_file: None,
        }
    }

    /// Every complete stderr line so far.
    fn lines(&self) -> Vec<String> {
        match &self.log_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                // A line still being written has no newline yet: leave it for the next read.
                let complete = text.rfind('\n').map_or("", |i| &text[..i]);
                complete.lines().map(str::to_owned).collect()
            }
            None => self.lines.lock().unwrap().clone(),
        }
    }

    /// All of stderr so far.
    pub fn log(&self) -> String {
        self.lines().join("\n")
    }

    /// How many log lines so far contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits for a log line containing `needle`; returns it. Panics after [`LONG`].
    pub async fn wait_line(&self, needle: &str) -> String {
        wait::until(LONG, &format!("a log line with {needle:?}"), async || {
            self.lines()
                .into_iter()
                .find(|l| l.contains(needle))
                .ok_or_else(|| format!("log:\n{}", self.log()))
        })
        .await
    }

    /// Waits until `n` log lines contain `needle`. Panics after [`LONG`].
    pub async fn wait_lines(&self, needle: &str, n: usize) {
        wait::until(
            LONG,
            &format!("{n} log lines with {needle:?}"),
            async || {
                if self.count_lines(needle) >= n {
                    Ok(())
                } else {
                    Err(format!("log:\n{}", self.log()))
                }
            },
        )
        .await
    }

    /// The proxy's listen address, from its start-up line.
    pub async fn addr(&self) -> String {
        let line = self.wait_line("medusa-auth-proxy started").await;
        let start = line.find("listen=").unwrap() + "listen=".len();
        line[start..].split_whitespace().next().unwrap().to_owned()
    }

    /// (proxy, ops) base URLs from the start-up line (text or JSON).
    pub async fn urls(&self) -> (String, String) {
        let line = self.wait_line("medusa-auth-proxy started").await;
        let field = |name: &str| {
            let start = line
                .find(&format!("{name}="))
                .map(|i| i + name.len() + 1)
                .or_else(|| {
                    line.find(&format!("\"{name}\":\""))
                        .map(|i| i + name.len() + 4)
                });
            let rest = &line[start.unwrap()..];
            rest.split(|c: char| c.is_whitespace() || c == '"')
                .next()
                .unwrap()
                .to_owned()
        };
        (
            format!("http://{}", field("listen")),
            format!("http://{}", field("ops")),
        )
    }

    /// Sends `sig` (a name for `kill -s`) to the process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; panics if it is still running after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        match self.try_wait_exit(within).await {
            Some(s) => s,
            None => panic!("did not exit within {within:?}; log:\n{}", self.log()),
        }
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running.
    pub async fn try_wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...), in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        self.try_status_kib(field)
            .unwrap_or_else(|| panic!("no {field} for pid {}", self.pid()))
    }

    /// [`Proc::status_kib`], `None` once the process is gone.
    pub fn try_status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{field}:")))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Bytes the kernel holds in the process's TCP sockets (IPv4 and IPv6): unsent or unacked
    /// in their send queues plus unread in their receive queues (`tx_queue` + `rx_queue` of
    /// `/proc/net/tcp{,6}` for the socket inodes among its descriptors). Kernel memory outside
    /// the RSS, but charged to a pod's memory cgroup.
    pub fn socket_queue_bytes(&self) -> u64 {
        let mut inodes = std::collections::HashSet::new();
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", self.pid())) {
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    let t = target.to_string_lossy();
                    if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                        inodes.insert(n.to_owned());
                    }
                }
            }
        }
        let mut total = 0;
        for table in ["tcp", "tcp6"] {
            let text = std::fs::read_to_string(format!("/proc/{}/net/{table}", self.pid()))
                .unwrap_or_default();
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() > 9 && inodes.contains(f[9]) {
                    let (tx, rx) = f[4].split_once(':').unwrap_or(("0", "0"));
                    total += u64::from_str_radix(tx, 16).unwrap_or(0)
                        + u64::from_str_radix(rx, 16).unwrap_or(0);
                }
            }
        }
        total
    }

    /// How many file descriptors the process has open.
    pub fn open_fds(&self) -> usize {
        self.try_open_fds()
            .unwrap_or_else(|| panic!("no /proc/{}/fd", self.pid()))
    }

    /// [`Proc::open_fds`], `None` once the process is gone.
    pub fn try_open_fds(&self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
                .ok()?
                .count(),
        )
    }

    /// The soft "Max open files" limit in force in the process (`/proc/<pid>/limits`).
    pub fn soft_nofile(&self) -> u64 {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap_or_else(|| panic!("no Max open files in\n{limits}"));
        // "Max open files  <soft>  <hard>  files"
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    }

    /// The process's peak resident set (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Our own child, by its handle (pid).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
