// Package origin is the ingest side of Cascade: publishers come in here.
//
//   - origin/whip: WHIP (RFC 9725) publishing sessions.
//   - origin/rtsp: the RTSP server (ANNOUNCE/RECORD publish, and the relay
//     read of a stream's whole ladder by edges and RTSP clients) and pull
//     sources that read cameras, on gortsplib.
//   - origin/registry: stream name to hubs, publisher takeover, grace period,
//     holds that keep a reconnecting camera's stream alive.
//   - origin/auth: publish keys.
//
// Origin packages emit media types and know nothing about edges.
package origin
