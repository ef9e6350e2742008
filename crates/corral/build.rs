//! Records the git revision the binary is built from, for `corral --version` and the image's
//! labels: `CORRAL_GIT_REV`, a 12-digit abbreviated commit id, or `unknown` outside a git
//! checkout. A build from a source archive can set `CORRAL_GIT_REV` itself.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CORRAL_GIT_REV");
    let rev = match std::env::var("CORRAL_GIT_REV") {
        Ok(r) if !r.is_empty() => r,
        _ => git_rev().unwrap_or_else(|| "unknown".into()),
    };
    println!("cargo:rustc-env=CORRAL_GIT_REV={rev}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// HEAD's commit, and the files to watch so that a new commit or checkout reruns this script
/// (the worktree's HEAD, the branch it points to, packed refs).
fn git_rev() -> Option<String> {
    let rev = git(&["rev-parse", "--short=12", "HEAD"])?;
    let abs = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
        }
    };
    let git_dir = abs(git(&["rev-parse", "--git-dir"])?);
    let common = abs(git(&["rev-parse", "--git-common-dir"])?);
    let mut watch = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(common.join(branch));
    }
    // A path that does not exist would rerun this script on every build.
    for p in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    Some(rev)
}
