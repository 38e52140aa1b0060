//! The registry cache, offline: two dind daemons as nestdock writes them with
//! the shipped registry-cache config pull a Docker Hub image through the
//! cache, and the second pull never reaches the upstream.
//!
//! Everything runs in a network namespace the test creates (loopback only,
//! plus two addresses on it), so nothing leaves this machine and nothing
//! touches its network:
//! - a stand-in for Docker Hub: Debian's docker-registry (the distribution
//!   registry 2.x, what registry:2 runs; scripts/setup-registry.sh unpacks
//!   it) on 10.96.0.20:5001 that, as Docker Hub, answers only with a token
//!   from its token service (busybox httpd handing out a JWT the test
//!   signed, to one account only), with an image pushed to it as
//!   `library/tiny:1` (Debian's busybox-static, imported by a seed daemon);
//! - the cache: the same registry with images/registry-cache/config.yml and
//!   the environment of the shipped `nestdock-registry-cache` Deployment
//!   (manifests/registry-cache), as its user (1000); only the upstream URL
//!   and the volume's directory are replaced, and the account added as the
//!   README says (REGISTRY_PROXY_USERNAME/PASSWORD). It listens on 10.96.0.10,
//!   which the daemons' /etc/hosts gives the Service's name,
//!   nestdock-registry-cache.nestdock-system.svc;
//! - the daemons: nestdock's daemon container for a `mode: dind` pod with
//!   manifests/registry-cache/config.yaml (the mirror
//!   `http://nestdock-registry-cache.nestdock-system.svc:5000`, not listed as
//!   an insecure registry), run by containerd in that namespace
//!   (tests/common/daemon.rs), one after the other, each with empty storage
//!   as a new pod has.
//!
//! What it shows: `docker pull tiny:1` (docker.io/library/tiny:1) works
//! through an http:// mirror (no insecure-registries entry needed: dockerd
//! uses a mirror's scheme as written); the second pod's pull reaches the
//! upstream only with a HEAD of the tag (which Docker Hub does not count as a
//! pull): no manifest GET, no blob GET. The cache's log has one GET of each
//! blob per pull. The cache fetched with the account's token (the upstream
//! serves nothing without one).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use nestdock::config::Config;
use serde_json::{json, Value};

use common::daemon::{containerd, daemon_of_with, strs, Pod, Running};

const CACHE_IP: &str = "10.96.0.10";
const UPSTREAM_IP: &str = "10.96.0.20";
/// Not 5000: the cache listens on every address of the namespace (":5000",
/// as shipped).
const UPSTREAM_PORT: u16 = 5001;
/// The stand-in's token service, and the account it serves: the cache pulls
/// with it the way the README tells users to configure the upstream's
/// credentials.
const TOKEN_PORT: u16 = 5002;
const TOKEN_ISSUER: &str = "stand-in-auth";
const TOKEN_SERVICE: &str = "stand-in-hub";
const UPSTREAM_USER: &str = "ci-puller";
const UPSTREAM_PASSWORD: &str = "pull-token";
const CACHE_NAME: &str = "nestdock-registry-cache.nestdock-system.svc";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The unpacked docker-registry and busybox-static (scripts/setup-registry.sh).
fn packages() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/setup-registry.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/setup-registry.sh");
    assert!(
        out.status.success(),
        "scripts/setup-registry.sh failed ({}): this test needs Debian's docker-registry \
         and busybox-static packages",
        out.status
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace of the test's own, deleted on drop: loopback up,
/// with the cache's and the upstream's addresses.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        // Namespaces of earlier runs whose process is gone.
        if let Ok(entries) = std::fs::read_dir("/var/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("nestdock-regcache-") {
                    if !Path::new("/proc").join(pid).exists() {
                        let _ = Command::new("ip").args(["netns", "del", &name]).status();
                    }
                }
            }
        }
        let name = format!("nestdock-regcache-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        for ip in [CACHE_IP, UPSTREAM_IP] {
            run(Command::new("ip").args([
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{ip}/32"),
                "dev",
                "lo",
            ]));
        }
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A process in the namespace as user 1000 (the cache Deployment's
/// runAsUser); its stdout (a registry's access log) and stderr in one file.
/// Stopped on drop, and when this process dies (its `sh` keeper reads a
/// pipe this process holds).
struct Registry {
    child: Child,
    log: PathBuf,
}

impl Registry {
    /// docker-registry with images/registry-cache/config.yml and `env`, its
    /// layers in `storage`; once it listens.
    fn start(
        ns: &Netns,
        bin: &Path,
        env: &[(String, String)],
        storage: &Path,
        log: PathBuf,
    ) -> Registry {
        std::fs::create_dir_all(storage).unwrap();
        // The Deployment's fsGroup/runAsUser 1000: the volume is writable by it.
        run(Command::new("chown")
            .arg("-R")
            .arg("1000:1000")
            .arg(storage));
        let config = repo().join("images/registry-cache/config.yml");
        let argv = [bin.as_os_str(), "serve".as_ref(), config.as_os_str()];
        let r = Registry::spawn(ns, &argv, env, log);
        let started = Instant::now();
        while !r.log_text().contains("listening on") {
            assert!(
                started.elapsed() < Duration::from_secs(30)
                    && !r.log_text().contains("level=fatal"),
                "the registry did not listen within 30 s:\n{}",
                r.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }

    fn spawn(
        ns: &Netns,
        argv: &[&std::ffi::OsStr],
        env: &[(String, String)],
        log: PathBuf,
    ) -> Registry {
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name, "sh", "-c"])
            .arg(r#""$0" "$@" & pid=$!; read _line; kill $pid; wait $pid"#)
            .args(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups"])
            .args(argv)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start a process in the namespace");
        Registry { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Access-log lines of successful GETs of `path` (an exact URL path).
    fn gets(&self, path: &str) -> usize {
        let needle = format!("\"GET {path} HTTP/1.1\" 200 ");
        self.log_text()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stand-in for Docker Hub's token service (auth.docker.io): Docker Hub
/// answers registry requests with a Bearer challenge, and the token service
/// hands a token to the account's basic credentials. Here: busybox httpd on
/// UPSTREAM_IP:TOKEN_PORT serving one token (a JWT signed by a key whose
/// self-signed certificate the upstream trusts, good for an hour, for
/// library/tiny) only to UPSTREAM_USER. Returns the certificate (PEM) and
/// the token service's files.
fn token_service(dir: &Path) -> String {
    let b64url = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let key = rcgen::KeyPair::generate().unwrap(); // ECDSA P-256: ES256
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "stand-in token issuer");
    let cert = params.self_signed(&key).unwrap();
    let header = json!({"typ": "JWT", "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(cert.der())]});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"iss": TOKEN_ISSUER, "sub": UPSTREAM_USER, "aud": TOKEN_SERVICE,
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "jti": "stand-in-1",
        "access": [{"type": "repository", "name": "library/tiny", "actions": ["pull", "push"]}]});
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let der = rcgen::SigningKey::sign(&key, input.as_bytes()).unwrap();
    let jwt = format!("{input}.{}", b64url(&ecdsa_der_to_jws(&der)));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("token"),
        json!({"token": jwt, "access_token": jwt, "expires_in": 3600}).to_string(),
    )
    .unwrap();
    // Every path needs the account (busybox httpd's basic authentication).
    std::fs::write(
        dir.join("httpd.conf"),
        format!("/:{UPSTREAM_USER}:{UPSTREAM_PASSWORD}\n"),
    )
    .unwrap();
    run(Command::new("chmod").arg("-R").arg("a+rX").arg(dir));
    cert.pem()
}

/// An ECDSA signature as DER (SEQUENCE of two INTEGERs) to the JWS form:
/// r and s, 32 bytes each.
fn ecdsa_der_to_jws(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30, "a DER SEQUENCE");
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[at], 0x02, "a DER INTEGER");
        let len = der[at + 1] as usize;
        let int = &der[at + 2..at + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0u8, 32 - int.len()));
        out.extend_from_slice(int);
        at += 2 + len;
    }
    out
}

/// A command in the running container (the kubelet's exec), 120 s at most.
fn exec(run: &Running, exec_id: &str, cmd: &[&str]) -> Output {
    let mut args = vec!["task", "exec", "--exec-id", exec_id, run.id.as_str()];
    args.extend_from_slice(cmd);
    containerd().ctr(&args)
}

fn exec_ok(run: &Running, exec_id: &str, cmd: &[&str]) -> String {
    let out = exec(run, exec_id, cmd);
    assert!(
        out.status.success(),
        "{cmd:?} in {}: {}{}\ndaemon log:\n{}",
        run.id,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        run.log()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The environment of the shipped cache Deployment's container.
fn shipped_cache_env() -> (Vec<(String, String)>, String) {
    let text = std::fs::read_to_string(repo().join("manifests/registry-cache/registry-cache.yaml"))
        .unwrap();
    let deployment = serde_norway::Deserializer::from_str(&text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"] == "Deployment")
        .expect("the cache's Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().expect("a plain value").to_string(),
            )
        })
        .collect();
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "storage")
        .expect("the cache's storage volume")["mountPath"]
        .as_str()
        .unwrap()
        .to_string();
    (env, mount)
}

#[test]
fn a_second_pod_pulls_from_the_cache_not_from_docker_hub() {
    let packages = packages();
    let registry_bin = packages.join("usr/bin/docker-registry");
    containerd();
    // Work directories of earlier runs that were killed before cleaning up.
    common::remove_stale(
        Path::new("/var/tmp"),
        "nestdock-regcache-",
        Duration::from_secs(24 * 3600),
    );
    let ns = Netns::new();
    let work = tempfile::Builder::new()
        .prefix("nestdock-regcache-")
        .tempdir_in("/var/tmp")
        .unwrap();

    // The stand-in for Docker Hub: a registry that wants a token from its
    // token service, which wants the account.
    let token_dir = work.path().join("token-service");
    let issuer_pem = token_service(&token_dir);
    let issuer = work.path().join("token-issuer.pem");
    std::fs::write(&issuer, issuer_pem).unwrap();
    let busybox = packages.join("bin/busybox");
    let token_log = work.path().join("token-service.log");
    let token_service = Registry::spawn(
        &ns,
        &[
            busybox.as_os_str(),
            "httpd".as_ref(),
            "-f".as_ref(),
            "-vv".as_ref(),
            "-p".as_ref(),
            format!("{UPSTREAM_IP}:{TOKEN_PORT}").as_ref(),
            "-h".as_ref(),
            token_dir.as_os_str(),
            "-c".as_ref(),
            token_dir.join("httpd.conf").as_os_str(),
        ],
        &[],
        token_log,
    );
    let token_url = format!("http://{UPSTREAM_IP}:{TOKEN_PORT}/token");
    let started = Instant::now();
    loop {
        let asked = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(&busybox)
            .args(["wget", "-q", "-O", "/dev/null"])
            .arg(format!(
                "http://{UPSTREAM_USER}:{UPSTREAM_PASSWORD}@{UPSTREAM_IP}:{TOKEN_PORT}/token"
            ))
            .status()
            .unwrap();
        if asked.success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the token service did not answer within 10 s:\n{}",
            token_service.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let anonymous = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&busybox)
        .args(["wget", "-q", "-O", "/dev/null", &token_url])
        .output()
        .unwrap();
    assert!(
        !anonymous.status.success(),
        "the token service gave a token without the account"
    );
    let upstream = Registry::start(
        &ns,
        &registry_bin,
        &[
            (
                "REGISTRY_HTTP_ADDR".into(),
                format!("{UPSTREAM_IP}:{UPSTREAM_PORT}"),
            ),
            ("REGISTRY_AUTH_TOKEN_REALM".into(), token_url),
            ("REGISTRY_AUTH_TOKEN_SERVICE".into(), TOKEN_SERVICE.into()),
            ("REGISTRY_AUTH_TOKEN_ISSUER".into(), TOKEN_ISSUER.into()),
            (
                "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE".into(),
                issuer.display().to_string(),
            ),
            (
                "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY".into(),
                work.path().join("upstream").display().to_string(),
            ),
        ],
        &work.path().join("upstream"),
        work.path().join("upstream.log"),
    );

    // The cache, with the shipped Deployment's environment.
    let (shipped_env, mount_path) = shipped_cache_env();
    let names: Vec<&str> = shipped_env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "REGISTRY_HTTP_ADDR",
            "REGISTRY_PROXY_REMOTEURL",
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"
        ]
    );
    let cache_dir = work.path().join("cache");
    let env: Vec<(String, String)> = shipped_env
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "REGISTRY_PROXY_REMOTEURL" => {
                assert_eq!(v, "https://registry-1.docker.io");
                (k, format!("http://{UPSTREAM_IP}:{UPSTREAM_PORT}"))
            }
            "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY" => {
                assert_eq!(v, mount_path, "the layers are on the volume");
                (k, cache_dir.display().to_string())
            }
            _ => (k, v),
        })
        // The upstream's account, as the README says to add it (the chart
        // sets the same two variables from registryCache.credentialsSecret;
        // tests/chart.rs checks that).
        .chain([
            ("REGISTRY_PROXY_USERNAME".into(), UPSTREAM_USER.into()),
            ("REGISTRY_PROXY_PASSWORD".into(), UPSTREAM_PASSWORD.into()),
        ])
        .collect();
    let cache = Registry::start(
        &ns,
        &registry_bin,
        &env,
        &cache_dir,
        work.path().join("cache.log"),
    );
    assert!(
        cache
            .log_text()
            .contains("Registry configured as a proxy cache"),
        "{}",
        cache.log_text()
    );

    // The image: busybox-static as `library/tiny:1`, pushed to the upstream
    // by a seed daemon (which may push there over plain HTTP).
    let image_root = work.path().join("image");
    std::fs::create_dir_all(image_root.join("bin")).unwrap();
    std::fs::copy(packages.join("bin/busybox"), image_root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", image_root.join("bin/sh")).unwrap();
    let pod = Pod {
        netns: Some(ns.path()),
        files: vec![(
            "/etc/hosts".into(),
            format!("127.0.0.1 localhost\n{CACHE_IP} {CACHE_NAME}\n"),
        )],
    };
    let seed_config = Config::from_yaml(&format!(
        "dind:\n  insecureRegistries: [\"{UPSTREAM_IP}:{UPSTREAM_PORT}\"]\n"
    ))
    .unwrap();
    let image_id = {
        let seed = Running::start_with(
            "nd-seed",
            &daemon_of_with(&seed_config, json!({"nestdock.io/mode": "dind"})),
            &pod,
        );
        seed.wait_started();
        let tar = seed.volume("nestdock-docker-sock").join("tiny.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(&image_root)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        let tag = format!("{UPSTREAM_IP}:{UPSTREAM_PORT}/library/tiny:1");
        exec_ok(
            &seed,
            "import",
            &["docker", "import", "/var/run/tiny.tar", &tag],
        );
        exec_ok(
            &seed,
            "login",
            &[
                "docker",
                "login",
                "--username",
                UPSTREAM_USER,
                "--password",
                UPSTREAM_PASSWORD,
                &format!("{UPSTREAM_IP}:{UPSTREAM_PORT}"),
            ],
        );
        exec_ok(&seed, "push", &["docker", "push", &tag]);
        exec_ok(
            &seed,
            "id",
            &["docker", "image", "inspect", "--format", "{{.Id}}", &tag],
        )
    };
    eprintln!("registry cache: pushed library/tiny:1 ({image_id}) to the stand-in upstream");
    // Its blobs (config and layer), from the upstream's manifest as stored.
    let manifest_dir = work
        .path()
        .join("upstream/docker/registry/v2/repositories/library/tiny/_layers/sha256");
    let blobs: Vec<String> = std::fs::read_dir(&manifest_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", manifest_dir.display()))
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    assert_eq!(blobs.len(), 2, "a config and one layer: {blobs:?}");
    let blob_path = |b: &str| format!("/v2/library/tiny/blobs/{b}");
    for b in &blobs {
        assert_eq!(upstream.gets(&blob_path(b)), 0, "nothing fetched yet");
    }

    // Two pods, one after the other, each a new daemon with empty storage.
    let config = Config::load(&repo().join("manifests/registry-cache/config.yaml")).unwrap();
    let daemon = daemon_of_with(&config, json!({"nestdock.io/mode": "dind"}));
    let mut command = strs(&daemon["command"]);
    command.extend(strs(&daemon["args"]));
    assert!(
        command.contains(&format!("--registry-mirror=http://{CACHE_NAME}:5000")),
        "the daemon's mirror: {command:?}"
    );
    // Upstream GETs of each blob during the first pull.
    let mut first_pull = std::collections::BTreeMap::new();
    for (n, name) in ["nd-pod-1", "nd-pod-2"].into_iter().enumerate() {
        let mut pod_daemon = Running::start_with(name, &daemon, &pod);
        let took = pod_daemon.wait_started();
        let started = Instant::now();
        let pull = exec(&pod_daemon, "pull", &["docker", "pull", "tiny:1"]);
        assert!(
            pull.status.success(),
            "pod {}: docker pull tiny:1: {}{}\ndaemon log:\n{}\ncache log:\n{}\nupstream log:\n{}",
            n + 1,
            String::from_utf8_lossy(&pull.stdout),
            String::from_utf8_lossy(&pull.stderr),
            pod_daemon.log(),
            cache.log_text(),
            upstream.log_text()
        );
        let pulled = started.elapsed();
        let id = exec_ok(
            &pod_daemon,
            "id",
            &[
                "docker",
                "image",
                "inspect",
                "--format",
                "{{.Id}}",
                "docker.io/library/tiny:1",
            ],
        );
        assert_eq!(id, image_id, "the image pushed upstream");
        eprintln!(
            "registry cache: pod {}: daemon started in {took:?}, pulled docker.io/library/tiny:1 in {pulled:?}",
            n + 1
        );
        // Docker Hub counts a pull per GET of a manifest; HEAD is free. The
        // cache asks the upstream for the tag's manifest once (then only
        // checks the tag with a HEAD on every pull), and fetches each blob on
        // the first pull only. distribution 2.x fetches a blob it misses
        // twice (one stream to the client, one to its storage, issued
        // together): so one or two GETs, all during the first pull.
        let manifest_gets = upstream.gets("/v2/library/tiny/manifests/1");
        assert_eq!(
            manifest_gets,
            1,
            "after pod {}: one manifest GET upstream\nupstream log:\n{}",
            n + 1,
            upstream.log_text()
        );
        for b in &blobs {
            let fetched = upstream.gets(&blob_path(b));
            let first = *first_pull.entry(b.clone()).or_insert(fetched);
            assert!(
                (1..=2).contains(&first) && fetched == first,
                "after pod {}: the upstream served {b} {fetched} times (after the first pull: \
                 {first})\nupstream log:\n{}",
                n + 1,
                upstream.log_text()
            );
            assert_eq!(
                cache.gets(&blob_path(b)),
                n + 1,
                "after pod {}: the cache served {b} to every pull\ncache log:\n{}",
                n + 1,
                cache.log_text()
            );
        }
        pod_daemon.terminate(Duration::from_secs(30));
    }
    eprintln!("registry cache: upstream GETs per blob, all during the first pull: {first_pull:?}");
    // The upstream served nothing without a token, and the token service
    // gives one to the account only: the cache pulled as the account.
    assert!(
        upstream
            .log_text()
            .contains("error authorizing context: authorization token required"),
        "the upstream asks for a token"
    );
    drop(cache);
    drop(upstream);
    drop(ns);
}
