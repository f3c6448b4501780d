package peer

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// ICE-TCP (RFC 6544) carries each packet with a two-byte length in front
// (RFC 4571). The engine accepts the TCP connections itself and reads the
// first packet, a STUN binding request: a connection whose request names
// one of Cascade's own transports becomes a tcpLink of that transport; the
// others are handed, first packet included, to pion's TCP mux.

// maxPendingTCP bounds the connections accepted whose first packet has not
// come yet; past it, new ones are closed at once.
const maxPendingTCP = 512

// tcpQueue bounds the bytes waiting to be written on one ICE-TCP link:
// about a second of a 2 Mbps stream. A link that cannot take them drops
// packets, as a congested UDP path would.
const tcpQueue = 256 << 10

// maxFirstFrame bounds a connection's first packet, a STUN binding
// request of a few hundred bytes (pion's mux reads it into 512).
const maxFirstFrame = 512

// maxFrame bounds the packets read from an ICE-TCP link: what a viewer
// sends (STUN, DTLS records, RTCP) fits a datagram. Longer ones are read
// and dropped.
const maxFrame = 2048

// tcpWriteTimeout bounds one write: a peer that stops reading is cut.
const tcpWriteTimeout = 10 * time.Second

// tcpServer owns the ICE-TCP listener and the connections it accepted.
type tcpServer struct {
	ln      net.Listener
	routes  *routes
	first   time.Duration // how long a connection may take to send its first packet
	pion    *pionListener
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]struct{} // pending and linked, to close with the server
	closed  bool
	pending int
}

func newTCPServer(ln net.Listener, r *routes, first time.Duration) *tcpServer {
	t := &tcpServer{ln: ln, routes: r, first: first, conns: map[net.Conn]struct{}{},
		pion: &pionListener{addr: ln.Addr(), conns: make(chan net.Conn), closed: make(chan struct{})}}
	t.wg.Add(1)
	go t.accept()
	return t
}

func (t *tcpServer) accept() {
	defer t.wg.Done()
	for {
		c, err := t.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // EMFILE and the like: do not spin
			continue
		}
		t.mu.Lock()
		if t.closed || t.pending >= maxPendingTCP {
			t.mu.Unlock()
			c.Close()
			continue
		}
		t.pending++
		t.conns[c] = struct{}{}
		t.wg.Add(1)
		t.mu.Unlock()
		go t.serve(c)
	}
}

// serve reads c's first packet and gives c to its transport or to pion.
func (t *tcpServer) serve(c net.Conn) {
	defer t.wg.Done()
	mine := false
	defer func() {
		t.mu.Lock()
		if !mine {
			delete(t.conns, c)
		}
		t.mu.Unlock()
	}()
	c.SetReadDeadline(time.Now().Add(t.first))
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.donePending()
		c.Close()
		return
	}
	n := int(binary.BigEndian.Uint16(hdr[:]))
	if n > maxFirstFrame {
		t.donePending()
		c.Close()
		return
	}
	first := make([]byte, n)
	if _, err := io.ReadFull(c, first); err != nil {
		t.donePending()
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	t.donePending()
	addr := tcpAddrPort(c.RemoteAddr())
	t.routes.mu.RLock()
	var h Handler
	if u, ok := stunUfrag(first); ok {
		h = t.routes.ufrags[string(u)]
	}
	t.routes.mu.RUnlock()
	if h == nil {
		// pion's: it reads the first packet again from the connection.
		replay := &replayConn{Conn: c, prefix: append(hdr[:], first...)}
		select {
		case t.pion.conns <- replay:
		case <-t.pion.closed:
			c.Close()
		}
		return
	}
	mine = true
	l := newTCPLink(c)
	p := Path{tcp: l, addr: addr}
	h.HandlePacket(first, p)
	l.readLoop(p, t.routes)
	<-l.done
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

func (t *tcpServer) donePending() {
	t.mu.Lock()
	t.pending--
	t.mu.Unlock()
}

// close stops accepting, closes every connection the server accepted and
// waits for their goroutines.
func (t *tcpServer) close() {
	t.ln.Close()
	t.pion.Close()
	t.mu.Lock()
	t.closed = true
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	t.wg.Wait()
}

func tcpAddrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// tcpLink is an ICE-TCP connection of one of Cascade's transports: its
// reader (the goroutine that accepted it) hands each packet to the handler
// bound to the link, and its writer sends what write queued, framed.
type tcpLink struct {
	c    net.Conn
	wake chan struct{}
	done chan struct{} // closed when the writer has ended
	once sync.Once

	mu      sync.Mutex
	pending []byte // framed packets waiting for the writer
	closed  bool
}

func newTCPLink(c net.Conn) *tcpLink {
	l := &tcpLink{c: c, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go l.writeLoop()
	return l
}

// write queues one packet, framed; it drops it when the queue is full.
func (l *tcpLink) write(b []byte) error {
	if len(b) > 0xffff {
		return errors.New("webrtc: packet too long for ICE-TCP")
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrNoPath
	}
	if len(l.pending)+2+len(b) > tcpQueue {
		l.mu.Unlock()
		return nil // dropped, as a full UDP queue would
	}
	l.pending = binary.BigEndian.AppendUint16(l.pending, uint16(len(b)))
	l.pending = append(l.pending, b...)
	first := len(l.pending) == 2+len(b)
	l.mu.Unlock()
	if first {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// writeLoop writes what is queued, all of it in one write, swapping
// buffers so that write never waits for the network.
func (l *tcpLink) writeLoop() {
	defer close(l.done)
	defer l.c.Close()
	var spare []byte
	for range l.wake {
		l.mu.Lock()
		out := l.pending
		l.pending = spare[:0]
		closed := l.closed
		l.mu.Unlock()
		if len(out) > 0 {
			// What was queued before close goes out first (a DTLS
			// close_notify, say), within the write timeout.
			l.c.SetWriteDeadline(time.Now().Add(tcpWriteTimeout))
			if _, err := l.c.Write(out); err != nil {
				l.close()
				return
			}
		}
		if closed {
			return
		}
		spare = out
	}
}

// readLoop hands each packet to the handler the link's path is bound to,
// until the connection fails.
func (l *tcpLink) readLoop(p Path, r *routes) {
	defer l.close()
	buf := make([]byte, maxFrame)
	var hdr [2]byte
	for {
		if _, err := io.ReadFull(l.c, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(hdr[:]))
		if n > maxFrame {
			if _, err := io.CopyN(io.Discard, l.c, int64(n)); err != nil {
				return
			}
			continue
		}
		if _, err := io.ReadFull(l.c, buf[:n]); err != nil {
			return
		}
		if h := r.route(buf[:n], p); h != nil {
			h.HandlePacket(buf[:n], p)
		}
	}
}

// close ends the link: the writer sends what is queued, closes the
// connection (which ends the reader) and stops. Idempotent.
func (l *tcpLink) close() {
	l.once.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.mu.Unlock()
		select {
		case l.wake <- struct{}{}:
		default:
		}
	})
}

// Close closes the path's ICE-TCP connection; a UDP path has nothing to
// close.
func (p Path) Close() {
	if p.tcp != nil {
		p.tcp.close()
	}
}

// replayConn gives pion's TCP mux a connection whose first packet the
// engine has read already.
type replayConn struct {
	net.Conn
	prefix []byte
}

func (c *replayConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}

// pionListener is the listener pion's TCP mux accepts from.
type pionListener struct {
	addr   net.Addr
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *pionListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pionListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pionListener) Addr() net.Addr { return l.addr }
