package rtsp

import (
	"errors"
	"fmt"
	"time"

	"github.com/bluenviron/gortsplib/v5/pkg/description"
	"github.com/bluenviron/gortsplib/v5/pkg/format"
	"github.com/bluenviron/gortsplib/v5/pkg/format/rtph264"
	"github.com/bluenviron/gortsplib/v5/pkg/format/rtph265"
	"github.com/bluenviron/gortsplib/v5/pkg/format/rtplpcm"
	"github.com/bluenviron/gortsplib/v5/pkg/format/rtpmpeg4audio"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h264"
	"github.com/bluenviron/mediacommon/v2/pkg/codecs/h265"
	"github.com/pion/rtp"

	"github.com/cascade-cdn/cascade/media"
	cascadeh264 "github.com/cascade-cdn/cascade/media/h264"
	"github.com/cascade-cdn/cascade/origin/registry"
	"github.com/cascade-cdn/cascade/transcode"
)

// payloadMax is the RTP payload size Cascade repacketises RTSP video to.
// Cameras and ffmpeg send up to 1460-byte payloads (or 64 KiB over TCP);
// re-sent over WebRTC with SRTP that would not fit a 1500-byte path.
const payloadMax = 1188

// errNoMedia means a description had nothing Cascade can play.
var errNoMedia = errors.New("no usable media: video must be H.264 or H.265, audio Opus, AAC (MPEG-4 audio) or G.711")

// choice is what Cascade takes from a source's description: at most one
// video and one audio media, the first usable of each.
type choice struct {
	video      *description.Media
	videoForma format.Format // *format.H264 or *format.H265
	audio      *description.Media
	audioForma format.Format // *format.Opus, *format.MPEG4Audio or *format.G711
}

// codec is the video hub's encoding name for the choice.
func (c choice) codec() string {
	if _, ok := c.videoForma.(*format.H265); ok {
		return "H265"
	}
	return "H264"
}

// choose picks the medias to ingest from desc.
func choose(desc *description.Session) (choice, error) {
	var c choice
	for _, m := range desc.Medias {
		if m.IsBackChannel {
			continue
		}
		for _, f := range m.Formats {
			switch f := f.(type) {
			case *format.H264:
				if c.video == nil && f.PacketizationMode <= 1 {
					c.video, c.videoForma = m, f
				}
			case *format.H265:
				if c.video == nil {
					c.video, c.videoForma = m, f
				}
			case *format.Opus, *format.G711:
				if c.audio == nil {
					c.audio, c.audioForma = m, f
				}
			case *format.MPEG4Audio:
				if c.audio == nil && f.Config != nil {
					c.audio, c.audioForma = m, f
				}
			}
		}
	}
	if c.video == nil && c.audio == nil {
		return c, errNoMedia
	}
	return c, nil
}

// ingest writes one RTSP source's media into a stream's hubs: video
// depacketised into access units (parameter sets put back before every
// keyframe) and repacketised at a WebRTC-safe size; Opus as it comes; other
// audio transcoded to Opus. Its methods run on gortsplib's reader goroutine
// for the session, one packet at a time.
type ingest struct {
	st     *registry.Stream
	video  *videoIngest
	audio  *audioIngest
	onData func(kind string, n int)
}

func newIngest(c choice, st *registry.Stream, onData func(kind string, n int)) (*ingest, error) {
	in := &ingest{st: st, onData: onData}
	if c.video != nil {
		v, err := newVideoIngest(c.videoForma, st)
		if err != nil {
			return nil, err
		}
		in.video = v
	}
	if c.audio != nil {
		a, err := newAudioIngest(c.audioForma, st.Audio.NewSource())
		if err != nil {
			return nil, err
		}
		in.audio = a
	}
	return in, nil
}

// close frees the audio transcoder, if any.
func (in *ingest) close() {
	if in.audio != nil && in.audio.tc != nil {
		in.audio.tc.Close()
	}
}

func (in *ingest) onVideo(pkt *rtp.Packet) error {
	in.st.Touch()
	in.onData("video", len(pkt.Payload))
	return in.video.push(pkt, time.Now())
}

func (in *ingest) onAudio(pkt *rtp.Packet) error {
	in.st.Touch()
	in.onData("audio", len(pkt.Payload))
	return in.audio.push(pkt, time.Now())
}

// videoIngest turns one H.264 or H.265 RTP stream into hub packets.
type videoIngest struct {
	st   *registry.Stream
	src  *media.Source
	h265 bool
	f264 *format.H264
	f265 *format.H265
	d264 *rtph264.Decoder
	d265 *rtph265.Decoder
	e264 *rtph264.Encoder
	e265 *rtph265.Encoder
	tl   timeline
	seq  uint16
}

func newVideoIngest(f format.Format, st *registry.Stream) (*videoIngest, error) {
	v := &videoIngest{st: st, src: st.Video.NewSource()}
	var err error
	switch f := f.(type) {
	case *format.H264:
		v.f264 = f
		if v.d264, err = f.CreateDecoder(); err != nil {
			return nil, err
		}
		v.e264 = &rtph264.Encoder{PayloadType: 96, PayloadMaxSize: payloadMax, PacketizationMode: 1}
		err = v.e264.Init()
	case *format.H265:
		v.h265, v.f265 = true, f
		if v.d265, err = f.CreateDecoder(); err != nil {
			return nil, err
		}
		v.e265 = &rtph265.Encoder{PayloadType: 96, PayloadMaxSize: payloadMax}
		err = v.e265.Init()
	default:
		err = fmt.Errorf("video format %T", f)
	}
	return v, err
}

// push takes one RTP packet; when it completes an access unit, the unit
// goes to the hub.
func (v *videoIngest) push(pkt *rtp.Packet, now time.Time) error {
	var au [][]byte
	var err error
	if v.h265 {
		au, err = v.d265.Decode(pkt)
	} else {
		au, err = v.d264.Decode(pkt)
	}
	if err != nil {
		if errors.Is(err, rtph264.ErrMorePacketsNeeded) || errors.Is(err, rtph265.ErrMorePacketsNeeded) ||
			errors.Is(err, rtph264.ErrNonStartingPacketAndNoPrevious) || errors.Is(err, rtph265.ErrNonStartingPacketAndNoPrevious) {
			return nil
		}
		return err
	}
	au = dropEmpty(au)
	if len(au) == 0 {
		return nil
	}
	var key bool
	if v.h265 {
		au, key = v.params265(au)
	} else {
		au, key = v.params264(au)
	}
	var pkts []*rtp.Packet
	if v.h265 {
		pkts, err = v.e265.Encode(au)
	} else {
		pkts, err = v.e264.Encode(au)
	}
	if err != nil {
		return err
	}
	ts := v.tl.next(pkt.Timestamp, now, 90000)
	for i, p := range pkts {
		v.src.Write(&media.Packet{
			SequenceNumber: v.seq, Timestamp: ts, Marker: p.Marker,
			Payload: p.Payload, Keyframe: key && i == 0, Arrival: now,
		})
		v.seq++
	}
	return nil
}

// params264 keeps the format's SPS/PPS up to date from in-band ones and
// puts them before an IDR that lacks them (ffmpeg and many cameras send
// them only in the SDP), so every keyframe is decodable on its own.
func (v *videoIngest) params264(au [][]byte) ([][]byte, bool) {
	var hasSPS, hasPPS, idr bool
	sps, pps := v.f264.SafeParams()
	for _, n := range au {
		switch h264.NALUType(n[0] & 0x1f) {
		case h264.NALUTypeSPS:
			hasSPS = true
			sps = n
		case h264.NALUTypePPS:
			hasPPS = true
			pps = n
		case h264.NALUTypeIDR:
			idr = true
		}
	}
	if hasSPS || hasPPS {
		v.f264.SafeSetParams(sps, pps)
	}
	if hasSPS {
		if info, err := cascadeh264.ParseSPS(sps); err == nil {
			v.st.SetVideoSize(info.Width, info.Height)
		}
	}
	if idr && !hasSPS && sps != nil && pps != nil {
		au = append([][]byte{sps, pps}, au...)
		hasSPS = true
	}
	return au, idr || hasSPS
}

// params265 is params264 for H.265: VPS, SPS and PPS before each IRAP.
func (v *videoIngest) params265(au [][]byte) ([][]byte, bool) {
	var hasParams, irap bool
	vps, sps, pps := v.f265.SafeParams()
	for _, n := range au {
		if len(n) < 2 {
			continue
		}
		switch typ := h265.NALUType((n[0] >> 1) & 0x3f); typ {
		case h265.NALUType_VPS_NUT:
			vps, hasParams = n, true
		case h265.NALUType_SPS_NUT:
			sps, hasParams = n, true
			var s h265.SPS
			if err := s.Unmarshal(n); err == nil {
				v.st.SetVideoSize(s.Width(), s.Height())
			}
		case h265.NALUType_PPS_NUT:
			pps, hasParams = n, true
		default:
			if typ >= h265.NALUType_BLA_W_LP && typ <= h265.NALUType_CRA_NUT {
				irap = true
			}
		}
	}
	if hasParams {
		v.f265.SafeSetParams(vps, sps, pps)
	}
	if irap && !hasParams && vps != nil && sps != nil && pps != nil {
		au = append([][]byte{vps, sps, pps}, au...)
	}
	return au, irap
}

func dropEmpty(au [][]byte) [][]byte {
	out := au[:0]
	for _, n := range au {
		if len(n) > 0 {
			out = append(out, n)
		}
	}
	return out
}

// audioIngest turns one audio RTP stream into Opus hub packets.
type audioIngest struct {
	src  *media.Source
	opus bool
	tc   *transcode.Audio
	aac  *rtpmpeg4audio.Decoder
	pcm  *rtplpcm.Decoder
	rate int // the source's RTP clock
	tl   timeline
	seq  uint16
	now  time.Time
	emit func(payload []byte, ts uint32)
}

func newAudioIngest(f format.Format, src *media.Source) (*audioIngest, error) {
	a := &audioIngest{src: src}
	a.emit = func(payload []byte, ts uint32) {
		a.src.Write(&media.Packet{SequenceNumber: a.seq, Timestamp: ts, Payload: payload, Arrival: a.now})
		a.seq++
	}
	var err error
	switch f := f.(type) {
	case *format.Opus:
		a.opus = true
	case *format.MPEG4Audio:
		var asc []byte
		if asc, err = f.Config.Marshal(); err != nil {
			return nil, err
		}
		if a.aac, err = f.CreateDecoder(); err != nil {
			return nil, err
		}
		a.rate = f.ClockRate()
		a.tc, err = transcode.NewAudio(transcode.AudioInput{Codec: "aac", SampleRate: f.Config.SampleRate,
			Channels: f.Config.ChannelCount, ClockRate: a.rate, Config: asc})
	case *format.G711:
		if a.pcm, err = f.CreateDecoder(); err != nil {
			return nil, err
		}
		codec := "pcm_alaw"
		if f.MULaw {
			codec = "pcm_mulaw"
		}
		a.rate = f.ClockRate()
		a.tc, err = transcode.NewAudio(transcode.AudioInput{Codec: codec, SampleRate: f.SampleRate, Channels: f.ChannelCount, ClockRate: a.rate})
	default:
		err = fmt.Errorf("audio format %T", f)
	}
	return a, err
}

func (a *audioIngest) push(pkt *rtp.Packet, now time.Time) error {
	a.now = now
	switch {
	case a.opus:
		if len(pkt.Payload) == 0 {
			return nil
		}
		ts := a.tl.next(pkt.Timestamp, now, 48000)
		a.emit(append([]byte(nil), pkt.Payload...), ts)
		return nil
	case a.aac != nil:
		aus, err := a.aac.Decode(pkt)
		if err != nil {
			if errors.Is(err, rtpmpeg4audio.ErrMorePacketsNeeded) {
				return nil
			}
			return err
		}
		// The transcoder follows the source clock itself; the timeline
		// only keeps a camera's clock jumps out of it.
		ts := a.tl.next(pkt.Timestamp, now, uint32(a.rate))
		for i, au := range aus {
			if err := a.tc.Write(au, ts+uint32(i*1024), a.emit); err != nil {
				return err
			}
		}
		return nil
	default:
		samples, err := a.pcm.Decode(pkt)
		if err != nil {
			return err
		}
		return a.tc.Write(samples, a.tl.next(pkt.Timestamp, now, uint32(a.rate)), a.emit)
	}
}
