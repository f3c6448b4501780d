package cluster

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

// memNet is an in-memory network for many memberlist nodes in one process:
// packets are queued (and dropped when a queue is full, as UDP would),
// streams are net.Pipe pairs, and a cut function can partition it. It is
// memberlist's MockNetwork with the three things the simulation needs and
// MockNetwork lacks: no unbounded blocking on a dead peer, partitions, and
// locking for nodes that come and go.
type memNet struct {
	mu    sync.RWMutex
	nodes map[string]*memTransport // by address
	next  int
	cut   func(from, to string) bool
	// traffic, for the gossip load figures
	packets, packetBytes, streams, streamBytes atomic.Int64
}

func newMemNet() *memNet { return &memNet{nodes: map[string]*memTransport{}} }

// transport returns a new transport with a unique address.
func (n *memNet) transport() *memTransport {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.next++
	addr := net.JoinHostPort(fmt.Sprintf("127.%d.%d.%d", n.next>>16&255, n.next>>8&255, n.next&255), "7946")
	t := &memTransport{
		net:     n,
		addr:    addr,
		packets: make(chan *memberlist.Packet, 512),
		streams: make(chan net.Conn, 16),
		done:    make(chan struct{}),
	}
	n.nodes[addr] = t
	return t
}

// partition cuts the network with f (nil heals it).
func (n *memNet) partition(f func(from, to string) bool) {
	n.mu.Lock()
	n.cut = f
	n.mu.Unlock()
}

func (n *memNet) peer(from, to string) (*memTransport, error) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	t := n.nodes[to]
	if t == nil || (n.cut != nil && n.cut(from, to)) {
		return nil, errors.New("memnet: no route to " + to)
	}
	return t, nil
}

type memAddr string

func (a memAddr) Network() string { return "mem" }
func (a memAddr) String() string  { return string(a) }

type memTransport struct {
	net     *memNet
	addr    string
	packets chan *memberlist.Packet
	streams chan net.Conn
	done    chan struct{}
	once    sync.Once
}

var _ memberlist.NodeAwareTransport = (*memTransport)(nil)

func (t *memTransport) FinalAdvertiseAddr(string, int) (net.IP, int, error) {
	h, p, _ := net.SplitHostPort(t.addr)
	port, _ := strconv.Atoi(p)
	return net.ParseIP(h), port, nil
}

func (t *memTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

func (t *memTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	now := time.Now()
	dest, err := t.net.peer(t.addr, a.Addr)
	if err != nil {
		return now, nil // lost, as UDP would be
	}
	t.net.packets.Add(1)
	t.net.packetBytes.Add(int64(len(b)))
	p := &memberlist.Packet{Buf: append([]byte(nil), b...), From: memAddr(t.addr), Timestamp: now}
	select {
	case dest.packets <- p:
	case <-dest.done:
	default: // queue full: dropped
	}
	return now, nil
}

func (t *memTransport) PacketCh() <-chan *memberlist.Packet { return t.packets }

func (t *memTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *memTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	dest, err := t.net.peer(t.addr, a.Addr)
	if err != nil {
		return nil, err
	}
	local, remote := net.Pipe()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case dest.streams <- &memConn{Conn: remote, local: memAddr(a.Addr), remote: memAddr(t.addr), n: &t.net.streamBytes}:
		t.net.streams.Add(1)
		return &memConn{Conn: local, local: memAddr(t.addr), remote: memAddr(a.Addr), n: &t.net.streamBytes}, nil
	case <-dest.done:
	case <-t.done:
	case <-timer.C:
	}
	local.Close()
	remote.Close()
	return nil, errors.New("memnet: dial timeout to " + a.Addr)
}

func (t *memTransport) StreamCh() <-chan net.Conn { return t.streams }

func (t *memTransport) Shutdown() error {
	t.once.Do(func() {
		close(t.done)
		t.net.mu.Lock()
		delete(t.net.nodes, t.addr)
		t.net.mu.Unlock()
	})
	return nil
}

// memConn gives a pipe end the addresses memberlist logs and checks.
type memConn struct {
	net.Conn
	local, remote net.Addr
	n             *atomic.Int64
}

func (c *memConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(int64(n))
	return n, err
}

func (c *memConn) LocalAddr() net.Addr  { return c.local }
func (c *memConn) RemoteAddr() net.Addr { return c.remote }
