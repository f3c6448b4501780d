package rtsp

import (
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bluenviron/gortsplib/v5"
	"github.com/bluenviron/gortsplib/v5/pkg/description"
	"github.com/bluenviron/gortsplib/v5/pkg/format"
	"github.com/pion/rtp"

	"github.com/cascade-cdn/cascade/media"
	"github.com/cascade-cdn/cascade/origin/registry"
)

// relayIdle is how long a relay with no reader is kept, so an edge that
// DESCRIBEs and then SETUPs, or reconnects, finds it still fed.
const relayIdle = 10 * time.Second

// RenditionAttr is the SDP attribute that names the rendition a relay
// media carries, with its size and bit rate:
//
//	a=x-cascade-rendition:720p width=1280 height=720 bitrate=2500000
const RenditionAttr = "x-cascade-rendition"

// rend is one rendition a relay serves.
type rend struct {
	name          string
	width, height int
	bitrate       int
	hub           *media.Hub
}

// RelayRendition is one rung of a stream this node relays itself (see
// Relayed).
type RelayRendition struct {
	Name          string
	Width, Height int
	Bitrate       int
	Hub           *media.Hub
}

// Relayed is a stream the registry does not hold that this node can serve
// to relay readers: one an edge itself pulls from its parent, which edges
// below it in the relay tree read from it.
type Relayed struct {
	// Key identifies the source: when the lookup returns another key, the
	// relay is rebuilt (its readers reconnect).
	Key        any
	Renditions []RelayRendition
	Audio      *media.Hub // nil when the stream has no audio yet
	// AddReaders, if set, is told of each reader that starts (+1) and
	// ends (-1), so the edge keeps its own pull while others read it.
	AddReaders func(int64)
	// Done is closed when the source ends (the edge dropped its pull);
	// the relay then ends too. Its rungs never change while it lasts.
	Done <-chan struct{}
}

// SetRelayed makes the server offer, to relay readers, streams that are
// not in the registry: lookup returns them by name. Call it before
// serving.
func (s *Server) SetRelayed(lookup func(name string) (Relayed, bool)) {
	s.relays.relayed.Store(&lookup)
}

// RelayBytesOut returns the RTP payload bytes sent to relay readers so
// far (each reader counted: the bytes that left this node).
func (s *Server) RelayBytesOut() uint64 { return s.relays.bytesOut.Load() }

// source is what a relay serves, from the registry or Relayed.
type source struct {
	key        any
	rends      []rend
	audio      *media.Hub
	addReaders func(int64)
	done       <-chan struct{} // nil for a registry stream
}

// renditionsOf lists what a relay of st serves: the ladder when there is
// one, else the publisher's own video.
func renditionsOf(st *registry.Stream) []rend {
	var out []rend
	for _, r := range st.Renditions() {
		out = append(out, rend{name: r.Name, width: r.Width, height: r.Height, bitrate: r.Bitrate, hub: r.Hub})
	}
	if len(out) == 0 {
		i := st.Info()
		out = append(out, rend{name: "source", width: i.Width, height: i.Height, bitrate: int(st.VideoBitrate()), hub: st.Video})
	}
	return out
}

func sameRends(a, b []rend) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].name != b[i].name || a[i].hub != b[i].hub {
			return false
		}
	}
	return true
}

// relay serves one stream's ladder to RTSP readers: one gortsplib stream
// with a media per rendition plus the audio. Each media is fed by one hub
// subscriber (not one per reader: gortsplib fans out to the readers), held
// only while some reader has set that media up: an edge that serves edges
// below it then pulls only the rungs they read.
type relay struct {
	name  string
	src   source
	ss    *gortsplib.ServerStream
	rends []rend
	lines []string // the rendition attribute of each media, "" for audio
	hubs  []*media.Hub
	m     *metrics
	out   *atomic.Uint64 // bytes to readers, the server's total
	done  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once

	// Readers of each media (playing), and a wake-up for its feeder.
	mediaReaders []atomic.Int64
	want         []chan struct{}

	count   atomic.Int64
	mu      sync.Mutex
	readers map[*gortsplib.ServerSession][]int // the medias each plays
	idle    time.Time                          // since when it has had no reader
}

func newRelay(name string, src source, gs *gortsplib.Server, m *metrics, out *atomic.Uint64) (*relay, error) {
	r := &relay{name: name, src: src, rends: src.rends, m: m, out: out, done: make(chan struct{}),
		readers: map[*gortsplib.ServerSession][]int{}, idle: time.Now()}
	desc := &description.Session{Title: "Cascade " + name}
	for _, rd := range r.rends {
		var f format.Format = &format.H264{PayloadTyp: 96, PacketizationMode: 1}
		if rd.hub.Config().Codec == "H265" {
			f = &format.H265{PayloadTyp: 96}
		}
		desc.Medias = append(desc.Medias, &description.Media{Type: description.MediaTypeVideo, Formats: []format.Format{f}})
		r.lines = append(r.lines, fmt.Sprintf("a=%s:%s width=%d height=%d bitrate=%d", RenditionAttr, rd.name, rd.width, rd.height, rd.bitrate))
		r.hubs = append(r.hubs, rd.hub)
	}
	if src.audio != nil {
		desc.Medias = append(desc.Medias, &description.Media{Type: description.MediaTypeAudio,
			Formats: []format.Format{&format.Opus{PayloadTyp: 111, ChannelCount: 2}}})
		r.lines = append(r.lines, "")
		r.hubs = append(r.hubs, src.audio)
	}
	r.ss = &gortsplib.ServerStream{Server: gs, Desc: desc}
	if err := r.ss.Initialize(); err != nil {
		return nil, err
	}
	r.mediaReaders = make([]atomic.Int64, len(r.hubs))
	r.want = make([]chan struct{}, len(r.hubs))
	for i, h := range r.hubs {
		r.want[i] = make(chan struct{}, 1)
		r.wg.Add(1)
		go r.feed(i, h, desc.Medias[i])
	}
	return r, nil
}

// feed copies one hub into one media of the gortsplib stream while the
// media has readers.
func (r *relay) feed(i int, hub *media.Hub, medi *description.Media) {
	defer r.wg.Done()
	for {
		select {
		case <-r.done:
			return
		case <-r.want[i]:
		}
		if r.mediaReaders[i].Load() == 0 {
			continue
		}
		sub := hub.Subscribe()
		if sub == nil {
			return // the stream ended; the sweep closes the relay
		}
		over := r.copy(i, sub, medi)
		sub.Close()
		if over {
			return
		}
	}
}

// copy writes what sub delivers to the media's readers until the relay
// or the hub ends (true), or the media has no reader left (false).
func (r *relay) copy(i int, sub *media.Subscriber, medi *description.Media) bool {
	var buf []media.Entry
	pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: medi.Formats[0].PayloadType()}}
	for {
		select {
		case <-r.done:
			return true
		case <-sub.Done():
			return true
		case <-sub.Wake():
		}
		buf = sub.Pop(buf[:0])
		n := r.mediaReaders[i].Load()
		if n == 0 {
			clear(buf)
			return false
		}
		for _, e := range buf {
			p := e.Packet
			pkt.SequenceNumber, pkt.Timestamp, pkt.Marker, pkt.Payload = p.SequenceNumber, p.Timestamp, p.Marker, p.Payload
			if r.ss.WritePacketRTP(medi, &pkt) == nil {
				r.m.relayPackets.Inc()
				b := uint64(len(p.Payload)) * uint64(n)
				r.m.relayBytes.Add(float64(b))
				r.out.Add(b)
			}
		}
		clear(buf)
	}
}

func (r *relay) addReader(ss *gortsplib.ServerSession) {
	r.mu.Lock()
	if _, ok := r.readers[ss]; ok {
		r.mu.Unlock()
		return
	}
	r.readers[ss] = nil
	r.count.Store(int64(len(r.readers)))
	r.mu.Unlock()
	r.m.relayReaders.Inc()
	if r.src.addReaders != nil {
		r.src.addReaders(1)
	}
}

// play starts feeding the medias ss has set up (PLAY).
func (r *relay) play(ss *gortsplib.ServerSession) {
	var medias []int
	for _, md := range ss.Medias() {
		for i, d := range r.ss.Desc.Medias {
			if d == md {
				medias = append(medias, i)
			}
		}
	}
	r.mu.Lock()
	if old, ok := r.readers[ss]; !ok || old != nil {
		r.mu.Unlock()
		return // not a reader of this relay, or playing already
	}
	r.readers[ss] = medias
	r.mu.Unlock()
	for _, i := range medias {
		r.mediaReaders[i].Add(1)
		select {
		case r.want[i] <- struct{}{}:
		default:
		}
	}
}

func (r *relay) removeReader(ss *gortsplib.ServerSession) {
	r.mu.Lock()
	medias, ok := r.readers[ss]
	delete(r.readers, ss)
	r.count.Store(int64(len(r.readers)))
	if len(r.readers) == 0 {
		r.idle = time.Now()
	}
	r.mu.Unlock()
	if !ok {
		return
	}
	for _, i := range medias {
		r.mediaReaders[i].Add(-1)
	}
	r.m.relayReaders.Dec()
	if r.src.addReaders != nil {
		r.src.addReaders(-1)
	}
}

// idleFor is how long the relay has had no reader, or 0.
func (r *relay) idleFor(now time.Time) time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.readers) > 0 {
		return 0
	}
	return now.Sub(r.idle)
}

// close ends the relay: its readers are disconnected (an edge reconnects
// and reads the new ladder).
func (r *relay) close() {
	r.once.Do(func() {
		close(r.done)
		r.wg.Wait()
		r.ss.Close()
		// Sessions the stream's close ended call removeReader, perhaps
		// later; a relayed source must not count them as readers forever.
		r.mu.Lock()
		left := len(r.readers)
		r.readers = map[*gortsplib.ServerSession][]int{}
		r.count.Store(0)
		r.mu.Unlock()
		r.m.relayReaders.Sub(float64(left))
		if r.src.addReaders != nil && left > 0 {
			r.src.addReaders(-int64(left))
		}
	})
}

// relays holds the relay of each stream being read.
type relays struct {
	reg *registry.Registry
	m   *metrics
	log *slog.Logger
	// relayed finds streams this node relays from a parent (SetRelayed).
	relayed  atomic.Pointer[func(string) (Relayed, bool)]
	bytesOut atomic.Uint64

	mu     sync.Mutex
	byName map[string]*relay
	stop   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
}

func newRelays(reg *registry.Registry, m *metrics, log *slog.Logger) *relays {
	rs := &relays{reg: reg, m: m, log: log, byName: map[string]*relay{}, stop: make(chan struct{})}
	rs.wg.Add(1)
	go rs.sweep()
	return rs
}

// lookup finds what a relay of name would serve now: a registry stream,
// else a stream this node relays itself.
func (rs *relays) lookup(name string) (source, bool) {
	if src, ok := rs.published(name); ok {
		return src, true
	}
	if fn := rs.relayed.Load(); fn != nil {
		if rl, ok := (*fn)(name); ok && len(rl.Renditions) > 0 {
			src := source{key: rl.Key, audio: rl.Audio, addReaders: rl.AddReaders, done: rl.Done}
			for _, x := range rl.Renditions {
				src.rends = append(src.rends, rend{name: x.Name, width: x.Width, height: x.Height, bitrate: x.Bitrate, hub: x.Hub})
			}
			return src, true
		}
	}
	return source{}, false
}

// published finds a stream of the registry.
func (rs *relays) published(name string) (source, bool) {
	st := rs.reg.Get(name)
	if st == nil {
		return source{}, false
	}
	return source{key: st, rends: renditionsOf(st), audio: st.Audio}, true
}

// current reports why r no longer serves what its stream is now ("" when
// it still does). A relayed source is not looked up again: that could
// start the edge's pull anew.
func (rs *relays) current(name string, r *relay) string {
	if r.src.done != nil {
		select {
		case <-r.src.done:
			return "stream ended"
		default:
			return ""
		}
	}
	src, ok := rs.published(name)
	switch {
	case !ok || src.key != r.src.key:
		return "stream ended"
	case !sameRends(r.rends, src.rends):
		return "ladder changed"
	}
	return ""
}

// get returns the relay of stream name, building it, or rebuilding it when
// the stream's source or ladder changed since it was built; nil when this
// node has no such stream.
func (rs *relays) get(name string, gs *gortsplib.Server) (*relay, error) {
	src, ok := rs.lookup(name)
	if !ok {
		return nil, nil
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	old := rs.byName[name]
	if old != nil && old.src.key == src.key && sameRends(old.rends, src.rends) {
		return old, nil
	}
	if old != nil {
		delete(rs.byName, name)
		go old.close() // its readers' sessions end; not under our lock
	}
	r, err := newRelay(name, src, gs, rs.m, &rs.bytesOut)
	if err != nil {
		return nil, err
	}
	rs.byName[name] = r
	rs.log.Info("relay started", "stream", name, "renditions", len(r.rends))
	return r, nil
}

func (rs *relays) readers(stream string) int {
	rs.mu.Lock()
	r := rs.byName[stream]
	rs.mu.Unlock()
	if r == nil {
		return 0
	}
	return int(r.count.Load())
}

// sweep closes relays nobody reads, whose stream ended, or whose ladder
// changed (their readers reconnect and DESCRIBE the new one).
func (rs *relays) sweep() {
	defer rs.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-rs.stop:
			return
		case now := <-t.C:
			rs.mu.Lock()
			all := maps.Clone(rs.byName)
			rs.mu.Unlock()
			var stale []*relay
			for name, r := range all {
				why := rs.current(name, r)
				if why == "" && r.idleFor(now) > relayIdle {
					why = "idle"
				}
				if why == "" {
					continue
				}
				rs.mu.Lock()
				if rs.byName[name] == r {
					delete(rs.byName, name)
					stale = append(stale, r)
					rs.log.Info("relay stopped", "stream", name, "why", why)
				}
				rs.mu.Unlock()
			}
			for _, r := range stale {
				r.close()
			}
		}
	}
}

func (rs *relays) close() {
	rs.once.Do(func() {
		close(rs.stop)
		rs.wg.Wait()
		rs.mu.Lock()
		all := rs.byName
		rs.byName = map[string]*relay{}
		rs.mu.Unlock()
		for _, r := range all {
			r.close()
		}
	})
}
