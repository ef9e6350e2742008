//! `corral top` in a real terminal: tmux (scripts/test.sh installs it) runs it against a real
//! replica; the test reads the screen with `capture-pane` until it shows the replica's numbers,
//! then presses `q` and waits for it to quit.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const TOKEN: &str = "top-test-admin-token";

fn tagged(_: &Seen) -> Reply {
    Reply::ok("item")
        .header("cache-control", "max-age=300")
        .header("surrogate-key", "items")
}

/// A tmux server of this test's own (its own socket, no configuration file).
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `corral top` in a new 160x50 session. The token reaches it through the
    /// environment the tmux server inherits, never a command line.
    fn start(admin: &str, token: &str) -> Tmux {
        let t = Tmux {
            socket: format!(
                "corral-top-{}-{}",
                std::process::id(),
                free_port("127.0.0.1")
            ),
        };
        let out = Command::new("tmux")
            .args(["-L", &t.socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "160", "-y", "50", "-s", "top"])
            .args([bin(), "top", "--admin", admin, "--interval", "200ms"])
            .env("CORRAL_ADMIN_TOKEN", token)
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux is installed (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap()
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    fn running(&self) -> bool {
        self.run(&["has-session", "-t", "top"]).status.success()
    }

    /// Waits until the screen shows every one of `expected`.
    async fn shows(&self, expected: &[&str]) -> String {
        let mut screen = String::new();
        let ok = eventually(Duration::from_secs(30), async || {
            screen = self.screen();
            expected.iter().all(|e| screen.contains(e))
        })
        .await;
        assert!(ok, "the screen never showed all of {expected:?}:\n{screen}");
        screen
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

#[tokio::test]
async fn top_shows_the_replicas_numbers_and_quits_on_q() {
    let origin = Origin::start(tagged).await;
    let c = Corral::start_with_env(&config(&origin, ""), &[("CORRAL_ADMIN_TOKEN", TOKEN)]).await;
    c.get("/a").await;
    assert!(c.get("/a").await.is_hit());
    let purged = client()
        .post(c.admin_url("/purge"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"tags": ["items"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);

    let tmux = Tmux::start(&c.admin_url(""), TOKEN);
    let screen = tmux
        .shows(&[
            "hit ratio 50.0%",
            "of 256.0 MiB",
            "redis    not configured",
            &origin.addr.to_string(),
            "tag items",
            "no cluster configured",
        ])
        .await;
    assert!(screen.contains("healthy"), "{screen}");
    assert!(
        !screen.contains("401"),
        "the token from the environment was accepted"
    );

    assert!(
        tmux.running(),
        "still refreshing until a key says otherwise"
    );
    // Another key changes nothing: the screen goes on refreshing (its clock moves on).
    let header = |s: &str| s.lines().next().unwrap_or("").to_string();
    let before = header(&tmux.screen());
    tmux.run(&["send-keys", "-t", "top", "x"]);
    assert!(
        eventually(Duration::from_secs(10), async || {
            let now = header(&tmux.screen());
            now.starts_with("corral top") && now != before
        })
        .await,
        "only q quits: the screen stopped at {before:?}"
    );
    tmux.run(&["send-keys", "-t", "top", "q"]);
    assert!(
        eventually(Duration::from_secs(10), async || !tmux.running()).await,
        "q quits:\n{}",
        tmux.screen()
    );
}

#[tokio::test]
async fn top_without_the_token_says_what_is_missing() {
    let origin = Origin::start(tagged).await;
    let c = Corral::start_with_env(&config(&origin, ""), &[("CORRAL_ADMIN_TOKEN", TOKEN)]).await;
    let tmux = Tmux::start(&c.admin_url(""), "not-the-token");
    tmux.shows(&["answered 401", "CORRAL_ADMIN_TOKEN"]).await;

    // The same for scripts: one screen, or the error and a failure exit.
    let once = Command::new(bin())
        .args(["top", "--once", "--admin", &c.admin_url("")])
        .env_remove("CORRAL_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!once.status.success());
    assert!(String::from_utf8_lossy(&once.stderr).contains("answered 401"));
    let once = Command::new(bin())
        .args(["top", "--once", "--admin", &c.admin_url("")])
        .env("CORRAL_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(once.status.success());
    assert!(String::from_utf8_lossy(&once.stdout).contains("of 256.0 MiB"));
}
