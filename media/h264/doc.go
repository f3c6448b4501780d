// Package h264 holds the H.264 helpers the packet path needs: finding
// keyframes in RTP payloads (RFC 6184) and reading the picture size from an
// SPS (ITU-T H.264 section 7.3.2.1). Every function takes hostile input:
// payloads come straight from the network.
package h264
