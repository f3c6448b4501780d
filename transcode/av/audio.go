package av

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/asticode/go-astiav"
)

// OpusRate is the only sample rate WebRTC's Opus runs at on the wire
// (RFC 7587 section 4.1), and the rate every Resampler produces.
const OpusRate = 48000

// OpusFrameSize is 20 ms at 48 kHz, the frame WebRTC peers expect.
const OpusFrameSize = OpusRate / 50

// maxAudioPacket bounds one encoded input frame. The largest real ones
// are PCM (48 kHz stereo L16 for 250 ms is 48000 bytes); AAC tops out at
// 768 bytes per channel.
const maxAudioPacket = 64 << 10

// AudioFrame is decoded or converted audio, owned by whoever made it and
// valid until its next use or Close.
type AudioFrame struct {
	f *astiav.Frame
}

// Samples is the frame's length in samples per channel.
func (f *AudioFrame) Samples() int { return f.f.NbSamples() }

// SampleRate is the frame's rate in Hz.
func (f *AudioFrame) SampleRate() int { return f.f.SampleRate() }

// Channels is the frame's channel count.
func (f *AudioFrame) Channels() int { return f.f.ChannelLayout().NbChannels() }

// AudioDecoderConfig names an audio decoder and what the container (for
// RTSP, the SDP) says about the stream.
type AudioDecoderConfig struct {
	// Codec is the libavcodec decoder name: "aac", "pcm_mulaw",
	// "pcm_alaw", "opus", ...
	Codec string
	// SampleRate and Channels matter to decoders whose bitstream does not
	// carry them (G.711, raw Opus); AAC takes them from Extradata.
	SampleRate, Channels int
	// Extradata is the decoder's out-of-band configuration: for AAC the
	// AudioSpecificConfig (ISO 14496-3 section 1.6.2.1), the SDP's
	// "config" parameter.
	Extradata []byte
}

// AudioDecoder decodes one audio stream.
type AudioDecoder struct {
	cc  *astiav.CodecContext
	pkt *astiav.Packet
	out *AudioFrame
	buf []byte
}

// NewAudioDecoder opens the decoder cfg names.
func NewAudioDecoder(cfg AudioDecoderConfig) (*AudioDecoder, error) {
	c := astiav.FindDecoderByName(cfg.Codec)
	if c == nil || c.ID().MediaType() != astiav.MediaTypeAudio {
		return nil, fmt.Errorf("av: no audio decoder %q in libavcodec", cfg.Codec)
	}
	cc := astiav.AllocCodecContext(c)
	if cc == nil {
		return nil, errors.New("av: cannot allocate audio decoder")
	}
	if cfg.SampleRate > 0 {
		cc.SetSampleRate(cfg.SampleRate)
		cc.SetTimeBase(astiav.NewRational(1, cfg.SampleRate))
	}
	if l, ok := layoutOf(cfg.Channels); ok {
		cc.SetChannelLayout(l)
	} else if cfg.Channels > 0 {
		cc.SetChannels(cfg.Channels) // a count with no positions
	}
	if len(cfg.Extradata) > 0 {
		if err := cc.SetExtraData(cfg.Extradata); err != nil {
			cc.Free()
			return nil, fmt.Errorf("av: %s extradata: %w", cfg.Codec, err)
		}
	}
	if err := cc.Open(c, nil); err != nil {
		cc.Free()
		return nil, fmt.Errorf("av: open %s decoder: %w", cfg.Codec, err)
	}
	return &AudioDecoder{cc: cc, pkt: astiav.AllocPacket(), out: &AudioFrame{f: astiav.AllocFrame()}}, nil
}

// Decode feeds one encoded frame and calls fn for every frame of samples
// it completes. The frame is only valid during fn. A corrupt or empty
// input is an error; the decoder stays usable.
func (d *AudioDecoder) Decode(data []byte, fn func(*AudioFrame) error) error {
	// An empty packet would tell libavcodec the stream has ended, after
	// which it decodes nothing more.
	if len(data) == 0 {
		return errors.New("av: empty audio packet")
	}
	if len(data) > maxAudioPacket {
		return fmt.Errorf("av: audio packet of %d bytes", len(data))
	}
	if err := send(d.cc, d.pkt, &d.buf, data, astiav.NoPtsValue); err != nil {
		return err
	}
	return receive(d.cc, d.out.f, func() error { return fn(d.out) })
}

// Close frees the decoder.
func (d *AudioDecoder) Close() {
	d.out.f.Free()
	d.pkt.Free()
	d.cc.Free()
}

// Resampler converts audio of any rate, layout and sample format to
// interleaved float samples at 48 kHz, mono or stereo, cut into frames of
// a fixed size. It is a libavfilter graph: aresample (libswresample) for
// the conversion, then asetnsamples as the FIFO that turns AAC's 1024 or
// G.711's arbitrary frame sizes into Opus's 960. go-astiav v0.16 wraps
// neither SwrContext nor AVAudioFifo; the graph gives both through the
// same door.
//
// Between calls it holds less than one output frame plus the resampling
// filter's delay (Buffered), however large or many its inputs are.
type Resampler struct {
	channels  int
	frameSize int
	out       *AudioFrame

	graph     *astiav.FilterGraph
	src, sink *astiav.FilterContext
	// What the graph was built for; a change rebuilds it.
	inRate   int
	inFormat astiav.SampleFormat
	inLayout astiav.ChannelLayout

	inSamples  int64 // since the graph was built, at the input rate
	outSamples int64 // since the graph was built, at 48 kHz
}

// NewResampler returns a resampler to 48 kHz with channels (1 or 2)
// channels. With frameSize > 0 every frame it emits has exactly that many
// samples; with 0 frames keep the sizes the conversion gives them.
func NewResampler(channels, frameSize int) *Resampler {
	if channels != 1 {
		channels = 2
	}
	return &Resampler{channels: channels, frameSize: frameSize, out: &AudioFrame{f: astiav.AllocFrame()}}
}

// Write converts f and calls fn for every frame completed. The frame is
// only valid during fn. A change of input rate, layout or sample format
// first flushes what the old input left, padded with silence.
func (r *Resampler) Write(f *AudioFrame, fn func(*AudioFrame) error) error {
	rate, format := f.f.SampleRate(), f.f.SampleFormat()
	layout := f.f.ChannelLayout()
	channels := layout.NbChannels()
	if rate <= 0 || channels <= 0 || f.Samples() <= 0 {
		return fmt.Errorf("av: resample: frame of %d samples, %d Hz, %d channels", f.Samples(), rate, channels)
	}
	if r.graph != nil && (rate != r.inRate || format != r.inFormat || !layout.Equal(r.inLayout)) {
		if err := r.Flush(fn); err != nil {
			return err
		}
	}
	if r.graph == nil {
		if err := r.build(rate, format, layout, false); err != nil {
			// libswresample cannot remix channels it has no positions for
			// (an AAC program config can declare such a layout): take the
			// first ones as they are.
			if err := r.build(rate, format, layout, true); err != nil {
				return err
			}
		}
	}
	// The graph wants timestamps; a sample count is all it needs.
	f.f.SetPts(r.inSamples)
	r.inSamples += int64(f.Samples())
	if err := r.src.BuffersrcAddFrame(f.f, astiav.NewBuffersrcFlags(astiav.BuffersrcFlagKeepRef)); err != nil {
		return fmt.Errorf("av: resample: %w", err)
	}
	return r.drain(fn)
}

// Flush emits what the resampler holds, the last frame padded with
// silence to the frame size, and forgets the input: the next Write
// starts afresh. Used at a discontinuity, so no audio is lost before it.
func (r *Resampler) Flush(fn func(*AudioFrame) error) error {
	if r.graph == nil {
		return nil
	}
	err := r.src.BuffersrcAddFrame(nil, astiav.NewBuffersrcFlags())
	if err == nil {
		err = r.drain(fn)
	}
	r.free()
	if err != nil {
		return fmt.Errorf("av: resample flush: %w", err)
	}
	return nil
}

// Buffered is how many 48 kHz samples per channel the resampler holds:
// fed to it but not yet emitted.
func (r *Resampler) Buffered() int {
	if r.graph == nil {
		return 0
	}
	return int(r.inSamples*OpusRate/int64(r.inRate) - r.outSamples)
}

func (r *Resampler) drain(fn func(*AudioFrame) error) error {
	for {
		r.out.f.Unref()
		if err := r.sink.BuffersinkGetFrame(r.out.f, astiav.NewBuffersinkFlags()); err != nil {
			if errors.Is(err, astiav.ErrEagain) || errors.Is(err, astiav.ErrEof) {
				return nil
			}
			return fmt.Errorf("av: resample: %w", err)
		}
		r.outSamples += int64(r.out.Samples())
		err := fn(r.out)
		r.out.f.Unref()
		if err != nil {
			return err
		}
	}
}

func (r *Resampler) build(rate int, format astiav.SampleFormat, layout astiav.ChannelLayout, pick bool) error {
	channels, desc := layout.NbChannels(), layout.String()
	g := astiav.AllocFilterGraph()
	if g == nil {
		return errors.New("av: cannot allocate filter graph")
	}
	r.graph = g
	args := astiav.FilterArgs{
		"time_base":   "1/" + strconv.Itoa(rate),
		"sample_rate": strconv.Itoa(rate),
		"sample_fmt":  format.Name(),
	}
	if desc != "" {
		args["channel_layout"] = desc
	} else {
		args["channels"] = strconv.Itoa(channels)
	}
	var err error
	if r.src, err = g.NewFilterContext(astiav.FindFilterByName("abuffer"), "in", args); err != nil {
		r.free()
		return fmt.Errorf("av: resampler source (%v): %w", args, err)
	}
	if r.sink, err = g.NewFilterContext(astiav.FindFilterByName("abuffersink"), "out", nil); err != nil {
		r.free()
		return fmt.Errorf("av: resampler sink: %w", err)
	}
	out := map[int]string{1: "mono", 2: "stereo"}[r.channels]
	chain := "aresample=" + strconv.Itoa(OpusRate) +
		",aformat=sample_fmts=flt:sample_rates=" + strconv.Itoa(OpusRate) + ":channel_layouts=" + out
	if pick {
		second := "c1"
		if channels == 1 {
			second = "c0"
		}
		pan := map[int]string{1: "pan=mono|c0=c0", 2: "pan=stereo|c0=c0|c1=" + second}[r.channels]
		chain = pan + "," + chain
	}
	if r.frameSize > 0 {
		chain += ",asetnsamples=n=" + strconv.Itoa(r.frameSize) + ":p=1"
	}
	outputs, inputs := astiav.AllocFilterInOut(), astiav.AllocFilterInOut()
	outputs.SetName("in")
	outputs.SetFilterContext(r.src)
	outputs.SetPadIdx(0)
	outputs.SetNext(nil)
	inputs.SetName("out")
	inputs.SetFilterContext(r.sink)
	inputs.SetPadIdx(0)
	inputs.SetNext(nil)
	err = g.Parse(chain, inputs, outputs)
	inputs.Free()
	outputs.Free()
	if err == nil {
		err = g.Configure()
	}
	if err != nil {
		r.free()
		return fmt.Errorf("av: resampler %q from %v: %w", chain, args, err)
	}
	r.inRate, r.inFormat, r.inLayout = rate, format, layout
	r.inSamples, r.outSamples = 0, 0
	return nil
}

func (r *Resampler) free() {
	// Freeing the endpoints first takes them out of go-astiav's registry
	// of C objects, which FilterGraph.Free does not clean; each rebuild
	// would otherwise leave two entries behind.
	if r.src != nil {
		r.src.Free()
		r.src = nil
	}
	if r.sink != nil {
		r.sink.Free()
		r.sink = nil
	}
	if r.graph != nil {
		r.graph.Free()
		r.graph = nil
	}
}

// Close frees the resampler, dropping what it holds.
func (r *Resampler) Close() {
	r.free()
	r.out.f.Free()
}

// OpusConfig shapes an Opus encoder.
type OpusConfig struct {
	Channels int // 1 or 2
	// Bitrate in bits per second; 0 means 64 kbps mono, 96 kbps stereo.
	Bitrate int
	// Application is libopus's: "lowdelay" (the default: CELT only, the
	// least algorithmic delay), "voip" or "audio".
	Application string
}

// OpusEncoder encodes 48 kHz audio to Opus in 20 ms frames, through
// libopus.
type OpusEncoder struct {
	cc  *astiav.CodecContext
	pkt *astiav.Packet
	pts int64
}

// NewOpusEncoder opens a libopus encoder. Its input is what a Resampler
// with the same channels and OpusFrameSize makes.
func NewOpusEncoder(cfg OpusConfig) (*OpusEncoder, error) {
	if cfg.Channels != 1 {
		cfg.Channels = 2
	}
	if cfg.Bitrate <= 0 {
		cfg.Bitrate = 64000
		if cfg.Channels == 2 {
			cfg.Bitrate = 96000
		}
	}
	if cfg.Application == "" {
		cfg.Application = "lowdelay"
	}
	c := astiav.FindEncoderByName("libopus")
	if c == nil {
		return nil, errors.New("av: no libopus encoder in libavcodec")
	}
	cc := astiav.AllocCodecContext(c)
	if cc == nil {
		return nil, errors.New("av: cannot allocate Opus encoder")
	}
	l, _ := layoutOf(cfg.Channels)
	cc.SetChannelLayout(l)
	cc.SetSampleRate(OpusRate)
	cc.SetSampleFormat(astiav.SampleFormatFlt)
	cc.SetTimeBase(astiav.NewRational(1, OpusRate))
	cc.SetBitRate(int64(cfg.Bitrate))
	opts := astiav.NewDictionary()
	defer opts.Free()
	for k, v := range map[string]string{
		"application":    cfg.Application,
		"frame_duration": "20",
	} {
		if err := opts.Set(k, v, 0); err != nil {
			cc.Free()
			return nil, fmt.Errorf("av: option %s: %w", k, err)
		}
	}
	if err := cc.Open(c, opts); err != nil {
		cc.Free()
		return nil, fmt.Errorf("av: open libopus: %w", err)
	}
	if cc.FrameSize() != OpusFrameSize {
		cc.Free()
		return nil, fmt.Errorf("av: libopus frame size %d, want %d", cc.FrameSize(), OpusFrameSize)
	}
	return &OpusEncoder{cc: cc, pkt: astiav.AllocPacket()}, nil
}

// Encode encodes one frame of exactly OpusFrameSize samples and calls fn
// for every packet that comes out (libopus gives one per frame). The
// payload is only valid during fn.
func (e *OpusEncoder) Encode(f *AudioFrame, fn func(payload []byte) error) error {
	// libavcodec takes a short frame as the stream's last and refuses
	// any after it.
	if f.Samples() != OpusFrameSize {
		return fmt.Errorf("av: opus frame of %d samples, want %d", f.Samples(), OpusFrameSize)
	}
	f.f.SetPts(e.pts)
	e.pts += OpusFrameSize
	if err := e.cc.SendFrame(f.f); err != nil {
		return fmt.Errorf("av: opus encode: %w", err)
	}
	for {
		if err := e.cc.ReceivePacket(e.pkt); err != nil {
			if errors.Is(err, astiav.ErrEagain) || errors.Is(err, astiav.ErrEof) {
				return nil
			}
			return fmt.Errorf("av: opus encode: %w", err)
		}
		err := fn(e.pkt.Data())
		e.pkt.Unref()
		if err != nil {
			return err
		}
	}
}

// Close frees the encoder.
func (e *OpusEncoder) Close() {
	e.pkt.Free()
	e.cc.Free()
}

// PCM reads audio frames as interleaved float32 samples at 48 kHz, for
// tests and level meters. go-astiav v0.16 cannot read an audio frame's
// samples, so they come out of libavcodec's pcm_f32le encoder.
type PCM struct {
	res *Resampler
	cc  *astiav.CodecContext
	pkt *astiav.Packet
	dst []float32
}

// NewPCM returns a reader giving channels (1 or 2) interleaved channels.
func NewPCM(channels int) (*PCM, error) {
	if channels != 1 {
		channels = 2
	}
	c := astiav.FindEncoderByName("pcm_f32le")
	if c == nil {
		return nil, errors.New("av: no pcm_f32le encoder in libavcodec")
	}
	cc := astiav.AllocCodecContext(c)
	if cc == nil {
		return nil, errors.New("av: cannot allocate PCM encoder")
	}
	l, _ := layoutOf(channels)
	cc.SetChannelLayout(l)
	cc.SetSampleRate(OpusRate)
	cc.SetSampleFormat(astiav.SampleFormatFlt)
	cc.SetTimeBase(astiav.NewRational(1, OpusRate))
	if err := cc.Open(c, nil); err != nil {
		cc.Free()
		return nil, fmt.Errorf("av: open pcm_f32le: %w", err)
	}
	return &PCM{res: NewResampler(channels, 0), cc: cc, pkt: astiav.AllocPacket()}, nil
}

// Append appends f's samples, converted, to dst. Conversion may hold
// back a few samples until the next call.
func (p *PCM) Append(dst []float32, f *AudioFrame) ([]float32, error) {
	p.dst = dst
	err := p.res.Write(f, func(g *AudioFrame) error {
		if err := p.cc.SendFrame(g.f); err != nil {
			return fmt.Errorf("av: pcm: %w", err)
		}
		for {
			if err := p.cc.ReceivePacket(p.pkt); err != nil {
				if errors.Is(err, astiav.ErrEagain) || errors.Is(err, astiav.ErrEof) {
					return nil
				}
				return fmt.Errorf("av: pcm: %w", err)
			}
			b := p.pkt.Data()
			for i := 0; i+4 <= len(b); i += 4 {
				p.dst = append(p.dst, math.Float32frombits(binary.LittleEndian.Uint32(b[i:])))
			}
			p.pkt.Unref()
		}
	})
	dst, p.dst = p.dst, nil
	return dst, err
}

// Close frees the reader.
func (p *PCM) Close() {
	p.res.Close()
	p.pkt.Free()
	p.cc.Free()
}

// layoutOf is libavutil's default layout for a channel count.
func layoutOf(channels int) (astiav.ChannelLayout, bool) {
	switch channels {
	case 1:
		return astiav.ChannelLayoutMono, true
	case 2:
		return astiav.ChannelLayoutStereo, true
	case 3:
		return astiav.ChannelLayoutSurround, true
	case 4:
		return astiav.ChannelLayoutQuad, true
	case 5:
		return astiav.ChannelLayout5Point0Back, true
	case 6:
		return astiav.ChannelLayout5Point1Back, true
	case 7:
		return astiav.ChannelLayout6Point1, true
	case 8:
		return astiav.ChannelLayout7Point1, true
	}
	return astiav.ChannelLayout{}, false
}
