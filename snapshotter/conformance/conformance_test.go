// Package conformance runs containerd's own snapshotter test suite
// (snapshots/testsuite of containerd 1.6, Debian's
// golang-github-containerd-containerd-dev) against d4c-snapshotter through
// containerd's proxy client, one fresh snapshotter process per subtest.
// scripts/conformance builds and runs it (GOPATH mode, as root).
package conformance

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
)

// TestD4cSnapshotter runs the suite; D4C_SNAPSHOTTER names the binary.
func TestD4cSnapshotter(t *testing.T) {
	bin := os.Getenv("D4C_SNAPSHOTTER")
	if bin == "" {
		t.Fatal("D4C_SNAPSHOTTER: the d4c-snapshotter binary to test")
	}
	testsuite.SnapshotterSuite(t, "d4c", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sock := filepath.Join(root, "snapshotter.sock")
		cmd := exec.Command(bin, "--root", filepath.Join(root, "state"), "--address", sock)
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, nil, err
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := os.Stat(sock); err == nil {
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				return nil, nil, fmt.Errorf("no socket at %s", sock)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// The target is only the HTTP/2 authority; the dialer goes to the socket.
		conn, err := grpc.Dial("localhost", grpc.WithInsecure(),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", sock)
			}))
		if err != nil {
			cmd.Process.Kill()
			return nil, nil, err
		}
		sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "d4c")
		return sn, func() error {
			conn.Close()
			cmd.Process.Kill()
			cmd.Wait()
			return nil
		}, nil
	})
}
