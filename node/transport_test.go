package node

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pion/webrtc/v4"

	"github.com/cascade-cdn/cascade/media/mediatest"
)

func TestViewerOverICETCP(t *testing.T) {
	n := startNode(t)
	publish(t, n, "live", mediatest.PublisherOptions{})
	// ICE-TCP on the same port number as UDP: a viewer that cannot use UDP.
	v, err := mediatest.Watch(ctxT(t, 15*time.Second), n.URL()+"/whep/live", mediatest.ViewerOptions{Net: mediatest.Net{TCP: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	eventually(t, "frames over ICE-TCP", 15*time.Second, func() bool { return v.VideoFrames.Load() >= 10 })
	pair, err := v.PC.SCTP().Transport().ICETransport().GetSelectedCandidatePair()
	if err != nil || pair == nil {
		t.Fatalf("no selected candidate pair: %v", err)
	}
	if pair.Local.Protocol.String() != "tcp" {
		t.Errorf("selected pair is %s, want tcp", pair.Local.Protocol)
	}
	udpPort := n.eng.UDPAddr().(*net.UDPAddr).Port
	if int(pair.Remote.Port) != udpPort {
		t.Errorf("ICE-TCP port %d differs from the UDP port %d", pair.Remote.Port, udpPort)
	}
}

// TestPublisherOverICETCP: a publisher's ICE-TCP connection reaches pion's
// mux through the engine's TCP server (which reads the first packet to see
// whose it is, and replays it to pion), and a viewer plays the stream.
func TestPublisherOverICETCP(t *testing.T) {
	n := startNode(t)
	pub := publish(t, n, "live", mediatest.PublisherOptions{Net: mediatest.Net{TCP: true}})
	pair, err := pub.PC.SCTP().Transport().ICETransport().GetSelectedCandidatePair()
	if err != nil || pair == nil || pair.Local.Protocol.String() != "tcp" {
		t.Fatalf("publisher's selected pair %v (%v), want tcp", pair, err)
	}
	v, err := mediatest.Watch(ctxT(t, 15*time.Second), n.URL()+"/whep/live", mediatest.ViewerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	eventually(t, "frames from a publisher on ICE-TCP", 15*time.Second, func() bool { return v.VideoFrames.Load() >= 10 })
}

// TestPublicHostsInCandidates: with webrtc.public_hosts, both a
// publisher's answer (pion) and a viewer's (peer/lite) announce the
// public address only, on UDP and ICE-TCP.
func TestPublicHostsInCandidates(t *testing.T) {
	n := startNode(t, func(c *Config) { c.WebRTC.PublicHosts = []string{"192.0.2.10"} })
	publish(t, n, "other", mediatest.PublisherOptions{})
	for _, ep := range []struct{ path, offer string }{
		{"/whip/live", pionOffer(t, webrtc.RTPTransceiverDirectionSendonly)},
		{"/whep/other", pionOffer(t)},
	} {
		resp := post(t, n, ep.path, "application/sdp", ep.offer, nil)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 201 {
			t.Fatalf("POST %s: %d %s", ep.path, resp.StatusCode, body)
		}
		var cands []string
		for _, l := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(l, "a=candidate:") {
				cands = append(cands, strings.TrimSpace(l))
			}
		}
		if len(cands) == 0 {
			t.Fatalf("%s: answer has no candidates", ep.path)
		}
		for _, c := range cands {
			if !strings.Contains(c, " 192.0.2.10 ") {
				t.Errorf("%s: candidate %q does not announce the public address", ep.path, c)
			}
		}
	}
}

func TestSilentViewerReaped(t *testing.T) {
	n := startNode(t, func(c *Config) { c.WebRTC.ICEFailedTimeout = 2 * time.Second })
	publish(t, n, "live", mediatest.PublisherOptions{})
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	v, err := mediatest.Watch(ctxT(t, 10*time.Second), n.URL()+"/whep/live", mediatest.ViewerOptions{Net: mediatest.Net{Conn: conn}})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	eventually(t, "frames", 10*time.Second, func() bool { return v.VideoFrames.Load() > 5 })
	conn.Close() // the viewer vanishes: no DTLS close, no RTCP, no consent
	eventually(t, "silent viewer reaped", 15*time.Second, func() bool {
		_, vs := n.Sessions()
		return vs == 0
	})
}

// TestWildcardListen serves on every local address, one socket each on the
// same port, as `cascade` does by default.
func TestWildcardListen(t *testing.T) {
	n := startNode(t, func(c *Config) { c.WebRTC.Listen = "0.0.0.0:0" })
	publish(t, n, "live", mediatest.PublisherOptions{})
	v := watch(t, n, "live")
	eventually(t, "frames through the wildcard listener", 10*time.Second, func() bool { return v.VideoFrames.Load() >= 10 })
}
