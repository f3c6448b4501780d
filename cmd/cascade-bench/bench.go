package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/bluenviron/gortsplib/v5/pkg/format/rtph265"
	"github.com/pion/rtp/codecs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascade-cdn/cascade/media"
	"github.com/cascade-cdn/cascade/media/h264"
	"github.com/cascade-cdn/cascade/media/h265"
	"github.com/cascade-cdn/cascade/transcode"
	"github.com/cascade-cdn/cascade/transcode/ladder"
	"github.com/cascade-cdn/cascade/transcode/transcodetest"
)

// fps is the generated sources' frame rate.
const fps = 30

// source is one generated input, packetized once for every run.
type source struct {
	codec    string
	size     string
	in       *transcodetest.Input
	payloads [][][]byte // per access unit, its RTP payloads
	keys     [][]bool   // for H.265, which payloads are keyframes
}

// newSource packetizes in as a publisher would: RFC 6184 for H.264,
// RFC 7798 for H.265 (delimiters left out).
func newSource(codec, size string, in *transcodetest.Input) (*source, error) {
	s := &source{codec: codec, size: size, in: in}
	switch codec {
	case "H264":
		var pay codecs.H264Payloader
		for _, au := range in.AUs {
			s.payloads = append(s.payloads, pay.Payload(1200, au))
			s.keys = append(s.keys, nil) // the hub finds H.264 keyframes
		}
	case "H265":
		enc := &rtph265.Encoder{PayloadType: 96, PayloadMaxSize: 1200}
		if err := enc.Init(); err != nil {
			return nil, err
		}
		for _, au := range in.AUs {
			var nals [][]byte
			for _, n := range transcodetest.NALs(au) {
				if len(n) >= 2 && h265.Type(n[0]) != h265.NALUAUD {
					nals = append(nals, n)
				}
			}
			pkts, err := enc.Encode(nals)
			if err != nil {
				return nil, err
			}
			var pls [][]byte
			var keys []bool
			for _, p := range pkts {
				pls = append(pls, p.Payload)
				keys = append(keys, h265.IsKeyframe(p.Payload))
			}
			s.payloads, s.keys = append(s.payloads, pls), append(s.keys, keys)
		}
	default:
		return nil, fmt.Errorf("codec %q", codec)
	}
	return s, nil
}

// result is one run's measurements. Durations are in milliseconds; a
// figure that could not be measured is -1.
type result struct {
	Size     string   `json:"size"`
	Codec    string   `json:"codec"`
	Preset   string   `json:"preset"`
	Run      int      `json:"run"` // 0 for the median
	Rungs    []string `json:"rungs"`
	Reencode bool     `json:"source_reencoded"` // the source rung was encoded, not passed through
	ContentS float64  `json:"content_s"`
	// CoreS is the process's CPU seconds per content second.
	CoreS float64 `json:"core_s_per_content_s"`
	// Realtime is content seconds per second of pipeline work.
	Realtime float64 `json:"realtime_factor"`
	// LatP50 and LatP99 are per-frame latency, from the frame's last
	// packet entering the source hub to its first packet on the last rung,
	// after the first second.
	LatP50 float64 `json:"latency_p50_ms"`
	LatP99 float64 `json:"latency_p99_ms"`
	// Dropped is frames shed by rungs (the transcoder fell behind).
	Dropped float64 `json:"frames_dropped"`
	// FFmpegCoreS is the ffmpeg CLI's CPU per content second on the same
	// ladder, and Ratio CoreS over it.
	FFmpegCoreS float64 `json:"ffmpeg_core_s_per_content_s"`
	Ratio       float64 `json:"ratio_vs_ffmpeg"`
	// Others is the CPU the rest of the machine used while the pipeline
	// ran, in cores: well above 0 means the figures are disturbed.
	Others float64 `json:"others_cores"`
	// PSNR is each rung's mean luma PSNR in dB against the source scaled
	// with a Lanczos filter, and KbpsOut its bit rate (with -quality).
	PSNR    map[string]float64 `json:"psnr_db,omitempty"`
	KbpsOut map[string]float64 `json:"kbps,omitempty"`
	Error   string             `json:"error,omitempty"`
}

// ladderSink keeps the pipeline's latest ladder.
type ladderSink struct {
	mu   sync.Mutex
	outs []transcode.Output
}

func (l *ladderSink) LadderChanged(outs []transcode.Output) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(outs) > 0 {
		l.outs = outs
	}
}

func (l *ladderSink) get() []transcode.Output {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.outs
}

// reader watches one rung's hub for the time each frame's first packet
// was published there.
type reader struct {
	out  transcode.Output
	sub  *media.Subscriber
	buf  []media.Entry
	last uint32
	seen bool
	at   map[uint32]time.Time // frame timestamp -> first packet published

	// With keep, the rung's access units and their timestamps.
	keep  bool
	asm   h264.Assembler
	aus   [][]byte
	ts    []uint32
	bytes int
}

func (r *reader) drain() {
	r.buf = r.sub.Pop(r.buf[:0])
	for _, e := range r.buf {
		if pk := e.Packet; !r.seen || pk.Timestamp != r.last {
			r.seen, r.last = true, pk.Timestamp
			if _, ok := r.at[pk.Timestamp]; !ok {
				r.at[pk.Timestamp] = pk.Arrival // the hub stamps it on publication
			}
		}
		if pk := e.Packet; r.keep {
			if au := r.asm.Push(pk.SequenceNumber, pk.Timestamp, pk.Marker, pk.Payload); au != nil && !au.Damaged {
				r.aus, r.ts = append(r.aus, bytes.Clone(au.Data)), append(r.ts, au.Timestamp)
				r.bytes += len(au.Data)
			}
		}
	}
	clear(r.buf)
}

// runConfig is how measure runs.
type runConfig struct {
	// Offline feeds each frame as soon as the pipeline is done with the
	// one before, instead of in real time.
	Offline bool
	// FFmpeg runs the ffmpeg CLI on the same ladder afterwards.
	FFmpeg bool
	// Quality measures each rung's luma PSNR against the source scaled
	// with a Lanczos filter.
	Quality bool
}

// measure runs the real pipeline on src once, fed through a hub as a
// publisher's packets would arrive, and measures it.
func measure(src *source, cfg transcode.Config, rc runConfig) (res result, err error) {
	res = result{Size: src.size, Codec: src.codec, Preset: cfg.Preset, FFmpegCoreS: -1, Ratio: -1}
	n := len(src.payloads)
	res.ContentS = float64(n) / fps
	reg := prometheus.NewRegistry()
	hub := media.NewHub(media.DefaultHubConfig(media.Video, src.codec, 90000))
	defer hub.Close()
	lis := &ladderSink{}
	cpu0, host0 := transcodetest.CPUTime(), hostBusy()
	p, err := transcode.Start(cfg, "bench", hub, lis, transcode.NewMetrics(reg), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return res, err
	}
	defer p.Close()

	var readers []*reader
	defer func() {
		for _, r := range readers {
			r.sub.Close()
		}
	}()
	subscribe := func() {
		outs := lis.get()
		if readers != nil || len(outs) < 2 {
			return
		}
		// The encoded rungs. An H.264 source rung that is re-encoded took
		// over a hub that first carried the source itself, and continues
		// its numbering, so its timestamps cannot be matched to source
		// frames: it is left out. An H.265 one is re-encoded from the
		// first frame and kept.
		rungs := outs[1:]
		if src.codec == "H265" {
			rungs = outs
		}
		for _, o := range rungs {
			if sub := o.Hub.Subscribe(); sub != nil {
				readers = append(readers, &reader{out: o, sub: sub, at: make(map[uint32]time.Time, n), keep: rc.Quality})
			}
		}
	}
	drain := func() {
		subscribe()
		for _, r := range readers {
			r.drain()
		}
	}

	w := hub.NewSource()
	in := make([]time.Time, n)
	var seq uint16
	start := time.Now()
	held := reorderDepth(src.in.PTS) // frames a decoder holds back
	for i, pls := range src.payloads {
		if rc.Offline {
			// Nothing queued: no frame waits behind another, so none is
			// shed, and latency is the frame's own work. Should the
			// decoder hold back more frames than the timestamps show, it
			// gets one more each time it stalls.
			for wait := time.Now(); p.Stats().Frames+held < uint64(i); {
				if time.Since(wait) > time.Second {
					held++
					break
				}
				time.Sleep(500 * time.Microsecond)
			}
		} else {
			time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / fps)))
		}
		now := time.Now()
		in[i] = now
		for j, pl := range pls {
			w.Write(&media.Packet{SequenceNumber: seq, Timestamp: uint32(src.in.PTS[i]), Marker: j == len(pls)-1,
				Payload: pl, Arrival: now, Keyframe: src.keys[i] != nil && src.keys[i][j]})
			seq++
		}
		drain()
	}
	// Wait for the pipeline to finish the last frames it can (a decoder
	// with B-frames holds a few until more come).
	last, since := p.Stats().Frames, time.Now()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		drain()
		if f := p.Stats().Frames; f != last {
			last, since = f, time.Now()
		} else if time.Since(since) > 200*time.Millisecond {
			break
		}
	}
	cpu, wall := transcodetest.CPUTime()-cpu0, since.Sub(start)
	res.Others = -1
	if host1 := hostBusy(); host0 >= 0 && host1 >= 0 {
		res.Others = max(0, (host1-host0-cpu).Seconds()/time.Since(start).Seconds())
	}
	stats := p.Stats()
	if stats.Frames == 0 || stats.Busy <= 0 {
		return res, errors.New("the pipeline decoded no frames")
	}
	if len(readers) == 0 {
		return res, errors.New("the pipeline planned no rungs below the source")
	}
	res.CoreS = cpu.Seconds() / res.ContentS
	res.Realtime = float64(stats.Frames) / fps / stats.Busy.Seconds()
	if rc.Offline {
		res.Realtime = res.ContentS / wall.Seconds()
	}

	outs := lis.get()
	res.Reencode = !outs[0].Rung.Passthrough
	var rungs []ladder.Rung
	for _, o := range outs {
		name := o.Rung.Name
		if o.Rung.Name == "source" && o.Rung.Passthrough {
			name += "(passthrough)"
		} else {
			rungs = append(rungs, o.Rung)
		}
		res.Rungs = append(res.Rungs, fmt.Sprintf("%s %dx%d", name, o.Rung.Width, o.Rung.Height))
	}

	// Latency is steady-state: the first second is left out, as its first
	// frame waits for every encoder to open.
	var lat []time.Duration
	for i, ts := range src.in.PTS {
		if n >= 3*fps && i < fps {
			continue
		}
		var done time.Time
		for _, r := range readers {
			if at, ok := r.at[uint32(ts)]; ok && at.After(done) {
				done = at
			}
		}
		if !done.IsZero() {
			lat = append(lat, done.Sub(in[i]))
		}
	}
	if len(lat) < n/2 {
		return res, fmt.Errorf("only %d of %d frames came out", len(lat), n)
	}
	slices.Sort(lat)
	res.LatP50 = ms(lat[len(lat)/2])
	res.LatP99 = ms(lat[min(len(lat)-1, len(lat)*99/100)])
	res.Dropped = counterSum(reg, "cascade_transcode_frames_dropped_total")

	p.Close() // its work is done; measure the rest alone
	if rc.Quality {
		if res.PSNR, err = psnr(src, readers); err != nil {
			return res, err
		}
		res.KbpsOut = map[string]float64{}
		for _, r := range readers {
			res.KbpsOut[r.out.Rung.Name] = float64(r.bytes) * 8 / 1000 / res.ContentS
		}
	}
	if rc.FFmpeg {
		ff, err := transcodetest.FFmpegLadder(src.in.MKV, rungs, cfg.Preset)
		if err != nil {
			return res, err
		}
		res.FFmpegCoreS = ff.Seconds() / res.ContentS
		res.Ratio = res.CoreS / res.FFmpegCoreS
	}
	return res, nil
}

// reorderDepth is how many frames a decoder must hold back to put access
// units in decode order into presentation order: the most units decoded
// before a frame that are shown after it.
func reorderDepth(pts []int64) uint64 {
	depth := 0
	for i := range pts {
		n := 0
		for j := max(0, i-16); j < i; j++ {
			if pts[j] > pts[i] {
				n++
			}
		}
		depth = max(depth, n)
	}
	return uint64(depth)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// counterSum adds up every series of a counter in reg.
func counterSum(reg *prometheus.Registry, name string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return -1
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
