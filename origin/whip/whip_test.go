package whip

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/cascade-cdn/cascade/origin/auth"
	"github.com/cascade-cdn/cascade/origin/registry"
	"github.com/cascade-cdn/cascade/peer"
	"github.com/cascade-cdn/cascade/wish"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newEndpoint(t testing.TB) *Endpoint {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := peer.DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	eng, err := peer.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	reg := registry.New(registry.DefaultConfig(), prometheus.NewRegistry(), log)
	t.Cleanup(func() {
		reg.Close()
		eng.Close()
	})
	return New(eng, reg, auth.Config{OpenPublish: true}, prometheus.NewRegistry(), log)
}

// A stream that a configured pull source feeds cannot be taken over by a
// WHIP publisher, as an RTSP publisher cannot; other streams still can.
func TestPullSourceRefused(t *testing.T) {
	e := newEndpoint(t)
	e.SetPullSources(func(stream string) bool { return stream == "cam" })
	_, _, err := e.Offer(context.Background(), wish.Offer{Stream: "cam", SDP: "v=0\r\n"})
	if we, ok := err.(*wish.Error); !ok || we.Status != 403 {
		t.Fatalf("offer for a pull source: %v, want a 403", err)
	}
	_, _, err = e.Offer(context.Background(), wish.Offer{Stream: "other", SDP: "v=0\r\n"})
	if we, ok := err.(*wish.Error); !ok || we.Status != 400 {
		t.Fatalf("offer for another stream: %v, want the 400 of its bad SDP", err)
	}
}

// FuzzOffer runs hostile offers through the whole WHIP path, pion's SDP
// handling included: every input is answered or refused, never a panic,
// and refusals are client errors.
func FuzzOffer(f *testing.F) {
	obs, err := os.ReadFile("../../wish/testdata/obs-whip.sdp")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(obs))
	f.Add("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\n")
	f.Add("v=0\r\n")
	e := newEndpoint(f)
	f.Fuzz(func(t *testing.T, offer string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, _, err := e.Offer(ctx, wish.Offer{Stream: "fuzz", SDP: offer})
		if err != nil {
			if we, ok := err.(*wish.Error); !ok || we.Status < 400 || we.Status >= 500 {
				t.Fatalf("offer refused with %v, want a 4xx *wish.Error", err)
			}
			return
		}
		s.Close()
	})
}
