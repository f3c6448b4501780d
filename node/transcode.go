package node

import (
	"log/slog"
	"sync"

	"github.com/cascade-cdn/cascade/origin/registry"
	"github.com/cascade-cdn/cascade/transcode"
)

// transcoders runs one transcode.Pipeline per stream, from the stream's
// creation to its end, and tells the stream about its rungs.
type transcoders struct {
	cfg transcode.Config
	m   *transcode.Metrics
	log *slog.Logger

	mu      sync.Mutex
	running map[string]*transcode.Pipeline
}

// start is the registry's OnStart hook.
func (t *transcoders) start(st *registry.Stream) {
	p, err := transcode.Start(t.cfg, st.Name, st.Video, ladderSink{st}, t.m, t.log.With("stream", st.Name))
	if err != nil {
		t.log.Error("cannot start transcoder; serving the source only", "stream", st.Name, "err", err)
		return
	}
	t.mu.Lock()
	old := t.running[st.Name]
	t.running[st.Name] = p
	t.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

// stop is called when a stream ends.
func (t *transcoders) stop(name string) {
	t.mu.Lock()
	p := t.running[name]
	delete(t.running, name)
	t.mu.Unlock()
	if p != nil {
		p.Close()
	}
	t.m.Forget(name)
}

func (t *transcoders) closeAll() {
	t.mu.Lock()
	all := t.running
	t.running = map[string]*transcode.Pipeline{}
	t.mu.Unlock()
	for _, p := range all {
		p.Close()
	}
}

// ladderSink publishes a pipeline's renditions ("source" first) on its stream, so that WHEP and
// the API see them; origin code never imports transcode code.
type ladderSink struct{ st *registry.Stream }

func (l ladderSink) LadderChanged(outs []transcode.Output) {
	rs := make([]registry.Rendition, 0, len(outs))
	for _, o := range outs {
		rs = append(rs, registry.Rendition{Name: o.Rung.Name, Width: o.Rung.Width, Height: o.Rung.Height,
			Bitrate: o.Rung.Bitrate, Passthrough: o.Rung.Passthrough, Hub: o.Hub})
	}
	l.st.SetRenditions(rs)
}
