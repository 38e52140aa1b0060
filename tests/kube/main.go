// Command kube-testplane is nestdock's test control plane: embedded etcd and
// kube-apiserver in one process, on loopback, for the Rust e2e suite
// (tests/e2e_apiserver.rs). It is test infrastructure only; the product is Rust.
//
// It generates its own certificates and service-account keys in a state
// directory, writes an admin kubeconfig, prints one line
//
//	nestdock-testplane ready https://127.0.0.1:PORT
//
// on standard output once /readyz answers ok, and exits when its parent process
// dies (the parent's pid is polled) or on SIGTERM/SIGINT.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	runComponent()
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "kube-testplane: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	kubeconfig := flag.String("kubeconfig", "", "path to write the admin kubeconfig to (required)")
	stateDir := flag.String("state-dir", "", "directory for etcd data, certificates and keys (default: a new temporary directory)")
	keep := flag.Bool("keep", false, "keep the state directory on exit (for debugging)")
	port := flag.Int("port", 0, "secure port of kube-apiserver on 127.0.0.1 (default: a free port)")
	verbosity := flag.Int("v", 0, "kube-apiserver log verbosity")
	readyTimeout := flag.Duration("ready-timeout", 3*time.Minute, "how long to wait for /readyz")
	etcdOnly := flag.Bool("etcd-only", false, "run etcd alone and print \"nestdock-testplane etcd ready URL\" (with --state-dir, so that kube-apiserver can be restarted on the same data)")
	etcdServers := flag.String("etcd-servers", "", "use this etcd (from --etcd-only) instead of an embedded one")
	saAdmission := flag.Bool("service-account-admission", false, "keep the ServiceAccount admission plugin on (pods then need their ServiceAccount, which no controller creates here)")
	nodeMode := flag.Bool("node", false, "also run a node (containerd, kubelet, kube-scheduler, kube-controller-manager, kube-proxy; see node.go) and print \"nestdock-testplane node ready\" once it is Ready; run inside netns.sh's network namespace")
	nodeDir := flag.String("node-dir", "", "the node's state directory (with --node)")
	nodeBinDir := flag.String("node-bin-dir", "", "directory with containerd, containerd-shim-runc-v2 and ctr (with --node)")
	runc := flag.String("runc", "/usr/sbin/runc", "the OCI runtime containerd runs (with --node)")
	cniBinDir := flag.String("cni-bin-dir", "/usr/lib/cni", "the CNI plugins (with --node)")
	cniMTU := flag.Int("cni-mtu", 1500, "the pod network's MTU (with --node)")
	images := flag.String("images", "", "comma-separated OCI archives to import into containerd (with --node)")
	dockerd := flag.String("dockerd", "", "also run this dockerd on the node, its socket at NODE-DIR/docker/docker.sock (with --node)")
	flag.Parse()
	if *nodeMode && (*nodeDir == "" || *nodeBinDir == "") {
		return errors.New("--node needs --node-dir and --node-bin-dir")
	}
	if *kubeconfig == "" && !*etcdOnly {
		return errors.New("--kubeconfig is required")
	}

	parent := os.Getppid()
	dir := *stateDir
	if dir == "" {
		d, err := os.MkdirTemp("", "nestdock-testplane-")
		if err != nil {
			return err
		}
		dir = d
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var running *node
	cleanup := func() {
		if running != nil {
			running.stop()
		}
		if !*keep && *stateDir == "" {
			_ = os.RemoveAll(dir)
		}
	}
	defer cleanup()
	go watchParent(parent, cleanup)

	if *etcdOnly {
		etcd, etcdURL, err := startEtcd(filepath.Join(dir, "etcd"))
		if err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		defer etcd.Close()
		fmt.Printf("nestdock-testplane etcd ready %s\n", etcdURL)
		return waitEtcd(etcd)
	}

	pki, err := writePKI(filepath.Join(dir, "pki"))
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}

	var etcd *embed.Etcd
	etcdURL := *etcdServers
	if etcdURL == "" {
		if etcd, etcdURL, err = startEtcd(filepath.Join(dir, "etcd")); err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		defer etcd.Close()
	}

	apiPort := *port
	if apiPort == 0 {
		if apiPort, err = freePort(); err != nil {
			return err
		}
	}
	host := "127.0.0.1"
	if *nodeMode {
		host = nodeIP
	}
	server := "https://" + net.JoinHostPort(host, strconv.Itoa(apiPort))
	if err := writeKubeconfig(*kubeconfig, server, pki); err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}

	cmd := app.NewAPIServerCommand()
	args := apiserverArgs(apiPort, etcdURL, pki, *verbosity, *saAdmission || *nodeMode)
	if *nodeMode {
		args = append(args, nodeAPIServerArgs(pki)...)
	}
	cmd.SetArgs(args)
	apiErr := make(chan error, 1)
	go func() { apiErr <- cmd.Execute() }()

	start := time.Now()
	if err := waitReady(server, pki, *readyTimeout, apiErr); err != nil {
		return err
	}
	fmt.Printf("nestdock-testplane ready %s (state %s, %.1fs)\n", server, dir, time.Since(start).Seconds())

	var nodeExit chan string
	if *nodeMode {
		running, err = startNode(nodeOptions{
			dir: *nodeDir, binDir: *nodeBinDir, runc: *runc, cniBinDir: *cniBinDir, cniMTU: *cniMTU,
			images: parseImages(*images), dockerd: *dockerd, kubeconfig: *kubeconfig, pki: pki,
		})
		if err != nil {
			return fmt.Errorf("node: %w", err)
		}
		nodeStart := time.Now()
		if err := waitNodeReady(server, pki, *readyTimeout, running.exit); err != nil {
			return fmt.Errorf("node: %w", err)
		}
		fmt.Printf("nestdock-testplane node ready %s (%.1fs)\n", nodeName, time.Since(nodeStart).Seconds())
		nodeExit = running.exit
	}

	if etcd == nil {
		select {
		case err := <-apiErr:
			return err
		case why := <-nodeExit:
			return errors.New(why)
		}
	}
	select {
	case err := <-apiErr:
		return err
	case why := <-nodeExit:
		return errors.New(why)
	case <-etcd.Server.StopNotify():
		return errors.New("etcd stopped")
	case err := <-etcd.Err():
		return fmt.Errorf("etcd: %w", err)
	}
}

// waitEtcd runs until etcd stops or fails, or SIGTERM/SIGINT.
func waitEtcd(etcd *embed.Etcd) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
		return nil
	case <-etcd.Server.StopNotify():
		return errors.New("etcd stopped")
	case err := <-etcd.Err():
		return fmt.Errorf("etcd: %w", err)
	}
}

// apiserverArgs are kube-apiserver's flags: loopback only, RBAC, the default
// admission plugins (MutatingAdmissionWebhook and PodSecurity among them) less
// ServiceAccount unless saAdmission: it refuses every pod for want of the
// "default" ServiceAccount that no controller-manager creates here (envtest
// turns it off too).
func apiserverArgs(port int, etcdURL string, pki pkiFiles, verbosity int, saAdmission bool) []string {
	plugins := []string{
		"--enable-admission-plugins=MutatingAdmissionWebhook,ValidatingAdmissionWebhook,PodSecurity",
		"--disable-admission-plugins=ServiceAccount",
	}
	if saAdmission {
		plugins = []string{"--enable-admission-plugins=ServiceAccount,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,PodSecurity"}
	}
	return append(plugins,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(port),
		"--etcd-servers="+etcdURL,
		"--tls-cert-file="+pki.servingCert,
		"--tls-private-key-file="+pki.servingKey,
		"--client-ca-file="+pki.caCert,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pki.saPublic,
		"--service-account-signing-key-file="+pki.saPrivate,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--endpoint-reconciler-type=none",
		"--authorization-mode=Node,RBAC",
		"--allow-privileged=true",
		"--enable-aggregator-routing=true",
		"--profiling=false",
		"--v="+strconv.Itoa(verbosity),
	)
}

func startEtcd(dir string) (*embed.Etcd, string, error) {
	clientPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, "", err
	}
	clientURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(clientPort)}
	peerURL := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(peerPort)}

	cfg := embed.NewConfig()
	cfg.Name = "testplane"
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	// A test store: no fsync, so that 2 shared cores are not spent waiting on disk.
	cfg.UnsafeNoFsync = true

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, "", err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, "", errors.New("not ready within 60s")
	}
	return e, clientURL.String(), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitReady polls /readyz with the admin client certificate, at most every
// 250ms, until it answers 200 or the timeout passes.
func waitReady(server string, pki pkiFiles, timeout time.Duration, apiErr <-chan error) error {
	client, err := adminClient(pki)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	last := "no answer yet"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, server+"/readyz", nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		select {
		case err := <-apiErr:
			if err == nil {
				err = errors.New("exited")
			}
			return fmt.Errorf("kube-apiserver: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready within %s: %s", timeout, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// adminClient is an HTTPS client with the admin certificate, trusting the CA.
func adminClient(pki pkiFiles) (*http.Client, error) {
	cert, err := tls.LoadX509KeyPair(pki.adminCert, pki.adminKey)
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(pki.caCert)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs:      roots,
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
		}},
	}, nil
}

// watchParent ends the process when its parent dies: the parent's pid changes
// (to 1 or a subreaper) once it is gone. Polled twice a second.
func watchParent(parent int, cleanup func()) {
	for {
		time.Sleep(500 * time.Millisecond)
		if os.Getppid() != parent {
			fmt.Fprintln(os.Stderr, "kube-testplane: parent process gone, exiting")
			cleanup()
			os.Exit(0)
		}
	}
}
