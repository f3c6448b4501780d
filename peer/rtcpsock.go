package peer

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A busy port reads RTCP when media wakes it.
//
// Every viewer sends RTCP on a clock of its own (transport-wide feedback
// every 50-100 ms, receiver reports, NACKs), so at 100 viewers about 1 100
// datagrams a second arrive spread evenly in time, and each one that finds
// the process idle wakes a thread from epoll_wait: measured here, 650-720
// wake-ups a second, and a context switch on this virtual machine costs
// tens of microseconds. None of that RTCP is urgent to the millisecond: a
// NACK answered 10 ms later is still answered within the viewer's round
// trip plus its jitter buffer, and the estimator reads the viewer's own
// arrival times from the feedback, not ours.
//
// So the port has a third socket in its SO_REUSEPORT group, outside Go's
// network poller, and once RTCP arrives faster than pollAbove a second the
// group's program steers every RTCP datagram to it (RFC 5761's payload
// types 192-223 with RTP's version bits; RFC 7983's first byte) while
// everything else, a publisher's media above all, still reaches the read
// socket at once. The read socket's reader, awake anyway for the media
// (audio arrives every 20 ms), drains the polled socket after its batch,
// at most every pollEvery; a timer does when no media came for pollIdle.
// Below pollBelow a second the group steers everything back to the read
// socket, and an idle node waits on the poller alone, as before.
// Arrivals at a socket outside the poller wake nobody (a socket in it
// would: Go's epoll registration is edge-triggered, so each arrival
// reports it anew).

const (
	pollEvery = 5 * time.Millisecond
	// pollIdle is the longest RTCP waits when no media arrives (the
	// drains ride on media's wake-ups; see poller.media). Longer than
	// audio's 20 ms packet interval, so that it fires only without media.
	pollIdle  = 50 * time.Millisecond
	pollAbove = 400 // RTCP datagrams a second, measured over pollWindow
	pollBelow = 150
	// pollWindow is how long a rate is measured before the mode changes.
	pollWindow = time.Second
	// pollIndex is the polled socket's place in the group: it joins after
	// the read socket (0) and the written one (1).
	pollIndex = 2
)

// steerRTCP is the group's program while RTCP is polled: RTCP (first byte
// 128-191, second 192-223) to the polled socket, the rest to the read
// socket. A datagram too short to load a byte from ends the program,
// which returns 0: the read socket.
var steerRTCP = []unix.SockFilter{
	{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 0},
	{Code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, K: 128, Jt: 0, Jf: 5},
	{Code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, K: 192, Jt: 4, Jf: 0},
	{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 1},
	{Code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, K: 192, Jt: 0, Jf: 2},
	{Code: unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K, K: 223, Jt: 1, Jf: 0},
	{Code: unix.BPF_RET | unix.BPF_K, K: pollIndex},
	{Code: unix.BPF_RET | unix.BPF_K, K: 0},
}

// isRTCP is steerRTCP's test, for counting the read socket's RTCP.
func isRTCP(b []byte) bool {
	return len(b) >= 2 && b[0] >= 128 && b[0] < 192 && b[1] >= 192 && b[1] <= 223
}

// steer attaches prog to the reuseport group of rc's socket.
func steer(rc syscall.RawConn, prog []unix.SockFilter) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		p := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &p)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("steer the reuseport group: %w", serr)
	}
	return nil
}

// openPollSocket opens the polled socket of read's port, which must
// already have its written socket (so that it takes pollIndex).
func openPollSocket(read *net.UDPConn) (int, error) {
	return joinGroup(read, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF)
}

// poller drains the polled socket while the group steers RTCP to it.
type poller struct {
	s     *socket
	fd    int
	start chan struct{} // the read socket saw RTCP above pollAbove
	stop  chan struct{} // closed by Close
	done  chan struct{}
	on    atomic.Bool  // RTCP is steered here
	last  atomic.Int64 // when it was last drained, in Unix nanoseconds
	// idle fires when the socket was not drained for pollIdle (no
	// media arrived to drain it on).
	idle *time.Timer
	// polls and polled count drains and the datagrams they read.
	polls, polled atomic.Uint64

	mu sync.Mutex // held while draining: r and the rate window
	r  receiver
	// from and n are the rate window: the datagrams drained since from.
	from time.Time
	n    int
}

func newPoller(s *socket, fd int) *poller {
	p := &poller{s: s, fd: fd, start: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	p.r.init()
	p.idle = time.NewTimer(time.Hour)
	p.idle.Stop()
	go p.run()
	return p
}

// busy tells the poller that RTCP reached the read socket above pollAbove
// a second; it steers RTCP to itself.
func (p *poller) busy() {
	select {
	case p.start <- struct{}{}:
	default:
	}
}

// run waits to be busy, steers RTCP to the socket, and drains it whenever
// the read socket's reader has not for pollIdle.
func (p *poller) run() {
	defer close(p.done)
	defer unix.Close(p.fd)
	defer p.idle.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-p.start:
			if p.on.Load() || steer(p.s.raw, steerRTCP) != nil {
				continue
			}
			p.mu.Lock()
			p.from, p.n = time.Now(), 0
			p.mu.Unlock()
			p.on.Store(true)
			p.idle.Reset(pollIdle)
		case now := <-p.idle.C:
			if !p.on.Load() {
				continue
			}
			p.mu.Lock()
			p.drain(now)
			p.mu.Unlock()
		}
	}
}

// media is called by the read socket's reader after each batch: while RTCP
// is polled, it drains the socket if pollEvery has passed. The node is
// awake then anyway, and media arrives at least 50 times a second.
func (p *poller) media(now time.Time) {
	if !p.on.Load() {
		return
	}
	if now.UnixNano()-p.last.Load() < int64(pollEvery) || !p.mu.TryLock() {
		return
	}
	p.drain(now)
	p.mu.Unlock()
}

// drain reads and handles what the socket holds, and checks the rate:
// below pollBelow a second, RTCP goes back to the read socket. p.mu is held.
func (p *poller) drain(now time.Time) {
	p.last.Store(now.UnixNano())
	p.polls.Add(1)
	n := p.read()
	p.n += n
	if now.Sub(p.from) >= pollWindow {
		if p.n*int(time.Second/pollWindow) < pollBelow && steer(p.s.raw, steerToFirst) == nil {
			p.on.Store(false)
			p.read() // what arrived before the switch
			p.idle.Stop()
			return
		}
		p.from, p.n = now, 0
	}
	p.idle.Reset(pollIdle)
}

// read handles every datagram queued on the socket and reports how many.
func (p *poller) read() int {
	n := 0
	for {
		p.r.reset()
		if !p.r.recvmmsg(uintptr(p.fd)) || p.r.err != nil {
			break
		}
		p.s.handle(&p.r)
		n += p.r.n
		if p.r.n < recvBatch {
			break
		}
	}
	p.polled.Add(uint64(n))
	return n
}

// Close stops the poller; its goroutine closes the socket.
func (p *poller) Close() {
	close(p.stop)
	<-p.done
}
