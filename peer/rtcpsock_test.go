package peer

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

type kindCounter struct{ rtcp, other atomic.Int64 }

func (c *kindCounter) HandlePacket(b []byte, _ Path) {
	if isRTCP(b) {
		c.rtcp.Add(1)
	} else {
		c.other.Add(1)
	}
}

// TestRTCPPolled: RTCP arriving faster than pollAbove a second is steered
// to the polled socket and drained there, while other datagrams still
// reach the read socket; every datagram reaches its handler either way;
// and once RTCP slows below pollBelow, it goes back to the read socket.
func TestRTCPPolled(t *testing.T) {
	e := udpEngine(t)
	s := e.udp[0]
	if s.poll == nil {
		t.Skip("no polled socket on this kernel")
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A check names the path; the path is then bound, as a viewer's is.
	echo := &echoHandler{got: make(chan Path, 1)}
	if !e.Claim("frag", echo) {
		t.Fatal("claim")
	}
	if _, err := c.WriteTo(stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.NewUsername("frag:x")).Raw, e.UDPAddr()); err != nil {
		t.Fatal(err)
	}
	var path Path
	select {
	case path = <-echo.got:
	case <-time.After(5 * time.Second):
		t.Fatal("the check did not arrive")
	}
	e.Release("frag")
	h := &kindCounter{}
	e.Bind(path, h)

	rtcp := []byte{0x81, 0xc9, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28}
	rtp := []byte{0x80, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0xaa}
	send := func(b []byte, n int) {
		t.Helper()
		for range n {
			if _, err := c.WriteTo(b, e.UDPAddr()); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting: %s", what)
			}
		}
	}

	// 1 000 RTCP a second, in bursts of 10, until the group steers RTCP
	// to the polled socket (bounded: 4 s).
	sent := 0
	for start := time.Now(); !s.poll.on.Load() && time.Since(start) < 4*time.Second; time.Sleep(10 * time.Millisecond) {
		send(rtcp, 10)
		sent += 10
	}
	if !s.poll.on.Load() {
		t.Fatalf("RTCP at 1 000 a second was not steered to the polled socket (%d sent)", sent)
	}
	polled := s.poll.polled.Load()
	for range 20 {
		send(rtcp, 10)
		sent += 10
		time.Sleep(10 * time.Millisecond)
	}
	waitFor("every RTCP datagram handled", func() bool { return h.rtcp.Load() == int64(sent) })
	if got := s.poll.polled.Load() - polled; got < 200 {
		t.Errorf("the polled socket read %d of the 200 RTCP datagrams sent while polling", got)
	}
	// Media still reaches the read socket, not the polled one.
	polled = s.poll.polled.Load()
	send(rtp, 50)
	waitFor("every RTP datagram handled", func() bool { return h.other.Load() == 50 })
	if got := s.poll.polled.Load() - polled; got != 0 {
		t.Errorf("%d RTP datagrams went to the polled socket", got)
	}

	// Below pollBelow, RTCP goes back to the read socket.
	waitFor("RTCP steered back once it slowed", func() bool { return !s.poll.on.Load() })
	polled = s.poll.polled.Load()
	send(rtcp, 10)
	sent += 10
	waitFor("RTCP handled after the switch back", func() bool { return h.rtcp.Load() == int64(sent) })
	if got := s.poll.polled.Load() - polled; got != 0 {
		t.Errorf("%d RTCP datagrams were polled after the switch back", got)
	}
}

// TestIsRTCP: what the read socket counts as RTCP, as the group's program
// steers it (RFC 7983's first byte, RFC 5761's payload types).
func TestIsRTCP(t *testing.T) {
	for _, c := range []struct {
		b    []byte
		want bool
	}{
		{[]byte{0x80, 0xc8}, true},  // SR
		{[]byte{0x8f, 0xcd}, true},  // transport-wide feedback
		{[]byte{0x80, 0xdf}, true},  // 223: the last RTCP type of RFC 5761
		{[]byte{0x80, 0xe0}, false}, // RTP, payload type 96, marker
		{[]byte{0x80, 0x60}, false}, // RTP, payload type 96
		{[]byte{0x00, 0x01}, false}, // STUN binding request
		{[]byte{0x16, 0xfe}, false}, // DTLS
		{[]byte{0xc0, 0xc8}, false}, // not version 2
		{[]byte{0x80}, false},
	} {
		if got := isRTCP(c.b); got != c.want {
			t.Errorf("isRTCP(% x) = %v", c.b, got)
		}
	}
}
