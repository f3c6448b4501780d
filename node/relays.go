package node

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cascade-cdn/cascade/edge/relay"
	"github.com/cascade-cdn/cascade/edge/whep"
	"github.com/cascade-cdn/cascade/origin/rtsp"
)

// RelayConfig is how a node reads streams it does not carry itself (config
// key "relay").
type RelayConfig struct {
	// Parent is the RTSP address of the node to relay from
	// ("rtsp://origin:8554"), for an edge without gossip. In a cluster,
	// leave it empty: the relay tree names each stream's parent.
	Parent string `yaml:"parent"`
	// IdleTimeout drops a relay this long after its last viewer left.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

// servedWait is how long a relay read from an edge below waits for this
// node's own start of the stream's relay (see pull).
const servedWait = 2 * time.Second

// relays holds the streams this node relays from its parent.
type relays struct {
	cfg    RelayConfig
	secret string
	// parentOf names a stream's parent when no static one is configured
	// (the cluster's relay tree); set before serving.
	parentOf func(stream string) (string, error)
	m        *relay.Metrics
	log      *slog.Logger

	mu       sync.Mutex
	byName   map[string]*relayed
	starting map[string]chan struct{} // closed when the start ends
	stop     chan struct{}
	wg       sync.WaitGroup
	once     sync.Once
}

type relayed struct {
	pull    *relay.Pull
	viewers atomic.Int64
	idle    time.Time // since when it has had no viewer
}

func newRelays(cfg RelayConfig, secret string, m *relay.Metrics, log *slog.Logger) *relays {
	r := &relays{cfg: cfg, secret: secret, m: m, log: log, byName: map[string]*relayed{},
		starting: map[string]chan struct{}{}, stop: make(chan struct{})}
	r.wg.Add(1)
	go r.sweep()
	return r
}

// pull returns the relay of name, starting it if needed; nil when nobody
// can be relayed from. The parent's DESCRIBE happens without the lock, so
// a slow parent does not hold up viewers of other streams; lookups of a
// stream being started wait for that start, at most wait (a relay read
// from an edge below waits briefly: if views of the tree disagree for a
// moment, two edges could each be the other's parent, and the short wait
// turns that cycle into a refusal instead of a deadlock or a storm of
// DESCRIBEs).
func (r *relays) pull(name string, wait time.Duration) *relayed {
	parent := func() (string, error) {
		if r.cfg.Parent != "" {
			return r.cfg.Parent, nil
		}
		if r.parentOf == nil {
			return "", errors.New("no relay parent")
		}
		return r.parentOf(name)
	}
	if _, err := parent(); err != nil {
		return nil // nobody to relay from
	}
	r.mu.Lock()
	for {
		if rd := r.byName[name]; rd != nil {
			r.mu.Unlock()
			return rd
		}
		started := r.starting[name]
		if started == nil {
			break
		}
		r.mu.Unlock()
		select {
		case <-started:
		case <-time.After(wait):
			return nil
		case <-r.stop:
			return nil
		}
		r.mu.Lock()
	}
	select {
	case <-r.stop:
		r.mu.Unlock()
		return nil
	default:
	}
	started := make(chan struct{})
	r.starting[name] = started
	r.mu.Unlock()

	pull, err := relay.Start(name, parent, r.secret, r.m, r.log)

	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.starting, name)
	close(started)
	if err != nil {
		r.log.Info("cannot relay stream", "stream", name, "err", err)
		return nil
	}
	select {
	case <-r.stop: // closed meanwhile: close does not see this one
		pull.Close() // it needs none of our locks
		return nil
	default:
	}
	rd := &relayed{pull: pull, idle: time.Now()}
	r.byName[name] = rd
	return rd
}

// lookup returns the relayed stream name, starting its relay if needed.
func (r *relays) lookup(name string) (whep.Source, bool) {
	rd := r.pull(name, time.Minute) // bounded by the start's own timeouts
	if rd == nil {
		return whep.Source{}, false
	}
	ladder := func() []whep.Rendition {
		var out []whep.Rendition
		for _, g := range rd.pull.Rungs() {
			out = append(out, whep.Rendition{Name: g.Name, Width: g.Width, Height: g.Height, Bitrate: g.Bitrate, Hub: g.Hub})
		}
		return out
	}
	return whep.Source{Audio: rd.pull.Audio(), Ladder: ladder, AddViewers: rd.add(r)}, true
}

// served is what the RTSP server offers edges below this one in the relay
// tree: the stream this node relays, started if needed. Each reader counts
// as a viewer, so the relay stays while edges read it.
func (r *relays) served(name string) (rtsp.Relayed, bool) {
	rd := r.pull(name, servedWait)
	if rd == nil {
		return rtsp.Relayed{}, false
	}
	out := rtsp.Relayed{Key: rd.pull, Audio: rd.pull.Audio(), AddReaders: rd.add(r), Done: rd.pull.Done()}
	for _, g := range rd.pull.Rungs() {
		out.Renditions = append(out.Renditions, rtsp.RelayRendition{Name: g.Name, Width: g.Width, Height: g.Height, Bitrate: g.Bitrate, Hub: g.Hub})
	}
	return out, true
}

// add counts viewers (and relay readers) of rd; the idle clock starts
// when the last one leaves.
func (rd *relayed) add(r *relays) func(int64) {
	return func(n int64) {
		if rd.viewers.Add(n) == 0 {
			r.mu.Lock()
			rd.idle = time.Now()
			r.mu.Unlock()
		}
	}
}

// sweep drops relays nobody watched for the idle timeout.
func (r *relays) sweep() {
	defer r.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case now := <-t.C:
			var idle []*relayed
			active, waiting := 0, 0
			r.mu.Lock()
			for name, rd := range r.byName {
				switch {
				case rd.viewers.Load() > 0:
					active++
				case now.Sub(rd.idle) > r.cfg.IdleTimeout:
					delete(r.byName, name)
					idle = append(idle, rd)
				default:
					waiting++
				}
			}
			r.mu.Unlock()
			r.m.SetStreams(active, waiting)
			for _, rd := range idle {
				rd.pull.Close()
			}
		}
	}
}

// carried lists the relayed streams and the rungs pulled for each.
func (r *relays) carried() map[string][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string][]string{}
	for name, rd := range r.byName {
		out[name] = rd.pull.Pulled()
	}
	return out
}

func (r *relays) close() {
	r.once.Do(func() {
		close(r.stop)
		r.wg.Wait()
		r.mu.Lock()
		all := r.byName
		r.byName = map[string]*relayed{}
		r.mu.Unlock()
		for _, rd := range all {
			rd.pull.Close()
		}
	})
}
