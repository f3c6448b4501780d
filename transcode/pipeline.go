package transcode

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/rtp/codecs"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cascade-cdn/cascade/media"
	"github.com/cascade-cdn/cascade/transcode/av"
	"github.com/cascade-cdn/cascade/transcode/ladder"
)

// Config is the transcoder configuration (config key "transcode").
type Config struct {
	// Enabled turns the ladder on; off, viewers get the source only.
	Enabled bool                `yaml:"enabled"`
	Ladder  []ladder.RungConfig `yaml:"ladder"`
	// KeyframeInterval is the shared keyframe clock of every rung.
	KeyframeInterval time.Duration `yaml:"keyframe_interval"`
	// Encoder is the libavcodec encoder name.
	Encoder string `yaml:"encoder"`
	// Preset is the x264 speed preset.
	Preset string `yaml:"preset"`
}

// DefaultConfig is the design's ladder on a 1 s keyframe clock.
func DefaultConfig() Config {
	return Config{Enabled: true, Ladder: ladder.DefaultRungs(), KeyframeInterval: time.Second, Encoder: "libx264", Preset: "superfast"}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.KeyframeInterval < 100*time.Millisecond || c.KeyframeInterval > 10*time.Second {
		return errors.New("transcode.keyframe_interval must be between 100ms and 10s")
	}
	return ladder.ValidateRungs(c.Ladder)
}

// Output is one transcoded rung and the hub its packets are published on.
type Output struct {
	Rung ladder.Rung
	Hub  *media.Hub
}

// Listener hears about a pipeline's ladder. Calls come from the pipeline's
// goroutine (the first from Start) and must not block.
type Listener interface {
	// LadderChanged gives the current renditions: "source" first (its hub
	// carries the publisher's stream while that is safe for WebRTC, a
	// re-encode at source size otherwise), then the transcoded rungs. It
	// is called with the source alone at start, again once the ladder is
	// planned or re-planned, and with none when the pipeline ends.
	LadderChanged(outs []Output)
}

// Pipeline decodes one stream's video once and encodes every rung below
// the source on one keyframe clock.
type Pipeline struct {
	cfg    Config
	stream string
	m      *Metrics
	src    *media.Hub
	sub    *media.Subscriber

	framesIn, decodeErrors prometheus.Counter
	lis                    Listener
	log                    *slog.Logger
	done                   chan struct{}
	once                   sync.Once
	wg                     sync.WaitGroup

	// Owned by the pipeline goroutine.
	codec  string // the source's: "H264" or "H265"
	asm    assembler
	unwrap ladder.Unwrapper
	dec    *av.Decoder
	clock  *ladder.KeyClock
	rungs  []*rung
	// scaleOrder is rungs from the largest down, each after its parent.
	scaleOrder []*rung
	queued     []*rung // scratch for frame
	crew       *crew   // nil: every rung encodes on the pipeline goroutine
	srcW       int
	srcH       int
	errs       uint64
	arrival    time.Time // of the access unit being decoded

	// The "source" rendition: passed through while safe, else re-encoded.
	// H.265 is always re-encoded: WebRTC viewers get H.264.
	sourceHub *media.Hub
	gate      *gate // nil for H.265
	reencode  *rung // the source-size encoder, once the source proved unsafe
	maxPTS    int64 // highest source timestamp so far, to notice reordering
	lastKey   int64 // unwrapped timestamp of the last source keyframe
	seenKey   bool
	unsafeWhy string // why the source must be re-encoded, once found

	windowStart int64         // first timestamp of the realtime-factor window
	busy        time.Duration // work in the window
	// reencoding is read by viewers' keyframe requests on the source hub.
	reencoding atomic.Bool
	// Running totals for Stats, written by the pipeline goroutine.
	totalFrames atomic.Uint64
	totalBusy   atomic.Int64 // nanoseconds
}

// Stats are a pipeline's running totals since Start.
type Stats struct {
	// Frames is the number of source frames transcoded: decoded, and
	// encoded into every rung that did not shed it.
	Frames uint64
	// Busy is the time the pipeline spent decoding, scaling and encoding:
	// content time over Busy is how much faster than real time the stream
	// is transcoded (the realtime-factor metric, over the whole run).
	Busy time.Duration
}

// Stats returns the running totals. Safe for concurrent use.
func (p *Pipeline) Stats() Stats {
	return Stats{Frames: p.totalFrames.Load(), Busy: time.Duration(p.totalBusy.Load())}
}

type rung struct {
	out   Output
	scale *av.Scaler
	enc   *av.Encoder
	src   *media.Source
	pay   codecs.H264Payloader
	seq   uint16
	// parent is the larger rung this one scales from; nil: the source.
	parent *rung
	index  int // in Pipeline.rungs: shedding goes from the top

	// The frame being encoded, set by the pipeline goroutine before the
	// rung is queued and read back after the crew is done with it.
	pic     *av.Frame // scaled picture, valid during the frame
	key     bool
	arrival time.Time     // of the source frame, for latency
	scaled  time.Duration // time spent scaling, for the encode-time metric
	err     error

	framesOut, dropped, keyframes, bytesOut prometheus.Counter
	encodeTime, latency                     prometheus.Observer
}

// Start subscribes to src, a video hub carrying H.264 (RFC 6184) or H.265
// (RFC 7798) as its Config().Codec says, and transcodes it until src ends
// or Close is called. An H.265 source rendition is always re-encoded to
// H.264 at source size, never passed through.
func Start(cfg Config, stream string, src *media.Hub, lis Listener, m *Metrics, log *slog.Logger) (*Pipeline, error) {
	codec := src.Config().Codec
	asm, err := newAssembler(codec)
	if err != nil {
		return nil, err
	}
	dec, err := av.NewDecoder(codec)
	if err != nil {
		return nil, err
	}
	sub := src.Subscribe()
	if sub == nil {
		dec.Close()
		return nil, errors.New("transcode: source hub is closed")
	}
	p := &Pipeline{
		cfg: cfg, stream: stream, src: src, sub: sub, lis: lis, dec: dec, done: make(chan struct{}), m: m, codec: codec, asm: asm,
		framesIn: m.framesIn.WithLabelValues(stream), decodeErrors: m.decodeErrors.WithLabelValues(stream),
		clock:     ladder.NewKeyClock(int64(cfg.KeyframeInterval.Seconds() * 90000)),
		log:       log.With("component", "transcode"),
		sourceHub: media.NewHub(media.DefaultHubConfig(media.Video, "H264", 90000)),
		maxPTS:    math.MinInt64,
	}
	if codec == "H265" {
		p.unsafe("h265") // re-encoded from the first decoded frame on
	} else if p.gate = newGate(src, p.sourceHub); p.gate == nil {
		sub.Close()
		dec.Close()
		return nil, errors.New("transcode: source hub is closed")
	}
	// Keyframe requests on the source rendition go to the publisher while
	// it passes through, to the shared clock once it is re-encoded.
	p.sourceHub.SetKeyframeRequester(func() {
		if p.reencoding.Load() {
			p.clock.Force()
		} else {
			src.RequestKeyframe()
		}
	})
	p.crew = newCrew(crewHelpers(), len(cfg.Ladder)+1)
	// Viewers of "source" use the gate's hub from the start, so that a
	// later switch to a re-encode reaches all of them.
	p.publishLadder()
	p.wg.Add(1)
	go p.run()
	return p, nil
}

func (p *Pipeline) run() {
	defer p.wg.Done()
	defer p.teardown()
	batch := make([]media.Entry, 0, 64)
	for {
		select {
		case <-p.done:
			return
		case <-p.sub.Done():
			return
		case <-p.sub.Wake():
		}
		batch = p.sub.Pop(batch[:0])
		for _, e := range batch {
			pk := e.Packet
			if e.Resync {
				p.asm, _ = newAssembler(p.codec) // the hub skipped packets: start clean
			}
			au, ts, key := p.asm.push(pk)
			if len(au) == 0 {
				continue
			}
			p.arrival = pk.Arrival
			pts := p.unwrap.Unwrap(ts)
			p.checkSource(pts, key)
			start := time.Now()
			err := p.dec.Decode(au, pts, p.frame)
			p.measure(pts, time.Since(start))
			if err != nil {
				p.errs++
				p.decodeErrors.Inc()
				if p.errs&(p.errs-1) == 0 { // log the 1st, 2nd, 4th, 8th... error
					p.log.Warn("decode failed; recovering at the next keyframe", "err", err, "errors", p.errs)
				}
				p.clock.Force() // the rungs restart with an IDR after the damage
			}
		}
		clear(batch)
	}
}

// frame encodes one decoded source frame into every rung. Each rung's
// picture is scaled from the next larger rung's (cascade scaling: the
// scalers read far fewer pixels than four reads of the source), on this
// goroutine, and its encode is queued to the crew at once.
func (p *Pipeline) frame(f *av.Frame) error {
	if f.Width() != p.srcW || f.Height() != p.srcH {
		if err := p.rebuild(f.Width(), f.Height()); err != nil {
			return err
		}
	}
	p.framesIn.Inc()
	defer p.totalFrames.Add(1)
	if p.unsafeWhy != "" && p.reencode == nil {
		p.startReencode()
	}
	key := p.clock.Keyframe(f.PTS())
	queued := p.queued[:0]
	queue := func(r *rung, pic *av.Frame, scaled time.Duration) {
		r.pic, r.key, r.arrival, r.scaled, r.err = pic, key, p.arrival, scaled, nil
		queued = append(queued, r)
		if p.crew != nil {
			p.crew.submit(r)
		} else {
			r.run()
		}
	}
	if p.reencode != nil { // the source rung always flows
		start := time.Now()
		pic, err := p.reencode.scale.Scale(f)
		if err != nil {
			return err
		}
		queue(p.reencode, pic, time.Since(start))
	}
	shed := p.shed(key)
	var err error
	for _, r := range p.scaleOrder {
		// A shed rung is still scaled: the rungs below scale from it.
		start := time.Now()
		from := f
		if r.parent != nil {
			from = r.parent.pic
		}
		if r.pic, err = r.scale.Scale(from); err != nil {
			break
		}
		if r.index < shed {
			r.dropped.Inc()
			continue
		}
		queue(r, r.pic, time.Since(start))
	}
	if p.crew != nil {
		p.crew.finish()
	}
	for _, r := range queued {
		err = cmp.Or(err, r.err)
		r.pic = nil
	}
	for _, r := range p.scaleOrder {
		r.pic = nil
	}
	p.queued = queued
	return err
}

// run encodes the rung's queued picture.
func (r *rung) run() {
	start := time.Now()
	r.err = r.enc.Encode(r.pic, r.key, r.publish)
	r.encodeTime.Observe((r.scaled + time.Since(start)).Seconds())
}

// measure keeps the realtime factor: content time covered per second of
// work (decoding and every rung), reported every 2 s of content.
func (p *Pipeline) measure(pts int64, work time.Duration) {
	p.totalBusy.Add(int64(work))
	p.busy += work
	if p.windowStart == 0 || pts < p.windowStart {
		p.windowStart, p.busy = pts, work
		return
	}
	if content := pts - p.windowStart; content >= 2*90000 && p.busy > 0 {
		p.m.realtime.WithLabelValues(p.stream).Set(float64(content) / 90000 / p.busy.Seconds())
		p.windowStart, p.busy = pts, 0
	}
}

// checkSource notices, on every access unit as it arrives, a source that
// is unsafe to pass through to WebRTC viewers: one whose timestamps go
// backwards in decode order (B-frames: frames reordered), or whose
// keyframes are further apart than a viewer switching to it should wait
// (caught as soon as the gap exceeds the limit, not at the next keyframe).
func (p *Pipeline) checkSource(pts int64, key bool) {
	limit := int64(ladder.MaxPassthroughGOP.Seconds() * 90000)
	switch {
	case pts < p.maxPTS:
		p.unsafe("the source reorders frames (B-frames)")
	case key:
		if p.seenKey && pts-p.lastKey > limit {
			p.unsafe("the source's keyframes are more than 2 s apart")
		}
		p.seenKey, p.lastKey = true, pts
	case p.seenKey && pts-p.lastKey > limit:
		p.unsafe("the source's keyframes are more than 2 s apart")
	case p.seenKey && p.unsafeWhy == "" && pts-p.lastKey > int64(p.cfg.KeyframeInterval.Seconds()*90000):
		// Browsers send keyframes only when asked: ask (the hub allows one
		// request a second), so a publisher that listens stays passed
		// through. One that does not (OBS) is re-encoded at the limit.
		p.src.RequestKeyframe()
	}
	p.maxPTS = max(p.maxPTS, pts)
}

// unsafe records why the source must be re-encoded; the switch happens at
// the next decoded frame, when the source size is known.
func (p *Pipeline) unsafe(why string) {
	if p.unsafeWhy == "" {
		p.unsafeWhy = why
	}
}

// startReencode switches the source rendition from passthrough to a
// re-encode at source size on the shared keyframe clock. A source that
// was unsafe stays re-encoded.
func (p *Pipeline) startReencode() {
	why := p.unsafeWhy
	// Bit rate for the source size: the 720p rung's rate scaled by area,
	// capped where WebRTC viewers still keep up.
	bitrate := min(8_000_000, int(2_500_000*float64(p.srcW*p.srcH)/(1280*720)))
	enc, err := p.newEncoder(p.srcW, p.srcH, bitrate)
	if err != nil {
		p.log.Error("cannot re-encode the source; passing it through", "err", err)
		return
	}
	if p.gate != nil {
		p.gate.shut()
	}
	p.reencoding.Store(true)
	p.reencode = &rung{
		out:   Output{Rung: ladder.Rung{Name: "source", Width: p.srcW, Height: p.srcH, Bitrate: bitrate}, Hub: p.sourceHub},
		scale: av.NewScaler(p.srcW, p.srcH), enc: enc, src: p.sourceHub.NewSource(),
	}
	p.reencode.bindMetrics(p.m, p.stream)
	p.clock.Force() // the re-encode starts with an IDR, and the rungs with it
	p.log.Info("re-encoding the source for WebRTC viewers", "why", why)
	p.publishLadder()
}

// publishLadder tells the listener the current renditions, source first.
func (p *Pipeline) publishLadder() {
	if p.lis == nil {
		return
	}
	src := Output{Rung: ladder.Rung{Name: "source", Width: p.srcW, Height: p.srcH, Passthrough: p.gate != nil}, Hub: p.sourceHub}
	if p.reencode != nil {
		src = p.reencode.out
	}
	outs := []Output{src}
	for _, r := range p.rungs {
		outs = append(outs, r.out)
	}
	p.lis.LadderChanged(outs)
}

func (p *Pipeline) newEncoder(w, h, bitrate int) (*av.Encoder, error) {
	ec := av.EncoderConfig{Name: p.cfg.Encoder, Width: w, Height: h, Bitrate: bitrate, FPS: 30, Preset: p.cfg.Preset, Threads: 1}
	enc, err := av.NewEncoder(ec)
	if err != nil && ec.Name != "libx264" {
		// A hardware encoder named in the config but absent here.
		p.log.Warn("encoder unavailable; falling back to libx264", "encoder", ec.Name, "err", err)
		p.cfg.Encoder, ec.Name = "libx264", "libx264"
		enc, err = av.NewEncoder(ec)
	}
	return enc, err
}

func (r *rung) bindMetrics(m *Metrics, stream string) {
	name := r.out.Rung.Name
	r.framesOut, r.dropped = m.framesOut.WithLabelValues(stream, name), m.dropped.WithLabelValues(stream, name)
	r.keyframes, r.bytesOut = m.keyframes.WithLabelValues(stream, name), m.bytesOut.WithLabelValues(stream, name)
	r.encodeTime, r.latency = m.encodeTime.WithLabelValues(name), m.latency.WithLabelValues(name)
}

// overloadLag is how far behind real time a frame may be before rungs
// start skipping frames: one more rung per further overloadLag of lag.
const overloadLag = 100 * time.Millisecond

// shed returns how many rungs, from the top, skip this frame. When the
// transcoder falls behind real time, the costliest rungs give way first:
// their viewers have the source rung above them, which always flows, and
// the cheap low rungs serve the viewers with nowhere else to go. A clock
// keyframe is never skipped, so every rung's IDRs stay aligned; skipped
// frames are delta frames the encoder simply never sees.
func (p *Pipeline) shed(key bool) int {
	if key || p.arrival.IsZero() {
		return 0
	}
	lag := time.Since(p.arrival)
	if lag <= overloadLag {
		return 0
	}
	return min(len(p.rungs)-1, int(lag/overloadLag))
}

// publish packetizes one encoded access unit onto the rung's hub.
func (r *rung) publish(pk av.Packet) error {
	r.framesOut.Inc()
	r.bytesOut.Add(float64(len(pk.Data)))
	if pk.Keyframe {
		r.keyframes.Inc()
	}
	payloads := r.pay.Payload(1200, pk.Data)
	for i, pl := range payloads {
		r.src.Write(&media.Packet{
			SequenceNumber: r.seq, Timestamp: uint32(pk.PTS), Marker: i == len(payloads)-1,
			Payload: pl, Keyframe: pk.Keyframe && i == 0,
		})
		r.seq++
	}
	if !r.arrival.IsZero() {
		r.latency.Observe(time.Since(r.arrival).Seconds())
	}
	return nil
}

// rebuild plans the ladder for a (new) source size: at the start, and when
// the publisher changes resolution mid-stream (an OBS canvas change).
func (p *Pipeline) rebuild(w, h int) error {
	p.closeRungs()
	plan, err := ladder.Plan(p.cfg.Ladder, ladder.Source{Codec: p.codec, Width: w, Height: h})
	if err != nil {
		return err
	}
	for _, pr := range plan[1:] { // plan[0] is the source: see unsafe
		enc, err := p.newEncoder(pr.Width, pr.Height, pr.Bitrate)
		if err != nil {
			p.closeRungs()
			return fmt.Errorf("transcode: rung %s: %w", pr.Name, err)
		}
		hub := media.NewHub(media.DefaultHubConfig(media.Video, "H264", 90000))
		// Viewers' keyframe requests on a rung move the shared clock, so
		// every rung's next IDR comes early and stays aligned.
		hub.SetKeyframeRequester(p.clock.Force)
		r := &rung{out: Output{Rung: pr, Hub: hub}, scale: av.NewScaler(pr.Width, pr.Height), enc: enc, src: hub.NewSource(), index: len(p.rungs)}
		r.bindMetrics(p.m, p.stream)
		p.rungs = append(p.rungs, r)
	}
	p.planScaling()
	wasReencoding := p.reencode != nil
	p.closeReencode()
	p.srcW, p.srcH = w, h
	p.clock.Force()
	p.log.Info("ladder planned", "source", fmt.Sprintf("%dx%d", w, h), "rungs", len(p.rungs))
	if wasReencoding {
		p.startReencode() // publishes the ladder
	} else {
		p.publishLadder()
	}
	return nil
}

// planScaling orders the rungs from the largest down and gives each the
// smallest larger rung to scale from (the source for the largest).
func (p *Pipeline) planScaling() {
	p.scaleOrder = slices.Clone(p.rungs)
	slices.SortStableFunc(p.scaleOrder, func(a, b *rung) int {
		return cmp.Compare(b.out.Rung.Height, a.out.Rung.Height)
	})
	for i, r := range p.scaleOrder {
		r.parent = nil
		for j := i - 1; j >= 0; j-- {
			if up := p.scaleOrder[j].out.Rung; up.Width >= r.out.Rung.Width && up.Height > r.out.Rung.Height {
				r.parent = p.scaleOrder[j]
				// The nearest larger rung keeps each step small; skip
				// only one that is not larger in both directions.
				break
			}
		}
	}
}

func (p *Pipeline) closeReencode() {
	if p.reencode != nil {
		p.reencode.enc.Close()
		p.reencode.scale.Close()
		p.reencode = nil
	}
}

func (p *Pipeline) closeRungs() {
	for _, r := range p.rungs {
		r.enc.Close()
		r.scale.Close()
		r.out.Hub.Close()
	}
	p.rungs, p.scaleOrder = nil, nil
}

func (p *Pipeline) teardown() {
	if p.crew != nil {
		p.crew.close()
	}
	p.closeRungs()
	p.closeReencode()
	if p.lis != nil {
		p.lis.LadderChanged(nil)
	}
	if p.gate != nil {
		p.gate.close()
	}
	p.sourceHub.Close()
	p.sub.Close()
	p.dec.Close()
}

// Close stops the pipeline and waits for it. Idempotent.
func (p *Pipeline) Close() {
	p.once.Do(func() { close(p.done) })
	p.wg.Wait()
}
