// Package av is Cascade's only door to libavcodec, libswscale and libx264
// (through github.com/asticode/go-astiav, which holds the cgo but for one
// call in frame.go). It offers three small things: an H.264 and H.265
// decoder, a scaler and an H.264 encoder tuned for WebRTC, each owning its
// C memory and freed by Close.
//
// None of its types is safe for concurrent use: each belongs to one
// transcoding goroutine.
package av

import (
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/asticode/go-astiav"
)

func init() {
	// libav's own logging goes to stderr from C; keep it to real errors.
	// Failures reach callers as Go errors anyway.
	astiav.SetLogLevel(astiav.LogLevelError)
}

// Frame is a decoded or scaled picture, in YUV 4:2:0, owned by whoever
// made it and valid until its next use or Close.
type Frame struct {
	f *astiav.Frame
}

// Width and Height are the picture size.
func (f *Frame) Width() int  { return f.f.Width() }
func (f *Frame) Height() int { return f.f.Height() }

// PTS is the frame's timestamp in 90 kHz ticks.
func (f *Frame) PTS() int64 { return f.f.Pts() }

// Close frees the frame.
func (f *Frame) Close() { f.f.Free() }

// AppendLuma appends the luma plane of an 8-bit YUV 4:2:0 picture,
// tightly packed (Width bytes a row), to buf; it is for measuring quality,
// not for the ladder.
func (f *Frame) AppendLuma(buf []byte) ([]byte, error) {
	if pf := f.f.PixelFormat(); pf != astiav.PixelFormatYuv420P && pf != astiav.PixelFormatYuvj420P {
		return buf, fmt.Errorf("av: luma of a %s picture", pf)
	}
	size, err := f.f.ImageBufferSize(1)
	if err != nil {
		return buf, fmt.Errorf("av: luma: %w", err)
	}
	n := len(buf)
	buf = slices.Grow(buf, size)[:n+size]
	if _, err := f.f.ImageCopyToBuffer(buf[n:], 1); err != nil {
		return buf[:n], fmt.Errorf("av: luma: %w", err)
	}
	return buf[:n+f.Width()*f.Height()], nil
}

// Decoder decodes H.264 or H.265 access units.
type Decoder struct {
	cc  *astiav.CodecContext
	pkt *astiav.Packet
	out *Frame
	buf []byte
}

// NewDecoder returns a decoder for codec, named as in RTP and media.Hub:
// "H264" or "H265". It uses slice threads only: frame threads would add a
// frame of delay per thread.
func NewDecoder(codec string) (*Decoder, error) {
	var id astiav.CodecID
	switch codec {
	case "H264":
		id = astiav.CodecIDH264
	case "H265":
		id = astiav.CodecIDHevc
	default:
		return nil, fmt.Errorf("av: no decoder for codec %q", codec)
	}
	c := astiav.FindDecoder(id)
	if c == nil {
		return nil, fmt.Errorf("av: no %s decoder in libavcodec", codec)
	}
	cc := astiav.AllocCodecContext(c)
	if cc == nil {
		return nil, errors.New("av: cannot allocate decoder")
	}
	cc.SetThreadType(astiav.ThreadTypeSlice)
	cc.SetTimeBase(astiav.NewRational(1, 90000))
	if err := cc.Open(c, nil); err != nil {
		cc.Free()
		return nil, fmt.Errorf("av: open decoder: %w", err)
	}
	return &Decoder{cc: cc, pkt: astiav.AllocPacket(), out: &Frame{f: astiav.AllocFrame()}}, nil
}

// Decode feeds one Annex-B access unit with its timestamp and calls fn for
// every frame it completes. The frame is only valid during fn. A corrupt
// unit is an error; the decoder stays usable and recovers at the next
// keyframe.
func (d *Decoder) Decode(au []byte, pts int64, fn func(*Frame) error) error {
	if err := send(d.cc, d.pkt, &d.buf, au, pts); err != nil {
		return err
	}
	return receive(d.cc, d.out.f, func() error { return fn(d.out) })
}

// inputPadding is libavcodec's AV_INPUT_BUFFER_PADDING_SIZE.
const inputPadding = 64

var zeros [inputPadding]byte

// send hands one coded unit to a decoder. Decoders read up to inputPadding
// bytes past the end of a packet, which must be zeros; go-astiav v0.16's
// FromData allocates none, so they go in with the data (copied into buf,
// reused from call to call) and come off the size.
func send(cc *astiav.CodecContext, pkt *astiav.Packet, buf *[]byte, data []byte, pts int64) error {
	*buf = append(append((*buf)[:0], data...), zeros[:]...)
	if err := pkt.FromData(*buf); err != nil {
		return fmt.Errorf("av: packet: %w", err)
	}
	pkt.SetSize(len(data))
	pkt.SetPts(pts)
	pkt.SetDts(pts)
	err := cc.SendPacket(pkt)
	pkt.Unref()
	if err != nil && !errors.Is(err, astiav.ErrEagain) {
		return fmt.Errorf("av: decode: %w", err)
	}
	return nil
}

// receive calls fn for every frame the decoder has completed, each in out
// (valid only during fn), until it needs more input.
func receive(cc *astiav.CodecContext, out *astiav.Frame, fn func() error) error {
	for {
		if err := cc.ReceiveFrame(out); err != nil {
			if errors.Is(err, astiav.ErrEagain) || errors.Is(err, astiav.ErrEof) {
				return nil
			}
			return fmt.Errorf("av: decode: %w", err)
		}
		err := fn()
		out.Unref()
		if err != nil {
			return err
		}
	}
}

// Close frees the decoder.
func (d *Decoder) Close() {
	d.out.f.Free()
	d.pkt.Free()
	d.cc.Free()
}

// Scaler converts frames to one output size in YUV 4:2:0.
type Scaler struct {
	ssc           *astiav.SoftwareScaleContext
	out           *Frame
	width, height int
	srcW, srcH    int
	srcFormat     astiav.PixelFormat
	flags         astiav.SoftwareScaleContextFlags
}

// NewScaler returns a scaler to width x height.
func NewScaler(width, height int) *Scaler {
	return &Scaler{width: width, height: height, out: &Frame{f: astiav.AllocFrame()},
		flags: astiav.NewSoftwareScaleContextFlags(astiav.SoftwareScaleContextFlagArea)}
}

// NewReferenceScaler returns a scaler to width x height with a Lanczos
// filter: slower, for the reference pictures of quality measurements.
func NewReferenceScaler(width, height int) *Scaler {
	return &Scaler{width: width, height: height, out: &Frame{f: astiav.AllocFrame()},
		flags: astiav.NewSoftwareScaleContextFlags(astiav.SoftwareScaleContextFlagLanczos)}
}

// Scale returns src at the scaler's size: src itself when it already is
// YUV 4:2:0 at that size (no copy), else a picture valid until the next
// call. The scale context follows a change of source size or format.
func (s *Scaler) Scale(src *Frame) (*Frame, error) {
	format := src.f.PixelFormat()
	if src.Width() == s.width && src.Height() == s.height && format == astiav.PixelFormatYuv420P {
		return src, nil
	}
	if s.ssc == nil || src.Width() != s.srcW || src.Height() != s.srcH || format != s.srcFormat {
		s.out.f.Unref()
		if s.ssc != nil {
			s.ssc.Free()
		}
		var err error
		s.ssc, err = astiav.CreateSoftwareScaleContext(src.Width(), src.Height(), format,
			s.width, s.height, astiav.PixelFormatYuv420P,
			s.flags)
		if err != nil {
			s.ssc = nil
			return nil, fmt.Errorf("av: scaler: %w", err)
		}
		s.srcW, s.srcH, s.srcFormat = src.Width(), src.Height(), format
	}
	// Reuse the last picture's memory unless someone still holds it.
	// Fresh buffers for every frame cost more than scaling into them: the
	// C allocator hands the memory back to the kernel between frames, and
	// page faults on every write followed.
	if !writable(s.out.f) {
		s.out.f.Unref()
	}
	if err := s.ssc.ScaleFrame(src.f, s.out.f); err != nil {
		return nil, fmt.Errorf("av: scale: %w", err)
	}
	s.out.f.SetPts(src.PTS())
	return s.out, nil
}

// Close frees the scaler.
func (s *Scaler) Close() {
	if s.ssc != nil {
		s.ssc.Free()
	}
	s.out.f.Free()
}

// EncoderConfig shapes one rung's encoder.
type EncoderConfig struct {
	// Name is the libavcodec encoder: "libx264" (h264_nvenc and others
	// are for later; see issue 3).
	Name          string
	Width, Height int
	Bitrate       int // bits per second
	FPS           int // nominal frame rate, for rate control
	// Preset is x264's speed preset ("veryfast", "superfast", ...).
	Preset string
	// Threads for the encoder; 0 lets the library choose.
	Threads int
}

// Packet is one encoded access unit in Annex-B form.
type Packet struct {
	Data     []byte // valid until the next Encode
	PTS      int64
	Keyframe bool
}

// Encoder encodes frames to H.264 constrained baseline for WebRTC.
type Encoder struct {
	cc    *astiav.CodecContext
	pkt   *astiav.Packet
	frame *astiav.Frame
}

// NewEncoder opens an encoder. The settings are what WebRTC viewers need:
// constrained baseline (no B-frames, no reordering), zero-latency tuning
// (no lookahead, at most one frame of delay), SPS/PPS in band before every
// IDR, IDRs only where the caller asks (no scene-cut or periodic
// keyframes, so every rung keeps the shared keyframe clock) and a VBV of
// about one frame interval so a frame's burst stays sendable.
func NewEncoder(cfg EncoderConfig) (*Encoder, error) {
	if cfg.Name == "" {
		cfg.Name = "libx264"
	}
	if cfg.FPS <= 0 {
		cfg.FPS = 30
	}
	if cfg.Preset == "" {
		cfg.Preset = "superfast"
	}
	c := astiav.FindEncoderByName(cfg.Name)
	if c == nil {
		return nil, fmt.Errorf("av: encoder %q not in libavcodec", cfg.Name)
	}
	cc := astiav.AllocCodecContext(c)
	if cc == nil {
		return nil, errors.New("av: cannot allocate encoder")
	}
	cc.SetWidth(cfg.Width)
	cc.SetHeight(cfg.Height)
	cc.SetPixelFormat(astiav.PixelFormatYuv420P)
	cc.SetTimeBase(astiav.NewRational(1, 90000))
	cc.SetFramerate(astiav.NewRational(cfg.FPS, 1))
	cc.SetBitRate(int64(cfg.Bitrate))
	cc.SetGopSize(1 << 20) // keyframes come from the clock only
	if cfg.Threads > 0 {
		cc.SetThreadCount(cfg.Threads)
	}
	opts := astiav.NewDictionary()
	defer opts.Free()
	for k, v := range map[string]string{
		"preset":      cfg.Preset,
		"tune":        "zerolatency",
		"profile":     "baseline", // x264's baseline is constrained baseline
		"bf":          "0",
		"forced-idr":  "1",
		"maxrate":     strconv.Itoa(cfg.Bitrate),
		"bufsize":     strconv.Itoa(cfg.Bitrate / cfg.FPS),
		"x264-params": "scenecut=0:keyint=infinite:repeat-headers=1:aud=0",
	} {
		if err := opts.Set(k, v, 0); err != nil {
			cc.Free()
			return nil, fmt.Errorf("av: option %s: %w", k, err)
		}
	}
	if err := cc.Open(c, opts); err != nil {
		cc.Free()
		return nil, fmt.Errorf("av: open %s %dx%d: %w", cfg.Name, cfg.Width, cfg.Height, err)
	}
	return &Encoder{cc: cc, pkt: astiav.AllocPacket(), frame: astiav.AllocFrame()}, nil
}

// Encode encodes f (at the encoder's size), as an IDR if keyframe, and
// calls fn for every packet that comes out.
func (e *Encoder) Encode(f *Frame, keyframe bool, fn func(Packet) error) error {
	e.frame.Unref()
	if err := e.frame.Ref(f.f); err != nil {
		return fmt.Errorf("av: encode: %w", err)
	}
	if keyframe {
		e.frame.SetPictureType(astiav.PictureTypeI)
	} else {
		e.frame.SetPictureType(astiav.PictureTypeNone)
	}
	err := e.cc.SendFrame(e.frame)
	// Let the picture go at once: an encoder that still needs it holds
	// its own reference (libx264 has copied it), and the scaler that
	// made it can then write the next picture into the same memory.
	e.frame.Unref()
	if err != nil {
		return fmt.Errorf("av: encode: %w", err)
	}
	for {
		if err := e.cc.ReceivePacket(e.pkt); err != nil {
			if errors.Is(err, astiav.ErrEagain) || errors.Is(err, astiav.ErrEof) {
				return nil
			}
			return fmt.Errorf("av: encode: %w", err)
		}
		err := fn(Packet{Data: e.pkt.Data(), PTS: e.pkt.Pts(), Keyframe: e.pkt.Flags().Has(astiav.PacketFlagKey)})
		e.pkt.Unref()
		if err != nil {
			return err
		}
	}
}

// Close frees the encoder.
func (e *Encoder) Close() {
	e.frame.Free()
	e.pkt.Free()
	e.cc.Free()
}
