//! The container image's runtime assumptions, tested without a container
//! engine: sluice runs as an unprivileged user (nobody, 65534) whose only
//! writable place is the spool directory, with a read-only config file, and
//! still opens its spool, becomes ready, proxies a request and spools one
//! (files 0600, directories 0700, owned by that user).
//!
//! Switching users needs root. CI runs as root; elsewhere the test skips.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

#[test]
fn serves_as_unprivileged_user_with_only_the_spool_writable() {
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root: it switches to uid {NOBODY}"
        );
        eprintln!("skipping: not root, cannot run sluice as uid {NOBODY}");
        return;
    }

    // Layout, like the image: /bin (r-x), /etc (r-x, config r--), /spool
    // (rwx for nobody only). Everything but the spool belongs to root.
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let bin_dir = root.join("bin");
    let etc_dir = root.join("etc");
    let spool = root.join("spool");
    for d in [&bin_dir, &etc_dir, &spool] {
        std::fs::create_dir(d).unwrap();
    }
    // target/ may not be traversable by nobody: run a copy.
    let bin = bin_dir.join("sluice");
    std::fs::copy(env!("CARGO_BIN_EXE_sluice"), &bin).unwrap();
    chmod(&bin, 0o755);
    let config = etc_dir.join("sluice.toml");
    std::fs::write(
        &config,
        "[server]\nshutdown_grace = \"2s\"\n\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\n\
         [[route]]\nname = \"default\"\nmatch = { path_prefix = \"/\" }\n\
         rate = \"1/min\"\nburst = 1\non_limit = \"spool\"\n",
    )
    .unwrap();
    chmod(&config, 0o444);
    std::os::unix::fs::chown(&spool, Some(NOBODY), Some(NOBODY)).unwrap();
    chmod(&spool, 0o700);
    for d in [&bin_dir, &etc_dir] {
        chmod(d, 0o555);
    }
    chmod(root, 0o555);

    let backend = Backend::start();
    let mut sluice = Sluice::start(&bin, root, &config, &spool, backend.addr);

    // Ready means the spool is open (as nobody) and the listener is up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = http(sluice.admin, "GET", "/readyz", "").map(|r| r.0);
        if status == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never became 200 (last: {status:?}); stderr: {:?}",
            sluice.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Forwarded: the backend answers.
    let (status, body) = http(sluice.data, "GET", "/hello", "").expect("proxy request");
    assert_eq!(status, 200, "body: {body}; stderr: {:?}", sluice.stderr());
    assert_eq!(body, "from-backend");
    assert!(backend.seen().iter().any(|l| l.starts_with("GET /hello ")));

    // Over the limit: the POST is written to the spool as nobody (202), then
    // replayed to the backend.
    let (status, body) = http(sluice.data, "POST", "/orders", "{\"n\":1}").expect("spooled request");
    assert_eq!(status, 202, "body: {body}; stderr: {:?}", sluice.stderr());
    let deadline = Instant::now() + Duration::from_secs(15);
    while !backend.seen().iter().any(|l| l.starts_with("POST /orders ")) {
        assert!(
            Instant::now() < deadline,
            "the spooled POST was not replayed; backend saw {:?}",
            backend.seen()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The spool holds files owned by nobody: files 0600, directories 0700.
    let mut files = 0;
    let mut stack = vec![spool.clone()];
    while let Some(dir) = stack.pop() {
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700, "mode of directory {}", dir.display());
        assert_eq!(meta.uid(), NOBODY, "owner of {}", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else {
                assert!(meta.is_file(), "unexpected entry {}", path.display());
                assert_eq!(meta.mode() & 0o7777, 0o600, "mode of file {}", path.display());
                assert_eq!(meta.uid(), NOBODY, "owner of {}", path.display());
                files += 1;
            }
        }
    }
    assert!(files > 0, "sluice wrote no files into its spool directory");

    // Nothing was written outside the spool.
    let mut outside: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    outside.sort();
    assert_eq!(outside, ["bin", "etc", "spool"]);

    let status = sluice.terminate();
    assert!(
        status.success(),
        "sluice exited with {status}; stderr: {:?}",
        sluice.stderr()
    );

    // Let tempdir's cleanup (as root) remove the read-only tree.
    chmod(root, 0o755);
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

struct Sluice {
    child: Child,
    data: SocketAddr,
    admin: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Sluice {
    fn start(bin: &Path, cwd: &Path, config: &Path, spool: &Path, upstream: SocketAddr) -> Sluice {
        let mut child = Command::new(bin)
            .args(["run", "-c"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .arg("--upstream")
            .arg(format!("http://{upstream}"))
            .arg("--spool-dir")
            .arg(spool)
            .args(["--log-format", "json"])
            .current_dir(cwd)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("RUST_LOG", "info")
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice as nobody");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "listening" {
                        let addr = |k: &str| v[k].as_str().and_then(|s| s.parse::<SocketAddr>().ok());
                        if let (Some(d), Some(a)) = (addr("data"), addr("admin")) {
                            let _ = tx.send((d, a));
                        }
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let Ok((data, admin)) = rx.recv_timeout(Duration::from_secs(15)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sluice did not log \"listening\"; stderr: {:?}", lines.lock().unwrap());
        };
        Sluice {
            child,
            data,
            admin,
            lines,
        }
    }

    fn stderr(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sluice did not exit on SIGTERM; stderr: {:?}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A tiny HTTP/1.1 backend: answers every request 200 "from-backend" and
/// closes the connection; remembers request lines. Its thread ends with the
/// test process.
struct Backend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &log);
                });
            }
        });
        Backend { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve_one(stream: TcpStream, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                content_length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; content_length];
    reader.read_exact(&mut body)?;
    log.lock().unwrap().push(request_line.trim_end().to_string());
    let mut stream = stream;
    stream.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 12\r\nconnection: close\r\n\r\nfrom-backend",
    )?;
    stream.flush()
}

/// One HTTP/1.1 request on a fresh connection; returns status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: sluice.test\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    Some((status, if chunked { dechunk(rest) } else { rest.to_string() }))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
