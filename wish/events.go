package wish

// The WHEP core extensions: the "Server Sent Events" and "Video Layer
// Selection" extensions of the WHEP drafts (draft-murillo-whep, then the
// WISH working group's "WHEP core extensions" text), as far as a server
// with one video track and a ladder of renditions can follow them.
//
// A session that implements EventSource gets, on the 201 that creates it,
//
//	Link: </whep/{stream}/{id}/events>; rel="urn:ietf:params:whep:ext:core:server-sent-events"; events="layers,switch,estimate,video,reconnect"
//
// and a session that implements Layered also gets
//
//	Link: </whep/{stream}/{id}/layer>; rel="urn:ietf:params:whep:ext:core:layer"
//
// The draft has the player POST a JSON array of event names to the Link's
// URL and GET the 201's Location; players in the field (and ours) simply
// GET the Link's URL with EventSource. Both work: the POST answers with
// {Location}/events?events=NAMES, a filtered stream.
//
// The event stream is text/event-stream: each event is "event: NAME",
// one "data: JSON" line and a blank line; a comment line (":") is sent
// every 15 s while nothing else is, so proxies keep the stream open. The
// events Cascade sends, and their JSON (unknown fields must be ignored by
// clients, as the draft says):
//
//	layers     the ladder, the rung sent now and whether the viewer pinned it;
//	           sent first on every new stream and whenever it changes:
//	           {"renditions":[{"name":"720p","width":1280,"height":720,"bitrate":2500000},...],
//	            "current":"360p","pinned":false}
//	switch     the session moved to another rung, and why ("to" is "" when
//	           the video stops, with a "video" event):
//	           {"from":"360p","to":"720p","reason":"probe_ok","estimate":3100000}
//	estimate   the server's bandwidth estimate for this viewer, about once a second:
//	           {"bps":3100000,"rendition":"720p"}
//	video      video paused (too little bandwidth even for the lowest rung) or resumed:
//	           {"paused":true,"reason":"audio_only"} / {"paused":false,"reason":"resume"}
//	reconnect  the node asks the player to start a new session, at url when
//	           given (another edge, when this one drains), else at the
//	           endpoint it used: {"url":"https://edge-b:8080/whep/live"}.
//	           The handler sends it itself (Handler.Reconnect), once per
//	           session, also on event streams opened afterwards.
//
// "layers" here is Cascade's shape, not the draft's per-m-line simulcast
// layers: our rungs are separate encodings chosen by name, not RIDs.
//
// Layer selection is POST {Location}/layer with application/json
// {"rendition":"480p"} to pin a rung, or {"rendition":"auto"} to hand the
// choice back to the server's estimate.
//
// Answers (refusals are one plain-text line, counted in
// cascade_session_control_requests_total by reason):
//
//	GET {Location}/events[?events=a,b]  200 the stream; 400 unknown event name;
//	                                    404 no such session; 405 the session sends no
//	                                    events; 429 MaxEventStreams already open
//	POST {Location}/events              201, Location: the stream to GET; 400 not a
//	                                    JSON array of known names; 404; 405; 413; 415
//	POST {Location}/layer               204; 400 bad JSON, no "rendition" or a
//	                                    malformed name; 404 no such session, or no
//	                                    such rendition (the reason lists them); 405 no
//	                                    layer selection; 413 over MaxControlBody; 415
//	                                    not application/json; 429 over 10 a second

// Event names this package advertises in the events="..." Link parameter
// and accepts in an event filter.
const (
	EventLayers    = "layers"
	EventSwitch    = "switch"
	EventEstimate  = "estimate"
	EventVideo     = "video"
	EventReconnect = "reconnect"
)

// EventNames lists the advertised events, in the order of the Link header.
var EventNames = []string{EventLayers, EventSwitch, EventEstimate, EventVideo, EventReconnect}

// Event is one server-sent event.
type Event struct {
	// Name is the SSE event type. Names outside 1–32 of [A-Za-z0-9._-]
	// are dropped by the handler (they could break the framing).
	Name string
	// Data is marshalled with encoding/json into the event's single data
	// line; nil sends {}. It must not be changed after it is sent: every
	// subscriber marshals it on its own goroutine.
	Data any
}

// EventSource is a Session that streams events to its client. The handler
// serves GET {Location}/events for it.
type EventSource interface {
	// Subscribe starts a subscription for one event stream. The handler
	// calls it from the request's goroutine and calls stop exactly once,
	// when the stream ends; at most a few subscriptions are open per
	// session at a time.
	//
	// The session owns the channel: it must send without blocking (when the
	// buffer is full, drop or coalesce the event rather than stall), it may
	// close the channel when it ends, and it must not send after stop has
	// returned. The first events should describe the current state (a
	// "layers" event), so that a client needs no history. stop must not
	// block for long and may be called after the session closed.
	Subscribe() (events <-chan Event, stop func())
}

// Layered is a Session whose video rendition the client may choose. The
// handler serves POST {Location}/layer for it.
type Layered interface {
	// SetLayer pins the video to the named rendition, or hands the choice
	// back to the server with "auto". The handler has checked name's
	// syntax (1–64 of [A-Za-z0-9._-]). An unknown name must be an *Error
	// with status 404 whose reason lists the renditions, e.g.
	// Errorf(404, "unknown_rendition", "no rendition %q; this stream has: 720p, 480p").
	// It may be called from any goroutine, concurrently with the media,
	// and must not block for long: the switch itself may happen later, at
	// the next keyframe, and is reported by a "switch" event.
	SetLayer(name string) error
}

// Layer is one rung of the ladder, as the "layers" event lists it.
type Layer struct {
	Name   string `json:"name"`
	Width  int    `json:"width"`
	Height int    `json:"height"`
	// Bitrate is the rung's target in bits per second.
	Bitrate int64 `json:"bitrate"`
}

// LayersEvent is the data of a "layers" event.
type LayersEvent struct {
	// Renditions is the ladder, best first; never nil (it would be null).
	Renditions []Layer `json:"renditions"`
	Current    string  `json:"current"`
	// Pinned reports whether the client chose Current with SetLayer (or
	// ?rendition=) rather than the server's estimate.
	Pinned bool `json:"pinned"`
}

// SwitchEvent is the data of a "switch" event.
type SwitchEvent struct {
	From   string `json:"from"`
	To     string `json:"to"`
	Reason string `json:"reason"`
	// Estimate is the bandwidth estimate at the switch, bits per second.
	Estimate int64 `json:"estimate"`
}

// EstimateEvent is the data of an "estimate" event.
type EstimateEvent struct {
	BPS       int64  `json:"bps"`
	Rendition string `json:"rendition"`
}

// VideoEvent is the data of a "video" event.
type VideoEvent struct {
	Paused bool   `json:"paused"`
	Reason string `json:"reason"`
}

// ReconnectEvent is the data of a "reconnect" event.
type ReconnectEvent struct {
	// URL is the WHEP endpoint to POST the new offer to; empty means the
	// one the player used.
	URL string `json:"url,omitempty"`
}

// Event wraps l as a "layers" Event.
func (l LayersEvent) Event() Event { return Event{Name: EventLayers, Data: l} }

// Event wraps s as a "switch" Event.
func (s SwitchEvent) Event() Event { return Event{Name: EventSwitch, Data: s} }

// Event wraps e as an "estimate" Event.
func (e EstimateEvent) Event() Event { return Event{Name: EventEstimate, Data: e} }

// Event wraps v as a "video" Event.
func (v VideoEvent) Event() Event { return Event{Name: EventVideo, Data: v} }

// Event wraps r as a "reconnect" Event.
func (r ReconnectEvent) Event() Event { return Event{Name: EventReconnect, Data: r} }
