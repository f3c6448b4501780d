package auth

import (
	"errors"
	"testing"
)

var cases = []struct {
	name          string
	cfg           Config
	stream, token string
	ok            bool
}{
	{"closed, no key configured", Config{}, "live", "", false},
	{"open, no key configured", Config{OpenPublish: true}, "live", "", true},
	{"keyed, right token", Config{PublishKeys: map[string]string{"live": "s3cret"}}, "live", "s3cret", true},
	{"keyed, wrong token", Config{PublishKeys: map[string]string{"live": "s3cret"}}, "live", "nope", false},
	{"keyed, no token, open elsewhere", Config{OpenPublish: true, PublishKeys: map[string]string{"live": "s3cret"}}, "live", "", false},
	{"keyed stream does not open another", Config{PublishKeys: map[string]string{"live": "s3cret"}}, "other", "s3cret", false},
}

func TestCheckPublish(t *testing.T) {
	for _, c := range cases {
		err := c.cfg.CheckPublish(c.stream, c.token)
		if c.ok != (err == nil) {
			t.Errorf("%s: got %v", c.name, err)
		}
		if err != nil && !errors.Is(err, ErrUnauthorized) {
			t.Errorf("%s: error %v is not ErrUnauthorized", c.name, err)
		}
	}
}
