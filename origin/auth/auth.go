// Package auth decides who may publish a stream: per-stream keys, presented
// as a bearer token (WHIP) or, later, an RTSP password.
package auth

import (
	"crypto/subtle"
	"errors"
)

// ErrUnauthorized is returned for a missing or wrong key.
var ErrUnauthorized = errors.New("auth: missing or wrong publish key")

// Config holds the publish keys (config key "auth").
type Config struct {
	// OpenPublish lets anyone publish a stream that has no key.
	OpenPublish bool `yaml:"open_publish"`
	// PublishKeys maps a stream name to the key its publisher must present.
	PublishKeys map[string]string `yaml:"publish_keys"`
}

// DefaultConfig is closed: nobody publishes without a key.
func DefaultConfig() Config { return Config{} }

// CheckPublish returns nil if token may publish stream.
func (c Config) CheckPublish(stream, token string) error {
	key, ok := c.PublishKeys[stream]
	if !ok {
		if c.OpenPublish {
			return nil
		}
		return ErrUnauthorized
	}
	if token == "" || subtle.ConstantTimeCompare([]byte(key), []byte(token)) != 1 {
		return ErrUnauthorized
	}
	return nil
}
