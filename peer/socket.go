package peer

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// socket is one of the engine's UDP sockets: writes batched by batchConn,
// and one reading goroutine that hands each datagram to the transport it
// belongs to. Cascade's own transports (routes) take theirs on that
// goroutine; the rest goes to pion's UDP mux through pionConn, which reads
// the socket as if it were the socket.
type socket struct {
	*batchConn
	routes *routes
	pion   *pionConn
	// poll reads RTCP while the port is busy (rtcpsock.go); nil without
	// the polled socket.
	poll *poller
	done chan struct{}
	// toPionDropped counts datagrams for pion dropped at a full queue.
	toPionDropped atomic.Uint64
}

// maxDatagram is the largest datagram read; a longer one is dropped. pion
// reads up to 8 KiB too (receiveMTU).
const maxDatagram = 8192

// pionQueue bounds the datagrams waiting for pion's mux: publishers are
// few, and a publisher's packet waits there only as long as pion's reading
// goroutine takes to come back for the next one.
const pionQueue = 1024

// newSocket runs the port of read socket c, with its written socket wfd
// and its polled socket pfd (each -1 if the port has none).
func newSocket(c *net.UDPConn, wfd, pfd int, r *routes) *socket {
	s := &socket{batchConn: newBatchConn(c, wfd), routes: r, done: make(chan struct{})}
	s.pion = &pionConn{s: s, queue: make(chan datagram, pionQueue), closed: make(chan struct{})}
	if pfd >= 0 {
		s.poll = newPoller(s, pfd)
	}
	go s.read()
	return s
}

// read is the socket's reader; it ends when the socket is closed. It
// counts the RTCP it reads, and hands RTCP to the poller above pollAbove
// a second.
func (s *socket) read() {
	defer close(s.done)
	defer s.pion.Close()
	r := &receiver{}
	r.init()
	from, rtcp := time.Now(), 0
	for {
		r.reset()
		if err := s.raw.Read(r.recv); err != nil {
			return // the socket is closed
		}
		if r.err != nil {
			continue // e.g. ECONNREFUSED from an earlier send: the socket goes on
		}
		rtcp += s.handle(r)
		if s.poll == nil {
			continue
		}
		now := time.Now()
		s.poll.media(now)
		if now.Sub(from) >= pollWindow {
			if rtcp*int(time.Second/pollWindow) >= pollAbove && !s.poll.on.Load() {
				s.poll.busy()
			}
			from, rtcp = now, 0
		}
	}
}

// handle hands each datagram r read to its transport, and reports how
// many were RTCP.
func (s *socket) handle(r *receiver) int {
	rtcp := 0
	for i := range r.n {
		m := &r.msgs[i]
		if m.len == 0 || m.hdr.Flags&unix.MSG_TRUNC != 0 {
			continue
		}
		b := r.bufs[i][:m.len]
		if isRTCP(b) {
			rtcp++
		}
		name := &r.names[i]
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&name.Port))[:])
		addr := netip.AddrPortFrom(netip.AddrFrom4(name.Addr), port)
		p := Path{udp: s, addr: addr}
		if h := s.routes.route(b, p); h != nil {
			h.HandlePacket(b, p)
			continue
		}
		s.pion.deliver(b, addr)
	}
	return rtcp
}

// recvBatch is how many datagrams one recvmmsg(2) may take.
const recvBatch = 16

// receiver is the reading goroutine's scratch space: the kernel's message
// headers (struct mmsghdr) over fixed buffers.
type receiver struct {
	msgs  [recvBatch]mmsghdr
	iov   [recvBatch]unix.Iovec
	names [recvBatch]unix.RawSockaddrInet4
	bufs  [recvBatch][maxDatagram]byte
	recv  func(fd uintptr) bool // recvmmsg, for RawConn.Read
	n     int
	err   error
}

// init points the message buffers at the receiver's own.
func (r *receiver) init() {
	r.recv = r.recvmmsg
	for i := range r.msgs {
		r.iov[i] = unix.Iovec{Base: &r.bufs[i][0]}
		r.iov[i].SetLen(maxDatagram)
	}
}

// reset readies the headers for another call.
func (r *receiver) reset() {
	for i := range r.msgs {
		r.msgs[i] = mmsghdr{}
		r.msgs[i].hdr.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		r.msgs[i].hdr.Namelen = unix.SizeofSockaddrInet4
		r.msgs[i].hdr.Iov = &r.iov[i]
		r.msgs[i].hdr.SetIovlen(1)
	}
	r.n, r.err = 0, nil
}

// recvmmsg takes what datagrams are queued, without waiting: a raw system
// call, for the reason batchConn's sendmmsg is one (a system call the
// scheduler sees wakes its monitor thread whenever the process was idle,
// which between two frames it is). It reports false, to be called again
// once the socket is readable, when nothing is queued.
func (r *receiver) recvmmsg(fd uintptr) bool {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.msgs[0])), recvBatch, unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN {
		return false
	}
	if e != 0 {
		r.err = e
		return true
	}
	r.n = int(n)
	return true
}

// Close stops the socket and waits for its readers.
func (s *socket) Close() error {
	err := s.batchConn.Close()
	<-s.done
	if s.poll != nil {
		s.poll.Close()
	}
	return err
}

// datagram is one packet queued for pion.
type datagram struct {
	b    *[]byte
	addr netip.AddrPort
}

var datagramPool = sync.Pool{New: func() any { b := make([]byte, 0, 1500); return &b }}

// pionConn is what pion's UDP mux reads and writes: the datagrams no route
// claimed, and the socket's batched writes. Closing it (pion's mux does,
// when it closes) leaves the socket to the engine.
type pionConn struct {
	s      *socket
	queue  chan datagram
	closed chan struct{}
	once   sync.Once
}

// deliver queues a copy of b for pion, or drops it if pion is behind.
func (c *pionConn) deliver(b []byte, addr netip.AddrPort) {
	bp := datagramPool.Get().(*[]byte)
	*bp = append((*bp)[:0], b...)
	select {
	case c.queue <- datagram{bp, addr}:
	default:
		datagramPool.Put(bp)
		c.s.toPionDropped.Add(1)
	}
}

// ReadFromAddrPort implements ice.AddrPortReaderWriter.
func (c *pionConn) ReadFromAddrPort(p []byte) (int, netip.AddrPort, error) {
	select {
	case d := <-c.queue:
		n := copy(p, *d.b)
		datagramPool.Put(d.b)
		return n, d.addr, nil
	case <-c.closed:
		return 0, netip.AddrPort{}, net.ErrClosed
	}
}

// WriteToAddrPort implements ice.AddrPortReaderWriter.
func (c *pionConn) WriteToAddrPort(p []byte, addr netip.AddrPort) (int, error) {
	return c.s.WriteToAddrPort(p, addr)
}

// ReadFrom implements net.PacketConn.
func (c *pionConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, a, err := c.ReadFromAddrPort(p)
	if err != nil {
		return 0, nil, err
	}
	return n, net.UDPAddrFromAddrPort(a), nil
}

// WriteTo implements net.PacketConn.
func (c *pionConn) WriteTo(p []byte, addr net.Addr) (int, error) { return c.s.WriteTo(p, addr) }

// Close implements net.PacketConn: pion's reads end. Idempotent.
func (c *pionConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}

// LocalAddr implements net.PacketConn.
func (c *pionConn) LocalAddr() net.Addr { return c.s.LocalAddr() }

// Deadlines are not used by pion's mux; reads end with Close.
func (c *pionConn) SetDeadline(time.Time) error      { return nil }
func (c *pionConn) SetReadDeadline(time.Time) error  { return nil }
func (c *pionConn) SetWriteDeadline(time.Time) error { return nil }
