package cluster

import "errors"

// Errors returned by the exported API.
var (
	// ErrBadStream is a stream name outside [A-Za-z0-9][A-Za-z0-9._-]{0,127}.
	ErrBadStream = errors.New("cluster: bad stream name")
	// ErrBadRungs is a rung list that is too long or has a bad rung name.
	ErrBadRungs = errors.New("cluster: bad rung list")
	// ErrTooManyStreams is an Announce beyond MaxStreamsPerNode.
	ErrTooManyStreams = errors.New("cluster: too many streams on this node")
	// ErrClosed is returned by calls after Close.
	ErrClosed = errors.New("cluster: closed")
)

// Decoder errors: network input only, never returned by the exported API
// except through the fuzz-tested decode functions.
var (
	errShort      = errors.New("truncated")
	errTooMany    = errors.New("list too long")
	errTooLong    = errors.New("string too long")
	errBadString  = errors.New("bad string")
	errVersion    = errors.New("unknown version")
	errKind       = errors.New("unknown message kind")
	errBadName    = errors.New("bad name")
	errBadRole    = errors.New("bad role")
	errOversize   = errors.New("message too large")
	errBadAddress = errors.New("bad address")
)
