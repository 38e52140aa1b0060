package main

import (
	"context"
	"os"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client metrics, as each component's own main registers them
	_ "k8s.io/component-base/metrics/prometheus/version"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// components are the node's Kubernetes programs, built from the same
// k8s.io/kubernetes release as the API server into this one binary and run
// as child processes of it (`kube-testplane kubelet --flags…`), the way
// hyperkube once shipped them. Separate processes, not goroutines: each
// component owns process-wide state (flags, metrics registries, klog,
// signal handlers) that would clash inside one process.
var components = map[string]func() *cobra.Command{
	"kubelet":                 func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-proxy":              proxy.NewProxyCommand,
}

// runComponent runs the component named by the first argument, if there is
// one, and exits with its status; otherwise it returns.
func runComponent() {
	if len(os.Args) < 2 {
		return
	}
	newCommand, ok := components[os.Args[1]]
	if !ok {
		return
	}
	cmd := newCommand()
	cmd.SetArgs(os.Args[2:])
	os.Exit(cli.Run(cmd))
}
