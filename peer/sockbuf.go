package peer

import (
	"net"
	"syscall"
)

// socketBuffer is the kernel buffer asked for on the shared UDP socket.
// Every peer's packets queue in this one socket; the usual 208 KiB default
// overflows when a few publishers send keyframes at once.
const socketBuffer = 8 << 20

// growBuffers enlarges the socket's buffers. SO_RCVBUFFORCE passes the
// system limit (net.core.rmem_max) when we have CAP_NET_ADMIN; otherwise the
// plain request is capped by it. It returns the receive buffer obtained.
func growBuffers(uc *net.UDPConn) int {
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0
	}
	got := 0
	raw.Control(func(fd uintptr) {
		for _, opt := range [][2]int{{syscall.SO_RCVBUFFORCE, syscall.SO_RCVBUF}, {syscall.SO_SNDBUFFORCE, syscall.SO_SNDBUF}} {
			if syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt[0], socketBuffer) != nil {
				syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, opt[1], socketBuffer)
			}
		}
		got, _ = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF)
	})
	return got
}
