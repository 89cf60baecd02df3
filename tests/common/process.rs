//! [`Process`]: the real `dalleserver` binary (built once by cargo) on `127.0.0.1:0` with a
//! temporary data dir, a temporary working directory and a scrubbed environment.
//!
//! Use it only where the process itself is under test: exit codes, signals, `kill -9`, `.env`
//! loading and the process environment, or lines the server logs on stderr. Everything else
//! uses the in-process [`super::Server`], which starts faster and needs no log scraping.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Options;

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dalleserver")
}

/// A command with a clean environment: only PATH, a temporary HOME and what the test adds.
pub fn command(home: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(binary());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("RUST_LOG", "info")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The spawned binary and everything it owns.
pub struct Process {
    pub child: Child,
    pub base: String,
    pub addr: String,
    pub data_dir: PathBuf,
    pub logs: Arc<Mutex<Vec<String>>>,
    _tmp: tempfile::TempDir,
}

impl Process {
    /// Starts a server with defaults (mock mode, temp data dir).
    pub fn start() -> Process {
        Process::start_with(Options::default())
    }

    /// Starts a server and waits until it reports its listening address.
    pub fn start_with(opts: Options) -> Process {
        assert!(
            opts.clock.is_none(),
            "a spawned binary reads the system clocks: use Server for a test clock"
        );
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let cwd = tmp.path().join("cwd");
        std::fs::create_dir_all(&cwd).unwrap();
        if let Some(dotenv) = &opts.dotenv {
            std::fs::write(cwd.join(".env"), dotenv).unwrap();
        }
        let mut cmd = command(tmp.path(), &cwd);
        cmd.args(["--bind", "127.0.0.1", "--port", "0"]);
        if !super::data_dir_given(&opts) {
            cmd.arg("--data-dir").arg(&data_dir);
        }
        cmd.args(&opts.args);
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let addr = line.split("listening on ").nth(1).map(|rest| {
                    rest.split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_string()
                });
                sink.lock().unwrap().push(line);
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not start; logs:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Process {
            child,
            base: format!("http://{addr}"),
            addr,
            data_dir,
            logs,
            _tmp: tmp,
        }
    }

    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Everything the server logged so far.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits until a log line containing `needle` appears.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        wait_exit(&mut self.child, timeout)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for a child to exit, up to `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
