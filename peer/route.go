package peer

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
)

// Handler takes the packets of one transport that Cascade runs itself
// rather than through a pion PeerConnection (package peer/lite: a viewer's
// ICE-lite, DTLS-SRTP transport).
//
// HandlePacket is called on the reading goroutine of a UDP socket (shared by
// every peer of that socket) or of one ICE-TCP connection: it must not
// block, and must bound its work per packet. p is valid only during the
// call. While a port polls RTCP (rtcpsock.go), its RTCP is handled on
// another goroutine than the rest: calls for one transport may overlap.
type Handler interface {
	HandlePacket(p []byte, from Path)
}

// Path is where a packet came from and where replies to it go: a remote
// address on one of the engine's UDP sockets, or an ICE-TCP connection.
// The zero Path goes nowhere. Paths are comparable.
type Path struct {
	udp  *socket
	addr netip.AddrPort
	tcp  *tcpLink
}

// ErrNoPath is the error of a write on the zero Path or a closed ICE-TCP
// connection.
var ErrNoPath = errors.New("webrtc: no path to the peer")

// Write queues p for the peer; it never blocks on the network. A full
// queue drops p (counted in the socket's stats), as a congested link
// would: RTP's repair is NACK, not back-pressure.
func (p Path) Write(b []byte) error {
	switch {
	case p.udp != nil:
		_, err := p.udp.WriteToAddrPort(b, p.addr)
		return err
	case p.tcp != nil:
		return p.tcp.write(b)
	}
	return ErrNoPath
}

// Queue is Write for a burst: on UDP the packet waits in the socket's
// queue until Flush (which the caller owes), so that a burst costs one
// wake-up and leaves as one GSO run. On ICE-TCP it is Write.
func (p Path) Queue(b []byte) error {
	if p.udp != nil {
		p.udp.Queue(b, p.addr)
		return nil
	}
	return p.Write(b)
}

// Flush sends what Queue queued on the path's socket (with whatever else
// is queued there), on the caller's goroutine.
func (p Path) Flush() {
	if p.udp != nil {
		p.udp.Flush()
	}
}

// Addr is the peer's address.
func (p Path) Addr() netip.AddrPort { return p.addr }

// TCP reports whether the path is an ICE-TCP connection.
func (p Path) TCP() bool { return p.tcp != nil }

// IsZero reports whether p is the zero Path.
func (p Path) IsZero() bool { return p.udp == nil && p.tcp == nil }

// routes sends packets to Cascade's own transports: a STUN request by the
// local ICE username fragment it names, anything else by the path it came
// on. What no route claims goes to pion.
type routes struct {
	mu     sync.RWMutex
	ufrags map[string]Handler
	paths  map[Path]Handler
}

// Claim routes STUN requests for local username fragment ufrag to h. It
// reports false if the fragment is taken.
func (e *Engine) Claim(ufrag string, h Handler) bool {
	r := &e.routes
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, taken := r.ufrags[ufrag]; taken {
		return false
	}
	if r.ufrags == nil {
		r.ufrags = map[string]Handler{}
	}
	r.ufrags[ufrag] = h
	return true
}

// Release undoes Claim.
func (e *Engine) Release(ufrag string) {
	r := &e.routes
	r.mu.Lock()
	delete(r.ufrags, ufrag)
	r.mu.Unlock()
}

// Bind routes every packet arriving on p to h, once ICE has checked p.
func (e *Engine) Bind(p Path, h Handler) {
	r := &e.routes
	r.mu.Lock()
	if r.paths == nil {
		r.paths = map[Path]Handler{}
	}
	r.paths[p] = h
	r.mu.Unlock()
}

// Unbind undoes Bind, if p is still h's.
func (e *Engine) Unbind(p Path, h Handler) {
	r := &e.routes
	r.mu.Lock()
	if r.paths[p] == h {
		delete(r.paths, p)
	}
	r.mu.Unlock()
}

// route finds the handler of packet b from p, or nil (pion's). A STUN
// message goes by its USERNAME (an ICE restart keeps the path but changes
// the fragment); anything else by its path.
func (r *routes) route(b []byte, p Path) Handler {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if len(r.ufrags) > 0 {
		if u, ok := stunUfrag(b); ok {
			if h := r.ufrags[string(u)]; h != nil { // no allocation: map lookup by string(bytes)
				return h
			}
		}
	}
	return r.paths[p]
}

// stunUfrag returns the local ICE username fragment a STUN message names:
// its USERNAME attribute up to the colon (RFC 8445 section 7.2.2). It
// walks the attributes in place, without decoding the message.
func stunUfrag(b []byte) ([]byte, bool) {
	const (
		headerSize  = 20
		magicCookie = 0x2112A442
		attrUser    = 0x0006
	)
	if len(b) < headerSize || b[0]>>6 != 0 || binary.BigEndian.Uint32(b[4:8]) != magicCookie {
		return nil, false
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n%4 != 0 || headerSize+n > len(b) {
		return nil, false
	}
	attrs := b[headerSize : headerSize+n]
	for len(attrs) >= 4 {
		t, l := binary.BigEndian.Uint16(attrs[0:2]), int(binary.BigEndian.Uint16(attrs[2:4]))
		if 4+l > len(attrs) {
			return nil, false
		}
		if t == attrUser {
			v := attrs[4 : 4+l]
			for i, c := range v {
				if c == ':' {
					return v[:i], true
				}
			}
			return nil, false
		}
		attrs = attrs[min(4+(l+3)&^3, len(attrs)):]
	}
	return nil, false
}
