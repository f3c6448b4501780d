package node

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cascade-cdn/cascade/media/mediatest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testLogger() *slog.Logger {
	if os.Getenv("CASCADE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func startNode(t *testing.T, mutate ...func(*Config)) *Node {
	t.Helper()
	cfg := TestConfig()
	for _, m := range mutate {
		m(&cfg)
	}
	n, err := New(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func publish(t *testing.T, n *Node, stream string, o mediatest.PublisherOptions) *mediatest.Publisher {
	t.Helper()
	p, err := mediatest.Publish(ctxT(t, 10*time.Second), n.URL()+"/whip/"+stream, o)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func watch(t *testing.T, n *Node, stream string) *mediatest.Viewer {
	t.Helper()
	v, err := mediatest.Watch(ctxT(t, 10*time.Second), n.URL()+"/whep/"+stream, mediatest.ViewerOptions{})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

func getStream(t testing.TB, n *Node, name string) (map[string]any, int) {
	t.Helper()
	resp, err := http.Get(n.URL() + "/v1/streams/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if resp.StatusCode == 200 {
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
	}
	return out, resp.StatusCode
}

func TestPublishAndWatch(t *testing.T) {
	n := startNode(t)
	// OBS 30+ sends offers without candidates: the server must learn the
	// publisher's address from its connectivity checks.
	pub := publish(t, n, "live", mediatest.PublisherOptions{NoCandidates: true})
	v := watch(t, n, "live")

	key, err := v.FirstVideo(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !key {
		t.Fatal("first video packet a viewer received is not a keyframe")
	}
	eventually(t, "30 frames and audio at the viewer", 10*time.Second, func() bool {
		return v.VideoFrames.Load() >= 30 && v.AudioPackets.Load() >= 10
	})

	s, code := getStream(t, n, "live")
	if code != 200 {
		t.Fatalf("GET /v1/streams/live: %d", code)
	}
	if s["source"] != "whip" || s["viewers"] != float64(1) {
		t.Errorf("stream JSON: %v", s)
	}
	r := s["renditions"].([]any)[0].(map[string]any)
	if r["width"] != float64(1280) || r["height"] != float64(720) || r["codec"] != "H264" {
		t.Errorf("rendition JSON: %v", r)
	}
	if s["audio"].(map[string]any)["codec"] != "opus" {
		t.Errorf("audio JSON: %v", s["audio"])
	}

	// DELETE ends the viewer's session at once: exactly 200, then 404.
	if code, _ := mediatest.Delete(n.URL(), v.Location); code != 200 {
		t.Fatalf("DELETE viewer: %d, want 200", code)
	}
	if code, _ := mediatest.Delete(n.URL(), v.Location); code != 404 {
		t.Fatalf("second DELETE: %d, want 404", code)
	}
	eventually(t, "viewer count back to 0", 5*time.Second, func() bool {
		s, _ := getStream(t, n, "live")
		return s["viewers"] == float64(0)
	})
	if code, _ := mediatest.Delete(n.URL(), pub.Location); code != 200 {
		t.Fatalf("DELETE publisher: %d", code)
	}
	eventually(t, "no sessions", 5*time.Second, func() bool {
		p, vs := n.Sessions()
		return p == 0 && vs == 0
	})
}

func TestLateViewerStartsOnKeyframe(t *testing.T) {
	n := startNode(t)
	// A 3 s GOP: a viewer joining mid-GOP must still start on a keyframe,
	// from the hub's cached GOP, not wait for the next one.
	pub := publish(t, n, "gop", mediatest.PublisherOptions{GOP: 90, NoAudio: true})
	eventually(t, "publisher sent 45 frames", 10*time.Second, func() bool { return pub.Frames.Load() >= 45 })
	v := watch(t, n, "gop")
	key, err := v.FirstVideo(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !key {
		t.Fatal("late viewer did not start on a keyframe")
	}
	// The cached GOP arrives at once: more frames than have passed since
	// the viewer joined, before the publisher's next keyframe.
	eventually(t, "cached GOP delivered", 10*time.Second, func() bool { return v.VideoFrames.Load() >= 40 })
	if pub.Frames.Load() >= 90 && v.Keyframes.Load() > 1 {
		t.Log("note: next keyframe arrived first; cannot tell cache from live")
	}
}

func TestTakeoverKeepsViewers(t *testing.T) {
	n := startNode(t)
	a := publish(t, n, "live", mediatest.PublisherOptions{GOP: 15})
	v := watch(t, n, "live")
	eventually(t, "frames from the first publisher", 10*time.Second, func() bool { return v.VideoFrames.Load() >= 15 })

	// OBS re-POSTs after a network drop, sometimes before its DELETE: the
	// new publish takes over and the viewer stays.
	publish(t, n, "live", mediatest.PublisherOptions{GOP: 15})
	eventually(t, "old publisher's session closed", 10*time.Second, func() bool {
		pubs, _ := n.Sessions()
		return pubs == 1
	})
	a.Close()
	before := v.VideoFrames.Load()
	eventually(t, "frames from the new publisher", 10*time.Second, func() bool { return v.VideoFrames.Load() >= before+30 })
	if got := v.PC.ConnectionState().String(); got != "connected" {
		t.Fatalf("viewer connection %s after takeover", got)
	}
	// The viewer's numbering continues across the takeover: a new source
	// that kept its own numbering would leave a hole of thousands (its
	// random initial sequence number). Packets the old publisher lost on
	// its way out can leave small holes that no retransmission can fill.
	missing, holes := v.MissingSeqs()
	if missing > 64 {
		t.Errorf("viewer is missing %d sequence numbers across the takeover: %v", missing, holes)
	}
}

func TestSilentPublisherGraceThenEnd(t *testing.T) {
	n := startNode(t, func(c *Config) {
		c.Streams.SilenceTimeout = 500 * time.Millisecond
		c.Streams.GracePeriod = time.Second
	})
	pub := publish(t, n, "quiet", mediatest.PublisherOptions{})
	v := watch(t, n, "quiet")
	eventually(t, "frames", 10*time.Second, func() bool { return v.VideoFrames.Load() > 5 })

	pub.Close() // vanishes without a DELETE
	eventually(t, "publisher marked gone", 10*time.Second, func() bool {
		s, code := getStream(t, n, "quiet")
		return code == 200 && s["source"] == ""
	})
	// During the grace period the viewer stays connected.
	if v.PC.ConnectionState().String() != "connected" {
		t.Fatal("viewer dropped during grace period")
	}
	eventually(t, "stream ended after grace", 10*time.Second, func() bool {
		_, code := getStream(t, n, "quiet")
		return code == 404
	})
	eventually(t, "viewer session closed", 10*time.Second, func() bool {
		_, vs := n.Sessions()
		return vs == 0
	})
	// Per-stream series go with the stream, so ended streams do not pile up.
	if strings.Contains(metricsText(t, n), `stream="quiet"`) {
		t.Error("metrics still carry the ended stream's series")
	}
	if _, err := mediatest.Watch(ctxT(t, 5*time.Second), n.URL()+"/whep/quiet", mediatest.ViewerOptions{}); err == nil {
		t.Fatal("WHEP to an ended stream succeeded")
	} else if se, ok := err.(*mediatest.StatusError); !ok || se.Code != 404 {
		t.Fatalf("WHEP to an ended stream: %v, want 404", err)
	}
}

func TestHandshakeTimeout(t *testing.T) {
	n := startNode(t, func(c *Config) { c.WebRTC.HandshakeTimeout = 500 * time.Millisecond })
	publish(t, n, "live", mediatest.PublisherOptions{})
	// A viewer that POSTs an offer and never does ICE.
	resp := post(t, n, "/whep/live", "application/sdp", pionOffer(t), nil)
	if resp.StatusCode != 201 {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	eventually(t, "half-open viewer reaped", 10*time.Second, func() bool {
		_, vs := n.Sessions()
		return vs == 0
	})
}
