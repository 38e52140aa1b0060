//! Criterion benchmarks of the engine alone, no sockets (`cargo bench --bench engine`):
//!
//! - `mutate/*`: the typical pod of `bench/run.sh` (target: under 10 µs) through
//!   the engine's three entry points: `mutate` (a `serde_json::Value` in, the
//!   offline `inject` path), `mutate_json` (the pod's JSON text in, read
//!   borrowed and typed as the webhook reads it) and `mutate_pod` (the pod
//!   already read: the decision and the patch alone);
//! - `containers/mutate_pod/N` and `containers/mutate_json/N`: pods of 1, 10,
//!   100 and 1000 containers, each with env, a volume of its own and the
//!   service-account token; the tables printed at the end give the cost per
//!   container, which must not grow with N;
//! - `review/*`: `admission::review`, bytes in and bytes out, on the three
//!   bodies of `bench/run.sh`;
//! - `floor/*`: what the floor server does with the same bytes (parse into a
//!   `serde_json::Value`), the in-process bound that `review/*` is held to;
//! - `adversarial/*/N`: what a hostile pod author can send, at 1,000 and
//!   30,000 items: every container named in `nestdock.io/containers`
//!   (`names`), one container with N mounts the daemon mirrors (`mounts`),
//!   one with N env entries (`env`), N service-account token volumes each
//!   mounted (`tokens`). The table at the end gives the cost per item at
//!   30,000 ÷ at 1,000, which must stay near 1 (linear, not quadratic).
//!
//! The pods are built by `bench/common/src/pods.rs`, the same code that writes
//! the fixtures `bench/run.sh` sends.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use nestdock::admission;
use nestdock::config::Config;
use nestdock::engine::{self, Context, Effect, NamespacePolicy};
use serde_json::Value;

#[path = "../bench/common/src/pods.rs"]
mod pods;

const SIZES: [usize; 4] = [1, 10, 100, 1000];

fn ctx(config: &Config) -> Context<'_> {
    Context {
        config,
        namespace: NamespacePolicy::Off,
        native_sidecars: true,
    }
}

/// Fails loudly when the engine does not inject: a benchmark of a denial
/// would measure the wrong thing.
fn assert_injects(pod: &Value, config: &Config) {
    let decision = engine::mutate(pod, &ctx(config));
    assert!(
        matches!(decision.effect, Effect::Patched(ref p) if !p.is_empty()),
        "the benchmark pod is not injected: {:?}",
        decision.effect
    );
}

fn bench_engine(c: &mut Criterion) {
    let config = Config::default();
    let typical = pods::typical_pod();
    assert_injects(&typical, &config);
    let text = typical.to_string();
    let read = nestdock::pod::from_json(&text).expect("a readable pod");
    let mut group = c.benchmark_group("mutate");
    group.bench_function("typical", |b| {
        b.iter(|| engine::mutate(black_box(&typical), &ctx(&config)))
    });
    group.bench_function("typical_json", |b| {
        b.iter(|| engine::mutate_json(black_box(&text), &ctx(&config)))
    });
    group.bench_function("typical_pod", |b| {
        b.iter(|| engine::mutate_pod(black_box(&read), &ctx(&config)))
    });
    group.finish();

    let mut group = c.benchmark_group("containers");
    for n in SIZES {
        let pod = pods::pod_with_containers(n);
        assert_injects(&pod, &config);
        let text = pod.to_string();
        let read = nestdock::pod::from_json(&text).expect("a readable pod");
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("mutate_pod", n), &read, |b, pod| {
            b.iter(|| engine::mutate_pod(black_box(pod), &ctx(&config)))
        });
        group.bench_with_input(BenchmarkId::new("mutate_json", n), &text, |b, text| {
            b.iter(|| engine::mutate_json(black_box(text), &ctx(&config)))
        });
    }
    group.finish();
}

const ADVERSARIAL: [usize; 2] = [1_000, 30_000];
const ADVERSARIAL_KINDS: [&str; 4] = ["names", "mounts", "env", "tokens"];

/// The hostile pods of `adversarial/*`, as JSON text.
fn adversarial_pod(kind: &str, n: usize) -> String {
    use serde_json::json;
    let pod = match kind {
        "names" => {
            let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
            let containers: Vec<Value> = names.iter().map(|c| json!({"name": c})).collect();
            json!({"metadata": {"annotations": {"nestdock.io/mode": "none",
                    "nestdock.io/containers": names.join(",")}},
                   "spec": {"containers": containers}})
        }
        "mounts" => {
            let mounts: Vec<Value> = (0..n)
                .map(|i| json!({"name": "v", "mountPath": format!("/w/{i}")}))
                .collect();
            json!({"metadata": {"annotations": {"nestdock.io/mode": "dind"}},
                   "spec": {"containers": [{"name": "b", "volumeMounts": mounts}],
                            "volumes": [{"name": "v", "emptyDir": {}}]}})
        }
        "env" => {
            let env: Vec<Value> = (0..n)
                .map(|i| json!({"name": format!("E{i}"), "value": "x"}))
                .collect();
            json!({"metadata": {"annotations": {"nestdock.io/mode": "dind"}},
                   "spec": {"containers": [{"name": "b", "env": env}]}})
        }
        _ => {
            let volumes: Vec<Value> = (0..n)
                .map(|i| json!({"name": format!("t{i}"), "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}))
                .collect();
            let mounts: Vec<Value> = (0..n)
                .map(|i| json!({"name": format!("t{i}"), "mountPath": format!("/t/{i}")}))
                .collect();
            json!({"metadata": {"annotations": {"nestdock.io/mode": "dind"}},
                   "spec": {"containers": [{"name": "b", "volumeMounts": mounts}], "volumes": volumes}})
        }
    };
    pod.to_string()
}

fn bench_adversarial(c: &mut Criterion) {
    let config = Config::default();
    let mut group = c.benchmark_group("adversarial");
    group.sample_size(10);
    for kind in ADVERSARIAL_KINDS {
        for n in ADVERSARIAL {
            let text = adversarial_pod(kind, n);
            let d = engine::mutate_json(&text, &ctx(&config));
            assert!(
                !matches!(d.effect, Effect::Denied(_)),
                "{kind}/{n} is denied: {:?}",
                d.effect
            );
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(kind, n), &text, |b, text| {
                b.iter(|| engine::mutate_json(black_box(text), &ctx(&config)))
            });
        }
    }
    group.finish();
}

/// Cost per item at 30,000 ÷ at 1,000 for each hostile pod.
fn print_adversarial() {
    println!(
        "
hostile pods through engine::mutate_json (Criterion's mean estimates)"
    );
    println!(
        "{:>8}  {:>14}  {:>14}  {:>18}",
        "kind", "per item, 1k", "per item, 30k", "30k ÷ 1k per item"
    );
    for kind in ADVERSARIAL_KINDS {
        let per = |n: usize| mean_ns(&format!("adversarial/{kind}/{n}")).map(|t| t / n as f64);
        if let (Some(a), Some(b)) = (per(ADVERSARIAL[0]), per(ADVERSARIAL[1])) {
            println!(
                "{kind:>8}  {:>14}  {:>14}  {:>17.2}×",
                fmt_ns(a),
                fmt_ns(b),
                b / a
            );
        }
    }
}

fn bodies() -> Vec<(&'static str, Vec<u8>)> {
    [
        ("typical", pods::typical_pod()),
        ("c100", pods::pod_with_containers(100)),
        ("1mib", pods::large_pod(1024 * 1024)),
    ]
    .into_iter()
    .map(|(name, pod)| {
        let body = serde_json::to_vec(&pods::review(&pod)).expect("serializable");
        (name, body)
    })
    .collect()
}

fn bench_review(c: &mut Criterion) {
    let config = Config::default();
    let bodies = bodies();
    let mut group = c.benchmark_group("review");
    for (name, body) in &bodies {
        let answer = admission::review(body, &ctx(&config)).expect("a readable review");
        assert_eq!(answer.summary.outcome, engine::Outcome::Injected, "{name}");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), body, |b, body| {
            b.iter(|| admission::review(black_box(body), &ctx(&config)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("floor");
    for (name, body) in &bodies {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), body, |b, body| {
            b.iter(|| serde_json::from_slice::<Value>(black_box(body)).expect("JSON"))
        });
    }
    group.finish();
}

/// Where Criterion writes its estimates (its own rule: `CRITERION_HOME`, else
/// the cargo target directory).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

/// Criterion's mean estimate of one benchmark, in nanoseconds.
fn mean_ns(id: &str) -> Option<f64> {
    let path = criterion_dir().join(id).join("new").join("estimates.json");
    let json: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json.pointer("/mean/point_estimate")?.as_f64()
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

/// The per-container table: total per pod, per container, and the marginal
/// cost of a container between two sizes (constant when growth is linear).
fn print_per_container() {
    for entry in ["mutate_pod", "mutate_json"] {
        per_container_table(entry);
    }
    println!();
    for (id, what) in [
        ("mutate/typical", "mutate (Value in)"),
        ("mutate/typical_json", "mutate_json (text in)"),
        ("mutate/typical_pod", "mutate_pod (pod read)"),
    ] {
        if let Some(t) = mean_ns(id) {
            println!("typical pod, {what}: {} (target: under 10 µs)", fmt_ns(t));
        }
    }
    for name in ["typical", "c100", "1mib"] {
        if let (Some(r), Some(f)) = (
            mean_ns(&format!("review/{name}")),
            mean_ns(&format!("floor/{name}")),
        ) {
            println!(
                "admission::review on {name}: {} = {:.2}× the floor's parse into a Value ({})",
                fmt_ns(r),
                r / f,
                fmt_ns(f)
            );
        }
    }
}

fn per_container_table(entry: &str) {
    let times: Vec<(usize, f64)> = SIZES
        .iter()
        .filter_map(|&n| mean_ns(&format!("containers/{entry}/{n}")).map(|t| (n, t)))
        .collect();
    if times.len() != SIZES.len() {
        return;
    }
    println!("\nengine::{entry} by number of containers (Criterion's mean estimates)");
    println!(
        "{:>10}  {:>10}  {:>14}  {:>26}",
        "containers", "per pod", "per container", "marginal, from the previous"
    );
    let mut previous: Option<(usize, f64)> = None;
    for &(n, t) in &times {
        let marginal = previous
            .map(|(m, u)| fmt_ns((t - u) / (n - m) as f64))
            .unwrap_or_default();
        println!(
            "{n:>10}  {:>10}  {:>14}  {:>26}",
            fmt_ns(t),
            fmt_ns(t / n as f64),
            marginal
        );
        previous = Some((n, t));
    }
    let per = |n: usize| {
        times
            .iter()
            .find(|(m, _)| *m == n)
            .map(|(_, t)| t / n as f64)
    };
    if let (Some(a), Some(b)) = (per(10), per(1000)) {
        println!(
            "cost per container at 1000 ÷ at 10: {:.2}× (linear growth: about 1.0× or below)",
            b / a
        );
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    bench_engine(&mut c);
    bench_review(&mut c);
    bench_adversarial(&mut c);
    c.final_summary();
    print_per_container();
    print_adversarial();
}
