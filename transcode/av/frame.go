package av

// #cgo pkg-config: libavutil
// #include <libavutil/frame.h>
import "C"

import "github.com/asticode/go-astiav"

// writable reports whether f has a picture buffer that nobody else
// references, so it may be written in place. go-astiav does not wrap
// av_frame_is_writable.
func writable(f *astiav.Frame) bool {
	return C.av_frame_is_writable((*C.AVFrame)(f.UnsafePointer())) != 0
}
