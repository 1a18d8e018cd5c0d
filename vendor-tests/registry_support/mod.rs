//! A real CNCF distribution registry (Debian's `docker-registry`) for the
//! pull suites: each test starts its own on 127.0.0.1 with a free port and
//! a temp storage directory, and the instance is killed when the handle is
//! dropped. Also: pushing with skopeo, a multi-arch layout builder and a
//! loopback HTTP proxy that injects faults.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support;
use crate::support::fixtures::{self, sha256_digest, Compression, Image, Layer};

/// A running registry; killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Basic-auth credentials when started with htpasswd.
    pub creds: Option<(String, String)>,
    dir: tempfile::TempDir,
}

/// Checks that the tools exist (CI fails, elsewhere skips).
pub fn tools_present(test: &str) -> bool {
    support::require_tool("docker-registry", "docker-registry", test)
        && support::require_tool("skopeo", "skopeo", test)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

impl Registry {
    /// Starts an open registry, or returns `None` when the tools are
    /// missing outside CI.
    pub fn start(test: &str) -> Option<Registry> {
        tools_present(test).then(|| Registry::spawn(None))
    }

    /// Starts a registry behind htpasswd basic auth with one user.
    pub fn start_with_htpasswd(test: &str, user: &str, password: &str) -> Option<Registry> {
        if !tools_present(test) || !support::require_tool("htpasswd", "apache2-utils", test) {
            return None;
        }
        Some(Registry::spawn(Some((
            user.to_owned(),
            password.to_owned(),
        ))))
    }

    fn spawn(creds: Option<(String, String)>) -> Registry {
        let dir = tempfile::tempdir().expect("registry temp dir");
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).unwrap();
        let mut auth = String::new();
        if let Some((user, password)) = &creds {
            let out = support::run(Command::new("htpasswd").args(["-Bbn", user, password]));
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: metalor-test\n    path: {}\n",
                file.display()
            );
        }
        // A port can be taken between the probe and the bind; try a few.
        for _ in 0..5 {
            let addr = format!("127.0.0.1:{}", free_port());
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
                     redirect:\n    disable: true\nhttp:\n  addr: {addr}\n{auth}",
                    storage.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .env_remove("REGISTRY_ADDR")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if matches!(http_status(&addr, "/v2/"), Some(200 | 401)) {
                    return Registry {
                        child,
                        addr,
                        creds,
                        dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        panic!("docker-registry did not come up:\n{log}");
    }

    /// `docker://ADDR/REPO`.
    pub fn url(&self, repo: &str) -> String {
        format!("docker://{}/{repo}", self.addr)
    }

    /// Pushes `oci:LAYOUT:TAG` to `REPO` with skopeo (`--all` keeps an
    /// index whole).
    pub fn push(&self, layout: &Path, tag: &str, repo: &str, all: bool) {
        self.push_with(layout, tag, repo, if all { &["--all"] } else { &[] });
    }

    /// [`Registry::push`] with extra skopeo flags (`--format v2s2`).
    pub fn push_with(&self, layout: &Path, tag: &str, repo: &str, extra: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--dest-tls-verify=false"]);
        cmd.args(extra);
        if let Some((u, p)) = &self.creds {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        cmd.arg(support::oci_arg(layout, tag)).arg(self.url(repo));
        support::run(&mut cmd);
    }

    /// The manifest (or index) exactly as the registry serves it.
    pub fn raw_manifest(&self, repo: &str) -> Vec<u8> {
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--raw", "--tls-verify=false"]);
        if let Some((u, p)) = &self.creds {
            cmd.arg(format!("--creds={u}:{p}"));
        }
        support::run(cmd.arg(self.url(repo))).stdout
    }

    /// `skopeo copy docker://ADDR/REPO oci:DEST:TAG`, the oracle.
    pub fn skopeo_pull(&self, repo: &str, dest: &Path, tag: &str, arch: Option<&str>) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--src-tls-verify=false"]);
        if let Some(arch) = arch {
            cmd.args(["--override-arch", arch]);
        }
        if let Some((u, p)) = &self.creds {
            cmd.arg(format!("--src-creds={u}:{p}"));
        }
        cmd.arg(self.url(repo)).arg(support::oci_arg(dest, tag));
        support::run(&mut cmd);
    }
}

/// `metalor VERB ARGS…` with a clean auth environment: `HOME` at `home`
/// and none of the auth-file variables, so only what a test sets is read.
pub fn metalor_command(home: &Path, verb: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_metalor"));
    cmd.arg(verb)
        .args(args)
        .env("HOME", home)
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("DOCKER_CONFIG");
    cmd
}

/// The stderr of a metalor run that must have failed with exit code 1.
pub fn failed_stderr(out: std::process::Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected failure, got {}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `oci:LAYOUT:TAG` as a string argument.
pub fn oci_string(layout: &Path, tag: &str) -> String {
    support::oci_arg(layout, tag).into_string().unwrap()
}

/// An error and its causes, as the CLI prints them (one link each).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

/// One plain-HTTP request on its own connection: the status and the
/// response head.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[String],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the registry");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

impl Registry {
    /// Pushes blobs and a manifest as given, byte for byte, through the
    /// distribution API: images that skopeo would refuse to push (a
    /// config that is not JSON, say).
    pub fn push_raw(
        &self,
        repo: &str,
        tag: &str,
        blobs: &[&[u8]],
        manifest: &[u8],
        media_type: &str,
    ) {
        for blob in blobs {
            let (status, head) = http_request(
                &self.addr,
                "POST",
                &format!("/v2/{repo}/blobs/uploads/"),
                &[],
                b"",
            );
            assert_eq!(status, 202, "{head}");
            let location = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Location: ")
                        .or_else(|| l.strip_prefix("location: "))
                })
                .expect("upload location")
                .trim()
                .to_owned();
            let path = location
                .split_once("://")
                .map_or(location.as_str(), |(_, rest)| {
                    &rest[rest.find('/').unwrap_or(0)..]
                })
                .to_owned();
            let sep = if path.contains('?') { '&' } else { '?' };
            let put = format!("{path}{sep}digest={}", sha256_digest(blob));
            let octets = ["Content-Type: application/octet-stream".to_owned()];
            let (status, head) = http_request(&self.addr, "PUT", &put, &octets, blob);
            assert_eq!(status, 201, "{head}");
        }
        let ct = [format!("Content-Type: {media_type}")];
        let (status, head) = http_request(
            &self.addr,
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &ct,
            manifest,
        );
        assert_eq!(status, 201, "{head}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-shot `GET PATH` over plain HTTP; the status code, if any answer.
pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

// ------------------------------------------------------------- layouts

/// The manifest digest `index.json` names under `tag`.
pub fn ref_digest(layout: &Path, tag: &str) -> String {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("{}: no ref {tag}: {index}", layout.display()))["digest"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The blob file names of a layout, sorted; temp files included, so a
/// leftover shows up in comparisons.
pub fn blob_set(layout: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(layout.join("blobs/sha256"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Blob names that are not sha256 hex: temp files left behind.
pub fn stray_files(layout: &Path) -> Vec<String> {
    blob_set(layout)
        .into_iter()
        .filter(|n| n.len() != 64 || !n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect()
}

/// Every blob hashes to its name (a `.partial-` download kept for a
/// later pull to resume is not a blob).
pub fn assert_blobs_verified(layout: &Path) {
    for name in blob_set(layout) {
        if name.starts_with(".partial-") {
            continue;
        }
        let bytes = std::fs::read(layout.join("blobs/sha256").join(&name)).unwrap();
        assert_eq!(
            sha256_digest(&bytes),
            format!("sha256:{name}"),
            "blob {name}"
        );
    }
}

fn put(layout: &Path, bytes: &[u8]) -> String {
    let digest = sha256_digest(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&digest[7..]), bytes).unwrap();
    digest
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(layout.join("blobs/sha256").join(&digest[7..])).unwrap()
}

/// A one-layer gzip image (skopeo pushes gzip as is, but would compress
/// a plain tar) with a 2 MiB incompressible file, so a blob can be
/// cut in the middle; returns the layout and the layer's digest.
pub fn big_layout(dir: &Path) -> (PathBuf, String) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..2 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let layer = Layer::new()
        .dir("data", 0o755)
        .file("data/big", 0o644, &data);
    let image = Image::new("latest", Compression::Gzip, &[layer]).unwrap();
    let layout = dir.join("big");
    fixtures::write_layout(&layout, &[image]).unwrap();
    let digest = blob_set(&layout)
        .into_iter()
        .map(|n| format!("sha256:{n}"))
        .find(|d| {
            std::fs::metadata(layout.join("blobs/sha256").join(&d[7..]))
                .unwrap()
                .len()
                > 1 << 20
        })
        .unwrap();
    (layout, digest)
}

/// Builds a layout whose ref `latest` is an OCI index of two images: the
/// `demo` fixture as linux/amd64 and the `multi-gzip` fixture relabelled
/// linux/arm64/v8. Returns the layout and the two manifest digests
/// (amd64, arm64).
pub fn multiarch_layout(dir: &Path) -> (PathBuf, String, String) {
    multiarch_layout_with(dir, "multiarch", true)
}

/// [`multiarch_layout`] in `dir/name`; with `declare_platforms` false the
/// index entries carry no `platform`, so only the configs tell the images
/// apart.
pub fn multiarch_layout_with(
    dir: &Path,
    name: &str,
    declare_platforms: bool,
) -> (PathBuf, String, String) {
    let layout = dir.join(name);
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut entries = Vec::new();
    for (fixture, arch, variant) in [("demo", "amd64", None), ("multi-gzip", "arm64", Some("v8"))] {
        let src = support::fixtures_dir().join(fixture);
        for name in blob_set(&src) {
            std::fs::copy(
                src.join("blobs/sha256").join(&name),
                layout.join("blobs/sha256").join(&name),
            )
            .unwrap();
        }
        let digest = ref_digest(&src, "latest");
        let mut manifest: Value = serde_json::from_slice(&read_blob(&src, &digest)).unwrap();
        let config_digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
        let mut config: Value = serde_json::from_slice(&read_blob(&src, &config_digest)).unwrap();
        config["architecture"] = json!(arch);
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        let config_bytes = serde_json::to_vec(&config).unwrap();
        manifest["config"]["digest"] = json!(put(&layout, &config_bytes));
        manifest["config"]["size"] = json!(config_bytes.len());
        let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
        let mut platform = json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = json!(v);
        }
        let mut entry = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": put(&layout, &manifest_bytes),
            "size": manifest_bytes.len(),
        });
        if declare_platforms {
            entry["platform"] = platform;
        }
        entries.push(entry);
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    });
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let top = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": put(&layout, &index_bytes),
            "size": index_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let amd = entries[0]["digest"].as_str().unwrap().to_owned();
    let arm = entries[1]["digest"].as_str().unwrap().to_owned();
    (layout, amd, arm)
}

// ------------------------------------------------------------- fault proxy

/// What the proxy does to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Pass it through.
    None,
    /// Send the headers and this many body bytes, then close.
    Truncate(usize),
    /// Flip one body byte.
    Corrupt,
    /// Announce this Content-Length (and send at most that much body).
    ContentLength(usize),
    /// Append this many bytes to the body (and to Content-Length).
    Append(usize),
    /// Answer with this status and no body.
    Status(u16),
    /// Answer with this status, extra header lines and body (a fake
    /// token server or auth gate).
    Respond(u16, Vec<String>, Vec<u8>),
    /// Send the headers and this many body bytes, then keep the
    /// connection open, silent, until the client closes it (at most 60 s).
    Stall(usize),
    /// Announce this many more bytes than the body has, send the body,
    /// then hold the connection open as [`Fault::Stall`] does.
    AnnounceMoreAndHold(usize),
    /// Forward the request with `Range: bytes=N-` in place of the
    /// client's, and pass the 206 back: a resume from the wrong offset.
    RangeFrom(u64),
    /// Answer with this status and extra header lines, then stream spaces
    /// until the client closes the connection (at most 256 MiB).
    Endless(u16, Vec<String>),
    /// Forward the request head and this many bytes of its body, then
    /// close both connections: an upload cut in the middle.
    CutRequest(usize),
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET /v2/...`.
    pub line: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Content-Range` header (an upload chunk), if any.
    pub content_range: Option<String>,
    /// When the request arrived.
    pub at: Instant,
}

type Decide = dyn Fn(&Seen, usize) -> Fault + Send + Sync;

/// A loopback HTTP/1.1 proxy in front of a registry that serves each
/// request on its own connection and applies a [`Fault`] chosen by a
/// callback (given the request and how many requests came before it). The
/// callback may block to hold a request back; other requests go on.
pub struct FaultProxy {
    /// `127.0.0.1:PORT` to pull from.
    pub addr: String,
    /// Requests seen, in order.
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Body bytes the proxy wrote for [`Fault::Endless`] answers.
    pub endless_sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream`.
    pub fn start(
        upstream: &str,
        decide: impl Fn(&Seen, usize) -> Fault + Send + Sync + 'static,
    ) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let decide: Arc<Decide> = Arc::new(decide);
        let endless_sent = Arc::new(AtomicU64::new(0));
        let (upstream, seen2, stop2) = (upstream.to_owned(), seen.clone(), stop.clone());
        let sent2 = endless_sent.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (upstream, seen, decide) = (upstream.clone(), seen2.clone(), decide.clone());
                let sent = sent2.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &upstream, &seen, &*decide, &sent);
                });
            }
        });
        FaultProxy {
            addr,
            seen,
            endless_sent,
            stop,
            thread: Some(thread),
        }
    }

    /// Requests for blobs, in order.
    pub fn blob_requests(&self) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.line.contains("/blobs/"))
            .cloned()
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        // A TLS ClientHello (skopeo tries HTTPS first): refuse at once, so
        // the client falls back to HTTP instead of timing out.
        if head.is_empty() && byte[0] == 0x16 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        head.push(byte[0]);
    }
    Ok(head)
}

/// Keeps a connection open and silent until the client closes it, or 60 s.
fn hold(client: &mut TcpStream) {
    let _ = client.set_read_timeout(Some(Duration::from_millis(100)));
    let start = Instant::now();
    let mut buf = [0u8; 64];
    while start.elapsed() < Duration::from_secs(60) {
        match client.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Writes `code` and `extra` headers, then spaces until the client goes
/// away (or 256 MiB), counting what was sent.
fn serve_endless(
    client: &mut TcpStream,
    code: u16,
    extra: &[String],
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {code} Injected\r\nConnection: close\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    client.write_all(head.as_bytes())?;
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..4096 {
        client.write_all(&chunk)?;
        sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
    }
    Ok(())
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    seen: &Mutex<Vec<Seen>>,
    decide: &Decide,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let head = String::from_utf8_lossy(&read_head(&mut client)?).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_owned();
    let mut headers: Vec<String> = lines
        .filter(|l| !l.is_empty())
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(str::to_owned)
        .collect();
    let range = headers
        .iter()
        .find(|h| h.to_ascii_lowercase().starts_with("range:"))
        .map(|h| h[6..].trim().to_owned());
    let authorization = headers
        .iter()
        .find(|h| h.to_ascii_lowercase().starts_with("authorization:"))
        .map(|h| h[14..].trim().to_owned());
    let content_range = headers
        .iter()
        .find(|h| h.to_ascii_lowercase().starts_with("content-range:"))
        .map(|h| h[14..].trim().to_owned());
    let request = Seen {
        line: line.clone(),
        range,
        authorization,
        content_range,
        at: Instant::now(),
    };
    // Decided outside the lock: a callback may hold one request back
    // until something else has happened, while others go through.
    let before = {
        let mut seen = seen.lock().unwrap();
        seen.push(request.clone());
        seen.len() - 1
    };
    let fault = decide(&request, before);
    if let Fault::Status(code) = fault {
        write!(
            client,
            "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    if let Fault::Respond(code, extra, body) = &fault {
        let mut head = format!(
            "HTTP/1.1 {code} Injected\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for line in extra {
            head.push_str(line);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        client.write_all(head.as_bytes())?;
        client.write_all(body)?;
        return Ok(());
    }
    if let Fault::Endless(code, extra) = &fault {
        return serve_endless(&mut client, *code, extra, sent);
    }
    if let Fault::RangeFrom(start) = fault {
        headers.retain(|h| !h.to_ascii_lowercase().starts_with("range:"));
        headers.push(format!("Range: bytes={start}-"));
    }
    headers.push("Connection: close".into());
    let mut up = TcpStream::connect(upstream)?;
    write!(up, "{line}\r\n{}\r\n\r\n", headers.join("\r\n"))?;
    // A request body (an upload) is passed on by its Content-Length.
    let body_len: u64 = headers
        .iter()
        .find_map(|h| {
            let (name, value) = h.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    if let Fault::CutRequest(n) = fault {
        std::io::copy(&mut (&mut client).take(n as u64), &mut up)?;
        let _ = up.shutdown(Shutdown::Both);
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    std::io::copy(&mut (&mut client).take(body_len), &mut up)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |i| i + 4);
    let (resp_head, body) = response.split_at(split);
    let resp_head = String::from_utf8_lossy(resp_head).into_owned();
    let mut body = body.to_vec();
    let mut out_head: Vec<String> = resp_head
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(str::to_owned)
        .collect();
    out_head.push("Connection: close".into());
    match fault {
        Fault::Truncate(n) => body.truncate(n),
        Fault::Corrupt if !body.is_empty() => {
            let i = body.len() / 2;
            body[i] ^= 0xff;
        }
        Fault::Append(n) => {
            body.extend(std::iter::repeat_n(b'x', n));
            out_head.retain(|h| !h.to_ascii_lowercase().starts_with("content-length:"));
            out_head.push(format!("Content-Length: {}", body.len()));
        }
        Fault::ContentLength(n) => {
            out_head.retain(|h| !h.to_ascii_lowercase().starts_with("content-length:"));
            out_head.push(format!("Content-Length: {n}"));
            body.truncate(n);
        }
        Fault::AnnounceMoreAndHold(n) => {
            out_head.retain(|h| !h.to_ascii_lowercase().starts_with("content-length:"));
            out_head.push(format!("Content-Length: {}", body.len() + n));
        }
        _ => {}
    }
    client.write_all(format!("{}\r\n\r\n", out_head.join("\r\n")).as_bytes())?;
    match fault {
        Fault::Stall(n) => {
            client.write_all(&body[..n.min(body.len())])?;
            client.flush()?;
            hold(&mut client);
            return Ok(());
        }
        Fault::AnnounceMoreAndHold(_) => {
            client.write_all(&body)?;
            client.flush()?;
            hold(&mut client);
            return Ok(());
        }
        _ => {}
    }
    client.write_all(&body)?;
    client.flush()?;
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}
