package peer

import (
	"context"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Each of the engine's UDP ports is two sockets on one address: the one
// Go's network poller reads, and one only written, outside the poller.
//
// Why: a UDP socket's sent datagram, once the kernel frees it (on
// loopback, as soon as it is delivered), signals the socket's "writable"
// wait queue, and the poller's epoll is on that queue: with one socket,
// every batch sent woke an idle Go thread from epoll_wait for nothing, a
// context switch each, thousands a second. The written socket is in no
// epoll, so nothing waits on its queue.
//
// Both sockets bind the same address with SO_REUSEPORT, and a one-line
// classic BPF program on the group sends every datagram that arrives to
// the first socket (index 0), the read one: the written socket never
// receives. (Another process of the same user that joins the group gets
// nothing either.) Where any of this fails, the port is one socket, as
// before: the written socket is optional.

// listenReusePort opens the read socket with SO_REUSEPORT, so that a
// written socket can join it.
func listenReusePort(addr *net.UDPAddr) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", addr.String())
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// steerToFirst is the reuseport group's program: return 0, the index of
// the first socket bound (RFC-less, see SO_ATTACH_REUSEPORT_CBPF in
// socket(7)).
var steerToFirst = []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}

// openWriteSocket opens the written socket of rc's port (a non-blocking
// file descriptor the caller owns), having steered the group's incoming
// datagrams to rc.
func openWriteSocket(read *net.UDPConn) (int, error) {
	rc, err := read.SyscallConn()
	if err != nil {
		return -1, err
	}
	if err := steer(rc, steerToFirst); err != nil {
		return -1, err
	}
	return joinGroup(read, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF)
}

// joinGroup opens a non-blocking socket bound to read's address, in its
// SO_REUSEPORT group, with a socketBuffer-sized buffer (set with force,
// or plain where force is not allowed). The caller owns it.
func joinGroup(read *net.UDPConn, force, plain int) (int, error) {
	la := read.LocalAddr().(*net.UDPAddr)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, socketBuffer) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, socketBuffer)
	}
	sa := &unix.SockaddrInet4{Port: la.Port}
	copy(sa.Addr[:], la.IP.To4())
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}
