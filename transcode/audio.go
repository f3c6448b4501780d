package transcode

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strings"
	"sync/atomic"

	"github.com/cascade-cdn/cascade/transcode/av"
)

// ErrBadAudioFrame wraps every input frame Audio.Write rejects: corrupt,
// empty or oversized, decoding to more than a quarter second, or to other
// channels than the stream's. The transcoder stays usable; the next good
// frame plays.
var ErrBadAudioFrame = errors.New("transcode: bad audio frame")

// AudioInput describes an RTSP source's audio track as its SDP gives it.
type AudioInput struct {
	// Codec is the SDP encoding name ("MPEG4-GENERIC", "PCMU", "PCMA",
	// "L16", "G722", "opus"; any case) or a libavcodec decoder name.
	Codec string
	// SampleRate and Channels of the audio. Channels 0 means 1 for PCMU
	// and PCMA (RFC 3551 section 4.5.14) and 2 otherwise.
	SampleRate, Channels int
	// ClockRate is the RTP clock of the timestamps given to Write; 0
	// means SampleRate, which is true of all the above but G.722
	// (16 kHz audio, 8 kHz clock: RFC 3551 section 4.5.2).
	ClockRate int
	// Config is the decoder's out-of-band configuration: for AAC the
	// AudioSpecificConfig from the SDP's config= parameter (RFC 3640
	// section 4.1).
	Config []byte
}

// AudioStats counts what an Audio did.
type AudioStats struct {
	FramesIn     uint64 // input frames given to Write
	PacketsOut   uint64 // Opus packets emitted
	DecodeErrors uint64 // input frames rejected (ErrBadAudioFrame)
	// Resyncs counts the times the output timestamp jumped to follow an
	// input gap or jump.
	Resyncs uint64
	// DecoderResets counts the times the decoder was reopened after a run
	// of rejected frames.
	DecoderResets uint64
}

// rtpDecoders maps SDP encoding names to libavcodec decoders.
var rtpDecoders = map[string]string{
	"mpeg4-generic": "aac",
	"pcmu":          "pcm_mulaw",
	"pcma":          "pcm_alaw",
	"l16":           "pcm_s16be",
	"g722":          "g722",
	"opus":          "opus",
}

// Audio transcodes one audio track to Opus at 48 kHz in 20 ms packets,
// what WebRTC viewers need: decode, resample, re-frame from the input's
// frame size to 960 samples, encode with libopus.
//
// Output timestamps are 48 kHz RTP timestamps that follow the input's
// clock: the first packet's is the first input timestamp scaled to
// 48 kHz, and each next packet's is exactly 960 more while the input
// stays continuous. Small timing errors in the input (a lost frame,
// jitter in a camera's clock) are absorbed; once the input is more than
// maxSkew away from where the audio fed so far puts it, the output jumps
// to follow it (a resync) instead of drifting.
//
// Audio holds at most one Opus frame of samples plus the resampler's
// delay between calls, whatever the input. It is not safe for concurrent
// use, except Stats.
type Audio struct {
	decCfg   av.AudioDecoderConfig
	dec      *av.AudioDecoder
	res      *av.Resampler
	enc      *av.OpusEncoder
	channels int
	clock    int64 // input ticks per second
	maxSkew  int64 // in input ticks

	badRun int // frames rejected in a row
	// decChannels is what the decoder gave first since it was opened.
	decChannels int

	started bool
	last    uint32 // input timestamp of the last decoded frame
	ext     int64  // the same, unwrapped
	anchor  int64  // unwrapped input timestamp where the timeline began
	fed     int64  // samples decoded since anchor, at fedRate
	fedRate int64
	next    uint32 // RTP timestamp of the next Opus packet

	emit     func(payload []byte, ts48k uint32) // during Write
	encodeFn func(*av.AudioFrame) error
	packetFn func([]byte) error

	framesIn, packetsOut, decodeErrors, resyncs, resets atomic.Uint64
}

// maxBadRun is how many frames in a row may be rejected before the
// decoder is reopened: a garbage frame can leave libavcodec's AAC decoder
// configured for a stream that is not there (say, 41 channels), and then
// it refuses every real frame or decodes it wrong.
const maxBadRun = 8

// maxSkewDiv sets maxSkew, how far the input may stray from the output's
// timeline before the output follows it: a fifth of a second, 200 ms.
const maxSkewDiv = 5

// NewAudio opens a transcoder for in.
func NewAudio(in AudioInput) (*Audio, error) {
	codec := strings.ToLower(in.Codec)
	if d, ok := rtpDecoders[codec]; ok {
		codec = d
	}
	if in.SampleRate <= 0 {
		return nil, fmt.Errorf("transcode: audio: sample rate %d", in.SampleRate)
	}
	if in.Channels < 0 || in.Channels > 8 {
		return nil, fmt.Errorf("transcode: audio: %d channels", in.Channels)
	}
	if in.Channels == 0 {
		in.Channels = 2
		if codec == "pcm_mulaw" || codec == "pcm_alaw" {
			in.Channels = 1
		}
	}
	if in.ClockRate <= 0 {
		in.ClockRate = in.SampleRate
	}
	a := &Audio{channels: min(in.Channels, 2), clock: int64(in.ClockRate), maxSkew: int64(in.ClockRate / maxSkewDiv)}
	a.decCfg = av.AudioDecoderConfig{Codec: codec, SampleRate: in.SampleRate, Channels: in.Channels, Extradata: in.Config}
	var err error
	a.dec, err = av.NewAudioDecoder(a.decCfg)
	if err != nil {
		return nil, fmt.Errorf("transcode: audio: %w", err)
	}
	a.enc, err = av.NewOpusEncoder(av.OpusConfig{Channels: a.channels})
	if err != nil {
		a.dec.Close()
		return nil, fmt.Errorf("transcode: audio: %w", err)
	}
	a.res = av.NewResampler(a.channels, av.OpusFrameSize)
	a.encodeFn = a.encode
	a.packetFn = a.packet
	return a, nil
}

// Channels is the Opus output's channel count: 1 for a mono input, 2
// otherwise.
func (a *Audio) Channels() int { return a.channels }

// Write takes one encoded input frame (an AAC access unit, a G.711
// packet's payload, ...) with its RTP timestamp in input clock ticks, and
// calls emit for every Opus packet completed, with the payload (a fresh
// slice emit may keep) and its 48 kHz RTP timestamp. emit runs on the
// caller's goroutine, before Write returns, and must not call back into
// a. A rejected frame is an error wrapping ErrBadAudioFrame, its
// timestamp is ignored, and a stays usable.
func (a *Audio) Write(frame []byte, ts uint32, emit func(payload []byte, ts48k uint32)) error {
	if a.dec == nil {
		return errors.New("transcode: audio: closed")
	}
	a.framesIn.Add(1)
	a.emit = emit
	defer func() { a.emit = nil }()
	placed := false
	decoded := 0
	err := a.dec.Decode(frame, func(f *av.AudioFrame) error {
		rate := f.SampleRate()
		decoded += f.Samples()
		// A quarter second bounds what one frame can push through;
		// RTP audio frames are 10 to 120 ms.
		if rate <= 0 || decoded > max(rate/4, 2048) {
			return fmt.Errorf("%w: %d samples at %d Hz", ErrBadAudioFrame, decoded, rate)
		}
		// A stream's channels do not change (its SDP fixes them), but a
		// garbage frame can make the decoder think so for good; refusing
		// those frames gets the decoder reopened.
		if ch := f.Channels(); a.decChannels == 0 {
			a.decChannels = ch
		} else if ch != a.decChannels {
			return fmt.Errorf("%w: decoded %d channels, the stream has %d", ErrBadAudioFrame, ch, a.decChannels)
		}
		if !placed {
			placed = true
			if err := a.place(ts); err != nil {
				return err
			}
		}
		if int64(rate) != a.fedRate {
			// Fold what was fed at the old rate into the anchor.
			if a.fedRate > 0 {
				a.anchor += a.fed * a.clock / a.fedRate
			}
			a.fed, a.fedRate = 0, int64(rate)
		}
		a.fed += int64(f.Samples())
		return a.res.Write(f, a.encodeFn)
	})
	if err == nil {
		a.badRun = 0
		return nil
	}
	a.decodeErrors.Add(1)
	if !errors.Is(err, ErrBadAudioFrame) {
		err = fmt.Errorf("%w: %w", ErrBadAudioFrame, err)
	}
	if a.badRun++; a.badRun >= maxBadRun {
		a.badRun = 0
		if d, rerr := av.NewAudioDecoder(a.decCfg); rerr == nil {
			a.dec.Close()
			a.dec, a.decChannels = d, 0
			a.resets.Add(1)
		}
	}
	return err
}

// place checks the timestamp of a frame that decoded against the
// timeline, and resyncs when it is off by more than maxSkew.
func (a *Audio) place(ts uint32) error {
	if !a.started {
		a.started = true
		a.last, a.ext = ts, int64(ts)
		a.restart()
		return nil
	}
	// RTP timestamps wrap at 32 bits; the signed difference unwraps them
	// for steps of up to 2^31 ticks (half a day at 48 kHz).
	a.ext += int64(int32(ts - a.last))
	a.last = ts
	want := a.anchor
	if a.fedRate > 0 {
		want += a.fed * a.clock / a.fedRate
	}
	if d := a.ext - want; d >= -a.maxSkew && d <= a.maxSkew {
		return nil
	}
	a.resyncs.Add(1)
	// What the old timeline holds still goes out on it, padded to a
	// whole packet.
	err := a.res.Flush(a.encodeFn)
	a.restart()
	return err
}

// restart begins a timeline at the current input timestamp.
func (a *Audio) restart() {
	a.anchor, a.fed = a.ext, 0
	// In big numbers: after enough jumps ext*48000 would overflow int64.
	// Restarts are rare, so the allocations do not matter.
	var x big.Int
	x.Mul(big.NewInt(a.ext), big.NewInt(av.OpusRate))
	x.Div(&x, big.NewInt(a.clock))
	a.next = uint32(x.And(&x, big.NewInt(math.MaxUint32)).Uint64())
}

func (a *Audio) encode(f *av.AudioFrame) error { return a.enc.Encode(f, a.packetFn) }

func (a *Audio) packet(p []byte) error {
	ts := a.next
	a.next += av.OpusFrameSize
	a.packetsOut.Add(1)
	if a.emit != nil {
		a.emit(append([]byte(nil), p...), ts)
	}
	return nil
}

// Stats returns the counters. It may be called from any goroutine.
func (a *Audio) Stats() AudioStats {
	return AudioStats{
		FramesIn:      a.framesIn.Load(),
		PacketsOut:    a.packetsOut.Load(),
		DecodeErrors:  a.decodeErrors.Load(),
		Resyncs:       a.resyncs.Load(),
		DecoderResets: a.resets.Load(),
	}
}

// Close frees the transcoder, dropping the last partial packet. It is
// idempotent.
func (a *Audio) Close() {
	if a.dec == nil {
		return
	}
	a.dec.Close()
	a.res.Close()
	a.enc.Close()
	a.dec, a.res, a.enc = nil, nil, nil
}
