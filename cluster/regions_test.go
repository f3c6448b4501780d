package cluster

import "testing"

func TestRegionsLookup(t *testing.T) {
	r, err := NewRegions(map[string][]string{
		"eu":      {"10.0.0.0/8", "2001:db8::/32"},
		"eu-city": {"10.1.2.0/24"},
		"us":      {"192.0.2.7", "10.1.2.128/25"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]string{
		"10.9.9.9:51000":      "eu",      // RemoteAddr form
		"10.1.2.3":            "eu-city", // more specific than the /8
		"10.1.2.200:1":        "us",      // more specific still
		"192.0.2.7:80":        "us",      // a single address
		"192.0.2.8:80":        "",
		"[2001:db8::1]:443":   "eu",
		"[::ffff:10.1.2.3]:5": "eu-city", // IPv4 seen through a dual-stack socket
		"[fe80::1%eth0]:5":    "",
		"not an address":      "",
		"":                    "",
	} {
		if got := r.Lookup(addr); got != want {
			t.Errorf("Lookup(%q) = %q, want %q", addr, got, want)
		}
	}
	if got := (Regions{}).Lookup("10.0.0.1:1"); got != "" {
		t.Errorf("empty map: %q", got)
	}
}

func TestRegionsRefused(t *testing.T) {
	for name, m := range map[string]map[string][]string{
		"bad cidr":        {"eu": {"10.0.0.0/40"}},
		"not an address":  {"eu": {"example.com"}},
		"empty region":    {"": {"10.0.0.0/8"}},
		"bad region":      {"eu west": {"10.0.0.0/8"}},
		"in two regions":  {"eu": {"10.0.0.0/8"}, "us": {"10.0.0.0/8"}},
		"too many ranges": {"eu": make([]string, maxRegionPrefixes+1)},
	} {
		if name == "too many ranges" {
			for i := range m["eu"] {
				m["eu"][i] = "10.0.0.1"
			}
		}
		if _, err := NewRegions(m); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// The same subnet twice in one region is harmless.
	if _, err := NewRegions(map[string][]string{"eu": {"10.0.0.0/8", "10.0.0.0/8"}}); err != nil {
		t.Error(err)
	}
}
