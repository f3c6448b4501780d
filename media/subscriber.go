package media

import (
	"sync"
	"sync/atomic"
)

// Entry is one queued packet as a subscriber receives it.
type Entry struct {
	Packet *Packet
	// Resync is set when packets were skipped before this one (the
	// subscriber fell behind, or the source changed, and restarted here at a
	// keyframe), so a sender should close the gap in its own numbering.
	Resync bool
}

// Subscriber is one consumer of a Hub: a bounded ring filled by the hub's
// writer and drained by the subscriber's own goroutine.
type Subscriber struct {
	hub  *Hub
	wake chan struct{}
	done chan struct{}

	dropped atomic.Uint64
	resyncs atomic.Uint64

	mu sync.Mutex // guards the ring; held only to move pointers
	// ring holds the queued packets, and resync a bit per slot: the
	// entry's Resync. (An Entry per slot would double the ring, the hub's
	// main memory cost per viewer.)
	ring    []*Packet
	resync  []uint64
	head, n int
	waitKey bool // skipping until the next keyframe
	gap     bool // the next pushed packet follows a gap we made
	closed  bool
}

// push enqueues p without blocking. It runs under the hub's lock.
func (s *Subscriber) push(p *Packet) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	if s.n == len(s.ring) {
		// Behind by a whole ring: what is queued is stale, and a decoder
		// cannot continue across the hole anyway. Drop it all and restart
		// at the next keyframe (this packet, if it is one).
		s.dropped.Add(uint64(s.n))
		s.resyncs.Add(1)
		clear(s.ring)
		s.head, s.n = 0, 0
		s.gap = true
		if s.hub.cfg.Kind == Video && !p.Keyframe {
			s.waitKey = true
			s.dropped.Add(1)
			s.mu.Unlock()
			// RequestKeyframe never takes the hub's lock, so it is safe here.
			s.hub.RequestKeyframe()
			return
		}
	}
	if s.waitKey {
		if !p.Keyframe {
			s.mu.Unlock()
			return
		}
		s.waitKey = false
	}
	i := (s.head + s.n) % len(s.ring)
	s.ring[i] = p
	if s.gap {
		s.resync[i/64] |= 1 << (i % 64)
	} else {
		s.resync[i/64] &^= 1 << (i % 64)
	}
	s.gap = false
	s.n++
	// Wake the writer once per video frame (its last packet carries the
	// marker bit) rather than once per packet: a frame is useless to the
	// viewer until whole, and this cuts goroutine wake-ups several-fold.
	// wakeBatch bounds the wait when a marker is lost.
	wake := p.Marker || s.n >= wakeBatch || s.hub.cfg.Kind != Video
	s.mu.Unlock()
	if wake {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

// wakeBatch is the most video packets queued before the writer is woken
// without a marker bit.
const wakeBatch = 32

// restartAtKeyframe makes the subscriber skip packets until the next
// keyframe, as after a source change. It runs under the hub's lock.
func (s *Subscriber) restartAtKeyframe() {
	s.mu.Lock()
	s.waitKey = true
	s.gap = true
	s.mu.Unlock()
}

// Wake is signalled (capacity 1, never blocks the hub) when packets arrive.
func (s *Subscriber) Wake() <-chan struct{} { return s.wake }

// Done is closed when the subscriber is closed or its hub ends.
func (s *Subscriber) Done() <-chan struct{} { return s.done }

// Closed reports whether Done is closed.
func (s *Subscriber) Closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Pop appends every queued entry to buf and returns it, oldest first. It
// never blocks.
func (s *Subscriber) Pop(buf []Entry) []Entry {
	s.mu.Lock()
	for s.n > 0 {
		i := s.head
		buf = append(buf, Entry{Packet: s.ring[i], Resync: s.resync[i/64]&(1<<(i%64)) != 0})
		s.ring[i] = nil
		s.head = (i + 1) % len(s.ring)
		s.n--
	}
	s.mu.Unlock()
	return buf
}

// Dropped returns how many packets this subscriber lost to a full queue.
func (s *Subscriber) Dropped() uint64 { return s.dropped.Load() }

// Resyncs returns how many times the subscriber fell a whole ring behind.
func (s *Subscriber) Resyncs() uint64 { return s.resyncs.Load() }

// Hub returns the hub the subscriber reads.
func (s *Subscriber) Hub() *Hub { return s.hub }

// Close unsubscribes. Idempotent.
func (s *Subscriber) Close() {
	s.hub.remove(s)
	s.close()
}

func (s *Subscriber) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	clear(s.ring)
	s.n = 0
	close(s.done)
	select { // a shared wake channel is how its owner hears of it
	case s.wake <- struct{}{}:
	default:
	}
}
