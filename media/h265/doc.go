// Package h265 holds the H.265 (HEVC) helpers the packet path needs:
// finding keyframes in RTP payloads and rebuilding access units from them
// (RFC 7798). Every function takes hostile input: payloads come straight
// from the network.
package h265
