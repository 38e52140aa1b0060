//! The table `bench/run.sh` prints and writes to `bench/results/latest.md`,
//! and the data file gnuplot draws `bench/results/latest.png` from.
//!
//! Input, written by `bench/run.sh` (tab-separated, one line each):
//!
//! - measurements: `round body proto server tool req_s p50_us p99_us cpu_pct ok failed
//!   other_pct` (`other_pct`: CPU used by other processes during the run, in
//!   % of all cores; optional);
//! - memory: `server phase kib`, phase `idle`, `peak-typical` or `peak-all`.
//!
//! Every figure is the median over the rounds of the run; every ratio is
//! between medians of the same run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context as _};

/// Bodies in the order of the table, with their descriptions.
pub const BODIES: [(&str, &str); 3] = [
    ("typical", "typical pod (5-6 KB review)"),
    ("c100", "100-container pod"),
    ("1mib", "1 MiB review"),
];

/// Protocols in the order of the table, with their descriptions.
pub const PROTOS: [(&str, &str); 4] = [
    ("h1", "HTTP/1.1 keep-alive, 32 connections"),
    (
        "h1-new",
        "HTTP/1.1, new TLS connection per request, 32 clients",
    ),
    ("h2", "HTTP/2, 1 connection, 32 streams"),
    ("c1", "HTTP/1.1 keep-alive, 1 connection (unloaded)"),
];

pub const SERVERS: [&str; 3] = ["floor", "nestdock", "baseline"];

/// One load-generator run.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub round: u32,
    pub body: String,
    pub proto: String,
    pub server: String,
    pub tool: String,
    pub req_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_pct: f64,
    pub ok: u64,
    pub failed: u64,
    /// CPU used by other work on the machine, % of all cores (NaN: unknown).
    pub other_pct: f64,
}

/// Parses the measurements file.
pub fn parse_samples(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 11 && f.len() != 12 {
            bail!("line {}: expected 12 fields, found {}", n + 1, f.len());
        }
        let num = |i: usize| -> anyhow::Result<f64> {
            f[i].parse().with_context(|| {
                format!(
                    "line {}: field {} is not a number: {:?}",
                    n + 1,
                    i + 1,
                    f[i]
                )
            })
        };
        out.push(Sample {
            round: num(0)? as u32,
            body: f[1].to_string(),
            proto: f[2].to_string(),
            server: f[3].to_string(),
            tool: f[4].to_string(),
            req_s: num(5)?,
            p50_us: num(6)?,
            p99_us: num(7)?,
            cpu_pct: num(8)?,
            ok: num(9)? as u64,
            failed: num(10)? as u64,
            other_pct: if f.len() == 12 { num(11)? } else { f64::NAN },
        });
    }
    Ok(out)
}

/// Parses the memory file into (server, phase) → KiB.
pub fn parse_memory(text: &str) -> anyhow::Result<BTreeMap<(String, String), u64>> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 3 {
            bail!("memory line {}: expected 3 fields", n + 1);
        }
        let kib: u64 = f[2]
            .parse()
            .with_context(|| format!("memory line {}: not a number", n + 1))?;
        let slot = out.entry((f[0].to_string(), f[1].to_string())).or_insert(0);
        *slot = (*slot).max(kib);
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians over the rounds of one (body, proto, server, tool).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell {
    pub req_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub cpu_pct: f64,
    pub failed: u64,
    pub rounds: usize,
}

impl Cell {
    /// Server CPU time per request: robust to other work on the machine,
    /// which lowers req/s but not the CPU a request costs.
    pub fn cpu_us_per_request(&self) -> f64 {
        self.cpu_pct / 100.0 / self.req_s * 1e6
    }
}

type Key = (String, String, String, String);

fn cells(samples: &[Sample]) -> BTreeMap<Key, Cell> {
    let mut groups: BTreeMap<Key, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        groups
            .entry((
                s.body.clone(),
                s.proto.clone(),
                s.server.clone(),
                s.tool.clone(),
            ))
            .or_default()
            .push(s);
    }
    groups
        .into_iter()
        .map(|(k, v)| {
            let cell = Cell {
                req_s: median(v.iter().map(|s| s.req_s).collect()),
                p50_us: median(v.iter().map(|s| s.p50_us).collect()),
                p99_us: median(v.iter().map(|s| s.p99_us).collect()),
                cpu_pct: median(v.iter().map(|s| s.cpu_pct).collect()),
                failed: v.iter().map(|s| s.failed).sum(),
                rounds: v.len(),
            };
            (k, cell)
        })
        .collect()
}

fn key(body: &str, proto: &str, server: &str, tool: &str) -> Key {
    (
        body.to_string(),
        proto.to_string(),
        server.to_string(),
        tool.to_string(),
    )
}

fn fmt_rate(r: f64) -> String {
    if r.is_nan() {
        "-".into()
    } else if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

fn fmt_us(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}×")
    } else {
        "-".into()
    }
}

fn mib(kib: Option<&u64>) -> String {
    kib.map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
        .unwrap_or_else(|| "-".into())
}

/// What one target compares, for the summary.
struct Target {
    what: String,
    measured: f64,
    limit: f64,
    /// true: the measured figure must be at least the limit.
    at_least: bool,
    unit: &'static str,
}

impl Target {
    fn met(&self) -> bool {
        if self.at_least {
            self.measured >= self.limit
        } else {
            self.measured <= self.limit
        }
    }
}

/// The report: markdown (for the terminal and `latest.md`) and the chart data.
pub struct Report {
    pub markdown: String,
    pub chart_data: String,
    /// Targets missed (empty when all were met or none could be measured).
    pub missed: Vec<String>,
}

/// Builds the report. `preamble` (markdown) goes first, as written.
pub fn build(
    preamble: &str,
    samples: &[Sample],
    memory: &BTreeMap<(String, String), u64>,
) -> Report {
    let cells = cells(samples);
    let get = |b: &str, p: &str, s: &str, t: &str| cells.get(&key(b, p, s, t)).copied();
    let ratio = |a: Option<Cell>, b: Option<Cell>, f: fn(&Cell) -> f64| match (a, b) {
        (Some(a), Some(b)) => f(&a) / f(&b),
        _ => f64::NAN,
    };
    let mut md = String::new();
    md.push_str(preamble);
    if !preamble.ends_with('\n') {
        md.push('\n');
    }

    let others: Vec<f64> = samples
        .iter()
        .map(|s| s.other_pct)
        .filter(|o| o.is_finite())
        .collect();
    if !others.is_empty() {
        let busy = others.iter().filter(|o| **o > 10.0).count();
        let max = others.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            md,
            "\nOther work on the machine while measuring (CPU of processes other than the server \
             and the load generator, in % of all cores): median {:.0} %, max {max:.0} %; {busy} of \
             {} runs above 10 %. A clean run is near 0 %: above that, req/s and latency of the \
             runs concerned are lower than the machine can do, and \"CPU per request\" is the \
             figure to trust.",
            median(others.clone()),
            others.len()
        );
    }

    let _ = writeln!(md, "\n## Throughput and latency (h2load)\n");
    let _ = writeln!(
        md,
        "Medians over the rounds. Ratios are to the floor of the same run (req/s: higher is \
         better; latency: lower is better). Server CPU is the share of its one core the server \
         used: near 100 % the server is the bottleneck; well below it, the load generator or \
         other work on the machine held it back. CPU per request is the server's CPU time \
         divided by the requests answered: it does not depend on how busy the machine was, \
         so its ratio to the floor is the steadiest measure of the request path's cost.\n"
    );
    let _ = writeln!(
        md,
        "| body | protocol | server | req/s | p50 | p99 | server CPU | CPU per request | req/s ÷ floor | p50 ÷ floor | p99 ÷ floor | CPU/req ÷ floor | req/s ÷ baseline |"
    );
    let _ = writeln!(md, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let mut chart =
        String::from("# cell\tnestdock_rps\tbaseline_rps\tnestdock_p50\tbaseline_p50\n");
    let mut failures = Vec::new();
    for (body, body_text) in BODIES {
        for (proto, proto_text) in PROTOS {
            let floor = get(body, proto, "floor", "h2load");
            if SERVERS
                .iter()
                .all(|s| get(body, proto, s, "h2load").is_none())
            {
                continue;
            }
            for server in SERVERS {
                let Some(c) = get(body, proto, server, "h2load") else {
                    continue;
                };
                if c.failed > 0 {
                    failures.push(format!(
                        "{server}, {body_text}, {proto_text}: {} failed requests",
                        c.failed
                    ));
                }
                let vs_baseline = if server == "nestdock" {
                    fmt_ratio(ratio(
                        Some(c),
                        get(body, proto, "baseline", "h2load"),
                        |c| c.req_s,
                    ))
                } else {
                    String::new()
                };
                let _ = writeln!(
                    md,
                    "| {body_text} | {proto_text} | {server} | {} | {} | {} | {:.0} % | {} | {} | {} | {} | {} | {vs_baseline} |",
                    fmt_rate(c.req_s),
                    fmt_us(c.p50_us),
                    fmt_us(c.p99_us),
                    c.cpu_pct,
                    fmt_us(c.cpu_us_per_request()),
                    fmt_ratio(c.req_s / floor.map_or(f64::NAN, |f| f.req_s)),
                    fmt_ratio(c.p50_us / floor.map_or(f64::NAN, |f| f.p50_us)),
                    fmt_ratio(c.p99_us / floor.map_or(f64::NAN, |f| f.p99_us)),
                    fmt_ratio(ratio(Some(c), floor, Cell::cpu_us_per_request)),
                );
            }
            let n = get(body, proto, "nestdock", "h2load");
            let b = get(body, proto, "baseline", "h2load");
            let _ = writeln!(
                chart,
                "\"{body} {proto}\"\t{:.4}\t{:.4}\t{:.4}\t{:.4}",
                ratio(n, floor, |c| c.req_s),
                ratio(b, floor, |c| c.req_s),
                ratio(n, floor, |c| c.p50_us),
                ratio(b, floor, |c| c.p50_us),
            );
        }
    }

    // wrk, when run: the same cell measured by another tool.
    let wrk_rows: Vec<_> = cells.iter().filter(|(k, _)| k.3 == "wrk").collect();
    if !wrk_rows.is_empty() {
        let _ = writeln!(md, "\n## Cross-check (wrk)\n");
        let _ = writeln!(
            md,
            "| body | protocol | server | req/s | p50 | p99 | server CPU | req/s ÷ floor | req/s ÷ baseline |"
        );
        let _ = writeln!(md, "|---|---|---|--:|--:|--:|--:|--:|--:|");
        for (body, body_text) in BODIES {
            for (proto, proto_text) in PROTOS {
                let floor = get(body, proto, "floor", "wrk");
                for server in SERVERS {
                    let Some(c) = get(body, proto, server, "wrk") else {
                        continue;
                    };
                    let vs_baseline = if server == "nestdock" {
                        fmt_ratio(ratio(Some(c), get(body, proto, "baseline", "wrk"), |c| {
                            c.req_s
                        }))
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        md,
                        "| {body_text} | {proto_text} | {server} | {} | {} | {} | {:.0} % | {} | {vs_baseline} |",
                        fmt_rate(c.req_s),
                        fmt_us(c.p50_us),
                        fmt_us(c.p99_us),
                        c.cpu_pct,
                        fmt_ratio(ratio(Some(c), floor, |c| c.req_s)),
                    );
                }
            }
        }
    }

    let _ = writeln!(md, "\n## Memory (VmRSS, VmHWM)\n");
    let _ = writeln!(
        md,
        "| server | idle after start | peak under load, typical pod | peak under load, all bodies | after the run |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|");
    for server in SERVERS {
        let m = |phase: &str| memory.get(&(server.to_string(), phase.to_string()));
        if m("idle").is_none() && m("peak-all").is_none() {
            continue;
        }
        let _ = writeln!(
            md,
            "| {server} | {} | {} | {} | {} |",
            mib(m("idle")),
            mib(m("peak-typical")),
            mib(m("peak-all")),
            mib(m("after"))
        );
    }

    // The targets, from this run.
    let mut targets = Vec::new();
    let typical = |p: &str, s: &str| get("typical", p, s, "h2load");
    let r = ratio(typical("h1", "nestdock"), typical("h1", "floor"), |c| {
        c.req_s
    });
    if r.is_finite() {
        targets.push(Target {
            what: "HTTP/1.1 keep-alive c=32, typical pod: nestdock req/s ÷ floor".into(),
            measured: r,
            limit: 1.0,
            at_least: true,
            unit: "×",
        });
    }
    let r = ratio(typical("h1", "nestdock"), typical("h1", "baseline"), |c| {
        c.req_s
    });
    if r.is_finite() {
        targets.push(Target {
            what: "HTTP/1.1 keep-alive c=32, typical pod: nestdock req/s ÷ baseline".into(),
            measured: r,
            limit: 1.8,
            at_least: true,
            unit: "×",
        });
    }
    let r = ratio(typical("c1", "nestdock"), typical("c1", "floor"), |c| {
        c.p50_us
    });
    if r.is_finite() {
        targets.push(Target {
            what: "unloaded (c=1), typical pod: nestdock p50 ÷ floor".into(),
            measured: r,
            limit: 1.1,
            at_least: false,
            unit: "×",
        });
    }
    let r = ratio(
        typical("h1-new", "nestdock"),
        typical("h1-new", "floor"),
        |c| c.req_s,
    );
    if r.is_finite() {
        targets.push(Target {
            what: "new TLS connection per request, typical pod: nestdock req/s ÷ floor".into(),
            measured: r,
            limit: 0.9,
            at_least: true,
            unit: "×",
        });
    }
    let m = |phase: &str| memory.get(&("nestdock".to_string(), phase.to_string()));
    if let Some(k) = m("idle") {
        targets.push(Target {
            what: "nestdock RSS idle".into(),
            measured: *k as f64 / 1024.0,
            limit: 15.0,
            at_least: false,
            unit: " MiB",
        });
    }
    if let Some(k) = m("peak-typical") {
        targets.push(Target {
            what: "nestdock peak RSS under load (typical pod, all protocols)".into(),
            measured: *k as f64 / 1024.0,
            limit: 40.0,
            at_least: false,
            unit: " MiB",
        });
    }
    let mut missed = Vec::new();
    if !targets.is_empty() {
        let _ = writeln!(md, "\n## Targets\n");
        let _ = writeln!(md, "| target | measured | limit | |");
        let _ = writeln!(md, "|---|--:|--:|---|");
        for t in &targets {
            let verdict = if t.met() { "met" } else { "**missed**" };
            let (m, l) = if t.unit == "×" {
                (format!("{:.2}×", t.measured), format!("{:.1}×", t.limit))
            } else {
                (
                    format!("{:.1}{}", t.measured, t.unit),
                    format!("{:.0}{}", t.limit, t.unit),
                )
            };
            let bound = if t.at_least { "≥" } else { "≤" };
            let _ = writeln!(md, "| {} | {m} | {bound} {l} | {verdict} |", t.what);
            if !t.met() {
                missed.push(format!("{}: {m} (limit {bound} {l})", t.what));
            }
        }
        let r = ratio(
            typical("h1", "nestdock"),
            typical("h1", "floor"),
            Cell::cpu_us_per_request,
        );
        if r.is_finite() {
            let _ = writeln!(
                md,
                "\nNot a target, the same comparison robust to a busy machine: on HTTP/1.1 \
                 keep-alive c=32 with the typical pod, a request costs nestdock {r:.2}× the server \
                 CPU it costs the floor (1.0× or less matches the floor)."
            );
        }
        let _ = writeln!(
            md,
            "\nThe engine's targets (typical pod under 10 µs, constant cost per container) are \
             measured by `cargo bench --bench engine`."
        );
    }
    if !failures.is_empty() {
        let _ = writeln!(md, "\n## Failed requests\n");
        for f in &failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    Report {
        markdown: md,
        chart_data: chart,
        missed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(round: u32, server: &str, proto: &str, rps: f64, p50: f64) -> String {
        format!(
            "{round}\ttypical\t{proto}\t{server}\th2load\t{rps}\t{p50}\t{}\t99\t100\t0",
            p50 * 2.0
        )
    }

    #[test]
    fn ratios_are_of_medians_and_targets_are_judged() {
        let text = [
            line(1, "floor", "h1", 1000.0, 100.0),
            line(2, "floor", "h1", 1200.0, 100.0),
            line(3, "floor", "h1", 1100.0, 100.0),
            line(1, "nestdock", "h1", 1100.0, 90.0),
            line(2, "nestdock", "h1", 1150.0, 90.0),
            line(3, "nestdock", "h1", 900.0, 90.0),
            line(1, "baseline", "h1", 500.0, 200.0),
            line(1, "floor", "c1", 100.0, 50.0),
            line(1, "nestdock", "c1", 90.0, 60.0),
        ]
        .join("\n");
        let samples = parse_samples(&text).unwrap();
        let mut memory =
            parse_memory("nestdock\tidle\t8192\nnestdock\tpeak-typical\t20480\n").unwrap();
        memory.insert(("floor".into(), "idle".into()), 4096);
        let report = build("# Run\n", &samples, &memory);
        let md = &report.markdown;
        // Medians 1100 and 1100: 1.00× the floor, 2.20× the baseline.
        assert!(
            md.contains(
                "| nestdock | 1100 | 90 µs | 180 µs | 99 % | 900 µs | 1.00× | 0.90× | 0.90× | 1.00× | 2.20× |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| nestdock RSS idle | 8.0 MiB | ≤ 15 MiB | met |"),
            "{md}"
        );
        // 60 / 50 = 1.2 > 1.1.
        assert_eq!(report.missed.len(), 1, "{:?}", report.missed);
        assert!(report.missed[0].contains("p50"));
        assert!(report.chart_data.contains("\"typical h1\"\t1.0000\t0.4545"));
    }

    #[test]
    fn other_work_is_summarised() {
        let samples =
            parse_samples("1\ttypical\th1\tfloor\th2load\t100\t10\t20\t99\t400\t0\t12.5\n")
                .unwrap();
        assert_eq!(samples[0].other_pct, 12.5);
        let report = build("", &samples, &BTreeMap::new());
        assert!(
            report
                .markdown
                .contains("median 12 %, max 12 %; 1 of 1 runs above 10 %"),
            "{}",
            report.markdown
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let err = parse_samples("1\ttypical\th1\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
