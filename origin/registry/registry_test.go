package registry

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type pub struct {
	codec  string
	r      *Registry
	st     *Stream
	closed bool
}

func (p *pub) Source() string     { return "test" }
func (p *pub) VideoCodec() string { return p.codec }
func (p *pub) Close() error {
	p.closed = true
	if p.st != nil {
		p.r.Unpublish(p.st, p)
	}
	return nil
}

func newRegistry(t *testing.T, grace time.Duration) *Registry {
	r := New(Config{GracePeriod: grace, SilenceTimeout: time.Hour}, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(r.Close)
	return r
}

func waitGone(t *testing.T, r *Registry, name string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for r.Get(name) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s still there after %v", name, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTakeoverSameCodecKeepsHubs: a new publisher of the same codec
// continues the stream's hubs; the old one is closed.
func TestTakeoverSameCodecKeepsHubs(t *testing.T) {
	r := newRegistry(t, time.Second)
	a := &pub{codec: "H264", r: r}
	a.st = r.Publish("live", a)
	b := &pub{codec: "H264", r: r}
	b.st = r.Publish("live", b)
	if !a.closed || b.st != a.st || b.st.Info().Source != "test" {
		t.Fatalf("takeover: old closed=%v, same stream=%v", a.closed, b.st == a.st)
	}
}

// TestCodecChangeEndsStream: an H.265 publisher cannot continue an H.264
// stream's hubs; the old stream ends (its hubs close) and a new one starts.
func TestCodecChangeEndsStream(t *testing.T) {
	r := newRegistry(t, time.Second)
	var ended []string
	r.OnEnd(func(name string) { ended = append(ended, name) })
	a := &pub{codec: "H264", r: r}
	a.st = r.Publish("live", a)
	sub := a.st.Video.Subscribe()
	b := &pub{codec: "H265", r: r}
	b.st = r.Publish("live", b)
	if b.st == a.st || b.st.VideoCodec() != "H265" || r.Get("live") != b.st {
		t.Fatalf("codec change did not make a new stream")
	}
	select {
	case <-sub.Done():
	default:
		t.Fatal("viewers of the old stream were not closed")
	}
	if !a.closed || len(ended) != 1 {
		t.Fatalf("old publisher closed=%v, ended=%v", a.closed, ended)
	}
}

// TestHoldOutlivesGrace: a held stream survives its publisher's absence
// beyond the grace period, and ends a grace period after release.
func TestHoldOutlivesGrace(t *testing.T) {
	r := newRegistry(t, 200*time.Millisecond)
	a := &pub{codec: "H264", r: r}
	a.st = r.Publish("cam", a)
	release := r.Hold(a.st, "rtsp-pull")
	a.Close()
	time.Sleep(700 * time.Millisecond) // > grace + a watchdog tick
	if r.Get("cam") == nil {
		t.Fatal("a held stream ended")
	}
	if got := a.st.Info().Source; got != "rtsp-pull" {
		t.Fatalf("held stream's source %q, want rtsp-pull", got)
	}
	release()
	release() // idempotent
	waitGone(t, r, "cam", 2*time.Second)
}
