package main

import (
	"bufio"
	"io"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cascade-cdn/cascade/node"
)

// TestSIGTERMDrains runs the real main loop: on SIGTERM the node answers
// new sessions with 503 and /readyz fails while it drains, then exits 0.
func TestSIGTERMDrains(t *testing.T) {
	defer http.DefaultClient.CloseIdleConnections()
	outR, outW := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- run([]string{"--http", "127.0.0.1:0", "--webrtc", "127.0.0.1:0", "--rtsp", "127.0.0.1:0", "--rtsp.udp_rtp", "", "--rtsp.udp_rtcp", "", "--log.level", "error"}, nil, outW, io.Discard)
		outW.Close()
	}()
	urls := regexp.MustCompile(`streams:\s+(http://\S+)/`)
	sc := bufio.NewScanner(outR)
	var base string
	for sc.Scan() {
		if m := urls.FindStringSubmatch(sc.Text()); m != nil {
			base = m[1]
			break
		}
	}
	go io.Copy(io.Discard, outR)
	if base == "" {
		t.Fatal("node printed no URL")
	}
	if r, err := http.Get(base + "/readyz"); err != nil || r.StatusCode != 200 {
		t.Fatalf("/readyz before SIGTERM: %v %v", r, err)
	} else {
		r.Body.Close()
	}
	syscall.Kill(syscall.Getpid(), syscall.SIGTERM)

	drainTime := node.DefaultConfig().DrainTimeout
	deadline := time.Now().Add(node.MinDrain)
	var draining bool
	for time.Now().Before(deadline) && !draining {
		r, err := http.Post(base+"/whip/live", "application/sdp", strings.NewReader("v=0\r\n"))
		if err == nil {
			draining = r.StatusCode == 503
			r.Body.Close()
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !draining {
		t.Fatal("POST was never answered 503 while draining")
	}
	if r, err := http.Get(base + "/readyz"); err == nil {
		r.Body.Close()
		if r.StatusCode != 503 {
			t.Errorf("/readyz while draining: %d", r.StatusCode)
		}
	}
	select {
	case c := <-code:
		if c != 0 {
			t.Fatalf("exit code %d", c)
		}
	case <-time.After(drainTime + 10*time.Second):
		t.Fatal("node did not exit after SIGTERM")
	}
}

func TestMain(m *testing.M) {
	// os/signal starts its one receiving goroutine for the process on
	// first use and never stops it; everything else must be gone.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("os/signal.signal_recv"))
}
