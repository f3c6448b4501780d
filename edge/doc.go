// Package edge is the playback side of Cascade: viewers are served here.
//
//   - edge/whep: WHEP sessions, each a pion peer fed by the stream's hubs.
//   - edge/abr: the per-viewer rendition choice, pure Go: which rung a
//     viewer's bandwidth estimate, losses and probes justify, with
//     hysteresis and probing before climbing. It is tested on simulated
//     links but not yet wired into edge/whep (issue 5): viewers stay on the
//     rung they ask for with ?rendition=, or on the source.
//
// The RTSP relay client that pulls streams from an origin (issue 6) is not
// built yet. Edge packages never import origin packages.
package edge
