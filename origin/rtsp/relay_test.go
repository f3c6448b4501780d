package rtsp

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v5"
	"github.com/bluenviron/gortsplib/v5/pkg/base"
	"github.com/pion/rtp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/cascade-cdn/cascade/media"
)

// relayReader reads media index of stream over the relay read, as an
// edge does (one media per session), counting the packets it gets.
func relayReader(t *testing.T, s *Server, stream string, index int) (*atomic.Int64, func()) {
	t.Helper()
	u, err := base.ParseURL("rtsp://cascade:s3cret@" + s.Addr().String() + "/" + stream)
	if err != nil {
		t.Fatal(err)
	}
	tcp := gortsplib.ProtocolTCP
	c := &gortsplib.Client{Scheme: u.Scheme, Host: u.Host, Protocol: &tcp}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	desc, _, err := c.Describe(u)
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	var got atomic.Int64
	md := desc.Medias[index]
	if _, err := c.Setup(desc.BaseURL, md, 0, 0); err != nil {
		c.Close()
		t.Fatal(err)
	}
	c.OnPacketRTP(md, md.Formats[0], func(*rtp.Packet) { got.Add(1) })
	if _, err := c.Play(nil); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return &got, c.Close
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRelayedStream: a stream the registry does not hold, offered with
// SetRelayed (an edge serving the edges below it), is served to relay
// readers. A rung's hub is subscribed only while some reader plays that
// rung (so the edge pulls only what its children read); each reader is
// counted with AddReaders; the bytes out are counted once per reader; and
// when the source ends (Done), the relay ends and its readers are cut.
func TestRelayedStream(t *testing.T) {
	s, _ := startServer(t)
	hub := func() *media.Hub { return media.NewHub(media.DefaultHubConfig(media.Video, "H264", 90000)) }
	high, low := hub(), hub()
	audio := media.NewHub(media.DefaultHubConfig(media.Audio, "opus", 48000))
	done := make(chan struct{})
	var readers atomic.Int64
	key := new(int)
	s.SetRelayed(func(name string) (Relayed, bool) {
		if name != "relayed" {
			return Relayed{}, false
		}
		return Relayed{Key: key, Audio: audio, AddReaders: func(n int64) { readers.Add(n) }, Done: done,
			Renditions: []RelayRendition{{Name: "720p", Width: 1280, Height: 720, Bitrate: 2_500_000, Hub: high}, {Name: "360p", Width: 640, Height: 360, Bitrate: 600_000, Hub: low}}}, true
	})
	// The hubs' feed: an IDR every 10 packets, 5 payload bytes each.
	stop := make(chan struct{})
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		srcs := []*media.Source{high.NewSource(), low.NewSource()}
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := uint16(0); ; i++ {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			nal := byte(0x41)
			if i%10 == 0 {
				nal = 0x65
			}
			for _, src := range srcs {
				src.Write(&media.Packet{SequenceNumber: i, Timestamp: uint32(i) * 450, Marker: true, Payload: []byte{nal, 1, 2, 3, 4}})
			}
		}
	}()
	defer func() { close(stop); <-fed }()

	// Two readers of the 360p rung (media 1), none of the 720p.
	got1, close1 := relayReader(t, s, "relayed", 1)
	got2, close2 := relayReader(t, s, "relayed", 1)
	eventually(t, "packets at both readers", func() bool { return got1.Load() >= 20 && got2.Load() >= 20 })
	if n := readers.Load(); n != 2 {
		t.Errorf("AddReaders counts %d readers, want 2", n)
	}
	if n := high.Subscribers(); n != 0 {
		t.Errorf("the 720p hub, which nobody reads, has %d subscribers", n)
	}
	if n := low.Subscribers(); n != 1 {
		t.Errorf("the 360p hub has %d subscribers, want the relay's one", n)
	}
	// Bytes out: 5 per packet per reader. Compare in one stretch of
	// packets: the counter moves by twice what one reader receives.
	b0, p0 := testutil.ToFloat64(s.m.relayBytes), got1.Load()
	eventually(t, "more packets", func() bool { return got1.Load() >= p0+200 })
	b1, p1 := testutil.ToFloat64(s.m.relayBytes), got1.Load()
	if per := (b1 - b0) / float64(p1-p0); per < 8 || per > 13 {
		t.Errorf("bytes out grew %.1f per packet a reader got, want about 10 (5 bytes × 2 readers)", per)
	}

	// Readers leave: the count drops, and the rung's hub is let go.
	close1()
	close2()
	eventually(t, "readers gone and the 360p hub unsubscribed", func() bool { return readers.Load() == 0 && low.Subscribers() == 0 })
	// With nobody reading, both counters come to rest and must agree. (Read
	// while packets flow, the two reads straddle a packet.)
	eventually(t, "RelayBytesOut equal to the metric", func() bool {
		total := s.RelayBytesOut()
		return total != 0 && float64(total) == testutil.ToFloat64(s.m.relayBytes)
	})

	// The source ends: a reader is cut, and the relay is gone.
	got3, close3 := relayReader(t, s, "relayed", 0)
	defer close3()
	eventually(t, "720p packets", func() bool { return got3.Load() >= 5 })
	close(done)
	eventually(t, "the relay of an ended source gone", func() bool { return s.RelayReaders("relayed") == 0 && readers.Load() == 0 })
}
