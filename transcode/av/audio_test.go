package av

import (
	"math"
	"testing"

	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

// resamplerSlack bounds aresample's filter delay in 48 kHz samples: what
// Buffered may show beyond the FIFO's partial frame. The delay is about 16
// input samples, 96 output samples from 8 kHz.
const resamplerSlack = 128

type audioCase struct {
	name     string
	codec    string
	channels int
	src      func(testing.TB) transcodetest.AudioStream
}

var audioCases = []audioCase{
	{"aac44k1-stereo", "aac", 2, func(t testing.TB) transcodetest.AudioStream { return transcodetest.AAC(t, "2", 44100, 2) }},
	{"aac48k-stereo", "aac", 2, func(t testing.TB) transcodetest.AudioStream { return transcodetest.AAC(t, "2", 48000, 2) }},
	{"aac48k-mono", "aac", 1, func(t testing.TB) transcodetest.AudioStream { return transcodetest.AAC(t, "2", 48000, 1) }},
	{"pcmu8k-mono", "pcm_mulaw", 1, func(t testing.TB) transcodetest.AudioStream { return transcodetest.G711(t, "2") }},
}

// TestAudioToOpus runs real clips through decoder, resampler and libopus:
// every frame the encoder gets is 960 samples, the FIFO never holds a
// frame's worth, one packet comes out per frame, and libavcodec's own
// Opus decoder gets the input's length and its 440 Hz tone back.
func TestAudioToOpus(t *testing.T) {
	for _, c := range audioCases {
		t.Run(c.name, func(t *testing.T) {
			s := c.src(t)
			dec, err := NewAudioDecoder(AudioDecoderConfig{Codec: c.codec, SampleRate: s.SampleRate, Channels: s.Channels, Extradata: s.Config})
			if err != nil {
				t.Fatal(err)
			}
			defer dec.Close()
			res := NewResampler(c.channels, OpusFrameSize)
			defer res.Close()
			enc, err := NewOpusEncoder(OpusConfig{Channels: c.channels})
			if err != nil {
				t.Fatal(err)
			}
			defer enc.Close()

			var pkts [][]byte
			in := 0
			for i, fr := range s.Frames {
				err := dec.Decode(fr, func(f *AudioFrame) error {
					in += f.Samples()
					if f.SampleRate() != s.SampleRate || f.Channels() != s.Channels {
						t.Fatalf("decoded %d Hz %d channels, want %d Hz %d", f.SampleRate(), f.Channels(), s.SampleRate, s.Channels)
					}
					return res.Write(f, func(g *AudioFrame) error {
						if g.Samples() != OpusFrameSize || g.SampleRate() != OpusRate || g.Channels() != c.channels {
							t.Fatalf("resampled %d samples %d Hz %d channels", g.Samples(), g.SampleRate(), g.Channels())
						}
						return enc.Encode(g, func(p []byte) error {
							pkts = append(pkts, append([]byte(nil), p...))
							return nil
						})
					})
				})
				if err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
				if b := res.Buffered(); b < 0 || b >= OpusFrameSize+resamplerSlack {
					t.Fatalf("frame %d: resampler holds %d samples", i, b)
				}
			}
			if in != s.Samples() {
				t.Fatalf("decoded %d samples, want %d", in, s.Samples())
			}
			want := float64(in) * OpusRate / float64(s.SampleRate) / OpusFrameSize
			if d := math.Abs(float64(len(pkts)) - want); d > 1 {
				t.Fatalf("%d Opus packets for %.1f frames of input", len(pkts), want)
			}

			pcm := decodeOpus(t, pkts, c.channels)
			if got := len(pcm) / c.channels; got != len(pkts)*OpusFrameSize {
				t.Fatalf("Opus decoded to %d samples, want %d", got, len(pkts)*OpusFrameSize)
			}
			transcodetest.CheckTone(t, pcm, c.channels, 440, 0)
		})
	}
}

// TestAudioDecoderCorrupt feeds garbage between good AAC frames: each is
// an error, and the frames after it decode.
func TestAudioDecoderCorrupt(t *testing.T) {
	s := transcodetest.AAC(t, "1", 44100, 2)
	dec, err := NewAudioDecoder(AudioDecoderConfig{Codec: "aac", SampleRate: 44100, Channels: 2, Extradata: s.Config})
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	garbage := [][]byte{
		nil, // would drain the decoder for good if it reached libavcodec
		{0x21},
		make([]byte, 100),
		{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		s.Frames[5][:len(s.Frames[5])/3],
		make([]byte, maxAudioPacket+1),
	}
	for i, g := range garbage {
		if err := dec.Decode(g, func(*AudioFrame) error { return nil }); err == nil {
			t.Errorf("garbage %d decoded", i)
		}
		n := 0
		if err := dec.Decode(s.Frames[10+i], func(f *AudioFrame) error { n += f.Samples(); return nil }); err != nil || n != 1024 {
			t.Fatalf("good frame after garbage %d: %d samples, %v", i, n, err)
		}
	}
	if _, err := NewAudioDecoder(AudioDecoderConfig{Codec: "h264"}); err == nil {
		t.Error("h264 accepted as an audio decoder")
	}
}

// TestAudioResamplerBounded pushes hostile frame sizes (one sample, two
// seconds) and a change of input format through the FIFO: every frame
// out is 960 samples, the FIFO never holds a frame's worth between calls,
// and the samples in and out agree.
func TestAudioResamplerBounded(t *testing.T) {
	mono, err := NewAudioDecoder(AudioDecoderConfig{Codec: "pcm_mulaw", SampleRate: 8000, Channels: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer mono.Close()
	stereo, err := NewAudioDecoder(AudioDecoderConfig{Codec: "pcm_alaw", SampleRate: 16000, Channels: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer stereo.Close()
	res := NewResampler(2, OpusFrameSize)
	defer res.Close()
	out, in48 := 0, 0
	emit := func(f *AudioFrame) error {
		if f.Samples() != OpusFrameSize {
			t.Fatalf("frame of %d samples", f.Samples())
		}
		out += f.Samples()
		return nil
	}
	feed := func(d *AudioDecoder, n int) {
		t.Helper()
		err := d.Decode(make([]byte, n), func(f *AudioFrame) error {
			in48 += f.Samples() * OpusRate / f.SampleRate()
			return res.Write(f, emit)
		})
		if err != nil {
			t.Fatal(err)
		}
		if b := res.Buffered(); b < 0 || b >= OpusFrameSize+resamplerSlack {
			t.Fatalf("resampler holds %d samples", b)
		}
	}
	for _, n := range []int{1, 16000, 3, 160, 7} {
		feed(mono, n)
	}
	for _, n := range []int{2, 64000, 640} { // the change flushes the mono tail
		feed(stereo, n)
	}
	if err := res.Flush(emit); err != nil {
		t.Fatal(err)
	}
	if res.Buffered() != 0 || out < in48 || out > in48+2*OpusFrameSize {
		t.Fatalf("%d samples in, %d out, %d held", in48, out, res.Buffered())
	}
}

// TestAudioResamplerLayouts mixes layouts down to stereo and mono: 5.1, and a
// count of channels with no positions (which an AAC program config can
// declare, and libswresample cannot remix), taken as its first channels.
func TestAudioResamplerLayouts(t *testing.T) {
	for _, c := range []struct{ in, out int }{{6, 2}, {6, 1}, {11, 2}, {11, 1}, {1, 2}} {
		dec, err := NewAudioDecoder(AudioDecoderConfig{Codec: "pcm_alaw", SampleRate: 8000, Channels: c.in})
		if err != nil {
			t.Fatal(err)
		}
		res := NewResampler(c.out, OpusFrameSize)
		frames := 0
		err = dec.Decode(make([]byte, 160*c.in*10), func(f *AudioFrame) error {
			if f.Channels() != c.in {
				t.Fatalf("decoded %d channels, want %d", f.Channels(), c.in)
			}
			return res.Write(f, func(g *AudioFrame) error {
				if g.Channels() != c.out || g.Samples() != OpusFrameSize {
					t.Fatalf("%d to %d channels: frame of %d channels, %d samples", c.in, c.out, g.Channels(), g.Samples())
				}
				frames++
				return nil
			})
		})
		res.Close()
		dec.Close()
		if err != nil || frames < 9 {
			t.Fatalf("%d to %d channels: %d frames, %v", c.in, c.out, frames, err)
		}
	}
}

// TestAudioOpusFrameSize: a short frame is refused rather than taken as
// the stream's last (after which libavcodec would refuse every frame),
// and the encoder keeps working.
func TestAudioOpusFrameSize(t *testing.T) {
	dec, err := NewAudioDecoder(AudioDecoderConfig{Codec: "pcm_mulaw", SampleRate: 48000, Channels: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	enc, err := NewOpusEncoder(OpusConfig{Channels: 1, Application: "voip", Bitrate: 32000})
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	res := NewResampler(1, 0) // no FIFO: frames keep their size
	defer res.Close()
	pkts := 0
	for _, n := range []int{500, OpusFrameSize, OpusFrameSize} {
		err := dec.Decode(make([]byte, n), func(f *AudioFrame) error {
			return res.Write(f, func(g *AudioFrame) error {
				return enc.Encode(g, func([]byte) error { pkts++; return nil })
			})
		})
		if n != OpusFrameSize && err == nil {
			t.Fatalf("%d-sample frame encoded", n)
		}
		if n == OpusFrameSize && err != nil {
			t.Fatal(err)
		}
	}
	if pkts == 0 {
		t.Fatal("no packets after a refused frame")
	}
	if _, err := NewOpusEncoder(OpusConfig{Application: "karaoke"}); err == nil {
		t.Error("unknown application accepted")
	}
}

// decodeOpus decodes packets with libavcodec's Opus decoder into
// interleaved samples.
func decodeOpus(t testing.TB, pkts [][]byte, channels int) []float32 {
	t.Helper()
	dec, err := NewAudioDecoder(AudioDecoderConfig{Codec: "opus", SampleRate: OpusRate, Channels: channels})
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	pcm, err := NewPCM(channels)
	if err != nil {
		t.Fatal(err)
	}
	defer pcm.Close()
	var out []float32
	for i, p := range pkts {
		err := dec.Decode(p, func(f *AudioFrame) error {
			if f.SampleRate() != OpusRate || f.Channels() != channels {
				t.Fatalf("Opus decoded to %d Hz %d channels", f.SampleRate(), f.Channels())
			}
			var err error
			out, err = pcm.Append(out, f)
			return err
		})
		if err != nil {
			t.Fatalf("Opus packet %d: %v", i, err)
		}
	}
	return out
}
