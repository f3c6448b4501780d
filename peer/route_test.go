package peer

import (
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

// stunCases are STUN messages as ICE agents send them.
var stunCases = []struct {
	name  string
	msg   []stun.Setter
	ufrag string // "" when stunUfrag must find none
}{
	{"check", []stun.Setter{stun.TransactionID, stun.BindingRequest, stun.NewUsername("ours:theirs"), stun.NewShortTermIntegrity("pwd"), stun.Fingerprint}, "ours"},
	{"empty local", []stun.Setter{stun.TransactionID, stun.BindingRequest, stun.NewUsername(":theirs")}, ""},
	{"no colon", []stun.Setter{stun.TransactionID, stun.BindingRequest, stun.NewUsername("ours")}, ""},
	{"no username", []stun.Setter{stun.TransactionID, stun.BindingRequest, stun.Fingerprint}, ""},
	{"after other attributes", []stun.Setter{stun.TransactionID, stun.BindingRequest, stun.NewSoftware("x"), stun.NewUsername("abcd:efgh")}, "abcd"},
}

func TestSTUNUfrag(t *testing.T) {
	for _, c := range stunCases {
		m := stun.MustBuild(c.msg...)
		u, ok := stunUfrag(m.Raw)
		if c.ufrag == "" {
			if ok && len(u) > 0 {
				t.Errorf("%s: found %q", c.name, u)
			}
			continue
		}
		if !ok || string(u) != c.ufrag {
			t.Errorf("%s: %q %v, want %q", c.name, u, ok, c.ufrag)
		}
	}
	if _, ok := stunUfrag([]byte{0x80, 0xc8, 0, 6}); ok {
		t.Error("RTCP read as STUN")
	}
}

// FuzzSTUNUfrag holds the in-place walk to pion's decoder: whatever it
// finds, pion finds too.
func FuzzSTUNUfrag(f *testing.F) {
	for _, c := range stunCases {
		f.Add(stun.MustBuild(c.msg...).Raw)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		u, ok := stunUfrag(b)
		if !ok {
			return
		}
		m := &stun.Message{Raw: append([]byte(nil), b...)}
		if err := m.Decode(); err != nil {
			return // pion is stricter about the header; routing then fails its checks
		}
		user, err := m.Get(stun.AttrUsername)
		if err != nil {
			return // a later duplicate, or pion stopped earlier
		}
		if local, _, _ := strings.Cut(string(user), ":"); local != string(u) && strings.Contains(string(user), ":") {
			t.Fatalf("in place %q, pion %q", u, user)
		}
	})
}

// TestRoutes: a claimed fragment and a bound path reach their handler,
// only while they are claimed and bound.
func TestRoutes(t *testing.T) {
	var e Engine
	h1, h2 := &countHandler{}, &countHandler{}
	check := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.NewUsername("frag:x")).Raw
	p := Path{udp: &socket{}}
	if !e.Claim("frag", h1) || e.Claim("frag", h2) {
		t.Fatal("a fragment was claimed twice")
	}
	if e.routes.route(check, p) != h1 {
		t.Error("a check for a claimed fragment went elsewhere")
	}
	if e.routes.route([]byte{0x80, 0xc9, 0, 1}, p) != nil {
		t.Error("an unbound path was routed")
	}
	e.Bind(p, h2)
	if e.routes.route([]byte{0x80, 0xc9, 0, 1}, p) != h2 || e.routes.route(check, p) != h1 {
		t.Error("a bound path, or a claimed fragment on it, went elsewhere")
	}
	e.Unbind(p, h1) // not h1's: no effect
	e.Release("frag")
	if e.routes.route(check, p) != h2 {
		t.Error("after release, a check on a bound path goes to the path's handler")
	}
	e.Unbind(p, h2)
	if e.routes.route(check, p) != nil {
		t.Error("routed after release and unbind")
	}
}

type countHandler struct{ n int }

func (c *countHandler) HandlePacket([]byte, Path) { c.n++ }

// TestWriteSocket: the port's written socket (sendsock.go) receives
// nothing: datagrams from many source ports all reach the read socket's
// routes, and what a path writes arrives from the port's address.
func TestWriteSocket(t *testing.T) {
	e := udpEngine(t)
	if e.udp[0].wfd < 0 {
		t.Fatal("no written socket on this kernel")
	}
	h := &echoHandler{got: make(chan Path, 1024)}
	if !e.Claim("frag", h) {
		t.Fatal("claim")
	}
	check := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.NewUsername("frag:x")).Raw
	const senders = 64 // source ports spread over the reuseport hash
	conns := make([]*net.UDPConn, senders)
	for i := range conns {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
		if _, err := c.WriteTo(check, e.UDPAddr()); err != nil {
			t.Fatal(err)
		}
	}
	for i := range senders {
		select {
		case p := <-h.got:
			if err := p.Write([]byte("pong")); err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d datagrams reached the read socket", i, senders)
		}
	}
	for _, c := range conns {
		buf := make([]byte, 16)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil || string(buf[:n]) != "pong" || from != e.UDPAddr().(*net.UDPAddr).AddrPort() {
			t.Fatalf("reply %q from %v (%v), want pong from %v", buf[:n], from, err, e.UDPAddr())
		}
	}
}

// udpEngine is an engine on a loopback UDP port of its own, without
// ICE-TCP, closed when the test ends.
func udpEngine(t *testing.T) *Engine {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen, cfg.TCP = "127.0.0.1:0", false
	e, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

type echoHandler struct{ got chan Path }

func (h *echoHandler) HandlePacket(_ []byte, p Path) { h.got <- p }

// TestTCPFirstFrame: the engine's ICE-TCP server closes a connection whose
// first packet is too long to be a binding request, and, on Close, the
// ones that never sent one (goleak in TestMain checks their goroutines).
func TestTCPFirstFrame(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	e, err := New(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	addr := e.tcp.ln.Addr().String()
	long, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Close()
	long.Write([]byte{0xff, 0xff}) // 65535 bytes to come
	long.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := long.Read(make([]byte, 1)); err == nil {
		t.Error("a connection announcing a 64 KiB first packet stayed open")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("a connection announcing a 64 KiB first packet was not closed")
	}
	for range 3 {
		idle, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer idle.Close()
	}
}
