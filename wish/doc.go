// Package wish implements the HTTP side of WHIP (RFC 9725) and WHEP, which
// share it: the session resource table, POST/PATCH/DELETE/OPTIONS rules,
// trickle ICE and ICE restart fragments (RFC 8840), CORS, ETags, Link headers
// for ICE servers and the mapping of errors to status codes; and the WHEP
// draft's two core extensions for sessions that support them: a
// server-sent event stream (GET {Location}/events) and video layer
// selection (POST {Location}/layer). events.go documents their events.
//
// The media side is not here: an Endpoint (origin/whip, edge/whep) turns an
// offer into a Session.
package wish
