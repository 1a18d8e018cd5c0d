//! Progress and logs of the `metalor` binary, against the real
//! `docker-registry`:
//!
//! - `metalor -vv pull` logs each registry request (method, URL, status)
//!   and never the password, the base64 `user:pass` or a bearer token,
//!   with htpasswd basic auth and with a token server (played by the
//!   loopback proxy in front of an open registry, as in registry_faults);
//! - without a terminal on stderr, pull and unpack draw no bars (no
//!   escape codes), and without `-v` there are no debug lines;
//! - under a real pty (`script` from util-linux), bars are drawn.

mod registry_support;
mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use registry_support::{Fault, FaultProxy, Registry};
use support::{fixtures_dir, oci_arg, require_tool};

const METALOR: &str = env!("CARGO_BIN_EXE_metalor");
const USER: &str = "log-user";
const PASSWORD: &str = "pw-Zq81-never-logged";
const TOKEN: &str = "tok-9f3e-bearer-never-logged";

/// `metalor ARGS…` with a clean auth environment (HOME at `home`, plus
/// `env`), stderr piped: never a terminal.
fn metalor(home: &Path, args: &[&std::ffi::OsStr], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(METALOR);
    cmd.args(args)
        .env("HOME", home)
        .env_remove("METALOR_LOG")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("DOCKER_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("spawn metalor");
    assert!(
        out.status.success(),
        "metalor {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn os(text: &str) -> &std::ffi::OsStr {
    text.as_ref()
}

/// An auth file with `USER:PASSWORD` for `addr`, base64 form.
fn auth_file(dir: &Path, addr: &str) -> std::path::PathBuf {
    let file = dir.join("auth.json");
    let body = serde_json::json!({ "auths": { addr: { "auth": basic_pair() } } });
    std::fs::write(&file, serde_json::to_vec(&body).unwrap()).unwrap();
    file
}

fn basic_pair() -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
}

/// The secrets no log line may hold.
fn assert_no_secrets(stderr: &str) {
    for secret in [PASSWORD, &basic_pair(), TOKEN, "Basic ", "Bearer "] {
        assert!(
            !stderr.contains(secret),
            "stderr shows {secret:?}:\n{stderr}"
        );
    }
}

/// A debug line for `GET url` answered with `status`.
fn assert_request_logged(stderr: &str, url: &str, status: u16) {
    let found = stderr.lines().any(|line| {
        line.contains("registry request")
            && line.contains("method=GET")
            && line.contains(&format!("url={url}"))
            && line.contains(&format!("status={status}"))
    });
    assert!(found, "no debug line for GET {url} -> {status}:\n{stderr}");
}

#[test]
fn debug_log_of_a_basic_auth_pull_names_requests_not_credentials() {
    let test = "debug_log_of_a_basic_auth_pull_names_requests_not_credentials";
    let Some(registry) = Registry::start_with_htpasswd(test, USER, PASSWORD) else {
        return;
    };
    registry.push(
        &fixtures_dir().join("demo"),
        "latest",
        "private/demo",
        false,
    );
    let tmp = tempfile::tempdir().unwrap();
    let file = auth_file(tmp.path(), &registry.addr);
    let dest = oci_arg(&tmp.path().join("dest"), "x");
    let url = registry.url("private/demo");
    let out = metalor(
        tmp.path(),
        &[os("-vv"), os("pull"), os(&url), &dest],
        &[("REGISTRY_AUTH_FILE", &file)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let base = format!("http://{}/v2/", registry.addr);
    assert_request_logged(&stderr, &base, 401);
    assert_request_logged(
        &stderr,
        &format!("{base}private/demo/manifests/latest"),
        200,
    );
    assert!(
        stderr.contains(&format!("url={base}private/demo/blobs/sha256:")),
        "{stderr}"
    );
    assert!(stderr.contains("pull resolved"), "{stderr}");
    assert!(stderr.contains("blob done"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "escape codes off a terminal:\n{stderr}"
    );
    assert_no_secrets(&stderr);
}

/// The token server and gate the proxy plays: `/token` trades the basic
/// credentials for [`TOKEN`], every other request needs it.
fn token_gate(
    realm: Arc<OnceLock<String>>,
) -> impl Fn(&registry_support::Seen, usize) -> Fault + Send + Sync + 'static {
    let basic = format!("Basic {}", basic_pair());
    move |seen, _| {
        if seen.line.starts_with("GET /token") {
            if seen.authorization.as_deref() != Some(basic.as_str()) {
                return Fault::Respond(401, vec![], b"{}".to_vec());
            }
            let body = format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#);
            let json = vec!["Content-Type: application/json".to_owned()];
            return Fault::Respond(200, json, body.into_bytes());
        }
        if seen.authorization.as_deref() == Some(format!("Bearer {TOKEN}").as_str()) {
            return Fault::None;
        }
        let realm = realm.get().expect("proxy address");
        let challenge = format!(
            "WWW-Authenticate: Bearer realm=\"http://{realm}/token\",service=\"metalor-test\""
        );
        Fault::Respond(401, vec![challenge], b"{}".to_vec())
    }
}

#[test]
fn debug_log_of_a_token_pull_shows_no_token() {
    let Some(registry) = Registry::start("debug_log_of_a_token_pull_shows_no_token") else {
        return;
    };
    registry.push(&fixtures_dir().join("demo"), "latest", "demo", false);
    let realm = Arc::new(OnceLock::new());
    let proxy = FaultProxy::start(&registry.addr, token_gate(realm.clone()));
    realm.set(proxy.addr.clone()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = auth_file(tmp.path(), &proxy.addr);
    let dest = oci_arg(&tmp.path().join("dest"), "x");
    let url = format!("docker://{}/demo", proxy.addr);
    let out = metalor(
        tmp.path(),
        &[os("pull"), os("-vv"), os(&url), &dest],
        &[("REGISTRY_AUTH_FILE", &file)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let token_url = format!("http://{}/token?scope=repository%3Ademo%3Apull", proxy.addr);
    assert_request_logged(&stderr, &token_url, 200);
    let manifest = format!("http://{}/v2/demo/manifests/latest", proxy.addr);
    assert_request_logged(&stderr, &manifest, 200);
    assert_no_secrets(&stderr);
}

#[test]
fn no_bars_and_no_debug_lines_off_a_terminal() {
    let Some(registry) = Registry::start("no_bars_and_no_debug_lines_off_a_terminal") else {
        return;
    };
    registry.push(&fixtures_dir().join("multi-gzip"), "latest", "multi", false);
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("dest");
    let url = registry.url("multi");
    let pulled = metalor(
        tmp.path(),
        &[os("pull"), os(&url), &oci_arg(&layout, "x")],
        &[],
    );
    let image = format!("{}:x", layout.display());
    let rootfs = tmp.path().join("rootfs");
    let unpacked = metalor(
        tmp.path(),
        &[os("unpack"), os("--image"), os(&image), rootfs.as_os_str()],
        &[],
    );
    for (verb, out) in [("pull", pulled), ("unpack", unpacked)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains('\x1b'), "{verb} drew on a pipe:\n{stderr}");
        assert!(!stderr.contains("layer 1/"), "{verb}:\n{stderr}");
        assert!(
            !stderr.contains("DEBUG") && !stderr.contains("INFO"),
            "{stderr}"
        );
        // The one-line summary stays.
        assert_eq!(stderr.lines().count(), 1, "{verb}:\n{stderr}");
    }
}

/// `CMD` under a pty: `script -qec CMD /dev/null`; its stdout is what the
/// terminal showed.
fn under_pty(command: &str) -> String {
    let out = support::run(
        Command::new("script")
            .args(["-qec", command, "/dev/null"])
            .env_remove("METALOR_LOG"),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bars_appear_on_a_terminal_unless_quiet() {
    let test = "bars_appear_on_a_terminal_unless_quiet";
    if !require_tool("script", "util-linux", test) {
        return;
    }
    let Some(registry) = Registry::start(test) else {
        return;
    };
    registry.push(&fixtures_dir().join("multi-gzip"), "latest", "multi", false);
    let tmp = tempfile::tempdir().unwrap();
    let (layout, rootfs) = (tmp.path().join("dest"), tmp.path().join("rootfs"));
    let url = registry.url("multi");
    let pull = format!("'{METALOR}' pull {url} 'oci:{}:x'", layout.display());
    let shown = under_pty(&pull);
    assert!(shown.contains('\x1b'), "no escape codes on a pty:\n{shown}");
    assert!(
        shown.contains("sha256:") && shown.contains("done"),
        "{shown}"
    );
    assert!(shown.contains("B/s"), "no rate in the bars:\n{shown}");

    let unpack = format!(
        "'{METALOR}' unpack --image '{}:x' '{}'",
        layout.display(),
        rootfs.display()
    );
    let shown = under_pty(&unpack);
    assert!(
        shown.contains("layer 1/"),
        "no layer bar on a pty:\n{shown}"
    );

    let quiet = format!(
        "'{METALOR}' unpack --quiet --image '{}:x' '{}'",
        layout.display(),
        tmp.path().join("rootfs2").display()
    );
    let shown = under_pty(&quiet);
    assert!(
        !shown.contains("layer 1/") && !shown.contains('\x1b'),
        "{shown}"
    );
}

#[test]
fn debug_log_gives_the_retry_reason() {
    let Some(registry) = Registry::start("debug_log_gives_the_retry_reason") else {
        return;
    };
    registry.push(&fixtures_dir().join("demo"), "latest", "demo", false);
    let refused = std::sync::atomic::AtomicBool::new(false);
    let proxy = FaultProxy::start(&registry.addr, move |seen, _| {
        let manifest = seen.line.contains("/manifests/");
        if manifest && !refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Fault::Status(503)
        } else {
            Fault::None
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let dest = oci_arg(&tmp.path().join("dest"), "x");
    let url = format!("docker://{}/demo", proxy.addr);
    let out = metalor(tmp.path(), &[os("-vv"), os("pull"), os(&url), &dest], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let manifest = format!("http://{}/v2/demo/manifests/latest", proxy.addr);
    assert_request_logged(&stderr, &manifest, 503);
    assert_request_logged(&stderr, &manifest, 200);
    let retry = stderr
        .lines()
        .find(|l| l.contains("retrying") && l.contains("manifest latest"));
    assert!(
        retry.is_some_and(|l| l.contains("HTTP 503") && l.contains("delay_ms=")),
        "no retry line with its reason:\n{stderr}"
    );
}
