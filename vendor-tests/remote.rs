//! `metalor inspect docker://…`, `metalor list-tags`, `metalor login` and
//! `metalor logout` against a real registry (Debian's `docker-registry` on
//! 127.0.0.1), with skopeo as the oracle: the same summary fields as
//! `skopeo inspect`, the same bytes as `skopeo inspect --raw` and
//! `--config --raw`, the same tags as `skopeo list-tags` across many small
//! pages, and an auth file that `skopeo inspect --authfile` accepts.
//! A loopback proxy plays a bearer-token registry for login, and hostile
//! tag-list pages (a link loop, a link to another host).

mod registry_support;
mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, OnceLock};

use registry_support::{http_request, multiarch_layout, ref_digest, Fault, FaultProxy, Registry};
use serde_json::{json, Value};
use support::{fixtures_dir, oci_arg, run};

const METALOR: &str = env!("CARGO_BIN_EXE_metalor");

/// `metalor ARGS…` with a clean auth environment (HOME at `home`),
/// `stdin` on its standard input, whatever the exit status.
fn metalor(home: &Path, args: &[&str], env: &[(&str, &Path)], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(METALOR);
    cmd.args(args)
        .env("HOME", home)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("DOCKER_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn metalor");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().expect("wait for metalor")
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "metalor failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn failed(out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1, got {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `skopeo ARGS… --tls-verify=false` with `extra` before the image.
fn skopeo(verb: &str, extra: &[&str], image: &str) -> Vec<u8> {
    let mut cmd = Command::new("skopeo");
    cmd.arg(verb)
        .arg("--tls-verify=false")
        .args(extra)
        .arg(image);
    run(&mut cmd).stdout
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes));
    })
}

/// Tags the manifest `repo:from` also as each of `tags`, by PUT.
fn add_tags(registry: &Registry, repo: &str, tags: &[String]) {
    let manifest = registry.raw_manifest(repo);
    let media_type = parse(&manifest)["mediaType"]
        .as_str()
        .unwrap_or("application/vnd.oci.image.manifest.v1+json")
        .to_owned();
    let name = repo.split(':').next().unwrap();
    for tag in tags {
        let ct = [format!("Content-Type: {media_type}")];
        let path = format!("/v2/{name}/manifests/{tag}");
        let (status, head) = http_request(&registry.addr, "PUT", &path, &ct, &manifest);
        assert_eq!(status, 201, "{head}");
    }
}

/// The summary fields metalor must agree with skopeo on.
fn assert_same_summary(ours: &Value, theirs: &Value, what: &str) {
    for field in [
        "Name",
        "Digest",
        "Created",
        "Architecture",
        "Os",
        "Layers",
        "Env",
        "Labels",
    ] {
        assert_eq!(ours[field], theirs[field], "{what}: field {field}");
    }
    let sorted = |v: &Value| {
        let mut tags: Vec<String> = serde_json::from_value(v.clone()).unwrap();
        tags.sort();
        tags
    };
    assert_eq!(
        sorted(&ours["RepoTags"]),
        sorted(&theirs["RepoTags"]),
        "{what}"
    );
    // skopeo 1.9 has no LayersData; metalor's agrees with the layers.
    let data: Vec<Value> = ours["LayersData"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["Digest"].clone())
        .collect();
    assert_eq!(json!(data), theirs["Layers"], "{what}: LayersData");
}

#[test]
fn inspect_agrees_with_skopeo_inspect() {
    let test = "inspect_agrees_with_skopeo_inspect";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let demo = fixtures_dir().join("demo");
    registry.push(&demo, "latest", "demo", false);
    add_tags(&registry, "demo", &["v1".into(), "v2".into()]);
    let (layout, amd64, arm64) = multiarch_layout(tmp.path());
    registry.push(&layout, "latest", "multi", true);

    let url = registry.url("demo");
    let ours = parse(&ok(metalor(home, &["inspect", &url], &[], b"")).stdout);
    let theirs = parse(&skopeo("inspect", &[], &url));
    assert_same_summary(&ours, &theirs, "demo");
    assert_eq!(ours["Digest"], ref_digest(&demo, "latest"));
    assert_eq!(ours["RepoTags"].as_array().unwrap().len(), 3);

    for (platform, arch, manifest) in [
        ("linux/amd64", "amd64", &amd64),
        ("linux/arm64", "arm64", &arm64),
    ] {
        let url = registry.url("multi");
        let args = ["inspect", "--platform", platform, &url];
        let ours = parse(&ok(metalor(home, &args, &[], b"")).stdout);
        let theirs = parse(&skopeo("inspect", &["--override-arch", arch], &url));
        assert_same_summary(&ours, &theirs, platform);
        assert_eq!(ours["Architecture"], arch);
        // The digest is the index's, as skopeo reports; --config is the
        // chosen image's config, byte for byte.
        assert_ne!(&ours["Digest"], manifest);
        let args = ["inspect", "--config", "--platform", platform, &url];
        let config = ok(metalor(home, &args, &[], b"")).stdout;
        let theirs = skopeo(
            "inspect",
            &["--config", "--raw", "--override-arch", arch],
            &url,
        );
        assert_eq!(config, theirs, "{platform}: --config");
        // A manifest pinned by digest is fetched and verified as such.
        let pinned = format!("{}@{manifest}", registry.url("multi"));
        let raw = ok(metalor(home, &["inspect", "--raw", &pinned], &[], b"")).stdout;
        assert_eq!(raw, skopeo("inspect", &["--raw"], &pinned), "{pinned}");
    }
}

#[test]
fn raw_prints_the_served_bytes_for_manifests_and_indexes() {
    let test = "raw_prints_the_served_bytes_for_manifests_and_indexes";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let demo = fixtures_dir().join("demo");
    registry.push(&demo, "latest", "demo", false);
    let (layout, _, _) = multiarch_layout(tmp.path());
    registry.push(&layout, "latest", "multi", true);
    registry.push_with(&demo, "latest", "v2s2", &["--format", "v2s2"]);
    for repo in ["demo", "multi", "v2s2"] {
        let url = registry.url(repo);
        let ours = ok(metalor(home, &["inspect", "--raw", &url], &[], b"")).stdout;
        assert_eq!(ours, skopeo("inspect", &["--raw"], &url), "{repo}: --raw");
        let ours = ok(metalor(home, &["inspect", "--config", &url], &[], b"")).stdout;
        let theirs = skopeo(
            "inspect",
            &["--config", "--raw", "--override-arch", "amd64"],
            &url,
        );
        assert_eq!(ours, theirs, "{repo}: --config");
    }
    // oci: sources: the index stays an index with --raw.
    let image = oci_arg(&layout, "latest").into_string().unwrap();
    let ours = ok(metalor(home, &["inspect", "--raw", &image], &[], b"")).stdout;
    assert_eq!(ours, skopeo("inspect", &["--raw"], &image), "{image}");
    assert!(parse(&ours)["manifests"].is_array());
    let args = ["inspect", "--config", "--platform", "linux/arm64", &image];
    let ours = ok(metalor(home, &args, &[], b"")).stdout;
    let theirs = skopeo(
        "inspect",
        &["--config", "--raw", "--override-arch", "arm64"],
        &image,
    );
    assert_eq!(ours, theirs, "{image}: --config");

    let missing = registry.url("demo:nope");
    let err = failed(metalor(home, &["inspect", &missing], &[], b""));
    assert!(
        err.contains("inspect docker://") && err.contains("not found"),
        "{err}"
    );
}

/// Debian's docker-registry (distribution 2.8) ignores `?n=` and sends
/// every tag in one page; metalor must read that as skopeo does.
#[test]
fn list_tags_matches_skopeo_on_the_registry() {
    let test = "list_tags_matches_skopeo_on_the_registry";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    registry.push(&fixtures_dir().join("demo"), "latest", "many", false);
    let tags: Vec<String> = (0..40).map(|i| format!("t{i:02}")).collect();
    add_tags(&registry, "many", &tags);
    let url = registry.url("many");
    let theirs = parse(&skopeo("list-tags", &[], &url));
    for args in [
        vec!["list-tags", &url],
        vec!["list-tags", "--page-size", "7", &url],
    ] {
        let ours = parse(&ok(metalor(tmp.path(), &args, &[], b"")).stdout);
        assert_eq!(ours, theirs, "{args:?}");
    }
    assert_eq!(theirs["Tags"].as_array().unwrap().len(), 41);
    assert_eq!(theirs["Repository"], format!("{}/many", registry.addr));
    let err = failed(metalor(
        tmp.path(),
        &["list-tags", &registry.url("many:t01")],
        &[],
        b"",
    ));
    assert!(err.contains("without a tag"), "{err}");
    let err = failed(metalor(
        tmp.path(),
        &["list-tags", &registry.url("none")],
        &[],
        b"",
    ));
    assert!(
        err.contains("list tags of") && err.contains("not found"),
        "{err}"
    );
}

/// One page of a fake tag list: its tags and its `Link` header.
type PageFn = fn(u32, &str) -> (Vec<String>, Option<String>);

/// A fake registry of tag pages: `page(n, addr)` gives the tags and the
/// `Link` header of page `n` (the query's `p=N`, 0 without one).
fn fake_tag_registry(page: PageFn) -> FaultProxy {
    let addr = Arc::new(OnceLock::<String>::new());
    let own = addr.clone();
    let proxy = FaultProxy::start("127.0.0.1:9", move |seen, _| {
        if !seen.line.contains("/tags/list") {
            return Fault::Respond(200, vec![], b"{}".to_vec());
        }
        let n = seen
            .line
            .split("p=")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .unwrap_or(0);
        let (tags, link) = page(n, own.get().unwrap());
        let mut headers = vec!["Content-Type: application/json".to_owned()];
        headers.extend(link.map(|l| format!("Link: {l}")));
        let body = json!({"name": "x", "tags": tags});
        Fault::Respond(200, headers, body.to_string().into_bytes())
    });
    addr.set(proxy.addr.clone()).unwrap();
    proxy
}

/// Page `n` of 41 tags in pages of 7, linked as distribution 3 does
/// (relative, with `n` and `last`).
fn pages_of_seven(n: u32, _: &str) -> (Vec<String>, Option<String>) {
    let tags: Vec<String> = (n * 7..(n * 7 + 7).min(41))
        .map(|i| format!("t{i:02}"))
        .collect();
    let last = tags.last().cloned().unwrap_or_default();
    let link = (n * 7 + 7 < 41).then(|| {
        format!(
            "</v2/x/tags/list?n=7&last={last}&p={}>; rel=\"next\"",
            n + 1
        )
    });
    (tags, link)
}

/// Pagination, with skopeo as the oracle on the same pages.
#[test]
fn list_tags_follows_every_page_like_skopeo() {
    let test = "list_tags_follows_every_page_like_skopeo";
    if !support::require_tool("skopeo", "skopeo", test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let paged = fake_tag_registry(pages_of_seven);
    let url = format!("docker://{}/x", paged.addr);
    let ours = parse(&ok(metalor(tmp.path(), &["list-tags", &url], &[], b"")).stdout);
    assert_eq!(ours["Tags"].as_array().unwrap().len(), 41, "{ours}");
    assert_eq!(ours, parse(&skopeo("list-tags", &[], &url)));
    let pages = |proxy: &FaultProxy| {
        let seen = proxy.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.line.contains("/tags/list"))
            .count()
    };
    // Six pages each for metalor and skopeo.
    assert_eq!(pages(&paged), 12);
}

#[test]
fn list_tags_refuses_hostile_links() {
    let test = "list_tags_refuses_hostile_links";
    if !support::require_tool("skopeo", "skopeo", test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Absolute links on the same registry are followed.
    let absolute = fake_tag_registry(|n, addr| {
        let link = format!("<http://{addr}/v2/x/tags/list?p={}>; rel=\"next\"", n + 1);
        (vec![format!("p{n}")], (n < 2).then_some(link))
    });
    let url = format!("docker://{}/x", absolute.addr);
    let out = parse(&ok(metalor(tmp.path(), &["list-tags", &url], &[], b"")).stdout);
    assert_eq!(out["Tags"], json!(["p0", "p1", "p2"]));
    assert_eq!(out, parse(&skopeo("list-tags", &[], &url)));

    let looping = fake_tag_registry(|n, _| {
        let link = format!("</v2/x/tags/list?p={}>; rel=\"next\"", (n + 1) % 3);
        (vec![format!("p{n}")], Some(link))
    });
    let url = format!("docker://{}/x", looping.addr);
    let err = failed(metalor(tmp.path(), &["list-tags", &url], &[], b""));
    assert!(err.contains("loop back"), "{err}");

    let elsewhere = fake_tag_registry(|_, _| {
        let link = "<http://10.0.0.1:1/v2/x/tags/list>; rel=\"next\"".to_owned();
        (vec!["p0".to_owned()], Some(link))
    });
    let url = format!("docker://{}/x", elsewhere.addr);
    let err = failed(metalor(tmp.path(), &["list-tags", &url], &[], b""));
    assert!(err.contains("leaves the registry"), "{err}");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn login_writes_an_auth_file_skopeo_accepts() {
    let test = "login_writes_an_auth_file_skopeo_accepts";
    let Some(registry) = Registry::start_with_htpasswd(test, "pusher", "s3cret") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    registry.push(
        &fixtures_dir().join("demo"),
        "latest",
        "private/demo",
        false,
    );
    let url = registry.url("private/demo");
    let addr = registry.addr.as_str();

    // Another host's entry and another top-level key are kept.
    let file = tmp.path().join("auth.json");
    let before =
        json!({"auths": {"other.example": {"auth": "eDp5"}}, "credHelpers": {"c.example": "x"}});
    std::fs::write(&file, before.to_string()).unwrap();
    let fs = file.to_str().unwrap();

    // Wrong credentials: exit 1, the file is unchanged, no password shown.
    let login = [
        "login",
        addr,
        "-u",
        "pusher",
        "--password-stdin",
        "--authfile",
        fs,
    ];
    let err = failed(metalor(home, &login, &[], b"wrong-pass\n"));
    assert!(err.contains(addr) && err.contains("refused"), "{err}");
    assert!(!err.contains("wrong-pass"), "{err}");
    assert_eq!(parse(&std::fs::read(&file).unwrap()), before);

    let out = ok(metalor(home, &login, &[], b"s3cret\n"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("s3cret"));
    assert_eq!(mode(&file), 0o600);
    let written = parse(&std::fs::read(&file).unwrap());
    assert_eq!(
        written["auths"]["other.example"],
        before["auths"]["other.example"]
    );
    assert_eq!(written["credHelpers"], before["credHelpers"]);
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("pusher:s3cret");
    assert_eq!(written["auths"][addr]["auth"], auth);
    let theirs = parse(&skopeo("inspect", &["--authfile", fs], &url));
    assert_eq!(theirs["Name"], format!("{addr}/private/demo"));
    // metalor reads it back too.
    let env = [("REGISTRY_AUTH_FILE", file.as_path())];
    let ours = parse(&ok(metalor(home, &["inspect", &url], &env, b"")).stdout);
    assert_eq!(ours["Digest"], theirs["Digest"]);

    let logout = ["logout", addr, "--authfile", fs];
    ok(metalor(home, &logout, &[], b""));
    let after = parse(&std::fs::read(&file).unwrap());
    assert!(after["auths"].get(addr).is_none(), "{after}");
    assert_eq!(
        after["auths"]["other.example"],
        before["auths"]["other.example"]
    );
    let err = failed(metalor(home, &logout, &[], b""));
    assert!(err.contains(&format!("not logged into {addr}")), "{err}");
}

#[test]
fn login_defaults_and_refusals() {
    let test = "login_defaults_and_refusals";
    let Some(registry) = Registry::start_with_htpasswd(test, "pusher", "s3cret") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let addr = registry.addr.as_str();
    let run_dir = tmp.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let env = [("XDG_RUNTIME_DIR", run_dir.as_path())];
    let default = run_dir.join("containers/auth.json");
    let login = ["login", addr, "-u", "pusher", "--password-stdin"];

    // Wrong credentials: nothing is written, not even the directory.
    failed(metalor(home, &login, &env, b"nope\n"));
    assert!(!run_dir.join("containers").exists());
    // Without --password-stdin, nothing is read or written.
    let err = failed(metalor(home, &login[..4], &env, b"s3cret\n"));
    assert!(err.contains("--password-stdin"), "{err}");

    ok(metalor(home, &login, &env, b"s3cret\r\n"));
    assert_eq!(mode(&default), 0o600);
    assert_eq!(mode(&run_dir.join("containers")), 0o700);
    let env2 = [("XDG_RUNTIME_DIR", run_dir.as_path())];
    let url = registry.url("none");
    // The stored password is the line without its CR LF: the registry
    // accepts it (a 404 for the missing repository, not a 401).
    let err = failed(metalor(home, &["list-tags", &url], &env2, b""));
    assert!(err.contains("not found"), "{err}");
    ok(metalor(home, &["logout", addr], &env, b""));
    let left = parse(&std::fs::read(&default).unwrap());
    assert_eq!(left["auths"], json!({}));

    let err = failed(metalor(
        home,
        &["login", "myhost", "-u", "u", "--password-stdin"],
        &env,
        b"p\n",
    ));
    assert!(
        err.contains("myhost") && err.contains("registry host"),
        "{err}"
    );
}

/// A bearer-token registry, played by a proxy in front of an open one:
/// `/v2/` needs `Bearer tok`, which `/token` hands out for basic `u:p`.
#[test]
fn login_through_a_bearer_token_flow() {
    let test = "login_through_a_bearer_token_flow";
    let Some(registry) = Registry::start(test) else {
        return;
    };
    use base64::Engine as _;
    let addr = Arc::new(OnceLock::<String>::new());
    let realm = addr.clone();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("u:p")
    );
    let proxy = FaultProxy::start(&registry.addr, move |seen, _| {
        if seen.line.starts_with("GET /token") {
            if seen.authorization.as_deref() != Some(basic.as_str()) {
                return Fault::Respond(401, vec![], b"{}".to_vec());
            }
            let json = vec!["Content-Type: application/json".to_owned()];
            return Fault::Respond(200, json, br#"{"token":"tok"}"#.to_vec());
        }
        if seen.authorization.as_deref() == Some("Bearer tok") {
            return Fault::None;
        }
        let realm = realm.get().expect("proxy address");
        let challenge =
            format!("WWW-Authenticate: Bearer realm=\"http://{realm}/token\",service=\"t\"");
        Fault::Respond(401, vec![challenge], b"{}".to_vec())
    });
    addr.set(proxy.addr.clone()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("auth.json");
    let fs = file.to_str().unwrap();
    let login = [
        "login",
        &proxy.addr,
        "-u",
        "u",
        "--password-stdin",
        "--authfile",
        fs,
    ];
    let err = failed(metalor(tmp.path(), &login, &[], b"bad\n"));
    assert!(err.contains("refused"), "{err}");
    assert!(!file.exists());
    ok(metalor(tmp.path(), &login, &[], b"p\n"));
    let written = parse(&std::fs::read(&file).unwrap());
    assert_eq!(
        written["auths"][proxy.addr.as_str()]["auth"],
        base64::engine::general_purpose::STANDARD.encode("u:p")
    );
}
