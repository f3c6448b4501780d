package transcode

import (
	"encoding/hex"
	"errors"
	"math"
	"sync"
	"testing"

	"github.com/cascade-cdn/cascade/transcode/av"
	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

// fifoSlack bounds what the resampler may hold beyond one Opus frame
// (its filter delay; see av.TestAudioResamplerBounded).
const fifoSlack = 128

type audioPacket struct {
	payload []byte
	ts      uint32
	write   int // index of the Write that emitted it
}

// audioRun feeds frames to an Audio, recording every packet, and checks
// after each Write that the FIFO stays under a frame and that emitted
// packets are fresh slices.
type audioRun struct {
	t    testing.TB
	a    *Audio
	pkts []audioPacket
	n    int
}

func newAudioRun(t testing.TB, in AudioInput) *audioRun {
	t.Helper()
	a, err := NewAudio(in)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return &audioRun{t: t, a: a}
}

func (r *audioRun) write(frame []byte, ts uint32) error {
	r.t.Helper()
	err := r.a.Write(frame, ts, func(p []byte, ts48k uint32) {
		r.pkts = append(r.pkts, audioPacket{payload: p, ts: ts48k, write: r.n})
	})
	r.n++
	if b := r.a.res.Buffered(); b < 0 || b >= av.OpusFrameSize+fifoSlack {
		r.t.Fatalf("write %d: the FIFO holds %d samples", r.n-1, b)
	}
	return err
}

// breaks lists the packets whose timestamp is not the previous one's
// plus 960.
func (r *audioRun) breaks() []int {
	var out []int
	for i := 1; i < len(r.pkts); i++ {
		if r.pkts[i].ts-r.pkts[i-1].ts != av.OpusFrameSize {
			out = append(out, i)
		}
	}
	return out
}

func (r *audioRun) decode(channels int) []float32 {
	r.t.Helper()
	dec, err := av.NewAudioDecoder(av.AudioDecoderConfig{Codec: "opus", SampleRate: av.OpusRate, Channels: channels})
	if err != nil {
		r.t.Fatal(err)
	}
	defer dec.Close()
	pcm, err := av.NewPCM(channels)
	if err != nil {
		r.t.Fatal(err)
	}
	defer pcm.Close()
	var out []float32
	for i, p := range r.pkts {
		err := dec.Decode(p.payload, func(f *av.AudioFrame) error {
			if f.Channels() != channels {
				r.t.Fatalf("packet %d decodes to %d channels, want %d", i, f.Channels(), channels)
			}
			var err error
			out, err = pcm.Append(out, f)
			return err
		})
		if err != nil {
			r.t.Fatalf("Opus packet %d: %v", i, err)
		}
	}
	return out
}

func scale48k(ext int64, clock int) uint32 { return uint32(ext * av.OpusRate / int64(clock)) }

var audioClips = []struct {
	name string
	in   func(transcodetest.AudioStream) AudioInput
	src  func(testing.TB) transcodetest.AudioStream
}{
	{"aac44k1-stereo", aacInput, func(t testing.TB) transcodetest.AudioStream { return transcodetest.AAC(t, "2", 44100, 2) }},
	{"aac48k-stereo", aacInput, func(t testing.TB) transcodetest.AudioStream { return transcodetest.AAC(t, "2", 48000, 2) }},
	{"pcmu8k-mono", func(s transcodetest.AudioStream) AudioInput {
		// As an SDP says it: "PCMU/8000", channels implied.
		return AudioInput{Codec: "PCMU", SampleRate: s.SampleRate}
	}, func(t testing.TB) transcodetest.AudioStream { return transcodetest.G711(t, "2") }},
}

func aacInput(s transcodetest.AudioStream) AudioInput {
	return AudioInput{Codec: "MPEG4-GENERIC", SampleRate: s.SampleRate, Channels: s.Channels, Config: s.Config}
}

// TestAudio transcodes real AAC and G.711 clips whose RTP timestamps wrap
// at 2^32 halfway through: the Opus comes out continuous (each timestamp
// 960 after the last, the first the input's scaled to 48 kHz), as long as
// the input, and libavcodec's Opus decoder finds the clip's 440 Hz tone
// in every 20 ms of it.
func TestAudio(t *testing.T) {
	for _, c := range audioClips {
		t.Run(c.name, func(t *testing.T) {
			s := c.src(t)
			in := c.in(s)
			r := newAudioRun(t, in)
			start := uint32(0) - uint32(len(s.Frames)/2*s.FrameSamples)
			for i, f := range s.Frames {
				if err := r.write(f, start+uint32(i*s.FrameSamples)); err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
			}
			if b := r.breaks(); len(b) > 0 {
				t.Fatalf("timestamps break at packets %v", b)
			}
			if got, want := r.pkts[0].ts, scale48k(int64(start), s.SampleRate); got != want {
				t.Fatalf("first timestamp %d, want %d", got, want)
			}
			want := float64(s.Samples()) * av.OpusRate / float64(s.SampleRate) / av.OpusFrameSize
			if d := math.Abs(float64(len(r.pkts)) - want); d > 1 {
				t.Fatalf("%d packets for %.1f packets' worth of input", len(r.pkts), want)
			}
			st := r.a.Stats()
			if st != (AudioStats{FramesIn: uint64(len(s.Frames)), PacketsOut: uint64(len(r.pkts))}) {
				t.Fatalf("stats %+v", st)
			}
			if r.a.Channels() != s.Channels {
				t.Fatalf("%d output channels, want %d", r.a.Channels(), s.Channels)
			}
			transcodetest.CheckTone(t, r.decode(s.Channels), s.Channels, 440, 0)
		})
	}
}

// TestAudioResync moves the input clock: a lost frame or two and a little
// jitter are absorbed, but a jump forward or back (a camera restarting
// its clock), or a gap of over 200 ms, moves the output to follow the
// input, counted as a resync. Each break lands exactly on the input's
// new timestamp scaled to 48 kHz, and everything else stays 960 apart.
func TestAudioResync(t *testing.T) {
	s := transcodetest.AAC(t, "4", 44100, 2)
	r := newAudioRun(t, aacInput(s))
	ext := int64(0xffffff00) // unwrapped input timestamp
	var wantBreaks []uint32
	for i, f := range s.Frames {
		var resync bool
		switch i {
		case 20, 21: // lost frames: skipped, not resynced
			ext += int64(s.FrameSamples)
			continue
		case 40:
			ext += 7 // jitter
		case 60:
			ext += 5 * 44100 // forward 5 s
			resync = true
		case 90:
			ext -= 3 * 44100 // back 3 s
			resync = true
		case 120:
			ext += 44100 / 4 // a 250 ms hole
			resync = true
		}
		if resync {
			wantBreaks = append(wantBreaks, scale48k(ext, 44100))
		}
		if err := r.write(f, uint32(ext)); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		ext += int64(s.FrameSamples)
	}
	if got := r.a.Stats().Resyncs; got != uint64(len(wantBreaks)) {
		t.Fatalf("%d resyncs, want %d", got, len(wantBreaks))
	}
	b := r.breaks()
	if len(b) != len(wantBreaks) {
		t.Fatalf("timestamps break at packets %v, want %d breaks", b, len(wantBreaks))
	}
	for i, p := range b {
		if r.pkts[p].ts != wantBreaks[i] {
			t.Errorf("break %d: timestamp %d, want %d", i, r.pkts[p].ts, wantBreaks[i])
		}
		// The old timeline's tail went out, padded, before the break.
		if r.pkts[p-1].write != r.pkts[p].write {
			t.Errorf("break %d: the old timeline's last packet came from an earlier write", i)
		}
	}
}

// TestAudioCorrupt feeds garbage between real frames: each is an
// ErrBadAudioFrame, counted, and the good frames around it still make
// continuous audio with the tone in every 20 ms.
// (Garbage in place of a frame is a lost frame, which AAC's overlapping
// transform cannot hide; TestAudioResync covers losses.)
func TestAudioCorrupt(t *testing.T) {
	s := transcodetest.AAC(t, "2", 48000, 2)
	r := newAudioRun(t, aacInput(s))
	garbage := [][]byte{
		nil,
		{0x21},
		make([]byte, 100),
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		s.Frames[5][:len(s.Frames[5])/3],
		make([]byte, 1<<20),
	}
	bad := 0
	for i, f := range s.Frames {
		ts := uint32(i * s.FrameSamples)
		if i >= 10 && i%10 == 0 && bad < len(garbage) {
			err := r.write(garbage[bad], ts)
			if !errors.Is(err, ErrBadAudioFrame) {
				t.Fatalf("garbage %d: %v", bad, err)
			}
			bad++
		}
		if err := r.write(f, ts); err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
	if bad != len(garbage) {
		t.Fatalf("only %d garbage frames fed", bad)
	}
	st := r.a.Stats()
	if st.DecodeErrors != uint64(bad) || st.Resyncs != 0 || st.PacketsOut != uint64(len(r.pkts)) {
		t.Fatalf("stats %+v", st)
	}
	if b := r.breaks(); len(b) > 0 {
		t.Fatalf("timestamps break at packets %v", b)
	}
	// A garbage frame that libavcodec's AAC decoder gets halfway into
	// leaves its overlap state off for the next frame: allow a block each.
	transcodetest.CheckTone(t, r.decode(2), 2, 440, len(garbage))

	// G.711 has no invalid bytes, but an oversized frame is refused.
	g := newAudioRun(t, AudioInput{Codec: "pcma", SampleRate: 8000})
	if err := g.write(make([]byte, 8000), 0); !errors.Is(err, ErrBadAudioFrame) {
		t.Fatalf("one second of G.711 in one frame: %v", err)
	}
	if err := g.write(make([]byte, 160), 0); err != nil {
		t.Fatal(err)
	}
}

// TestAudioHostileConfig sends a frame that leaves libavcodec's AAC
// decoder decoding the real stereo stream as 41 channels: the frames it
// garbles are refused, the decoder is reopened after maxBadRun of them,
// and the tone comes back with continuous timestamps.
func TestAudioHostileConfig(t *testing.T) {
	s := transcodetest.AAC(t, "2", 44100, 2)
	r := newAudioRun(t, aacInput(s))
	for i, f := range s.Frames {
		ts := uint32(i * s.FrameSamples)
		if i == 10 {
			if err := r.write(hostileAAC, ts); !errors.Is(err, ErrBadAudioFrame) {
				t.Fatalf("hostile frame: %v", err)
			}
		}
		err := r.write(f, ts)
		if bad := i >= 10 && i < 10+maxBadRun-1; bad != (err != nil) {
			t.Fatalf("frame %d: %v", i, err)
		}
	}
	st := r.a.Stats()
	if st.DecoderResets != 1 || st.DecodeErrors != maxBadRun || st.Resyncs != 0 {
		t.Fatalf("stats %+v", st)
	}
	if b := r.breaks(); len(b) > 0 {
		t.Fatalf("timestamps break at packets %v", b)
	}
	// The reopened decoder starts without the previous frame's overlap.
	transcodetest.CheckTone(t, r.decode(2), 2, 440, 2)
}

// TestAudioScaleFar maps unwrapped input timestamps far past where
// ext*48000 fits in 64 bits: 147 * 2^32 ticks at 44.1 kHz are exactly
// 160 * 2^32 at 48 kHz, so the output timestamp must not move.
func TestAudioScaleFar(t *testing.T) {
	a := &Audio{clock: 44100}
	for _, k := range []int64{0, 1, 1 << 20, -1 << 20} {
		a.ext = 44100 + k*147<<32
		a.restart()
		if a.next != 48000 {
			t.Errorf("ext %d: next %d, want 48000", a.ext, a.next)
		}
	}
}

func TestAudioConfig(t *testing.T) {
	for _, in := range []AudioInput{
		{Codec: "nonesuch", SampleRate: 8000},
		{Codec: "h264", SampleRate: 90000},
		{Codec: "PCMU"},
		{Codec: "PCMU", SampleRate: 8000, Channels: 99},
	} {
		if a, err := NewAudio(in); err == nil {
			a.Close()
			t.Errorf("%+v accepted", in)
		}
	}
	a, err := NewAudio(AudioInput{Codec: "opus", SampleRate: 48000, Channels: 2})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	a.Close()
	if err := a.Write([]byte{0}, 0, nil); err == nil {
		t.Fatal("Write after Close")
	}
}

var fuzzAudio struct {
	once sync.Once
	s    transcodetest.AudioStream
}

// FuzzAudio feeds arbitrary bytes as AAC frames, with arbitrary timestamp
// steps, between real frames. It must never panic, the FIFO must stay
// under a frame, and packets may only break their 960 cadence where a
// resync was counted.
//
// The input is a series of records: a 16-bit length, a timestamp step
// byte, then the frame. Steps below 0x40 advance by the frame's 1024
// ticks; up to 0x80 by (step-0x40)*256, from none to 370 ms, either side
// of the resync threshold; above, by (step-0x80)*2^25, all round the
// 32-bit clock, so forward and back.
func FuzzAudio(f *testing.F) {
	fuzzAudio.once.Do(func() { fuzzAudio.s = transcodetest.AAC(f, "0.5", 44100, 2) })
	s := fuzzAudio.s
	record := func(step byte, fr []byte) []byte {
		return append([]byte{byte(len(fr) >> 8), byte(len(fr)), step}, fr...)
	}
	f.Add([]byte{})
	for i := 3; i < 6; i++ {
		fr := s.Frames[i]
		f.Add(record(0, fr))
		f.Add(append(record(0x90, fr), record(0, s.Frames[i+1])...))
		f.Add(append(record(0x60, fr), record(0xf0, s.Frames[i+1])...))
		f.Add(record(0, fr[:len(fr)/2]))
	}
	f.Add(append(record(0, hostileAAC), record(0, s.Frames[4])...))
	f.Add(append(record(0, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), record(0xff, []byte{0})...))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := newAudioRun(t, aacInput(s))
		ts := uint32(0xfffff000)
		breaks := 0
		write := func(fr []byte) {
			before := r.a.Stats().Resyncs
			n := len(r.pkts)
			_ = r.write(fr, ts)
			resyncs := int(r.a.Stats().Resyncs - before)
			for i := max(n, 1); i < len(r.pkts); i++ {
				if r.pkts[i].ts-r.pkts[i-1].ts != av.OpusFrameSize {
					breaks++
				}
			}
			if breaks > int(r.a.Stats().Resyncs) {
				t.Fatalf("%d timestamp breaks, %d resyncs (%d in this write)", breaks, r.a.Stats().Resyncs, resyncs)
			}
		}
		for _, fr := range s.Frames[:3] {
			write(fr)
			ts += 1024
		}
		writes := 3
		for len(data) >= 3 && writes < 64 {
			n, step := int(data[0])<<8|int(data[1]), data[2]
			data = data[3:]
			n = min(n, len(data))
			switch {
			case step < 0x40:
				ts += 1024
			case step < 0x80:
				ts += uint32(step-0x40) << 8
			default:
				ts += uint32(step-0x80) << 25
			}
			write(data[:n])
			data = data[n:]
			writes++
		}
		for _, fr := range s.Frames[3:6] {
			ts += 1024
			write(fr)
			writes++
		}
		// At most a quarter second per frame, plus a padded packet per
		// resync.
		st := r.a.Stats()
		if limit := uint64(writes)*av.OpusRate/4/av.OpusFrameSize + st.Resyncs + 1; st.PacketsOut > limit {
			t.Fatalf("%d packets from %d frames", st.PacketsOut, writes)
		}
		if st.FramesIn != uint64(writes) || st.PacketsOut != uint64(len(r.pkts)) {
			t.Fatalf("stats %+v after %d writes", st, writes)
		}
	})
}

// BenchmarkAudioAAC transcodes 44.1 kHz stereo AAC to Opus, one AAC frame
// (23 ms) per op; ns/20ms is the cost of each Opus packet's worth of
// audio, to compare against the 20 ms of real time it spans.
func BenchmarkAudioAAC(b *testing.B) {
	s := transcodetest.AAC(b, "2", 44100, 2)
	a, err := NewAudio(aacInput(s))
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	packets := 0
	emit := func([]byte, uint32) { packets++ }
	var ts uint32
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := a.Write(s.Frames[i%len(s.Frames)], ts, emit); err != nil {
			b.Fatal(err)
		}
		ts += uint32(s.FrameSamples)
	}
	if packets > 0 {
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(packets), "ns/20ms")
	}
}

// hostileAAC is a garbage frame (found by feeding random bytes) after
// which libavcodec's AAC decoder, given a stereo AudioSpecificConfig,
// decodes every real frame to 41 channels.
var hostileAAC, _ = hex.DecodeString("" +
	"07822bad62c659eb2cb6ab6fcb65c2ed3a5c608ca6c3b986d3d12e2a52c59833" +
	"44f98c93f8904a4e8207052588485d258e7a8aea756a2ef8e71b6129bd9bf4dc" +
	"1cc9468ccb077dae5064617d28772f4b831ee8555f12a9a243c34a45135a6008" +
	"0d38176b073292281d1b2eb4ac80af660f4f216da3a04c68cc539149c8e6e728" +
	"2d24455e5f231489626ee9b87bca6e1ac73d7996b04af3959018b7c75857945f" +
	"5069081f0c6214fad0cbf9")
