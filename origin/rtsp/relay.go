package rtsp

import (
	"fmt"
	"log/slog"
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
// with a media per rendition plus the audio, fed by one hub subscriber per
// media (not per reader: gortsplib fans out to the readers).
type relay struct {
	st    *registry.Stream
	ss    *gortsplib.ServerStream
	rends []rend
	lines []string // the rendition attribute of each media, "" for audio
	subs  []*media.Subscriber
	m     *metrics
	done  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once

	count   atomic.Int64
	mu      sync.Mutex
	readers map[*gortsplib.ServerSession]struct{}
	idle    time.Time // since when it has had no reader
}

func newRelay(st *registry.Stream, gs *gortsplib.Server, m *metrics) (*relay, error) {
	r := &relay{st: st, rends: renditionsOf(st), m: m, done: make(chan struct{}),
		readers: map[*gortsplib.ServerSession]struct{}{}, idle: time.Now()}
	desc := &description.Session{Title: "Cascade " + st.Name}
	var hubs []*media.Hub
	for _, rd := range r.rends {
		var f format.Format = &format.H264{PayloadTyp: 96, PacketizationMode: 1}
		if rd.hub.Config().Codec == "H265" {
			f = &format.H265{PayloadTyp: 96}
		}
		desc.Medias = append(desc.Medias, &description.Media{Type: description.MediaTypeVideo, Formats: []format.Format{f}})
		r.lines = append(r.lines, fmt.Sprintf("a=%s:%s width=%d height=%d bitrate=%d", RenditionAttr, rd.name, rd.width, rd.height, rd.bitrate))
		hubs = append(hubs, rd.hub)
	}
	desc.Medias = append(desc.Medias, &description.Media{Type: description.MediaTypeAudio,
		Formats: []format.Format{&format.Opus{PayloadTyp: 111, ChannelCount: 2}}})
	r.lines = append(r.lines, "")
	hubs = append(hubs, st.Audio)

	r.ss = &gortsplib.ServerStream{Server: gs, Desc: desc}
	if err := r.ss.Initialize(); err != nil {
		return nil, err
	}
	for i, h := range hubs {
		sub := h.Subscribe()
		if sub == nil { // the stream ended meanwhile
			r.close()
			return nil, fmt.Errorf("stream %q ended", st.Name)
		}
		r.subs = append(r.subs, sub)
		r.wg.Add(1)
		go r.feed(sub, desc.Medias[i])
	}
	return r, nil
}

// feed copies one hub into one media of the gortsplib stream. Packets are
// only marshalled while someone reads.
func (r *relay) feed(sub *media.Subscriber, medi *description.Media) {
	defer r.wg.Done()
	var buf []media.Entry
	pkt := rtp.Packet{Header: rtp.Header{Version: 2, PayloadType: medi.Formats[0].PayloadType()}}
	out := r.m.relayPackets
	for {
		select {
		case <-r.done:
			return
		case <-sub.Done():
			return
		case <-sub.Wake():
		}
		buf = sub.Pop(buf[:0])
		if r.count.Load() > 0 {
			for _, e := range buf {
				p := e.Packet
				pkt.SequenceNumber, pkt.Timestamp, pkt.Marker, pkt.Payload = p.SequenceNumber, p.Timestamp, p.Marker, p.Payload
				if r.ss.WritePacketRTP(medi, &pkt) == nil {
					out.Inc()
				}
			}
		}
		clear(buf)
	}
}

func (r *relay) addReader(ss *gortsplib.ServerSession) {
	r.mu.Lock()
	r.readers[ss] = struct{}{}
	r.count.Store(int64(len(r.readers)))
	r.mu.Unlock()
	r.m.relayReaders.Inc()
}

func (r *relay) removeReader(ss *gortsplib.ServerSession) {
	r.mu.Lock()
	_, ok := r.readers[ss]
	delete(r.readers, ss)
	r.count.Store(int64(len(r.readers)))
	if len(r.readers) == 0 {
		r.idle = time.Now()
	}
	r.mu.Unlock()
	if ok {
		r.m.relayReaders.Dec()
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
		for _, s := range r.subs {
			s.Close()
		}
		r.wg.Wait()
		r.ss.Close()
	})
}

// relays holds the relay of each stream being read.
type relays struct {
	reg *registry.Registry
	m   *metrics
	log *slog.Logger

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

// get returns the relay of st, building it, or rebuilding it when the
// stream's ladder changed since it was built.
func (rs *relays) get(st *registry.Stream, gs *gortsplib.Server) (*relay, error) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	old := rs.byName[st.Name]
	if old != nil && old.st == st && sameRends(old.rends, renditionsOf(st)) {
		return old, nil
	}
	if old != nil {
		delete(rs.byName, st.Name)
		go old.close() // its readers' sessions end; not under our lock
	}
	r, err := newRelay(st, gs, rs.m)
	if err != nil {
		return nil, err
	}
	rs.byName[st.Name] = r
	rs.log.Info("relay started", "stream", st.Name, "renditions", len(r.rends))
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
			var stale []*relay
			rs.mu.Lock()
			for name, r := range rs.byName {
				why := ""
				switch {
				case rs.reg.Get(name) != r.st:
					why = "stream ended"
				case !sameRends(r.rends, renditionsOf(r.st)):
					why = "ladder changed"
				case r.idleFor(now) > relayIdle:
					why = "idle"
				}
				if why != "" {
					delete(rs.byName, name)
					stale = append(stale, r)
					rs.log.Info("relay stopped", "stream", name, "why", why)
				}
			}
			rs.mu.Unlock()
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
