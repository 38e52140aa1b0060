//! Adversarial load against the real binary (docs/behaviour.md, *Who can call*): the
//! worst reviews buildable under the 8 MiB body limit, sent concurrently with
//! slow almost-complete 8 MiB bodies on 40 connections, while `GET /healthz`
//! is polled. Every healthz answer must come within 1 s, and the server's
//! peak RSS (`VmHWM`) must stay under 200 MiB with the default limits.
//!
//! Loopback only, bounded in time (about 30 s) and in count. The figures are
//! printed (`cargo test --test adversarial -- --nocapture`); the README's
//! limits section quotes a release run (`cargo test --release --test
//! adversarial -- --nocapture`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::harness::{tls_connect, Client, OwnServer, Proto, Serve, Served, SERVER_NAME};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The default body limit.
const BODY_LIMIT: usize = 8 * 1024 * 1024;
/// docs/behaviour.md, *Who can call*: peak RSS under 200 MiB with the default limits.
const RSS_LIMIT_KIB: u64 = 200 * 1024;
/// How long the attack runs.
const ATTACK: Duration = Duration::from_secs(20);

/// A pod CREATE review around `spec` (JSON text), with `annotations` (JSON
/// object text), built as text: the test process must not spend seconds
/// building `Value` trees of 200,000 containers.
fn review(name: &str, annotations: &str, spec: &str) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"{name}-uid","kind":{{"group":"","version":"v1","kind":"Pod"}},"resource":{{"group":"","version":"v1","resource":"pods"}},"namespace":"ci","operation":"CREATE","userInfo":{{"username":"attacker"}},"object":{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"ci","annotations":{annotations}}},"spec":{spec}}},"oldObject":null,"dryRun":false}}}}"#
    )
    .into_bytes()
}

/// Appends `item(i)` comma-separated for i = 0.. while the text stays under
/// `budget` bytes.
fn list_up_to(budget: usize, item: impl Fn(usize) -> String) -> (String, usize) {
    let mut out = String::with_capacity(budget);
    let mut i = 0;
    loop {
        let next = item(i);
        if out.len() + next.len() + 1 > budget {
            return (out, i);
        }
        if i > 0 {
            out.push(',');
        }
        out.push_str(&next);
        i += 1;
    }
}

/// `item(i)` for i in 0..n, comma-separated.
fn list_of(n: usize, item: impl Fn(usize) -> String) -> String {
    (0..n).map(item).collect::<Vec<_>>().join(",")
}

/// The adversarial reviews, each under the body limit.
fn worst_reviews() -> Vec<(&'static str, Bytes)> {
    let room = BODY_LIMIT - 64 * 1024;
    let mut out = Vec::new();

    // `nestdock.io/containers` at the API server's 256 KiB annotation limit:
    // 20,000 containers, all named, many times over.
    let (containers, n) = list_up_to(900 * 1024, |i| {
        format!(r#"{{"name":"c{i}","image":"busybox"}}"#)
    });
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let mut list = String::new();
    'fill: loop {
        for name in &names {
            if list.len() + name.len() + 1 > 250 * 1024 {
                break 'fill;
            }
            if !list.is_empty() {
                list.push(',');
            }
            list.push_str(name);
        }
    }
    let annotations = format!(r#"{{"nestdock.io/mode":"dind","nestdock.io/containers":"{list}"}}"#);
    out.push((
        "containers-annotation",
        Bytes::from(review(
            "named",
            &annotations,
            &format!(r#"{{"containers":[{containers}]}}"#),
        )),
    ));

    let dind = r#"{"nestdock.io/mode":"dind"}"#;
    let containers = |n: usize| {
        let list = list_of(n, |i| format!(r#"{{"name":"c{i}","image":"i"}}"#));
        format!(r#"{{"containers":[{list}]}}"#)
    };
    // As many containers as the body holds (the engine refuses a pod over
    // 100,000 entries: this measures reading up to that cap).
    let (all, _) = list_up_to(room, |i| format!(r#"{{"name":"c{i}","image":"i"}}"#));
    out.push((
        "containers-8MiB",
        Bytes::from(review(
            "many",
            dind,
            &format!(r#"{{"containers":[{all}]}}"#),
        )),
    ));
    // Just under the entry cap: the patch would pass 4 MiB (refused).
    out.push((
        "containers-95k",
        Bytes::from(review("c95k", dind, &containers(95_000))),
    ));
    // The largest patch that is still answered (~4 MiB, a 5 MiB response
    // for a 0.45 MiB body).
    out.push((
        "containers-16k",
        Bytes::from(review("c16k", dind, &containers(16_000))),
    ));
    // Mounts: one container with 95,000 volumeMounts.
    let mounts = list_of(95_000, |i| format!(r#"{{"name":"v","mountPath":"/m{i}"}}"#));
    out.push((
        "mounts-95k",
        Bytes::from(review(
            "mounts",
            dind,
            &format!(
                r#"{{"volumes":[{{"name":"v","emptyDir":{{}}}}],"containers":[{{"name":"a","image":"i","volumeMounts":[{mounts}]}}]}}"#
            ),
        )),
    ));
    // Env: one container with 95,000 env entries of 40-byte values.
    let value = "x".repeat(40);
    let env = list_of(95_000, |i| {
        format!(r#"{{"name":"E{i}","value":"{value}"}}"#)
    });
    out.push((
        "env-95k",
        Bytes::from(review(
            "env",
            dind,
            &format!(r#"{{"containers":[{{"name":"a","image":"i","env":[{env}]}}]}}"#),
        )),
    ));
    for (what, body) in &out {
        assert!(body.len() <= BODY_LIMIT, "{what}: {} bytes", body.len());
    }
    out
}

/// `VmHWM` (peak RSS) of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Polls `GET /healthz` every 50 ms on one keep-alive connection (a new one
/// when it breaks) until `stop`; returns the worst latency and the count.
async fn poll_healthz(served: Served, stop: Arc<AtomicBool>) -> (Duration, usize) {
    let mut worst = Duration::ZERO;
    let mut count = 0;
    let mut client = Client::connect(&served, Proto::H1).await;
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let reply = match client.try_send(Method::GET, "/healthz", Bytes::new()).await {
            Ok(reply) => reply,
            Err(_) => {
                client = Client::connect(&served, Proto::H1).await;
                client.send(Method::GET, "/healthz", Bytes::new()).await
            }
        };
        let took = start.elapsed();
        assert_eq!(reply.status, StatusCode::OK);
        worst = worst.max(took);
        count += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (worst, count)
}

/// Posts `body` in a loop until `stop`; counts the statuses seen.
async fn hammer(
    served: Served,
    proto: Proto,
    body: Bytes,
    stop: Arc<AtomicBool>,
    statuses: Arc<[AtomicU64; 6]>,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut client = Client::connect(&served, proto).await;
        let reply = match client
            .try_send(Method::POST, "/mutate?timeout=10s", body.clone())
            .await
        {
            Ok(reply) => reply,
            // A stream reset (HTTP/2 at a deadline) or a closed connection.
            Err(_) => {
                statuses[5].fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let slot = match reply.status.as_u16() {
            200 => 0,
            503 => 1,
            408 => 2,
            413 => 3,
            other => panic!("unexpected status {other}: {}", reply.text()),
        };
        statuses[slot].fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection that sends the head of an 8 MiB review and all of its body
/// but the last byte, then waits for the server to answer or close.
async fn slow_almost_complete(served: Served, body: Arc<Vec<u8>>) -> Option<u16> {
    let mut tls = tls_connect(served.addr, &[b"http/1.1"]).await;
    let head = format!(
        "POST /mutate?timeout=10s HTTP/1.1\r\nHost: {SERVER_NAME}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let send = async {
        tls.write_all(head.as_bytes()).await?;
        tls.write_all(&body[..body.len() - 1]).await?;
        tls.flush().await
    };
    // The server may stop reading (no budget yet) and answer first.
    let _ = tokio::time::timeout(Duration::from_secs(15), send).await;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(n) = tls.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worst_inputs_keep_healthz_fast_and_peak_rss_under_200_mib() {
    let server: OwnServer = Serve::new().args(["--read-timeout", "5s"]).spawn();
    let served = server.served.clone();
    let pid = server.pid();
    let baseline = vm_hwm_kib(pid);
    let reviews = worst_reviews();
    for (what, body) in &reviews {
        println!("adversarial review {what}: {} bytes", body.len());
    }

    let stop = Arc::new(AtomicBool::new(false));
    let healthz = tokio::spawn(poll_healthz(served.clone(), stop.clone()));
    let statuses: Arc<[AtomicU64; 6]> = Arc::new(Default::default());
    let mut tasks = Vec::new();
    // Two senders per review shape, one per protocol.
    for (_, body) in &reviews {
        for proto in [Proto::H1, Proto::H2] {
            tasks.push(tokio::spawn(hammer(
                served.clone(),
                proto,
                body.clone(),
                stop.clone(),
                statuses.clone(),
            )));
        }
    }
    // 40 slow almost-complete 8 MiB bodies, twice over the attack.
    let slow_body = Arc::new(reviews[1].1.to_vec());
    assert!(slow_body.len() > BODY_LIMIT - 128 * 1024);
    let mut slow = Vec::new();
    let started = Instant::now();
    while started.elapsed() < ATTACK {
        if slow.len() < 80 && started.elapsed() > ATTACK / 2 * (slow.len() as u32 / 40) {
            for _ in 0..40 {
                slow.push(tokio::spawn(slow_almost_complete(
                    served.clone(),
                    slow_body.clone(),
                )));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            server.try_wait().is_none(),
            "the server exited:\n{}",
            served.log_text()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a sender finished within 30 s")
            .expect("sender");
    }
    let mut slow_statuses = Vec::new();
    for task in slow {
        slow_statuses.push(task.await.expect("slow client"));
    }
    let (worst, polls) = healthz.await.expect("healthz poller");
    let peak = vm_hwm_kib(pid);
    let counted: Vec<u64> = statuses.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    println!(
        "adversarial: peak RSS (VmHWM) {:.1} MiB (at start {:.1} MiB); worst /healthz {:.0} ms over {polls} polls",
        peak as f64 / 1024.0,
        baseline as f64 / 1024.0,
        worst.as_secs_f64() * 1000.0
    );
    println!(
        "adversarial: reviews 200={} 503={} 408={} 413={} reset={}; slow clients: {:?}",
        counted[0], counted[1], counted[2], counted[3], counted[5], slow_statuses
    );
    assert!(
        server.try_wait().is_none(),
        "the server exited:\n{}",
        served.log_text()
    );
    assert!(polls > 10, "only {polls} healthz polls");
    assert!(
        worst < Duration::from_secs(1),
        "/healthz took {worst:?} under attack"
    );
    assert!(
        peak < RSS_LIMIT_KIB,
        "peak RSS {peak} KiB is over {RSS_LIMIT_KIB} KiB"
    );
}
