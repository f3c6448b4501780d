package node

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cascade-cdn/cascade/edge/relay"
	"github.com/cascade-cdn/cascade/edge/whep"
)

// RelayConfig is how a node reads streams it does not carry itself (config
// key "relay").
type RelayConfig struct {
	// Parent is the RTSP address of the node to relay from
	// ("rtsp://origin:8554"). Gossip-driven parent choice (issue 6) is not
	// wired yet; with this empty, a node serves only its own streams.
	Parent string `yaml:"parent"`
	// IdleTimeout drops a relay this long after its last viewer left.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

// relays holds the streams this node relays from its parent.
type relays struct {
	cfg    RelayConfig
	secret string
	// parentOf names a stream's parent when no static one is configured
	// (the cluster's relay tree); set before serving.
	parentOf func(stream string) (string, error)
	m        *relay.Metrics
	log      *slog.Logger

	mu     sync.Mutex
	byName map[string]*relayed
	stop   chan struct{}
	wg     sync.WaitGroup
	once   sync.Once
}

type relayed struct {
	pull    *relay.Pull
	viewers atomic.Int64
	idle    time.Time // since when it has had no viewer
}

func newRelays(cfg RelayConfig, secret string, m *relay.Metrics, log *slog.Logger) *relays {
	r := &relays{cfg: cfg, secret: secret, m: m, log: log, byName: map[string]*relayed{}, stop: make(chan struct{})}
	r.wg.Add(1)
	go r.sweep()
	return r
}

// lookup returns the relayed stream name, starting its relay if needed.
func (r *relays) lookup(name string) (whep.Source, bool) {
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
		return whep.Source{}, false // nobody to relay from
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	rd := r.byName[name]
	if rd == nil {
		pull, err := relay.Start(name, parent, r.secret, r.m, r.log)
		if err != nil {
			r.log.Info("cannot relay stream", "stream", name, "err", err)
			return whep.Source{}, false
		}
		rd = &relayed{pull: pull, idle: time.Now()}
		r.byName[name] = rd
	}
	ladder := func() []whep.Rendition {
		var out []whep.Rendition
		for _, g := range rd.pull.Rungs() {
			out = append(out, whep.Rendition{Name: g.Name, Width: g.Width, Height: g.Height, Bitrate: g.Bitrate, Hub: g.Hub})
		}
		return out
	}
	return whep.Source{Audio: rd.pull.Audio(), Ladder: ladder, AddViewers: func(n int64) {
		if rd.viewers.Add(n) == 0 {
			r.mu.Lock()
			rd.idle = time.Now()
			r.mu.Unlock()
		}
	}}, true
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
			r.mu.Lock()
			for name, rd := range r.byName {
				if rd.viewers.Load() == 0 && now.Sub(rd.idle) > r.cfg.IdleTimeout {
					delete(r.byName, name)
					idle = append(idle, rd)
				}
			}
			r.mu.Unlock()
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
