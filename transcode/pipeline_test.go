package transcode

import (
	"bytes"
	"cmp"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bluenviron/gortsplib/v5/pkg/format/rtph265"
	"github.com/pion/rtp/codecs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/cascade-cdn/cascade/media"
	"github.com/cascade-cdn/cascade/media/h264"
	"github.com/cascade-cdn/cascade/media/h265"
	"github.com/cascade-cdn/cascade/transcode/av"
	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type ladderLog struct {
	mu     sync.Mutex
	outs   []Output
	source Output
	seen   chan struct{}
}

// LadderChanged keeps the transcoded rungs (not "source") once planned.
func (l *ladderLog) LadderChanged(outs []Output) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(outs) < 2 {
		return
	}
	if l.outs == nil {
		close(l.seen)
	}
	l.outs = outs[1:]
	l.source = outs[0]
}

type rungRead struct {
	out  Output
	sub  *media.Subscriber
	asm  h264.Assembler
	keys []uint32
	aus  [][]byte
}

// runPipeline publishes a real 720p H.264 stream into a hub as RTP, in
// real time, with each packet's arrival set lag in the past, and reads
// every rung the pipeline makes.
func runPipeline(t *testing.T, lag time.Duration) (reads []*rungRead, m *Metrics, aus [][]byte, pts []int64) {
	return runPipelineWith(t, DefaultConfig(), lag)
}

func runPipelineWith(t *testing.T, cfg Config, lag time.Duration) (reads []*rungRead, m *Metrics, aus [][]byte, pts []int64) {
	reads, m, aus, pts = runPipelineClip(t, cfg, lag, transcodetest.Clip{Seconds: "3", Size: "1280x720", Profile: "baseline"})
	if len(reads) != 3 {
		t.Fatalf("720p source gave %d rungs, want 480p, 360p, 240p", len(reads))
	}
	return reads, m, aus, pts
}

// runPipelineClip publishes clip into a hub of its codec and reads every
// rung, the source rendition first when it is re-encoded.
func runPipelineClip(t *testing.T, cfg Config, lag time.Duration, clip transcodetest.Clip) (reads []*rungRead, m *Metrics, aus [][]byte, pts []int64) {
	codec := cmp.Or(clip.Codec, "H264")
	aus, pts, _ = transcodetest.Make(t, clip)
	src := media.NewHub(media.DefaultHubConfig(media.Video, codec, 90000))
	defer src.Close()
	lis := &ladderLog{seen: make(chan struct{})}
	m = NewMetrics(prometheus.NewRegistry())
	p, err := Start(cfg, "live", src, lis, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	pub := newPublisher(src)
	if codec == "H265" {
		pub.pay = payH265(t)
	}
	pub.Lag = lag
	drain := func() {
		for _, r := range reads {
			for _, e := range r.sub.Pop(nil) {
				if au := r.asm.Push(e.Packet.SequenceNumber, e.Packet.Timestamp, e.Packet.Marker, e.Packet.Payload); au != nil {
					if au.Damaged {
						t.Fatalf("%s: damaged access unit at %d", r.out.Rung.Name, au.Timestamp)
					}
					if au.Keyframe {
						r.keys = append(r.keys, au.Timestamp)
					}
					r.aus = append(r.aus, append([]byte(nil), au.Data...))
				}
			}
		}
	}
	pub.send(aus, pts, 12345, func() {
		if reads == nil {
			select {
			case <-lis.seen:
				lis.mu.Lock()
				if !lis.source.Rung.Passthrough {
					reads = append(reads, &rungRead{out: lis.source, sub: lis.source.Hub.Subscribe()})
				}
				for _, o := range lis.outs {
					reads = append(reads, &rungRead{out: o, sub: o.Hub.Subscribe()})
				}
				lis.mu.Unlock()
			default:
			}
		}
		drain()
	})
	// Wait for the last frames to come through (the lowest rung is never shed).
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && (len(reads) == 0 || len(reads[len(reads)-1].aus) < len(aus)-15) {
		time.Sleep(20 * time.Millisecond)
		drain()
	}
	for _, r := range reads {
		r.sub.Close()
	}
	return reads, m, aus, pts
}

// checkAligned: every rung has the same keyframe timestamps, at least two.
func checkAligned(t *testing.T, reads []*rungRead) {
	t.Helper()
	for _, r := range reads {
		if len(r.keys) < 2 || len(r.keys) != len(reads[0].keys) {
			t.Fatalf("%s: keyframes at %v; %s at %v", r.out.Rung.Name, r.keys, reads[0].out.Rung.Name, reads[0].keys)
		}
		for i := range r.keys {
			if r.keys[i] != reads[0].keys[i] {
				t.Fatalf("%s: keyframes at %v; %s at %v", r.out.Rung.Name, r.keys, reads[0].out.Rung.Name, reads[0].keys)
			}
		}
	}
}

// TestPipelineAlignedRungs: each rung is decodable at its planned size,
// and all put keyframes on the same source timestamps.
func TestPipelineAlignedRungs(t *testing.T) {
	reads, m, aus, pts := runPipeline(t, 0)
	checkAligned(t, reads)
	// The lowest rung never sheds, so it has every frame; the others may
	// shed under a busy machine, but what they carry must decode.
	if low := reads[len(reads)-1]; len(low.aus) < len(aus)-15 {
		t.Fatalf("%s: %d access units for %d source frames", low.out.Rung.Name, len(low.aus), len(aus))
	}
	checkDecodes(t, reads)
	for _, r := range reads {
		if got := testutil.ToFloat64(m.keyframes.WithLabelValues("live", r.out.Rung.Name)); got != float64(len(r.keys)) {
			t.Errorf("%s: %v keyframes counted, %d seen", r.out.Rung.Name, got, len(r.keys))
		}
	}
	if rt := testutil.ToFloat64(m.realtime.WithLabelValues("live")); rt <= 0 {
		t.Errorf("realtime factor %v after 3 s of content", rt)
	}
	// Shedding depends on how busy the machine is; the lowest rung never sheds.
	if d := testutil.ToFloat64(m.dropped.WithLabelValues("live", "240p")); d != 0 {
		t.Errorf("240p shed %v frames", d)
	}
	if in := testutil.ToFloat64(m.framesIn.WithLabelValues("live")); in < float64(len(aus)-15) {
		t.Errorf("frames in counted %v for %d source frames", in, len(aus))
	}
	// The source timestamps carry through: the first keyframe is a source
	// frame's timestamp (offset included).
	first := reads[0].keys[0]
	found := false
	for _, p := range pts {
		found = found || uint32(p+12345) == first
	}
	if !found {
		t.Errorf("rung keyframe timestamp %d is not a source timestamp", first)
	}
}

// checkDecodes: every rung's output decodes as H.264 at its planned size.
func checkDecodes(t *testing.T, reads []*rungRead) {
	t.Helper()
	for _, r := range reads {
		dec, err := av.NewDecoder("H264")
		if err != nil {
			t.Fatal(err)
		}
		frames := 0
		for i, au := range r.aus {
			if err := dec.Decode(au, int64(i), func(f *av.Frame) error {
				if f.Width() != r.out.Rung.Width || f.Height() != r.out.Rung.Height {
					t.Errorf("%s: frame %dx%d", r.out.Rung.Name, f.Width(), f.Height())
				}
				frames++
				return nil
			}); err != nil {
				t.Fatalf("%s: %v", r.out.Rung.Name, err)
			}
		}
		dec.Close()
		if frames < len(r.aus)-1 {
			t.Errorf("%s: %d frames from %d access units", r.out.Rung.Name, frames, len(r.aus))
		}
	}
}

// TestPipelineShedsTopRungsFirst: frames that arrive 250 ms behind real
// time make the two costliest rungs skip delta frames, the lowest rung
// keeps every frame, and keyframes stay aligned everywhere.
func TestPipelineShedsTopRungsFirst(t *testing.T) {
	reads, m, aus, _ := runPipeline(t, 250*time.Millisecond)
	checkAligned(t, reads)
	dropped := func(r *rungRead) float64 {
		return testutil.ToFloat64(m.dropped.WithLabelValues("live", r.out.Rung.Name))
	}
	top, mid, low := reads[0], reads[1], reads[2]
	if dropped(top) == 0 || dropped(mid) == 0 {
		t.Errorf("480p dropped %v and 360p %v frames, want both shedding", dropped(top), dropped(mid))
	}
	if dropped(low) != 0 || len(low.aus) < len(aus)-15 {
		t.Errorf("240p dropped %v frames and delivered %d of %d; it must keep them all", dropped(low), len(low.aus), len(aus))
	}
	if len(top.aus) != len(top.keys) {
		t.Errorf("480p delivered %d units with %d keyframes; under this lag it should carry keyframes only", len(top.aus), len(top.keys))
	}
}

// TestPipelineEncoderFallback: an encoder this machine lacks (no GPU here)
// falls back to libx264 and the ladder still comes out aligned.
func TestPipelineEncoderFallback(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Encoder = "h264_nvenc"
	reads, _, aus, _ := runPipelineWith(t, cfg, 0)
	checkAligned(t, reads)
	if len(reads[2].aus) < len(aus)-15 {
		t.Fatalf("240p delivered %d of %d frames after the fallback", len(reads[2].aus), len(aus))
	}
}

// TestPipelineRebuildsOnResolutionChange: a publisher that changes
// resolution mid-stream (an OBS canvas change) gets a new ladder planned
// from the new size.
func TestPipelineRebuildsOnResolutionChange(t *testing.T) {
	big, bigPTS := transcodetest.Source(t, "1", "baseline")
	small, smallPTS, _ := transcodetest.Make(t, transcodetest.Clip{Seconds: "1", Size: "640x360", Profile: "baseline"})
	src := media.NewHub(media.DefaultHubConfig(media.Video, "H264", 90000))
	defer src.Close()
	lis := &ladderHistory{}
	p, err := Start(DefaultConfig(), "live", src, lis, NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	pub := newPublisher(src)
	pub.send(big, bigPTS, 0, nil)
	pub.send(small, smallPTS, 90000*2, nil)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && len(lis.get()) < 2 {
		time.Sleep(20 * time.Millisecond)
	}
	p.Close()
	plans := lis.get()
	if len(plans) < 2 {
		t.Fatalf("ladders planned: %v, want one for 720p and one for 360p", plans)
	}
	if plans[0] != "480p,360p,240p" || plans[1] != "240p" {
		t.Fatalf("ladders planned: %v", plans)
	}
}

type ladderHistory struct {
	mu    sync.Mutex
	plans []string
}

func (l *ladderHistory) LadderChanged(outs []Output) {
	if len(outs) < 2 {
		return // the source alone, before planning, or the end
	}
	var names []string
	for _, o := range outs[1:] {
		names = append(names, o.Rung.Name)
	}
	l.mu.Lock()
	l.plans = append(l.plans, strings.Join(names, ","))
	l.mu.Unlock()
}

func (l *ladderHistory) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.plans...)
}

// feedSource publishes a clip in real time and collects what the "source"
// rendition's hub carries, from a subscriber attached before the first
// packet (as a viewer that joined early would be).
func feedSource(t *testing.T, profile string) (sent [][]byte, got [][]byte, lis *ladderLog) {
	sent, pts := transcodetest.Source(t, "3", profile)
	src := media.NewHub(media.DefaultHubConfig(media.Video, "H264", 90000))
	defer src.Close()
	lis = &ladderLog{seen: make(chan struct{})}
	first := &firstLadder{}
	p, err := Start(DefaultConfig(), "live", src, multi{lis, first}, NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if first.source.Hub == nil {
		t.Fatal("no source rendition published at start")
	}
	sub := first.source.Hub.Subscribe()
	defer sub.Close()
	var asm h264.Assembler
	drain := func() {
		for _, e := range sub.Pop(nil) {
			if au := asm.Push(e.Packet.SequenceNumber, e.Packet.Timestamp, e.Packet.Marker, e.Packet.Payload); au != nil && !au.Damaged {
				got = append(got, append([]byte(nil), au.Data...))
			}
		}
	}
	newPublisher(src).send(sent, pts, 0, drain)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && len(got) < len(sent)-20 {
		time.Sleep(20 * time.Millisecond)
		drain()
	}
	return sent, got, lis
}

type firstLadder struct{ source Output }

func (f *firstLadder) LadderChanged(outs []Output) {
	if f.source.Hub == nil && len(outs) > 0 {
		f.source = outs[0]
	}
}

type multi []Listener

func (m multi) LadderChanged(outs []Output) {
	for _, l := range m {
		l.LadderChanged(outs)
	}
}

// TestSafeSourcePassesThrough: constrained baseline with 1 s keyframes is
// what browsers send: the source rendition carries it byte for byte.
func TestSafeSourcePassesThrough(t *testing.T) {
	sent, got, lis := feedSource(t, "baseline")
	lis.mu.Lock()
	pass := lis.source.Rung.Passthrough
	lis.mu.Unlock()
	if !pass {
		t.Fatal("a safe source was re-encoded")
	}
	if len(got) < len(sent)-20 {
		t.Fatalf("source rendition carried %d of %d access units", len(got), len(sent))
	}
	var pay codecs.H264Payloader
	for i := range got {
		// Compare with what went out over RTP (the payloader leaves out
		// delimiters and x264's SEI), rebuilt the same way.
		var asm h264.Assembler
		payloads := pay.Payload(1200, sent[i])
		var want []byte
		for j, pl := range payloads {
			if au := asm.Push(uint16(j), 0, j == len(payloads)-1, pl); au != nil {
				want = au.Data
			}
		}
		if i == 0 {
			// A joining subscriber starts at the keyframe's first packet,
			// so the first unit may lack the SEI sent before it.
			want = want[len(want)-min(len(want), len(got[0])):]
		}
		if !bytes.Equal(got[i], want) {
			t.Fatalf("access unit %d differs from what the publisher sent: %d bytes % x..., want %d bytes % x...",
				i, len(got[i]), got[i][:min(12, len(got[i]))], len(want), want[:min(12, len(want))])
		}
	}
}

// TestUnsafeSourceIsReencoded: High profile with B-frames (OBS's default)
// is re-encoded at source size: the source rendition switches to
// constrained baseline 1280x720 with SPS/PPS before its IDRs, and a viewer
// attached from the start keeps receiving across the switch.
func TestUnsafeSourceIsReencoded(t *testing.T) {
	_, got, lis := feedSource(t, "high")
	lis.mu.Lock()
	src := lis.source
	lis.mu.Unlock()
	if src.Rung.Passthrough || src.Rung.Width != 1280 || src.Rung.Height != 720 || src.Rung.Bitrate == 0 {
		t.Fatalf("source rendition after B-frames: %+v", src.Rung)
	}
	baseline := 0
	for _, au := range got {
		for _, n := range transcodetest.NALs(au) {
			if n[0]&0x1f != h264.NALUSPS {
				continue
			}
			s, err := h264.ParseSPS(n)
			if err != nil {
				t.Fatal(err)
			}
			if s.ProfileIDC == 66 && s.ConstraintSet&0x40 != 0 && s.Width == 1280 && s.Height == 720 {
				baseline++
			}
		}
	}
	if baseline < 2 {
		t.Fatalf("the source rendition carried %d constrained-baseline 720p keyframes after the switch, want several", baseline)
	}
	if len(got) < 60 {
		t.Fatalf("the early viewer received %d access units over 3 s", len(got))
	}
}

// TestLongGOPAsksThenReencodes: a source whose keyframes come every 3 s is
// first asked for keyframes (browsers answer), and when none comes within
// 2 s (OBS ignores the requests) its source rendition is re-encoded.
func TestLongGOPAsksThenReencodes(t *testing.T) {
	aus, pts, _ := transcodetest.Make(t, transcodetest.Clip{Seconds: "4", Size: "640x360", Profile: "baseline", GOP: 90})
	src := media.NewHub(media.DefaultHubConfig(media.Video, "H264", 90000))
	defer src.Close()
	var asked atomic.Int32
	src.SetKeyframeRequester(func() { asked.Add(1) })
	lis := &ladderLog{seen: make(chan struct{})}
	p, err := Start(DefaultConfig(), "live", src, lis, NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	newPublisher(src).send(aus, pts, 0, nil)
	deadline := time.Now().Add(3 * time.Second)
	reencoded := func() bool {
		lis.mu.Lock()
		defer lis.mu.Unlock()
		return lis.source.Hub != nil && !lis.source.Rung.Passthrough
	}
	for time.Now().Before(deadline) && !reencoded() {
		time.Sleep(20 * time.Millisecond)
	}
	if asked.Load() == 0 {
		t.Error("the publisher was never asked for a keyframe")
	}
	if !reencoded() {
		t.Error("a 3 s GOP source was not re-encoded")
	}
}

// publisher sends a clip into a hub as RTP, paced like the live source.
type publisher struct {
	w *media.Source
	// pay packetizes one Annex-B access unit (H.264 by default) and says
	// which payloads are keyframes.
	pay func(au []byte) (payloads [][]byte, key []bool)
	seq uint16
	// Lag sets each packet's arrival that far in the past.
	Lag time.Duration
}

func newPublisher(hub *media.Hub) *publisher {
	var pay codecs.H264Payloader
	return &publisher{w: hub.NewSource(), pay: func(au []byte) ([][]byte, []bool) {
		return pay.Payload(1200, au), nil // the hub finds H.264 keyframes
	}}
}

// payH265 packetizes with gortsplib's RFC 7798 encoder, as an RTSP
// publisher does, and marks keyframes itself.
func payH265(t testing.TB) func(au []byte) ([][]byte, []bool) {
	enc := &rtph265.Encoder{PayloadType: 96, PayloadMaxSize: 1200}
	if err := enc.Init(); err != nil {
		t.Fatal(err)
	}
	return func(au []byte) ([][]byte, []bool) {
		var nals [][]byte
		for _, n := range transcodetest.NALs(au) {
			if len(n) >= 2 && h265.Type(n[0]) != h265.NALUAUD { // publishers leave delimiters out
				nals = append(nals, n)
			}
		}
		pkts, err := enc.Encode(nals)
		if err != nil {
			t.Error(err)
			return nil, nil
		}
		payloads, keys := make([][]byte, len(pkts)), make([]bool, len(pkts))
		for i, p := range pkts {
			payloads[i], keys[i] = p.Payload, h265.IsKeyframe(p.Payload)
		}
		return payloads, keys
	}
}

// send publishes aus at 30 fps with timestamps pts+offset, calling each
// (if set) after every access unit.
func (p *publisher) send(aus [][]byte, pts []int64, offset int64, each func()) {
	tick := time.NewTicker(time.Second / 30)
	defer tick.Stop()
	for i, au := range aus {
		<-tick.C
		payloads, keys := p.pay(au)
		for j, pl := range payloads {
			p.w.Write(&media.Packet{SequenceNumber: p.seq, Timestamp: uint32(pts[i] + offset), Marker: j == len(payloads)-1,
				Payload: pl, Arrival: time.Now().Add(-p.Lag), Keyframe: keys != nil && keys[j]})
			p.seq++
		}
		if each != nil {
			each()
		}
	}
}

// TestPipelineH265 is an RTSP camera's stream: H.265 (RFC 7798, from
// libx265 with B-frames) in a hub of codec "H265". The source rendition is
// never the H.265 itself but a constrained-baseline H.264 re-encode at
// source size, and it and every rung decode at their sizes with IDRs on
// the same timestamps.
func TestPipelineH265(t *testing.T) {
	reads, m, aus, _ := runPipelineClip(t, DefaultConfig(), 0, transcodetest.Clip{Codec: "H265", Seconds: "3", Size: "1280x720"})
	if len(reads) != 4 || reads[0].out.Rung.Name != "source" {
		var names []string
		for _, r := range reads {
			names = append(names, r.out.Rung.Name)
		}
		t.Fatalf("H.265 720p source gave renditions %v, want a re-encoded source, 480p, 360p, 240p", names)
	}
	src := reads[0].out.Rung
	// Its bit rate is not checked: a loaded machine can read the ladder
	// listed before the re-encoder set it (seen in CI).
	if src.Passthrough || src.Width != 1280 || src.Height != 720 {
		t.Fatalf("source rendition of an H.265 source: %+v", src)
	}
	checkAligned(t, reads)
	checkDecodes(t, reads)
	baseline := 0
	for _, au := range reads[0].aus {
		for _, n := range transcodetest.NALs(au) {
			if n[0]&0x1f != h264.NALUSPS {
				continue
			}
			s, err := h264.ParseSPS(n)
			if err != nil {
				t.Fatal(err)
			}
			if s.ProfileIDC != 66 || s.ConstraintSet&0x40 == 0 || s.Width != 1280 || s.Height != 720 {
				t.Fatalf("source rendition SPS: profile %d constraints %#x %dx%d", s.ProfileIDC, s.ConstraintSet, s.Width, s.Height)
			}
			baseline++
		}
	}
	if baseline < 2 {
		t.Fatalf("source rendition carried %d SPS over 3 s, want one per IDR", baseline)
	}
	if low := reads[len(reads)-1]; len(low.aus) < len(aus)-15 {
		t.Fatalf("%s: %d access units for %d source frames", low.out.Rung.Name, len(low.aus), len(aus))
	}
	if e := testutil.ToFloat64(m.decodeErrors.WithLabelValues("live")); e != 0 {
		t.Errorf("%v decode errors on a clean H.265 stream", e)
	}
}

// TestStartRejectsOtherCodecs: a hub of a codec the pipeline cannot
// decode is refused up front.
func TestStartRejectsOtherCodecs(t *testing.T) {
	src := media.NewHub(media.DefaultHubConfig(media.Video, "VP8", 90000))
	defer src.Close()
	if p, err := Start(DefaultConfig(), "live", src, nil, NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil {
		p.Close()
		t.Fatal("a VP8 hub was accepted")
	}
}
