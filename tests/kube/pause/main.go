// Command pause is the sandbox process of every pod on the test node
// (containerd's pinned sandbox image, built by scripts/build-node.sh): it
// holds the pod's namespaces open, reaps the zombies that end up with it when
// the pod shares its process namespace, and exits on SIGINT or SIGTERM.
// Written for the suite from the documented role of the sandbox container
// (CRI RunPodSandbox); no image can be pulled here.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
