// Command ryuk is a test double of Testcontainers' Ryuk (the resource reaper,
// github.com/testcontainers/moby-ryuk), written for the suite from Ryuk's
// documented behaviour because its module cannot be fetched here and no image
// can be pulled. It is what the suite's Testcontainers runs start as
// RYUK_CONTAINER_IMAGE (scripts/build-node.sh makes the image):
//
//   - it talks to the Docker API at /var/run/docker.sock, where Testcontainers
//     bind-mounts the daemon's socket (the path as the daemon sees it:
//     TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE, which nestdock sets in rootless);
//   - it listens on TCP RYUK_PORT (8080) and logs "Started!" once it does;
//   - each line a client sends is a filter in query-string form
//     (`label=org.testcontainers.session-id=ID`, several joined by `&`); it
//     answers "ACK";
//   - once every client has disconnected and none has come back within
//     RYUK_RECONNECTION_TIMEOUT (default 10s), it force-removes the containers,
//     then the networks and volumes, that match any filter it was sent, and
//     exits; without any client within RYUK_CONNECTION_TIMEOUT (60s) it exits.
//
// Where it differs: no image removal, no retries, no shutdown timeout.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("ryuk: ")
	port := env("RYUK_PORT", "8080")
	connectTimeout := duration("RYUK_CONNECTION_TIMEOUT", 60*time.Second)
	reconnectTimeout := duration("RYUK_RECONNECTION_TIMEOUT", 10*time.Second)

	l, err := net.Listen("tcp", ":"+port)
	if err != nil {
		log.Fatal(err)
	}
	log.Print("Started!")

	var mu sync.Mutex
	filters := map[string]url.Values{}
	events := make(chan int, 16) // +1 connected, -1 disconnected
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				log.Fatal(err)
			}
			events <- 1
			go func() {
				defer func() { _ = conn.Close(); events <- -1 }()
				lines := bufio.NewScanner(io.LimitReader(conn, 1<<20))
				for lines.Scan() {
					line := strings.TrimSpace(lines.Text())
					q, err := url.ParseQuery(line)
					if err != nil || line == "" {
						log.Printf("bad filter %q", line)
						continue
					}
					mu.Lock()
					filters[line] = q
					mu.Unlock()
					log.Printf("filter %s", line)
					_, _ = conn.Write([]byte("ACK\n"))
				}
			}()
		}
	}()

	clients, seen := 0, false
	timer := time.NewTimer(connectTimeout)
	for {
		select {
		case d := <-events:
			clients += d
			seen = true
			if clients == 0 {
				timer.Reset(reconnectTimeout)
			} else {
				timer.Stop()
			}
			continue
		case <-timer.C:
		}
		if !seen {
			log.Print("no client connected; exiting")
			return
		}
		break
	}
	mu.Lock()
	defer mu.Unlock()
	for line, q := range filters {
		reap(line, q)
	}
}

// reap removes what one filter matches: containers (forced, with their
// anonymous volumes), then networks and volumes.
func reap(line string, q url.Values) {
	f, _ := json.Marshal(map[string][]string(q))
	fq := "filters=" + url.QueryEscape(string(f))
	var containers []struct{ Id string }
	if err := call("GET", "/containers/json?all=1&"+fq, &containers); err != nil {
		log.Printf("%s: listing containers: %v", line, err)
	}
	for _, c := range containers {
		err := call("DELETE", "/containers/"+c.Id+"?force=1&v=1", nil)
		log.Printf("%s: removed container %s (%v)", line, c.Id, err)
	}
	var networks []struct{ Id string }
	if err := call("GET", "/networks?"+fq, &networks); err == nil {
		for _, n := range networks {
			_ = call("DELETE", "/networks/"+n.Id, nil)
		}
	}
	_ = call("POST", "/volumes/prune?"+fq, nil)
}

var docker = &http.Client{
	Timeout: 30 * time.Second,
	Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", "/var/run/docker.sock")
	}},
}

func call(method, path string, out any) error {
	req, err := http.NewRequest(method, "http://docker"+path, nil)
	if err != nil {
		return err
	}
	resp, err := docker.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, strings.TrimSpace(string(body)))
	}
	if out != nil {
		return json.Unmarshal(body, out)
	}
	return nil
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func duration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
		log.Printf("%s=%q is not a duration; using %s", name, v, def)
	}
	return def
}
