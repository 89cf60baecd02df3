//! Records the git commit the binary is built from, for the provenance records
//! (`DALLESERVER_GIT_COMMIT`): `git rev-parse HEAD` in a git checkout, otherwise "unknown"
//! (a source tarball, or no git installed). Uncommitted changes are not detected: the
//! value names the commit the sources started from.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"])
        .filter(|c| c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=DALLESERVER_GIT_COMMIT={commit}");
    // Run again when HEAD moves: `logs/HEAD` changes on every commit and checkout, also in a
    // worktree (where `.git` is a file naming the real directory).
    for name in ["HEAD", "logs/HEAD"] {
        if let Some(path) = git(&["rev-parse", "--git-path", name]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
