package peer

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchConn is the shared UDP socket with writes batched into sendmmsg(2).
//
// Every viewer's packets leave through this one socket, one sendto(2) each
// if written plainly: measured on loopback here, about 8 µs per packet, half
// of it the system call itself. A write here copies the packet into a free
// slot and returns. What is queued goes in batches of up to batchMax, so
// fan-out bursts (one frame to every viewer) cost one system call per
// batch: a viewer's writer queues its round and then sends the queue
// itself (Queue, Flush), and other writes (publishers' pion, STUN, RTCP)
// wake one flusher goroutine (WriteToAddrPort). Nothing waits for a
// timer: a batch is whatever queued while the previous one was sent.
type batchConn struct {
	*net.UDPConn
	raw syscall.RawConn
	// wfd is the port's written socket, or -1: batches go on the UDPConn.
	// It is closed once no Flush can use it (closed, flushing).
	wfd int

	wake    chan struct{}
	closing chan struct{}
	done    chan struct{}
	once    sync.Once
	dropped atomic.Uint64 // packets
	batches atomic.Uint64 // sendmmsg calls
	sent    atomic.Uint64 // packets
	gsoMsgs atomic.Uint64 // UDP_SEGMENT messages sent
	// gsoPackets counts the datagrams sent inside UDP_SEGMENT messages.
	gsoPackets atomic.Uint64
	gso        atomic.Bool // UDP_SEGMENT works on this socket

	mu      sync.Mutex
	free    []*slot
	pending []*slot
	// flushing is set while a Flush sends; it owns f and sending (the
	// spare list pending swaps with) until it clears it.
	flushing bool
	closed   bool
	f        *flusher
	sending  []*slot
}

type slot struct {
	buf [maxPacket]byte
	n   int
	dst netip.AddrPort
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

// newBatchConn batches the writes of c, on the written socket wfd of c's
// port (sendsock.go) or, when wfd is -1, on c itself.
func newBatchConn(c *net.UDPConn, wfd int) *batchConn {
	raw, err := c.SyscallConn()
	if err != nil {
		panic(err) // a *net.UDPConn always has one
	}
	b := &batchConn{
		UDPConn: c, raw: raw, wfd: wfd,
		wake: make(chan struct{}, 1), closing: make(chan struct{}), done: make(chan struct{}),
		free: make([]*slot, 0, batchSlots), pending: make([]*slot, 0, batchSlots),
		sending: make([]*slot, 0, batchSlots), f: &flusher{},
	}
	b.f.write = b.f.sendmmsg
	for i := 0; i < batchSlots; i++ {
		b.free = append(b.free, &slot{})
	}
	if wfd >= 0 {
		b.gso.Store(gsoSupported(wfd))
	} else {
		raw.Control(func(fd uintptr) { b.gso.Store(gsoSupported(int(fd))) })
	}
	go b.flush()
	return b
}

// WriteToAddrPort queues p for addr, for the flusher goroutine to send.
// It never blocks on the network.
func (b *batchConn) WriteToAddrPort(p []byte, addr netip.AddrPort) (int, error) {
	// Only the write that makes the queue non-empty wakes the flusher: it
	// empties the queue before it waits again, so later writes are taken
	// with this one or in its next round.
	if b.queue(p, addr) {
		select {
		case b.wake <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// Queue queues p for addr without waking the flusher goroutine: the
// caller sends it with Flush once it has queued its burst (a viewer's
// writer, a frame), which saves a goroutine wake-up per burst and keeps
// the burst together for GSO. It never blocks on the network.
func (b *batchConn) Queue(p []byte, addr netip.AddrPort) {
	b.queue(p, addr)
}

// queue adds p to the pending slots, or drops it (counted) when none is
// free. It reports whether it made the queue non-empty.
func (b *batchConn) queue(p []byte, addr netip.AddrPort) bool {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	if len(p) > maxPacket || !addr.Addr().Is4() {
		b.UDPConn.WriteToUDPAddrPort(p, addr) // rare: send it as it is
		return false
	}
	b.mu.Lock()
	if len(b.free) == 0 {
		b.mu.Unlock()
		b.dropped.Add(1)
		return false
	}
	s := b.free[len(b.free)-1]
	b.free = b.free[:len(b.free)-1]
	s.n = copy(s.buf[:], p)
	s.dst = addr
	b.pending = append(b.pending, s)
	first := len(b.pending) == 1
	b.mu.Unlock()
	return first
}

// Flush sends what is queued, on the caller's goroutine, unless another
// flush is under way (which takes what the caller queued before it ends).
// No lock is held while sending: writers keep queueing meanwhile.
func (b *batchConn) Flush() {
	b.mu.Lock()
	if b.flushing || b.closed || len(b.pending) == 0 {
		b.mu.Unlock()
		return
	}
	b.flushing = true
	for {
		sending := b.pending
		b.pending = b.sending[:0]
		b.mu.Unlock()
		b.f.sendAll(b, sending)
		b.mu.Lock()
		b.free = append(b.free, sending...)
		clear(sending)
		b.sending = sending
		if len(b.pending) == 0 {
			b.flushing = false
			b.mu.Unlock()
			return
		}
	}
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
	for {
		select {
		case <-b.closing:
			return
		case <-b.wake:
		}
		b.Flush()
	}
}

// flusher is the flush goroutine's scratch space, reused for every batch:
// the kernel's own message headers (struct mmsghdr), filled in place.
type flusher struct {
	msgs [batchMax]mmsghdr
	// iov holds every message's buffers: a run's packets are one message's
	// iovecs, which the kernel joins before cutting.
	iov   [batchSlots]unix.Iovec
	names [batchMax]unix.RawSockaddrInet4
	oob   [batchMax][gsoCmsgSpace]byte
	// The sendmmsg call RawConn.Write retries once the socket is writable.
	write func(fd uintptr) bool
	n     int   // messages to send, from msgs[0]
	sent  int   // what the last call sent
	errno error // and its error
}

// mmsghdr is struct mmsghdr (sendmmsg(2)): a message and, on return, the
// bytes the kernel took of it.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
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
			f.iov[ni] = unix.Iovec{Base: &t.buf[0]}
			f.iov[ni].SetLen(t.n)
			ni++
		}
		name := &f.names[nm]
		*name = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: s.dst.Addr().As4()}
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&name.Port))[:], s.dst.Port())
		m := &f.msgs[nm]
		*m = mmsghdr{}
		m.hdr.Name = (*byte)(unsafe.Pointer(name))
		m.hdr.Namelen = unix.SizeofSockaddrInet4
		m.hdr.Iov = &f.iov[start]
		m.hdr.SetIovlen(ni - start)
		if j-i > 1 {
			oob := putSegmentSize(&f.oob[nm], s.n)
			m.hdr.Control = &oob[0]
			m.hdr.SetControllen(len(oob))
		}
		nm++
		i = j
		if nm == batchMax {
			b.send(f, nm)
			nm = 0
		}
	}
	if nm > 0 {
		b.send(f, nm)
	}
	clear(f.msgs[:])
	clear(f.iov[:ni])
}

// sendmmsg is f.write: one sendmmsg(2) of f.msgs[:f.n]. It is a raw
// system call, which the scheduler does not see: on a non-blocking UDP
// socket it never blocks, but on loopback it runs for as long as the
// kernel takes to deliver every datagram to its receiver, tens of
// microseconds. Seen as a system call, that long made Go's sysmon take the
// flusher's P away and hand it to another thread on almost every call, and
// keep itself awake every 20 µs to do so: a fifth of the server's CPU in
// wake-ups and context switches. It reports false (wait until writable)
// when the socket's buffer is full.
func (f *flusher) sendmmsg(fd uintptr) bool {
	r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&f.msgs[0])), uintptr(f.n), 0, 0, 0)
	if e == unix.EAGAIN {
		return false
	}
	f.sent, f.errno = int(r), nil
	if e != 0 {
		f.sent, f.errno = 0, e
	}
	return true
}

// send writes f.msgs[:n] with sendmmsg, resuming after partial writes and
// skipping a message the kernel refuses (one bad peer address must not
// stall the others). A segmented message refused goes again as plain
// datagrams; if the refusal was the segmenting (a device that cannot, EIO),
// GSO stays off from then on.
func (b *batchConn) send(f *flusher, n int) {
	msgs := f.msgs[:n]
	for len(msgs) > 0 {
		sent, err := b.sendmmsg(f, msgs)
		b.batches.Add(1)
		if sent > 0 {
			for _, m := range msgs[:sent] {
				iovs := uint64(m.hdr.Iovlen)
				b.sent.Add(iovs)
				if iovs > 1 {
					b.gsoMsgs.Add(1)
					b.gsoPackets.Add(iovs)
				}
			}
			msgs = msgs[sent:]
			continue
		}
		if err == nil {
			continue
		}
		m := msgs[0]
		msgs = msgs[1:]
		if m.hdr.Iovlen == 1 {
			b.dropped.Add(1)
			continue
		}
		if gsoRefused(err) {
			b.gso.Store(false)
		}
		iov := unsafe.Slice(m.hdr.Iov, m.hdr.Iovlen)
		for k := range iov {
			one := m
			one.hdr.Iov = &iov[k]
			one.hdr.SetIovlen(1)
			one.hdr.Control, one.hdr.Controllen = nil, 0
			if sent, _ := b.sendmmsg(f, []mmsghdr{one}); sent == 1 {
				b.sent.Add(1)
			} else {
				b.dropped.Add(1)
			}
		}
	}
}

// sendmmsg sends msgs (within f's arrays, or one copy of a message of
// them) with one system call, waiting first if the socket is full.
func (b *batchConn) sendmmsg(f *flusher, msgs []mmsghdr) (int, error) {
	if &msgs[0] != &f.msgs[0] {
		// A lone message from a split run: put it first in f.msgs (the
		// run's slot is behind us already).
		f.msgs[0] = msgs[0]
		msgs = f.msgs[:1]
	}
	f.n = len(msgs)
	if b.wfd >= 0 {
		// Nothing polls the written socket: when its buffer is full
		// (a NIC's queue pushing back), wait a little for the kernel to
		// drain it, and drop after a few tries as a full link would.
		for try := 0; ; try++ {
			if f.sendmmsg(uintptr(b.wfd)) {
				return f.sent, f.errno
			}
			if try == fullRetries {
				return 0, unix.EAGAIN
			}
			time.Sleep(fullRetryGap)
		}
	}
	if err := b.raw.Write(f.write); err != nil {
		return 0, err
	}
	return f.sent, f.errno
}

// A full written socket is tried again fullRetries times, fullRetryGap
// apart, before the batch's first message is dropped.
const (
	fullRetries  = 10
	fullRetryGap = 200 * time.Microsecond
)

// Close stops the flusher and closes the socket. Idempotent.
func (b *batchConn) Close() error {
	var err error
	b.once.Do(func() {
		close(b.closing)
		<-b.done
		// A Flush on another goroutine may be sending: the written socket
		// closes once it has finished, and no other starts.
		b.mu.Lock()
		b.closed = true
		for b.flushing {
			b.mu.Unlock()
			time.Sleep(time.Millisecond)
			b.mu.Lock()
		}
		b.mu.Unlock()
		if b.wfd >= 0 {
			unix.Close(b.wfd)
		}
		err = b.UDPConn.Close()
	})
	return err
}
