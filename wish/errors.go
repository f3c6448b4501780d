package wish

import (
	"errors"
	"fmt"
	"net/http"
)

// Error is an error with the HTTP status and one-line reason a client gets.
// Endpoints return it; the handler maps every other error to 500.
type Error struct {
	Status int
	// Reason is the plain-text body: one line, safe to show a client.
	Reason string
	// Metric is the label under which the failure is counted.
	Metric string
	// Location, with a 307 Status, sends the client to another node
	// (RFC 9725 section 4.5: load balancing and redirections).
	Location string
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s", e.Status, e.Reason) }

// Redirect returns an *Error that answers 307 to location: the endpoint
// is not refusing, it is sending the client where it should be served.
func Redirect(location, metric string) *Error {
	return &Error{Status: 307, Metric: metric, Reason: "served elsewhere: " + location, Location: location}
}

// Errorf returns an *Error.
func Errorf(status int, metric, format string, args ...any) *Error {
	return &Error{Status: status, Metric: metric, Reason: fmt.Sprintf(format, args...)}
}

// Sentinels for conditions endpoints share.
var (
	ErrNotFound   = &Error{Status: http.StatusNotFound, Metric: "not_found", Reason: "stream not found"}
	ErrNoCodec    = &Error{Status: http.StatusUnprocessableEntity, Metric: "no_codec", Reason: "no codec we can use in the offer"}
	ErrBadSDP     = &Error{Status: http.StatusBadRequest, Metric: "bad_sdp", Reason: "unparsable SDP offer"}
	ErrUnauth     = &Error{Status: http.StatusUnauthorized, Metric: "unauthorized", Reason: "missing or wrong bearer token"}
	ErrDraining   = &Error{Status: http.StatusServiceUnavailable, Metric: "draining", Reason: "server is shutting down"}
	ErrNoSession  = &Error{Status: http.StatusNotFound, Metric: "no_session", Reason: "session not found"}
	ErrTooManyICE = &Error{Status: http.StatusBadRequest, Metric: "bad_fragment", Reason: "too many candidates in fragment"}
)

// asError maps any error to the *Error a client sees.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Status: http.StatusInternalServerError, Metric: "internal", Reason: "internal error"}
}
