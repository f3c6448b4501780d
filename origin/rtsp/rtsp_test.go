package rtsp

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v5/pkg/description"
	"github.com/bluenviron/gortsplib/v5/pkg/sdp"
	"github.com/pion/rtp"
	"go.uber.org/goleak"

	"github.com/cascade-cdn/cascade/media"
	"github.com/cascade-cdn/cascade/origin/registry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestAnnotate(t *testing.T) {
	in := "v=0\r\ns=x\r\nm=video 0 RTP/AVP 96\r\na=control:trackID=0\r\nm=video 0 RTP/AVP 96\r\na=control:trackID=1\r\nm=audio 0 RTP/AVP 111\r\na=control:trackID=2\r\n"
	got := string(annotate([]byte(in), []string{"a=x:one", "a=x:two", ""}))
	want := "v=0\r\ns=x\r\nm=video 0 RTP/AVP 96\r\na=control:trackID=0\r\na=x:one\r\nm=video 0 RTP/AVP 96\r\na=control:trackID=1\r\na=x:two\r\nm=audio 0 RTP/AVP 111\r\na=control:trackID=2\r\n"
	if got != want {
		t.Fatalf("got\n%q\nwant\n%q", got, want)
	}
}

func TestTimeline(t *testing.T) {
	var tl timeline
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// Passes through, across the 32-bit wrap.
	if got := tl.next(0xFFFFF000, at(0), 90000); got != 0xFFFFF000 {
		t.Fatalf("first: %x", got)
	}
	if got := tl.next(0xFFFFF000+3000, at(33), 90000); got != 0xFFFFF000+3000 {
		t.Fatalf("wrap: %x", got)
	}
	// B-frame reordering (a timestamp earlier than the last) is not a jump.
	if got := tl.next(0xFFFFF000+1500, at(40), 90000); got != 0xFFFFF000+1500 || tl.rebases != 0 {
		t.Fatalf("reorder: %x rebases %d", got, tl.rebases)
	}
	// A camera clock reset: continues from where the stream was.
	last := uint32(0xFFFFF000 + 1500)
	got := tl.next(0x7000_0000, at(73), 90000)
	if tl.rebases != 1 || int32(got-last) <= 0 || int32(got-last) > 90000/10 {
		t.Fatalf("reset: %x after %x, rebases %d", got, last, tl.rebases)
	}
	// ... and follows the new clock from there.
	if next := tl.next(0x7000_0000+3000, at(106), 90000); next != got+3000 {
		t.Fatalf("after reset: %x, want %x", next, got+3000)
	}
}

func readSDP(t testing.TB, name string) *description.Session {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	d, err := parseSDP(b)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func parseSDP(b []byte) (*description.Session, error) {
	var s sdp.SessionDescription
	if err := s.Unmarshal(b); err != nil {
		return nil, err
	}
	var d description.Session
	if err := d.Unmarshal(&s); err != nil {
		return nil, err
	}
	return &d, nil
}

// readRTP splits a capture (2-byte length, packet, ...) into packets.
func readRTP(b []byte) []*rtp.Packet {
	var out []*rtp.Packet
	for len(b) >= 2 {
		n := int(binary.BigEndian.Uint16(b))
		if 2+n > len(b) {
			break
		}
		var p rtp.Packet
		if p.Unmarshal(b[2:2+n]) == nil {
			out = append(out, &p)
		}
		b = b[2+n:]
	}
	return out
}

func testStream(codec string) *registry.Stream {
	return &registry.Stream{
		Name:  "x",
		Video: media.NewHub(media.DefaultHubConfig(media.Video, codec, 90000)),
		Audio: media.NewHub(media.DefaultHubConfig(media.Audio, "opus", 48000)),
	}
}

func TestChoose(t *testing.T) {
	for _, c := range []struct{ sdp, video, audio string }{
		{"ffmpeg-h264-opus.sdp", "H264", "Opus"},
		{"ffmpeg-h264high-aac.sdp", "H264", "MPEG-4 Audio"},
		{"ffmpeg-h265-pcmu.sdp", "H265", "G711"},
	} {
		ch, err := choose(readSDP(t, c.sdp))
		if err != nil {
			t.Fatalf("%s: %v", c.sdp, err)
		}
		if ch.codec() != c.video || formatName(ch.audioForma) != c.audio {
			t.Errorf("%s: chose %s + %s, want %s + %s", c.sdp, ch.codec(), formatName(ch.audioForma), c.video, c.audio)
		}
	}
	vp8 := "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\na=control:streamid=0\r\n"
	d, err := parseSDP([]byte(vp8))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := choose(d); err != errNoMedia {
		t.Fatalf("VP8 only: %v, want errNoMedia", err)
	}
}

// TestIngestRealSessions feeds packets captured from ffmpeg through the
// ingest: video comes out repacketised under the WebRTC size with
// keyframes marked, audio comes out as Opus.
func TestIngestRealSessions(t *testing.T) {
	for _, c := range []struct {
		sdp, video, audio string
	}{
		{"ffmpeg-h264-opus.sdp", "ffmpeg-h264.rtp", "ffmpeg-opus.rtp"},
		{"ffmpeg-h264high-aac.sdp", "ffmpeg-h264.rtp", "ffmpeg-aac.rtp"},
		{"ffmpeg-h265-pcmu.sdp", "ffmpeg-h265.rtp", "ffmpeg-pcmu.rtp"},
	} {
		ch, err := choose(readSDP(t, c.sdp))
		if err != nil {
			t.Fatal(err)
		}
		st := testStream(ch.codec())
		vsub, asub := st.Video.Subscribe(), st.Audio.Subscribe()
		in, err := newIngest(ch, st, func(string, int) {})
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{c.video, c.audio} {
			b, err := os.ReadFile("testdata/" + f)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range readRTP(b) {
				if f == c.video {
					err = in.onVideo(p)
				} else {
					err = in.onAudio(p)
				}
				if err != nil {
					t.Fatalf("%s: %v", f, err)
				}
			}
		}
		in.close()
		var keys, video int
		for _, e := range vsub.Pop(nil) {
			video++
			if len(e.Packet.Payload) > payloadMax {
				t.Fatalf("%s: %d-byte payload", c.video, len(e.Packet.Payload))
			}
			if e.Packet.Keyframe {
				keys++
			}
		}
		audio := len(asub.Pop(nil))
		if video < 20 || keys == 0 || audio < 10 {
			t.Errorf("%s: %d video packets, %d keyframes, %d Opus packets", c.sdp, video, keys, audio)
		}
		st.Video.Close()
		st.Audio.Close()
	}
}

// FuzzAnnounce throws ANNOUNCE bodies at the description parser and the
// media choice: nothing may panic, and a chosen description must build an
// ingest.
func FuzzAnnounce(f *testing.F) {
	for _, n := range []string{"ffmpeg-h264-opus.sdp", "ffmpeg-h264high-aac.sdp", "ffmpeg-h265-pcmu.sdp"} {
		b, err := os.ReadFile("testdata/" + n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseSDP(b)
		if err != nil {
			return
		}
		ch, err := choose(d)
		if err != nil {
			return
		}
		st := testStream(ch.codec())
		in, err := newIngest(ch, st, func(string, int) {})
		if err == nil {
			in.close()
		}
		st.Video.Close()
		st.Audio.Close()
	})
}

// FuzzIngest feeds hostile RTP to each depacketiser (and, for AAC and
// G.711, the audio transcoder), seeded with real ffmpeg sessions.
func FuzzIngest(f *testing.F) {
	sdps := []string{"ffmpeg-h264-opus.sdp", "ffmpeg-h264high-aac.sdp", "ffmpeg-h265-pcmu.sdp"}
	seeds := [][2]string{{"0", "ffmpeg-h264.rtp"}, {"0", "ffmpeg-opus.rtp"}, {"1", "ffmpeg-aac.rtp"}, {"2", "ffmpeg-h265.rtp"}, {"2", "ffmpeg-pcmu.rtp"}}
	for _, s := range seeds {
		b, err := os.ReadFile("testdata/" + s[1])
		if err != nil {
			f.Fatal(err)
		}
		// Seeds are cut short: a fuzzer mutates small inputs better.
		if len(b) > 8000 {
			b = b[:8000]
		}
		f.Add(s[0][0]-'0', strings.Contains(s[1], "h26"), b)
	}
	choices := make([]choice, len(sdps))
	for i, n := range sdps {
		ch, err := choose(readSDP(f, n))
		if err != nil {
			f.Fatal(err)
		}
		choices[i] = ch
	}
	f.Fuzz(func(t *testing.T, which uint8, video bool, b []byte) {
		ch := choices[int(which)%len(choices)]
		st := testStream(ch.codec())
		defer st.Video.Close()
		defer st.Audio.Close()
		in, err := newIngest(ch, st, func(string, int) {})
		if err != nil {
			t.Fatal(err)
		}
		defer in.close()
		for _, p := range readRTP(b) {
			if video {
				in.onVideo(p)
			} else {
				in.onAudio(p)
			}
		}
	})
}
