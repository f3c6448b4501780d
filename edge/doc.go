// Package edge is the playback side of Cascade: viewers are served here.
//
//   - edge/whep: WHEP sessions, each a pion peer fed by the stream's hubs.
//
// Per-viewer bandwidth estimation and rendition choice (issue 5) and the
// RTSP relay client that pulls streams from an origin (issue 6) are not
// built yet. Edge packages never import origin packages.
package edge
