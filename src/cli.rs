//! Command line (the README, *Command line*): parsing, logging set-up, and handing over to
//! the module that does each job. Bad usage exits 2 with a one-line reason.

use std::io::{IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::mode::Mode;

#[derive(Debug, Parser)]
#[command(
    name = "nestdock",
    version,
    about = "Kubernetes mutating admission webhook that gives pods a Docker daemon",
    propagate_version = true
)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// `key=value` lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the admission webhook over HTTPS.
    Serve(ServeArgs),
    /// Mutate manifests offline (GitOps, CI): reads YAML or JSON, writes YAML.
    Inject(InjectArgs),
    /// Say which mode applies to a pod and why, what would be injected, or why it is denied.
    Explain(ExplainArgs),
    /// Write a CA and a serving certificate for the webhook's Service.
    Certs(CertsArgs),
    /// Exit 0 once a Docker API answers on a unix socket (the guard's
    /// startup probe).
    Probe(ProbeArgs),
    /// Serve a guarded Docker API on the pod's socket, forwarding to the node's
    /// daemon (guarded DooD; see the README).
    Guard(GuardArgs),
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// The unix socket to ask (`GET /_ping`).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// How long to wait for the answer.
    #[arg(long, default_value = "4s", value_parser = parse_positive_duration, value_name = "DURATION")]
    timeout: Duration,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct GuardArgs {
    #[command(subcommand)]
    action: Option<GuardAction>,
    /// The unix socket to serve the guarded API on (the pod's socket volume).
    #[arg(long, value_name = "PATH", required = true)]
    listen: Option<PathBuf>,
    /// The node's docker socket.
    #[arg(long, default_value = "/var/run/docker.sock", value_name = "PATH")]
    upstream: PathBuf,
    /// The pod's uid, from the Downward API (metadata.uid).
    #[arg(long, env = "NESTDOCK_POD_UID", value_parser = parse_pod_uid, value_name = "UID", required = true)]
    pod_uid: Option<String>,
    /// The kubelet's root directory on the node (where the pod's emptyDir
    /// volumes are: <root>/pods/<uid>/volumes/kubernetes.io~empty-dir/).
    #[arg(long, default_value = "/var/lib/kubelet", value_parser = parse_absolute, value_name = "DIR")]
    kubelet_root: String,
    /// Where the guard sees the pod's emptyDir volumes, one directory per
    /// volume name. With it, directories below a volume's root may be bound
    /// (checked for symbolic links); without it, only whole volumes.
    #[arg(long, value_name = "DIR")]
    pod_volumes_dir: Option<PathBuf>,
    /// Permission bits of the socket, in octal.
    #[arg(long, default_value = "660", value_parser = parse_mode_bits, value_name = "OCTAL")]
    socket_mode: u32,
    /// Group of the socket (dind's daemon uses the same, --group=2375).
    #[arg(long, default_value_t = 2375, value_name = "GID")]
    socket_group: u32,
    /// On SIGTERM (the pod ending), force-remove the pod's containers,
    /// networks and volumes, taking at most this long; 0s leaves them.
    /// Keep it under the pod's terminationGracePeriodSeconds.
    #[arg(long, default_value = "20s", value_parser = parse_duration, value_name = "DURATION")]
    cleanup_timeout: Duration,
    /// Where the pod's containers mount one of its emptyDir volumes, as
    /// PATH=VOLUME or PATH=VOLUME/SUBPATH (repeat for each): a bind source at
    /// or below PATH is moved to that volume's directory on the node, so
    /// `docker run -v $PWD:/src` works as in dind. The webhook writes these.
    #[arg(long, value_name = "PATH=VOLUME[/SUBPATH]", value_parser = crate::guard::binds::parse_mount)]
    mount: Vec<crate::guard::binds::PodMount>,
    /// Place the pod's containers (and build steps) under the pod's own
    /// cgroup, which the kubelet names by the pod's QoS class and uid, so
    /// the pod's limits and `kubectl top` include them (dood.guard.cgroupParent: pod).
    #[arg(long, value_enum, value_name = "QOS")]
    pod_cgroup: Option<crate::guard::cgroup::Qos>,
    /// An emptyDir volume mounted in the guard alone, at
    /// <pod-volumes-dir>/VOLUME: the guard serves a second socket there, and
    /// a bind of the pod's socket (Ryuk, docker-in-docker tools) becomes a
    /// bind of that one, a path the pod cannot swap for a link. The webhook
    /// passes it.
    #[arg(long, value_name = "VOLUME", requires = "pod_volumes_dir", value_parser = parse_volume_name)]
    bind_socket_volume: Option<String>,
    /// Fixed host ports the pod may publish on the node, as PORT or
    /// FIRST-LAST (repeat for each range; dood.guard.hostPorts). Without
    /// it, only random host ports (-p 80, -P): fixed ones collide between
    /// jobs on one node.
    #[arg(long = "host-ports", value_name = "RANGE", value_parser = parse_port_range)]
    host_ports: Vec<crate::guard::ports::PortRange>,
    /// The kubelet's (and the node dockerd's) cgroup driver.
    #[arg(long, value_enum, default_value = "cgroupfs", value_name = "DRIVER")]
    cgroup_driver: crate::guard::cgroup::Driver,
    /// The kubelet's --cgroup-root (its pods are under <root>/kubepods).
    #[arg(long, default_value = "/", value_parser = parse_absolute, value_name = "PATH")]
    cgroup_root: String,
}

#[derive(Debug, Subcommand)]
enum GuardAction {
    /// Remove what the guards of pods that are gone left behind on this node.
    ///
    /// The containers, networks and volumes labelled with a pod uid that has
    /// no directory under the kubelet's root any more (the pod is gone; its
    /// guard died with SIGKILL or with the node). Run it from the node's
    /// DaemonSet, now and then.
    Reap(ReapArgs),
}

#[derive(Debug, clap::Args)]
struct ReapArgs {
    /// The node's docker socket.
    #[arg(long, default_value = "/var/run/docker.sock", value_name = "PATH")]
    upstream: PathBuf,
    /// The kubelet's root directory on the node (the pods are its pods/<uid>).
    #[arg(long, default_value = "/var/lib/kubelet", value_parser = parse_absolute, value_name = "DIR")]
    kubelet_root: String,
    /// Print what would be removed, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Keep running and reap again after each such pause (the node
    /// DaemonSet's container); without it, reap once and exit. A round that
    /// fails is logged and the next one tried.
    #[arg(long, value_parser = parse_positive_duration, value_name = "DURATION")]
    every: Option<Duration>,
}

fn parse_pod_uid(s: &str) -> Result<String, String> {
    crate::guard::check_pod_uid(s)?;
    Ok(s.to_string())
}

fn parse_absolute(s: &str) -> Result<String, String> {
    if s.starts_with('/') && !s.split('/').any(|p| p == "..") {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not an absolute path without .."))
    }
}

fn parse_volume_name(s: &str) -> Result<String, String> {
    if crate::validate::is_dns_label(s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a volume name (a DNS label: a-z, 0-9, -)"
        ))
    }
}

fn parse_port_range(s: &str) -> Result<crate::guard::ports::PortRange, String> {
    s.parse()
}

fn parse_mode_bits(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "{s:?} is not octal permission bits (expected e.g. 660)"
        )),
    }
}

#[derive(Debug, clap::Args)]
struct ExplainArgs {
    /// Pod manifest (YAML or JSON), or `-` for standard input.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    file: String,
    /// Labels of the pod's namespace, as the webhook would see them: k=v,k2=v2.
    #[arg(long, value_parser = parse_labels, default_value = "")]
    namespace_labels: Labels,
    /// Configuration file (YAML); built-in defaults without it.
    #[arg(long)]
    config: Option<PathBuf>,
}

type Labels = std::collections::BTreeMap<String, String>;

fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut out = Labels::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value (expected k=v,k2=v2)"))?;
        crate::validate::label_key(k.trim())?;
        crate::validate::label_value(v.trim())?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address of the HTTPS listener.
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: SocketAddr,
    /// PEM certificate chain of the serving certificate.
    #[arg(long)]
    tls_cert: PathBuf,
    /// PEM private key of the serving certificate.
    #[arg(long)]
    tls_key: PathBuf,
    /// Configuration file (YAML); built-in defaults without it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Largest request body accepted, in bytes; a larger one gets HTTP 413.
    /// Above axum's 2 MiB default: an UPDATE review carries two objects.
    #[arg(long, default_value_t = crate::server::DEFAULT_MAX_BODY_BYTES, value_name = "BYTES")]
    max_body_bytes: usize,
    /// Memory budget of the reviews in flight, in bytes: their bodies as
    /// they are read, what deciding them holds (a multiple of the body,
    /// capped) and their responses until written. Past it a review waits
    /// briefly, then gets HTTP 503. At least --max-body-bytes.
    #[arg(long, default_value_t = crate::server::DEFAULT_MAX_INFLIGHT_BYTES, value_name = "BYTES")]
    max_inflight_bytes: usize,
    /// Read namespace labels from the cluster (in-cluster config or KUBECONFIG);
    /// `--kube=false` turns namespace policy off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    kube: bool,
    /// Address of the Prometheus endpoint (plain HTTP, GET /metrics): reviews
    /// by mode and outcome, latency, in-flight reviews, certificate reloads,
    /// namespace cache state. Not served unless given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Open connections served at once; at the limit new connections wait in
    /// the listen backlog until one closes. Each open connection holds about
    /// 32 KiB outside --max-inflight-bytes, so this is part of the memory bound.
    #[arg(long, default_value_t = 1024, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Concurrent streams allowed on one HTTP/2 connection.
    #[arg(long, default_value_t = 256, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_streams: u32,
    /// Deadline of one review, from its request head to its answer; past it the
    /// answer is HTTP 503 (the API server then applies the webhook's
    /// failurePolicy, as it would on its own timeout). Nine tenths of the API
    /// server's `?timeout=` applies when shorter. Keep it below the webhook's
    /// timeoutSeconds.
    #[arg(long, default_value = "9s", value_parser = parse_positive_duration, value_name = "DURATION")]
    request_timeout: Duration,
    /// Time allowed for the TLS handshake, for a request's headers, and for
    /// its body, each; a slower client is cut off (408 for a body).
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration, value_name = "DURATION")]
    read_timeout: Duration,
    /// How long an idle keep-alive connection is kept; longer than the API
    /// server's own 90 s, so that nestdock never closes a connection the API
    /// server is about to reuse.
    #[arg(long, default_value = "120s", value_parser = parse_positive_duration, value_name = "DURATION")]
    idle_timeout: Duration,
    /// After SIGTERM: how long to keep serving with /readyz false, so that
    /// the Service stops routing here before the listener closes. Keep
    /// shutdown-delay + drain-timeout below terminationGracePeriodSeconds.
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    shutdown_delay: Duration,
    /// After the listener closes: how long in-flight requests may take to
    /// finish before the process exits anyway.
    #[arg(long, default_value = "20s", value_parser = parse_duration, value_name = "DURATION")]
    drain_timeout: Duration,
    /// The certificate files are reloaded when their directory changes
    /// (inotify); they are also compared this often, in case an event was
    /// missed.
    #[arg(long, default_value = "60s", value_parser = parse_positive_duration, value_name = "DURATION")]
    cert_check_interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse_duration(s)
}

/// A duration that must be above zero.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match crate::duration::parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be above zero")),
        d => Ok(d),
    }
}

#[derive(Debug, clap::Args)]
struct InjectArgs {
    /// Manifest file, or `-` for standard input.
    #[arg(short = 'f', long = "filename", default_value = "-")]
    file: String,
    /// Mode for objects that carry no `nestdock.io/mode` annotation (acts like a namespace label).
    #[arg(long, value_parser = parse_mode)]
    mode: Option<Mode>,
    /// Configuration file (YAML); built-in defaults without it.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct CertsArgs {
    /// Name of the webhook's Service.
    #[arg(long, default_value = "nestdock")]
    service: String,
    /// Namespace of the webhook's Service.
    #[arg(long, default_value = "nestdock-system")]
    namespace: String,
    /// Directory that receives ca.crt, tls.crt and tls.key.
    #[arg(long)]
    out_dir: PathBuf,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                let _ = e.print();
                return ExitCode::from(2);
            }
            let rendered = e.render().to_string();
            let mut lines = rendered.lines();
            let mut first = lines.next().unwrap_or("error: bad usage").to_string();
            // "the following required arguments were not provided:" names
            // them on the lines below; they belong on the one line.
            if first.ends_with(':') {
                for more in lines.take_while(|l| !l.trim().is_empty()) {
                    first.push(' ');
                    first.push_str(more.trim());
                }
            }
            eprintln!("{first} (see 'nestdock --help')");
            return ExitCode::from(2);
        }
    };
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Inject(args) => inject(args),
        Command::Explain(args) => explain(args),
        Command::Certs(args) => certs(args),
        Command::Probe(args) => match crate::probe::ping(&args.socket, args.timeout) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e) => {
                eprintln!("not ready: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Guard(args) => guard(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let mut config = match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    // The guard runs nestdock's own image: the one this process runs, which
    // the Deployment passes as NESTDOCK_IMAGE, unless the config names one.
    if config.dood.guard.image.is_none() {
        if let Ok(image) = std::env::var("NESTDOCK_IMAGE") {
            crate::validate::image(&image).map_err(|e| anyhow::anyhow!("NESTDOCK_IMAGE: {e}"))?;
            config.dood.guard.image = Some(image);
        }
    }
    for warning in config.warnings() {
        tracing::warn!("config: {warning}");
    }
    Ok(config)
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // One rustls provider for the process: the server's TLS and the kube
    // client's both use it.
    crate::tls::install_ring();
    rt.block_on(async {
        let opts = crate::server::ServeOptions {
            listen: args.listen,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
            config,
            max_body_bytes: args.max_body_bytes,
            max_inflight_bytes: args.max_inflight_bytes,
            namespaces: crate::namespaces::connect(args.kube)
                .await
                .map(|cache| Arc::new(cache) as Arc<dyn crate::namespaces::NamespaceSource>),
            metrics_listen: args.metrics_listen,
            cert_check_interval: args.cert_check_interval,
            shutdown_delay: args.shutdown_delay,
            limits: crate::server::Limits {
                handshake: args.read_timeout,
                header_read: args.read_timeout,
                body_read: args.read_timeout,
                keep_alive_idle: args.idle_timeout,
                drain: args.drain_timeout,
                request: args.request_timeout,
                max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
                max_streams: args.max_concurrent_streams,
            },
        };
        crate::server::serve(opts).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Reads a manifest file, or standard input for `-`.
fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .map_err(|e| anyhow::anyhow!("cannot read standard input: {e}"))?;
        Ok(input)
    } else {
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("cannot read {file}: {e}"))
    }
}

fn explain(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_deref())?;
    let input = read_input(&args.file)?;
    let mut objects = crate::inject::read_manifests(&input)
        .map_err(|e| anyhow::anyhow!("{} is not a YAML or JSON manifest: {e}", args.file))?;
    if objects.len() != 1 {
        anyhow::bail!(
            "{} holds {} objects: explain takes one Pod manifest",
            args.file,
            objects.len()
        );
    }
    let pod = objects.remove(0);
    if pod.get("kind").and_then(serde_json::Value::as_str) != Some("Pod") {
        anyhow::bail!(
            "{} is not a Pod (kind {}): explain takes one Pod manifest",
            args.file,
            pod.get("kind")
                .map(|k| k.to_string())
                .unwrap_or_else(|| "missing".into())
        );
    }
    let namespace = pod
        .pointer("/metadata/namespace")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("default")
        .to_string();
    let ctx = crate::engine::Context {
        config: &config,
        namespace: crate::engine::NamespacePolicy::Labels {
            namespace: &namespace,
            labels: &args.namespace_labels,
        },
        native_sidecars: true,
    };
    print!("{}", crate::explain::explain(&pod, &ctx));
    Ok(ExitCode::SUCCESS)
}

fn inject(args: InjectArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_deref())?;
    let input = read_input(&args.file)?;
    let opts = crate::inject::InjectOptions {
        mode: args.mode,
        config: &config,
    };
    match crate::inject::inject(&input, &opts) {
        Ok(out) => {
            for w in &out.warnings {
                eprintln!("warning: {w}");
            }
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(out.yaml.as_bytes())?;
            stdout.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn guard(args: GuardArgs) -> anyhow::Result<ExitCode> {
    if let Some(GuardAction::Reap(reap)) = args.action {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let verb = if reap.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let round = || -> anyhow::Result<()> {
            let removed = rt.block_on(crate::guard::reap(
                &reap.upstream,
                Path::new(&reap.kubelet_root),
                reap.dry_run,
            ))?;
            let mut stdout = std::io::stdout().lock();
            for what in &removed {
                writeln!(stdout, "{verb} {what}")?;
            }
            stdout.flush()?;
            eprintln!("reap: {verb} {} objects", removed.len());
            Ok(())
        };
        let Some(every) = reap.every else {
            round()?;
            return Ok(ExitCode::SUCCESS);
        };
        // A DaemonSet's container: a round that fails (the daemon restarting)
        // is reported, and the next one comes; SIGTERM ends the wait.
        loop {
            if let Err(e) = round() {
                eprintln!("reap: this round failed: {e:#}; next in {every:?}");
            }
            let stop = rt.block_on(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    _ = tokio::time::sleep(every) => Ok::<bool, std::io::Error>(false),
                    _ = term.recv() => Ok(true),
                    _ = tokio::signal::ctrl_c() => Ok(true),
                }
            })?;
            if stop {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    let (Some(listen), Some(pod_uid)) = (args.listen, args.pod_uid) else {
        // clap requires both without a subcommand.
        eprintln!("error: --listen and --pod-uid are required (see 'nestdock guard --help')");
        return Ok(ExitCode::from(2));
    };
    if let Some(dir) = &args.pod_volumes_dir {
        if !dir.is_dir() {
            eprintln!(
                "error: --pod-volumes-dir {} is not a directory (see 'nestdock guard --help')",
                dir.display()
            );
            return Ok(ExitCode::from(2));
        }
    }
    let cgroup_parent = match args.pod_cgroup {
        Some(qos) => {
            match crate::guard::cgroup::pod_parent(
                &pod_uid,
                qos,
                args.cgroup_driver,
                &args.cgroup_root,
            ) {
                Ok(parent) => Some(parent),
                Err(e) => {
                    eprintln!("error: {e} (see 'nestdock guard --help')");
                    return Ok(ExitCode::from(2));
                }
            }
        }
        None => None,
    };
    let config = crate::guard::GuardConfig {
        cgroup_parent,
        host_ports: crate::guard::ports::HostPorts(args.host_ports),
        bind_socket_volume: args.bind_socket_volume,
        listen,
        upstream: args.upstream,
        pod_uid,
        kubelet_root: args.kubelet_root,
        pod_volumes_dir: args.pod_volumes_dir,
        socket_mode: args.socket_mode,
        socket_group: Some(args.socket_group),
        cleanup_timeout: Some(args.cleanup_timeout).filter(|d| !d.is_zero()),
        mounts: args.mount,
    };
    // One thread: the guard only moves bytes between sockets and reads small
    // bodies, and its container requests a hundredth of a core. With worker
    // threads, every frame of a streamed body woke another thread (an eventfd
    // write and a context switch per 32 KiB); on one thread the same
    // `docker cp` of 100 MiB cost about a third less CPU (bench/guard.sh).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(crate::guard::run(config))?;
    Ok(ExitCode::SUCCESS)
}

fn certs(args: CertsArgs) -> anyhow::Result<ExitCode> {
    let bundle = crate::certs::generate(&args.service, &args.namespace)?;
    bundle.write_to(&args.out_dir)?;
    println!("{}", bundle.ca_bundle_base64());
    Ok(ExitCode::SUCCESS)
}
