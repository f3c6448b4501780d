package peer

import (
	"encoding/binary"
	"errors"
	"syscall"
	"unsafe"
)

// udpSegment is UDP_SEGMENT (linux/udp.h), which the syscall package
// predates: the segment size of a UDP GSO send.
const udpSegment = 103

// gsoCmsgSpace holds one UDP_SEGMENT control message: a cmsghdr and a
// uint16, aligned (24 bytes on 64-bit Linux).
const gsoCmsgSpace = 32

var gsoCmsgLen = syscall.CmsgSpace(2)

// gsoSupported reports whether the kernel knows UDP_SEGMENT on the socket
// fd (Linux 4.18 and later).
func gsoSupported(fd int) bool {
	if gsoCmsgLen > gsoCmsgSpace {
		return false
	}
	_, err := syscall.GetsockoptInt(fd, syscall.IPPROTO_UDP, udpSegment)
	return err == nil
}

// putSegmentSize writes into b a UDP_SEGMENT control message for segments
// of size bytes, and returns it.
func putSegmentSize(b *[gsoCmsgSpace]byte, size int) []byte {
	h := (*syscall.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = syscall.IPPROTO_UDP
	h.Type = udpSegment
	h.SetLen(syscall.CmsgLen(2))
	binary.NativeEndian.PutUint16(b[syscall.CmsgLen(0):], uint16(size))
	return b[:gsoCmsgLen]
}

// gsoRefused reports whether a send error is the kernel refusing to
// segment: EIO where the device cannot checksum the segments, EINVAL or
// EOPNOTSUPP where the path does not take UDP GSO. Other errors (an
// unreachable address) are the destination's, not GSO's.
func gsoRefused(err error) bool {
	return errors.Is(err, syscall.EIO) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP)
}
