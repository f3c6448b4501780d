package whep

import (
	"testing"

	"github.com/pion/rtp"
	"github.com/pion/webrtc/v4"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/cascade-cdn/cascade/media"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// captureWriter records what a bound track writes.
type captureWriter struct{ seqs []uint16 }

func (c *captureWriter) WriteRTP(h *rtp.Header, _ []byte) (int, error) {
	c.seqs = append(c.seqs, h.SequenceNumber)
	return 0, nil
}
func (c *captureWriter) Write([]byte) (int, error) { return 0, nil }

type discardWriter struct{}

func (discardWriter) WriteRTP(*rtp.Header, []byte) (int, error) { return 0, nil }
func (discardWriter) Write([]byte) (int, error)                 { return 0, nil }

func newOutput(w webrtc.TrackLocalWriter) *output {
	o := &output{kind: "video", track: newLocalTrack(webrtc.RTPCodecTypeVideo, webrtc.RTPCodecCapability{MimeType: webrtc.MimeTypeH264})}
	o.track.b.Store(&binding{ssrc: 1, pt: 102, w: w})
	o.packets = prometheus.NewCounter(prometheus.CounterOpts{Name: "p"})
	o.bytes = prometheus.NewCounter(prometheus.CounterOpts{Name: "b"})
	return o
}

func TestSendClosesGapsAndMapsNACKsBack(t *testing.T) {
	w := &captureWriter{}
	o := newOutput(w)
	pl := []byte{0x41}
	for _, e := range []media.Entry{
		{Packet: &media.Packet{SequenceNumber: 100, Payload: pl}},
		{Packet: &media.Packet{SequenceNumber: 101, Payload: pl}},
		{Packet: &media.Packet{SequenceNumber: 102, Payload: pl}},
		// the hub skipped 103..499 for this viewer, then resynced at a keyframe
		{Packet: &media.Packet{SequenceNumber: 500, Payload: pl, Keyframe: true}, Resync: true},
		{Packet: &media.Packet{SequenceNumber: 501, Payload: pl}},
		// an upstream loss (no Resync) stays visible so the viewer NACKs it
		{Packet: &media.Packet{SequenceNumber: 503, Payload: pl}},
	} {
		if err := o.send(e); err != nil {
			t.Fatal(err)
		}
	}
	want := []uint16{100, 101, 102, 103, 104, 106}
	for i := range want {
		if w.seqs[i] != want[i] {
			t.Fatalf("viewer seqs %v, want %v", w.seqs, want)
		}
	}
	// NACKs name viewer numbers; retransmission needs the hub's.
	for viewer, hub := range map[uint16]uint16{101: 101, 102: 102, 103: 500, 105: 502, 106: 503} {
		if got := o.hubSeq(viewer); got != hub {
			t.Errorf("hubSeq(%d) = %d, want %d", viewer, got, hub)
		}
	}
}

func TestCheckOffer(t *testing.T) {
	// A viewer that accepts only a High-profile H.264 cannot be served:
	// egress is always 42e01f.
	high := "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n" +
		"a=rtpmap:96 H264/90000\r\na=fmtp:96 profile-level-id=640032;packetization-mode=1\r\n"
	if _, _, err := checkOffer(high); err == nil {
		t.Error("High-only viewer accepted")
	}
	audioOnly := "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\na=rtpmap:111 opus/48000/2\r\n"
	if v, a, err := checkOffer(audioOnly); err != nil || v || !a {
		t.Errorf("audio-only viewer: video=%v audio=%v err=%v", v, a, err)
	}
}

// BenchmarkViewerSend is the per-viewer, per-packet work of the writer:
// renumbering into the viewer's sequence space and handing the packet to
// pion (here a writer that discards it). It must not allocate.
func BenchmarkViewerSend(b *testing.B) {
	o := newOutput(discardWriter{})
	p := &media.Packet{SequenceNumber: 1, Payload: make([]byte, 1200)}
	e := media.Entry{Packet: p}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		p.SequenceNumber = uint16(i)
		o.send(e)
	}
}

var _ webrtc.TrackLocalWriter = (*captureWriter)(nil)
