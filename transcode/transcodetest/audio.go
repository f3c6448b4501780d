package transcodetest

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// AudioClip describes a generated audio test source: a sine tone.
type AudioClip struct {
	Seconds    string // duration, e.g. "2"
	Codec      string // "aac" (the default), "pcm_mulaw" or "pcm_alaw"
	SampleRate int    // default 48000 for AAC, 8000 for G.711
	Channels   int    // default 1
	Frequency  int    // of the tone in Hz, default 440
}

// AudioStream is an encoded clip cut into frames as they would arrive
// over RTP: AAC access units without ADTS headers (RFC 3640 carries them
// bare), or 20 ms of G.711.
type AudioStream struct {
	Frames [][]byte
	// Config is the AAC AudioSpecificConfig (the SDP's "config"), nil for
	// G.711.
	Config     []byte
	SampleRate int
	Channels   int
	// FrameSamples is each frame's length in samples per channel (1024
	// for AAC, 160 for G.711), so frame i has RTP timestamp
	// start + i*FrameSamples.
	FrameSamples int
}

// Samples is the stream's total length in samples per channel.
func (s AudioStream) Samples() int { return len(s.Frames) * s.FrameSamples }

// AAC encodes a 440 Hz sine with Debian's ffmpeg's native AAC encoder.
func AAC(t testing.TB, seconds string, sampleRate, channels int) AudioStream {
	return MakeAudio(t, AudioClip{Seconds: seconds, Codec: "aac", SampleRate: sampleRate, Channels: channels})
}

// G711 encodes a 440 Hz sine as 8 kHz mono µ-law (PCMU).
func G711(t testing.TB, seconds string) AudioStream {
	return MakeAudio(t, AudioClip{Seconds: seconds, Codec: "pcm_mulaw"})
}

// MakeAudio encodes c with Debian's ffmpeg.
func MakeAudio(t testing.TB, c AudioClip) AudioStream {
	t.Helper()
	ffmpeg, err := exec.LookPath("ffmpeg")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("ffmpeg missing: CI must install it")
		}
		t.Skip("ffmpeg not installed")
	}
	if c.Codec == "" {
		c.Codec = "aac"
	}
	aac := c.Codec == "aac"
	if c.SampleRate == 0 {
		c.SampleRate = 48000
		if !aac {
			c.SampleRate = 8000
		}
	}
	if c.Channels == 0 {
		c.Channels = 1
	}
	if c.Frequency == 0 {
		c.Frequency = 440
	}
	out := filepath.Join(t.TempDir(), "src.raw")
	format := map[string]string{"aac": "adts", "pcm_mulaw": "mulaw", "pcm_alaw": "alaw"}[c.Codec]
	if format == "" {
		t.Fatalf("transcodetest: no audio clip in %q", c.Codec)
	}
	args := []string{"-v", "error", "-f", "lavfi",
		"-i", "sine=frequency=" + strconv.Itoa(c.Frequency) + ":sample_rate=" + strconv.Itoa(c.SampleRate),
		"-t", c.Seconds, "-ac", strconv.Itoa(c.Channels), "-c:a", c.Codec}
	if aac {
		args = append(args, "-b:a", strconv.Itoa(64000*c.Channels))
	}
	if b, err := exec.Command(ffmpeg, append(args, "-f", format, out)...).CombinedOutput(); err != nil {
		t.Fatalf("ffmpeg %v: %v\n%s", args, err, b)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	s := AudioStream{SampleRate: c.SampleRate, Channels: c.Channels}
	if !aac {
		// G.711 is one byte per sample; RTP sends it in 20 ms packets.
		s.FrameSamples = c.SampleRate / 50
		n := s.FrameSamples * c.Channels
		for len(data) >= n {
			s.Frames = append(s.Frames, data[:n:n])
			data = data[n:]
		}
		return s
	}
	s.FrameSamples = 1024
	for len(data) > 0 {
		h, err := parseADTS(data)
		if err != "" {
			t.Fatalf("transcodetest: ADTS: %s", err)
		}
		s.Frames = append(s.Frames, data[h.header:h.length:h.length])
		data = data[h.length:]
		if s.Config == nil {
			s.Config = h.config()
		}
	}
	return s
}

type adtsHeader struct {
	objectType, freqIndex, channelConfig int
	header, length                       int
}

// parseADTS reads one ADTS header (ISO 14496-3 section 1.A.2.2).
func parseADTS(b []byte) (adtsHeader, string) {
	if len(b) < 7 || b[0] != 0xff || b[1]&0xf0 != 0xf0 {
		return adtsHeader{}, "no sync word"
	}
	h := adtsHeader{
		objectType:    int(b[2]>>6) + 1,
		freqIndex:     int(b[2]>>2) & 0xf,
		channelConfig: int(b[2]&1)<<2 | int(b[3]>>6),
		header:        7,
		length:        int(b[3]&3)<<11 | int(b[4])<<3 | int(b[5]>>5),
	}
	if b[1]&1 == 0 { // CRC present
		h.header = 9
	}
	if b[6]&3 != 0 {
		return h, "more than one raw data block per frame"
	}
	if h.length <= h.header || h.length > len(b) {
		return h, "bad frame length " + strconv.Itoa(h.length)
	}
	return h, ""
}

// config is the AudioSpecificConfig the header implies (ISO 14496-3
// section 1.6.2.1): object type, frequency index, channel configuration,
// then GASpecificConfig's three zero flags.
func (h adtsHeader) config() []byte {
	v := h.objectType<<11 | h.freqIndex<<7 | h.channelConfig<<3
	return []byte{byte(v >> 8), byte(v)}
}

// CheckTone checks that decoded 48 kHz interleaved audio carries a clip's
// sine of freq Hz throughout, on every channel: each 20 ms block after
// the codecs' start-up is sound (not a dropout), all but glitches of them
// at the sine's level (lavfi's sine is 1/8 full scale, RMS 0.088), and
// the loudest frequency is freq.
func CheckTone(t testing.TB, pcm []float32, channels, freq, glitches int) {
	t.Helper()
	const block = 960
	n := len(pcm) / channels
	if n < 10*block {
		t.Fatalf("only %d samples", n)
	}
	for ch := range channels {
		x := make([]float64, n)
		for i := range x {
			x[i] = float64(pcm[i*channels+ch])
		}
		// Skip the AAC encoder's priming and the codecs' start-up, and the
		// padded last packet.
		var odd []string
		for b := 4; b < n/block-1; b++ {
			r := rms(x[b*block : (b+1)*block])
			if r < 0.02 {
				t.Fatalf("channel %d block %d (of %d): RMS %.4f, a dropout", ch, b, n/block, r)
			}
			if r < 0.06 || r > 0.12 {
				odd = append(odd, fmt.Sprintf("block %d RMS %.4f", b, r))
			}
		}
		if len(odd) > glitches {
			t.Fatalf("channel %d: %d blocks (of %d) off the sine's RMS of 0.088: %v", ch, len(odd), n/block, odd)
		}
		mid := x[4*block : n-block]
		best, bestP := 0, 0.0
		for f := 50; f <= 4000; f += 5 {
			if p := goertzel(mid, float64(f)); p > bestP {
				best, bestP = f, p
			}
		}
		if best < freq-5 || best > freq+5 {
			t.Fatalf("channel %d: loudest at %d Hz, want %d", ch, best, freq)
		}
	}
}

func rms(x []float64) float64 {
	var s float64
	for _, v := range x {
		s += v * v
	}
	return math.Sqrt(s / float64(len(x)))
}

// goertzel is the power of x at freq Hz (48 kHz sampling).
func goertzel(x []float64, freq float64) float64 {
	w := 2 * math.Pi * freq / 48000
	c := 2 * math.Cos(w)
	var s1, s2 float64
	for _, v := range x {
		s1, s2 = v+c*s1-s2, s1
	}
	return s1*s1 + s2*s2 - c*s1*s2
}
