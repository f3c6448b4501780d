package peer

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/net/ipv4"
)

// batchConn is the shared UDP socket with writes batched into sendmmsg(2).
//
// Every viewer's packets leave through this one socket, one sendto(2) each
// if written plainly: measured on loopback here, about 8 µs per packet, half
// of it the system call itself. A write here copies the packet into a free
// slot and returns; one flusher goroutine sends whatever has queued in
// batches of up to batchMax, so fan-out bursts (one frame to every viewer)
// cost one system call per batch. Nothing waits for a timer: the batch is
// whatever queued while the previous one was being sent.
//
// It implements ice.AddrPortReaderWriter, which pion's UDP mux uses for
// allocation-free reads and writes.
type batchConn struct {
	*net.UDPConn
	pc *ipv4.PacketConn

	wake    chan struct{}
	closing chan struct{}
	done    chan struct{}
	once    sync.Once
	dropped atomic.Uint64 // packets
	batches atomic.Uint64 // sendmmsg calls
	sent    atomic.Uint64 // packets
	gsoMsgs atomic.Uint64 // datagrams sent as one UDP_SEGMENT message
	gso     atomic.Bool   // UDP_SEGMENT works on this socket

	mu      sync.Mutex
	free    []*slot
	pending []*slot
}

type slot struct {
	buf  [maxPacket]byte
	n    int
	dst  netip.AddrPort
	addr net.UDPAddr
	ip   [16]byte
}

const (
	maxPacket = 1500
	// batchSlots bounds the queue: 4096 packets is ~40 ms of 100 viewers at
	// 2 Mbps. A writer finding it full drops the packet (NACK repairs it)
	// rather than block a viewer's writer.
	batchSlots = 4096
	batchMax   = 64
	// gsoSegments and gsoBytes bound one UDP_SEGMENT message: the kernel
	// takes at most 64 segments (UDP_MAX_SEGMENTS) and one UDP datagram's
	// worth of bytes.
	gsoSegments = 64
	gsoBytes    = 65000
)

func newBatchConn(c *net.UDPConn) *batchConn {
	b := &batchConn{
		UDPConn: c, pc: ipv4.NewPacketConn(c),
		wake: make(chan struct{}, 1), closing: make(chan struct{}), done: make(chan struct{}),
		free: make([]*slot, 0, batchSlots), pending: make([]*slot, 0, batchSlots),
	}
	for i := 0; i < batchSlots; i++ {
		b.free = append(b.free, &slot{})
	}
	b.gso.Store(gsoSupported(c))
	go b.flush()
	return b
}

// ReadFromAddrPort implements ice.AddrPortReaderWriter.
func (b *batchConn) ReadFromAddrPort(p []byte) (int, netip.AddrPort, error) {
	return b.UDPConn.ReadFromUDPAddrPort(p)
}

// WriteToAddrPort queues p for addr. It never blocks on the network.
func (b *batchConn) WriteToAddrPort(p []byte, addr netip.AddrPort) (int, error) {
	if len(p) > maxPacket {
		return b.UDPConn.WriteToUDPAddrPort(p, addr) // rare: send it as it is
	}
	b.mu.Lock()
	if len(b.free) == 0 {
		b.mu.Unlock()
		b.dropped.Add(1)
		return len(p), nil
	}
	s := b.free[len(b.free)-1]
	b.free = b.free[:len(b.free)-1]
	s.n = copy(s.buf[:], p)
	if s.dst != addr {
		s.dst = addr
		s.ip = addr.Addr().As16()
		if addr.Addr().Is4() || addr.Addr().Is4In6() {
			s.addr.IP = s.ip[12:16]
		} else {
			s.addr.IP = s.ip[:]
		}
		s.addr.Port = int(addr.Port())
	}
	b.pending = append(b.pending, s)
	first := len(b.pending) == 1
	b.mu.Unlock()
	// Only the write that makes the queue non-empty wakes the flusher: it
	// empties the queue before it waits again, so later writes are taken
	// with this one or in its next round.
	if first {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// WriteTo implements net.PacketConn for callers without netip addresses.
func (b *batchConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	if ua, ok := addr.(*net.UDPAddr); ok {
		return b.WriteToAddrPort(p, ua.AddrPort())
	}
	return b.UDPConn.WriteTo(p, addr)
}

// flush is the one sender. It owns the slots between taking them from
// pending and returning them to free.
//
// With UDP GSO (UDP_SEGMENT, Linux 4.18+), consecutive queued packets to
// the same address go as one message that the kernel cuts into datagrams
// of the first one's size: a viewer's writer queues a frame's packets
// back to back, and a packetizer makes them the same size but the last.
// The kernel then routes and filters each run once rather than once per
// packet. The receiver gets the same datagrams either way.
func (b *batchConn) flush() {
	defer close(b.done)
	var f flusher
	var sending []*slot
	for {
		select {
		case <-b.closing:
			return
		case <-b.wake:
		}
		for {
			b.mu.Lock()
			sending, b.pending = b.pending, sending[:0]
			b.mu.Unlock()
			if len(sending) == 0 {
				break
			}
			f.sendAll(b, sending)
			b.mu.Lock()
			b.free = append(b.free, sending...)
			b.mu.Unlock()
			clear(sending)
		}
	}
}

// flusher is the flush goroutine's scratch space, reused for every batch.
type flusher struct {
	msgs [batchMax]ipv4.Message
	// iov holds every message's buffers: a run's packets are one message's
	// iovecs, which the kernel joins before cutting.
	iov [batchSlots][]byte
	oob [batchMax][gsoCmsgSpace]byte
}

// sendAll sends the queued slots, batchMax messages per sendmmsg.
func (f *flusher) sendAll(b *batchConn, sending []*slot) {
	gso := b.gso.Load()
	nm, ni := 0, 0
	for i := 0; i < len(sending); {
		s := sending[i]
		j := i + 1
		if gso {
			total := s.n
			for j < len(sending) && j-i < gsoSegments {
				t := sending[j]
				if t.dst != s.dst || t.n > s.n || total+t.n > gsoBytes {
					break
				}
				total += t.n
				j++
				if t.n < s.n {
					break // a shorter datagram can only be the last
				}
			}
		}
		start := ni
		for _, t := range sending[i:j] {
			f.iov[ni] = t.buf[:t.n]
			ni++
		}
		m := &f.msgs[nm]
		*m = ipv4.Message{Buffers: f.iov[start:ni:ni], Addr: &s.addr}
		if j-i > 1 {
			m.OOB = putSegmentSize(&f.oob[nm], s.n)
		}
		nm++
		i = j
		if nm == batchMax {
			b.send(f.msgs[:nm])
			nm = 0
		}
	}
	if nm > 0 {
		b.send(f.msgs[:nm])
	}
	clear(f.msgs[:])
	clear(f.iov[:ni])
}

// send writes msgs with sendmmsg, resuming after partial writes and
// skipping a message the kernel refuses (one bad peer address must not
// stall the others). A segmented message refused goes again as plain
// datagrams; if the refusal was the segmenting (a device that cannot, EIO),
// GSO stays off from then on.
func (b *batchConn) send(msgs []ipv4.Message) {
	for len(msgs) > 0 {
		n, err := b.pc.WriteBatch(msgs, 0)
		b.batches.Add(1)
		if n > 0 {
			for _, m := range msgs[:n] {
				b.sent.Add(uint64(len(m.Buffers)))
				if len(m.Buffers) > 1 {
					b.gsoMsgs.Add(1)
				}
			}
			msgs = msgs[n:]
			continue
		}
		if err == nil {
			continue
		}
		m := msgs[0]
		msgs = msgs[1:]
		if len(m.Buffers) == 1 {
			b.dropped.Add(1)
			continue
		}
		if gsoRefused(err) {
			b.gso.Store(false)
		}
		for k := range m.Buffers {
			one := ipv4.Message{Buffers: m.Buffers[k : k+1], Addr: m.Addr}
			if n, _ := b.pc.WriteBatch([]ipv4.Message{one}, 0); n == 1 {
				b.sent.Add(1)
			} else {
				b.dropped.Add(1)
			}
		}
	}
}

// Close stops the flusher and closes the socket. Idempotent.
func (b *batchConn) Close() error {
	var err error
	b.once.Do(func() {
		close(b.closing)
		<-b.done
		err = b.UDPConn.Close()
	})
	return err
}
