package main

// The node: containerd (with its CRI plugin), the kubelet, kube-scheduler,
// kube-controller-manager and kube-proxy, started beside the API server when
// kube-testplane runs with --node. The Rust suite (tests/e2e_node.rs) starts
// kube-testplane inside a network namespace of its own (tests/kube/netns.sh):
// the node's address, the CNI bridge, kube-proxy's iptables rules and every
// pod live there, so nothing this node does touches the machine's network,
// and the suite reaches the API server over one veth pair.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	// nodeIP is the node's address inside its network namespace (netns.sh
	// gives it to the veth there); the API server serves on it too.
	nodeIP = "10.213.0.2"
	// kubernetesServiceIP is the `kubernetes` Service's cluster IP: the first
	// address of --service-cluster-ip-range.
	kubernetesServiceIP = "10.96.0.1"
	nodeName            = "nestdock-node"
	// podSubnet is the CNI bridge's range (host-local IPAM).
	podSubnet = "10.214.0.0/24"
	// pauseImage is the sandbox image containerd starts for every pod; the
	// suite builds it (tests/kube/pause) and imports it with the others.
	pauseImage = "nestdock.test/pause:1"
	// dockerCgroup is where the node's dockerd puts its containers.
	dockerCgroup = "nestdock-node-docker"
)

// nodeOptions are kube-testplane's node flags.
type nodeOptions struct {
	dir        string   // state: containerd's root, the kubelet's root, configs
	binDir     string   // containerd, containerd-shim-runc-v2, ctr
	runc       string   // the OCI runtime containerd runs
	cniBinDir  string   // the CNI plugins
	cniMTU     int      // the pod network's MTU
	images     []string // OCI archives to import before the kubelet starts
	dockerd    string   // a dockerd to run on the node for dood pods ("": none)
	kubeconfig string   // admin kubeconfig for the components
	pki        pkiFiles
}

// node is the running set of child processes, stopped in reverse order.
type node struct {
	opts  nodeOptions
	lock  *os.File
	procs []*exec.Cmd
	names []string
	exit  chan string
}

func (o nodeOptions) containerdSocket() string {
	return filepath.Join(o.dir, "run", "containerd.sock")
}

// startNode starts containerd, imports the images, then the Kubernetes
// components, and returns once they run (the caller waits for the Node to
// be Ready through the API).
func startNode(o nodeOptions) (*node, error) {
	lock, err := lockAndReclaim(o.dir)
	if err != nil {
		if lock != nil {
			_ = lock.Close()
		}
		return nil, err
	}
	n := &node{opts: o, lock: lock, exit: make(chan string, 8)}
	for _, d := range []string{"containerd", "run", "kubelet", "cni", "logs", "docker"} {
		if err := os.MkdirAll(filepath.Join(o.dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := n.writeConfigs(); err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}

	if err := n.start("containerd", filepath.Join(o.binDir, "containerd"),
		"--config", filepath.Join(o.dir, "containerd.toml")); err != nil {
		return nil, err
	}
	if err := waitSocket(o.containerdSocket(), 60*time.Second, n.exit); err != nil {
		n.stop()
		return nil, fmt.Errorf("containerd: %w (log: %s)", err, n.logPath("containerd"))
	}
	for _, image := range o.images {
		start := time.Now()
		out, err := n.ctr("images", "import", "--no-unpack=false", "--local", image)
		if err != nil {
			n.stop()
			return nil, fmt.Errorf("importing %s: %v: %s", image, err, out)
		}
		fmt.Fprintf(os.Stderr, "kube-testplane: imported %s in %.1fs\n", image, time.Since(start).Seconds())
	}

	if o.dockerd != "" {
		// The node's own Docker Engine, as a node that offers dood runs it:
		// its socket at the path nestdock's dood.hostSocket names, its
		// containers under a cgroup of their own (reclaimed like the pods'),
		// its bridge inside the node's namespace, no iptables changes.
		docker := filepath.Join(o.dir, "docker")
		if err := n.start("dockerd", o.dockerd,
			"--host=unix://"+filepath.Join(docker, "docker.sock"),
			"--data-root="+filepath.Join(docker, "root"),
			"--exec-root="+filepath.Join(docker, "x"),
			"--pidfile="+filepath.Join(docker, "dockerd.pid"),
			"--cgroup-parent="+dockerCgroup,
			"--iptables=false", "--ip6tables=false", "--ip-masq=false",
			"--shutdown-timeout=5",
		); err != nil {
			n.stop()
			return nil, err
		}
		if err := waitSocket(filepath.Join(docker, "docker.sock"), 60*time.Second, n.exit); err != nil {
			n.stop()
			return nil, fmt.Errorf("dockerd: %w (log: %s)", err, n.logPath("dockerd"))
		}
	}

	// The scheduler and the controller-manager: the admin kubeconfig, one
	// instance (no leader election), no serving port of their own.
	controlLoopArgs := []string{
		"--kubeconfig=" + o.kubeconfig,
		"--authentication-kubeconfig=" + o.kubeconfig,
		"--authorization-kubeconfig=" + o.kubeconfig,
		"--leader-elect=false",
		"--bind-address=127.0.0.1",
		"--secure-port=0",
	}
	components := []struct {
		name string
		args []string
	}{
		{"kubelet", []string{
			"--config=" + filepath.Join(o.dir, "kubelet.yaml"),
			"--kubeconfig=" + o.kubeconfig,
			"--root-dir=" + filepath.Join(o.dir, "kubelet"),
			"--cert-dir=" + filepath.Join(o.dir, "kubelet-pki"),
			"--hostname-override=" + nodeName,
			"--node-ip=" + nodeIP,
			"--v=1",
		}},
		{"kube-scheduler", controlLoopArgs},
		{"kube-controller-manager", append(controlLoopArgs,
			"--service-account-private-key-file="+o.pki.saPrivate,
			"--root-ca-file="+o.pki.caCert,
			"--use-service-account-credentials=false",
			"--service-cluster-ip-range=10.96.0.0/16",
		)},
		{"kube-proxy", []string{
			"--config=" + filepath.Join(o.dir, "kube-proxy.yaml"),
			"--hostname-override=" + nodeName,
		}},
	}
	for _, c := range components {
		if err := n.start(c.name, self, append([]string{c.name}, c.args...)...); err != nil {
			n.stop()
			return nil, err
		}
	}
	return n, nil
}

func (n *node) logPath(name string) string {
	return filepath.Join(n.opts.dir, "logs", name+".log")
}

// start runs one child with its output in logs/NAME.log. It dies with this
// process (Pdeathsig), so a killed test leaves no component behind; the
// containers it started are stopped by the next run's kubelet, which kills
// every pod the (new) API server does not know.
func (n *node) start(name, bin string, args ...string) error {
	log, err := os.OpenFile(n.logPath(name), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = log
	cmd.Stderr = log
	// The node's binaries first: Debian's containerd 1.6 (installed for the
	// daemon tests) has a containerd-shim-runc-v2 too, which 2.x cannot use.
	cmd.Env = append(os.Environ(), "PATH="+n.opts.binDir+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return fmt.Errorf("%s: %w", name, err)
	}
	n.procs = append(n.procs, cmd)
	n.names = append(n.names, name)
	go func() {
		err := cmd.Wait()
		_ = log.Close()
		n.exit <- fmt.Sprintf("%s exited (%v); log: %s", name, err, n.logPath(name))
	}()
	return nil
}

// ctr runs containerd's own client against the node's containerd, in the
// namespace the CRI plugin uses.
func (n *node) ctr(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	full := append([]string{"--address", n.opts.containerdSocket(), "--namespace", "k8s.io"}, args...)
	return exec.CommandContext(ctx, filepath.Join(n.opts.binDir, "ctr"), full...).CombinedOutput()
}

// stop ends the node: every pod's containers first (so no daemon the suite
// started outlives it), then the components in reverse order, then
// containerd. Bounded: each step has a deadline.
func (n *node) stop() {
	for i := len(n.procs) - 1; i >= 0; i-- {
		if n.names[i] == "containerd" {
			n.killContainers()
		}
		p := n.procs[i].Process
		_ = p.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() {
			for {
				if err := p.Signal(syscall.Signal(0)); err != nil {
					close(done)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = p.Kill()
		}
	}
	n.procs = nil
	n.names = nil
}

// killContainers kills and removes every task and container in the CRI
// namespace, with containerd's client: after the kubelet is gone nothing else
// would stop them.
func (n *node) killContainers() {
	out, err := n.ctr("tasks", "ls", "-q")
	if err != nil {
		return
	}
	for _, id := range strings.Fields(string(out)) {
		_, _ = n.ctr("tasks", "kill", "-s", "SIGKILL", id)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		out, err := n.ctr("tasks", "ls", "-q")
		if err != nil || len(strings.Fields(string(out))) == 0 {
			break
		}
		for _, id := range strings.Fields(string(out)) {
			_, _ = n.ctr("tasks", "delete", "-f", id)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, err := n.ctr("containers", "ls", "-q"); err == nil {
		for _, id := range strings.Fields(string(out)) {
			_, _ = n.ctr("containers", "rm", id)
		}
	}
}

func waitSocket(path string, timeout time.Duration, exit <-chan string) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case why := <-exit:
			return errors.New(why)
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("no socket at %s within %s", path, timeout)
}

func (n *node) writeConfigs() error {
	o := n.opts
	files := map[string]string{
		// containerd 2.x, configuration version 3. cgroupfs (no systemd here),
		// the locally built pause image pinned so the kubelet's image GC never
		// removes it, the CNI plugins of Debian's containernetworking-plugins.
		"containerd.toml": fmt.Sprintf(`version = 3
root = %q
state = %q

[grpc]
  address = %q

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q

[plugins.'io.containerd.cri.v1.runtime']
  # This VM's capability bounding set lacks CAP_SYS_RESOURCE, without which
  # runc cannot lower a process's oom_score_adj (the kubelet asks -998 for
  # the sandbox): containerd's switch for that case (made for rootless)
  # raises such values to its own.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %q
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%q]
    conf_dir = %q
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
`, filepath.Join(o.dir, "containerd"), filepath.Join(o.dir, "run", "state"), o.containerdSocket(),
			pauseImage, o.runc, o.cniBinDir, filepath.Join(o.dir, "cni")),

		// One bridge for every pod, with the MTU the suite asks for; no IP
		// masquerade and no default route out of the namespace, so a pod
		// reaches the node's address and other pods, nothing else.
		"cni/10-nestdock.conflist": fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "nestdock-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "ndpods0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "mtu": %d,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "10.96.0.0/16"}, {"dst": "10.213.0.0/30"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, o.cniMTU, podSubnet),

		// No nameserver: nothing in the suite resolves names outside the pod,
		// and a pod must not send a query anywhere.
		"resolv.conf": "",

		"kubelet.yaml": fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://%s
cgroupDriver: cgroupfs
# This machine has cgroup v1 (hybrid); kubelet 1.35+ refuses it unless told.
failCgroupV1: false
failSwapOn: false
address: %s
port: 10250
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %q}
authorization: {mode: AlwaysAllow}
resolvConf: %q
clusterDomain: cluster.local
serializeImagePulls: false
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  imagefs.available: 1%%
  nodefs.inodesFree: 1%%
shutdownGracePeriod: 0s
rotateCertificates: false
volumePluginDir: %q
maxPods: 60
`, o.containerdSocket(), nodeIP, o.pki.caCert, filepath.Join(o.dir, "resolv.conf"),
			filepath.Join(o.dir, "volume-plugins")),

		"kube-proxy.yaml": fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %q
mode: iptables
bindAddress: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: %s
conntrack:
  maxPerCore: 0
`, o.kubeconfig, nodeIP, podSubnet),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(o.dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// parseImages splits the comma-separated --images flag.
func parseImages(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// nodeAPIServerArgs are the API server's flags for a cluster with a node
// (after apiserverArgs; the later value of a flag wins): it serves on the
// node's address, so pods reach it; the `kubernetes` Service's endpoints are
// kept (kube-proxy sends the cluster IP there); and it reaches the kubelet
// (logs, exec) with the admin certificate, which the kubelet's client CA
// trusts.
func nodeAPIServerArgs(pki pkiFiles) []string {
	return []string{
		"--bind-address=" + nodeIP,
		"--advertise-address=" + nodeIP,
		"--endpoint-reconciler-type=lease",
		"--kubelet-client-certificate=" + pki.adminCert,
		"--kubelet-client-key=" + pki.adminKey,
		"--kubelet-preferred-address-types=InternalIP",
	}
}

// waitNodeReady polls the Node until its Ready condition is True, a
// component exits, or the timeout passes.
func waitNodeReady(server string, pki pkiFiles, timeout time.Duration, exit <-chan string) error {
	client, err := adminClient(pki)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	last := "not registered yet"
	for time.Now().Before(deadline) {
		resp, err := client.Get(server + "/api/v1/nodes/" + nodeName)
		if err == nil {
			var n struct {
				Status struct {
					Conditions []struct{ Type, Status, Reason, Message string }
				}
			}
			decodeErr := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&n)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK && decodeErr == nil {
				for _, c := range n.Status.Conditions {
					if c.Type == "Ready" {
						if c.Status == "True" {
							return nil
						}
						last = c.Reason + ": " + c.Message
					}
				}
			}
		}
		select {
		case why := <-exit:
			return errors.New(why)
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("node %s not Ready within %s: %s", nodeName, timeout, last)
}

// lockAndReclaim takes the node's lock (one node per machine: the veth
// pair, the ports and the kubepods cgroups are fixed; a second suite waits)
// and then removes what an earlier run left behind when its kube-testplane
// was killed outright: the processes of every pod (in the kubepods cgroup),
// containerd's shims, the mounts below dir, and the state. Each step is
// bounded; what cannot be removed is an error naming it.
func lockAndReclaim(dir string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		_ = lock.Close()
		return nil, err
	}
	for attempt := 0; attempt < 50; attempt++ {
		pids := cgroupPids("/sys/fs/cgroup/pids/kubepods")
		pids = append(pids, cgroupPids("/sys/fs/cgroup/pids/"+dockerCgroup)...)
		pids = append(pids, pidsMentioning(dir)...)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(200 * time.Millisecond)
	}
	mounts, err := mountsBelow(dir)
	if err != nil {
		return lock, err
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
	if err := os.RemoveAll(dir); err != nil {
		return lock, fmt.Errorf("removing the previous run's node state: %w", err)
	}
	return lock, nil
}

// cgroupPids lists the processes in a cgroup v1 directory and below it.
func cgroupPids(root string) []int {
	var pids []int
	_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return nil
		}
		b, _ := os.ReadFile(path)
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// pidsMentioning lists the processes whose command line names dir
// (containerd and its shims are started with the node's socket path).
func pidsMentioning(dir string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), dir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// mountsBelow lists the mount points at or below dir, in mount order.
func mountsBelow(dir string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out, nil
}
