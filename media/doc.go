// Package media is the packet path shared by ingest (origin) and playback
// (edge): the immutable Packet, the fan-out Hub that copies one publisher's
// packets to many subscribers without blocking, and the retransmission buffer
// that serves every viewer's NACKs from one copy per track.
//
// It imports no configuration and knows nothing about HTTP, WHIP or WHEP, so
// every ingest protocol (WHIP, RTSP, the transcoder) and every egress
// (WHEP, the RTSP relay) meet here.
package media
