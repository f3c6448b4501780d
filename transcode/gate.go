package transcode

import (
	"sync"
	"sync/atomic"

	"github.com/cascade-cdn/cascade/media"
)

// gate feeds the "source" rendition's hub. While the source is safe for
// WebRTC it forwards the publisher's packets untouched, from its own
// goroutine so passthrough never waits behind an encoder. When the
// pipeline finds the source unsafe (B-frames, long keyframe intervals), it
// closes the gate and takes the hub over with a re-encode at source size
// (media.Hub.NewSource): viewers stay, continue the same numbering and
// resume at the re-encode's first IDR.
type gate struct {
	sub  *media.Subscriber
	out  *media.Source
	open atomic.Bool
	done chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

func newGate(src, dst *media.Hub) *gate {
	g := &gate{sub: src.Subscribe(), out: dst.NewSource(), done: make(chan struct{})}
	if g.sub == nil {
		return nil
	}
	g.open.Store(true)
	g.wg.Add(1)
	go g.run()
	return g
}

func (g *gate) run() {
	defer g.wg.Done()
	batch := make([]media.Entry, 0, 64)
	for {
		select {
		case <-g.done:
			return
		case <-g.sub.Done():
			return
		case <-g.sub.Wake():
		}
		batch = g.sub.Pop(batch[:0])
		if !g.open.Load() {
			clear(batch)
			continue
		}
		for _, e := range batch {
			// The source hub owns its packet; this hub renumbers its own
			// copy. The payload is immutable and shared.
			p := *e.Packet
			g.out.Write(&p)
		}
		clear(batch)
	}
}

// shut stops forwarding; the hub is the re-encode's from now on.
func (g *gate) shut() { g.open.Store(false) }

func (g *gate) close() {
	g.once.Do(func() { close(g.done) })
	g.wg.Wait()
	g.sub.Close()
}
