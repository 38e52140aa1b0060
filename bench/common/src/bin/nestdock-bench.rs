//! The helper of `bench/run.sh`:
//!
//! - `nestdock-bench fixtures DIR`: writes the review bodies (`typical.json`,
//!   `c100.json`, `1mib.json`) and the typical pod alone (`typical-pod.json`,
//!   for `nestdock inject -f`);
//! - `nestdock-bench check REVIEW SERVER=STATUS:RESPONSE...`: checks every
//!   server's answer to one review (see `nestdock_bench::check`) and that
//!   nestdock and the baseline produce the same pod; exits 1 otherwise;
//! - `nestdock-bench stats LOG`: p50 and p99 (µs) and the counts of an h2load
//!   `--log-file`, as `p50 p99 ok failed`;
//! - `nestdock-bench report SAMPLES MEMORY PREAMBLE OUT.md CHART.dat`: the
//!   table (also printed) and the chart data.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use nestdock_bench::{check, pods, report};
use serde_json::Value;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("fixtures") if args.len() == 2 => fixtures(Path::new(&args[1])),
        Some("check") if args.len() >= 3 => check_answers(&args[1], &args[2..]),
        Some("stats") if args.len() == 2 => stats(&args[1]),
        Some("report") if args.len() == 6 => make_report(&args[1..]),
        _ => {
            eprintln!(
                "usage: nestdock-bench fixtures DIR\n\
                 \x20      nestdock-bench check REVIEW SERVER=STATUS:RESPONSE...\n\
                 \x20      nestdock-bench stats H2LOAD_LOG\n\
                 \x20      nestdock-bench report SAMPLES MEMORY PREAMBLE OUT.md CHART.dat"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write_json(path: &Path, value: &Value) -> anyhow::Result<usize> {
    let bytes = serde_json::to_vec(value)?;
    std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(bytes.len())
}

fn fixtures(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let typical = pods::typical_pod();
    write_json(&dir.join("typical-pod.json"), &typical)?;
    for (name, pod) in [
        ("typical", typical.clone()),
        ("c100", pods::pod_with_containers(100)),
        ("1mib", pods::large_pod(1024 * 1024)),
    ] {
        let path = dir.join(format!("{name}.json"));
        let len = write_json(&path, &pods::review(&pod))?;
        println!("{:<28} {len:>8} bytes", path.display());
    }
    Ok(())
}

fn check_answers(review_path: &str, answers: &[String]) -> anyhow::Result<()> {
    let review: Value = serde_json::from_slice(
        &std::fs::read(review_path).with_context(|| format!("cannot read {review_path}"))?,
    )
    .with_context(|| format!("{review_path} is not JSON"))?;
    let name = Path::new(review_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut patched: Vec<(String, Value)> = Vec::new();
    let mut failed = false;
    for spec in answers {
        let (server, rest) = spec
            .split_once('=')
            .ok_or_else(|| anyhow!("expected SERVER=STATUS:RESPONSE, got {spec}"))?;
        let (status, file) = rest
            .split_once(':')
            .ok_or_else(|| anyhow!("expected SERVER=STATUS:RESPONSE, got {spec}"))?;
        let status: u16 = status
            .parse()
            .with_context(|| format!("bad status in {spec}"))?;
        let body = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
        match check::answer(&review, status, &body) {
            Ok(a) => {
                println!("  {name:<13} {server:<9} HTTP {status}, {}", a.describe());
                if server != "floor" {
                    match a.patched {
                        Some(pod) => patched.push((server.to_string(), pod)),
                        None => {
                            println!("  {name:<13} {server:<9} FAILED: no patch for a dind pod");
                            failed = true;
                        }
                    }
                }
            }
            Err(e) => {
                println!("  {name:<13} {server:<9} FAILED: {e:#}");
                failed = true;
            }
        }
    }
    if let [(a_name, a), (b_name, b)] = patched.as_slice() {
        match check::first_difference(a, b) {
            None => println!("  {name:<13} {a_name} and {b_name} produce the same pod"),
            Some((at, x, y)) => {
                println!(
                    "  {name:<13} FAILED: {a_name} and {b_name} produce different pods; first at {at}: {x} vs {y}"
                );
                failed = true;
            }
        }
    }
    if failed {
        bail!("{name}: some answers are not what the benchmark measures");
    }
    Ok(())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn stats(log: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(log).with_context(|| format!("cannot read {log}"))?;
    let mut durations = Vec::new();
    let mut failed = 0u64;
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 3 {
            continue;
        }
        let status: i64 = f[1].parse().unwrap_or(-1);
        if !(200..300).contains(&status) {
            failed += 1;
            continue;
        }
        durations.push(
            f[2].parse::<u64>()
                .with_context(|| format!("bad line {line:?}"))?,
        );
    }
    durations.sort_unstable();
    println!(
        "{} {} {} {failed}",
        percentile(&durations, 50.0),
        percentile(&durations, 99.0),
        durations.len()
    );
    Ok(())
}

fn make_report(args: &[String]) -> anyhow::Result<()> {
    let read = |p: &str| std::fs::read_to_string(p).with_context(|| format!("cannot read {p}"));
    let samples = report::parse_samples(&read(&args[0])?)?;
    let memory = report::parse_memory(&read(&args[1])?)?;
    let preamble = read(&args[2])?;
    let r = report::build(&preamble, &samples, &memory);
    std::fs::write(&args[3], &r.markdown).with_context(|| format!("cannot write {}", args[3]))?;
    std::fs::write(&args[4], &r.chart_data).with_context(|| format!("cannot write {}", args[4]))?;
    print!("{}", r.markdown);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
