package cluster

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// maxRegionPrefixes bounds the subnets of cluster.regions, all regions
// together: a lookup walks them all (one comparison each).
const maxRegionPrefixes = 4096

// Regions maps a viewer's address to its region by client subnet (config
// key cluster.regions: region name to a list of CIDRs), for when no front
// sets the region header. The most specific subnet wins, so a city's /24
// can sit inside a continent's /8. The zero value maps nothing.
type Regions struct {
	nets []regionNet // most specific first
}

type regionNet struct {
	prefix netip.Prefix
	region string
}

// NewRegions checks and compiles a region map. Addresses are IPv4 or IPv6
// CIDRs ("10.1.0.0/16", "2001:db8::/32") or single addresses.
func NewRegions(m map[string][]string) (Regions, error) {
	var r Regions
	seen := map[netip.Prefix]string{}
	for region, cidrs := range m {
		if region == "" || !validLabel(region) {
			return Regions{}, fmt.Errorf("cluster: regions: %q is not a region name (1 to %d of [A-Za-z0-9._-])", region, MaxLabelLen)
		}
		for _, c := range cidrs {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				a, aerr := netip.ParseAddr(c)
				if aerr != nil {
					return Regions{}, fmt.Errorf("cluster: regions: %s: %q is not a CIDR or an address", region, c)
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			p = p.Masked()
			if p.Addr().Is4In6() {
				p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
			}
			if other, dup := seen[p]; dup && other != region {
				return Regions{}, fmt.Errorf("cluster: regions: %s is in both %s and %s", p, other, region)
			}
			seen[p] = region
			r.nets = append(r.nets, regionNet{p, region})
			if len(r.nets) > maxRegionPrefixes {
				return Regions{}, fmt.Errorf("cluster: regions: more than %d subnets", maxRegionPrefixes)
			}
		}
	}
	// Longest prefix first; ties by text, so the order is the same on
	// every run.
	slices.SortFunc(r.nets, func(a, b regionNet) int {
		return cmp.Or(-cmp.Compare(a.prefix.Bits(), b.prefix.Bits()), cmp.Compare(a.prefix.String(), b.prefix.String()))
	})
	r.nets = slices.CompactFunc(r.nets, func(a, b regionNet) bool { return a.prefix == b.prefix })
	return r, nil
}

// Lookup returns the region of addr ("ip", "ip:port" or "[ip]:port", as
// in http.Request.RemoteAddr), or "" when no subnet holds it.
func (r Regions) Lookup(addr string) string {
	if len(r.nets) == 0 {
		return ""
	}
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return ""
	}
	a = a.Unmap().WithZone("")
	for _, n := range r.nets {
		if n.prefix.Contains(a) {
			return n.region
		}
	}
	return ""
}
