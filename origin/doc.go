// Package origin is the ingest side of Cascade: publishers come in here.
//
//   - origin/whip: WHIP (RFC 9725) publishing sessions.
//   - origin/registry: stream name to hubs, publisher takeover, grace period.
//   - origin/auth: publish keys.
//
// RTSP publish, RTSP pull sources and the RTSP relay read are not built yet
// (issue 4). Origin packages emit media types and know nothing about edges.
package origin
