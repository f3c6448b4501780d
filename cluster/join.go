package cluster

import (
	"context"
	"math/rand/v2"
	"net"
	"strconv"
	"time"
)

// joinLoop joins the seeds, retrying with backoff those that are not
// members, so seeds not up yet are joined when they come up and a healed
// partition is merged.
func (c *Cluster) joinLoop(ctx context.Context) {
	defer c.wg.Done()
	if len(c.cfg.Join) == 0 {
		return
	}
	backoff := c.t.joinMin
	joined := map[string]uint64{} // seed address → leaveGen when joined
	failures := 0
	for {
		missing := c.missingSeeds(ctx, joined)
		wait := c.t.joinMax
		if len(missing) > 0 {
			c.mu.Lock()
			gen := c.leaveGen
			c.mu.Unlock()
			var failed []string
			var lastErr error
			for _, a := range missing {
				// One at a time: memberlist's Join does not say which
				// of several addresses answered.
				if n, err := c.ml.Join([]string{a}); n == 1 {
					joined[a] = gen
					c.m.joins.WithLabelValues("ok").Inc()
				} else {
					failed = append(failed, a)
					lastErr = err
					c.m.joins.WithLabelValues("error").Inc()
				}
				if ctx.Err() != nil {
					return
				}
			}
			if len(failed) > 0 {
				if failures == 0 || c.limit.allow("join", time.Now()) {
					c.log.Info("cluster seeds not reached yet; retrying", "seeds", failed, "error", lastErr, "retry_in", backoff)
				}
				failures++
				wait = backoff
				backoff = min(2*backoff, c.t.joinMax)
			} else {
				failures = 0
				backoff = c.t.joinMin
			}
		}
		// Jitter so that many edges do not retry in step.
		wait = time.Duration(float64(wait) * (0.8 + 0.4*rand.Float64()))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// missingSeeds resolves the seeds and returns the addresses that are not
// alive members, not this node, and not joined since the last failure.
func (c *Cluster) missingSeeds(ctx context.Context, joined map[string]uint64) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range c.cfg.Join {
		host, port, err := splitSeed(s)
		if err != nil {
			continue
		}
		var ips []string
		if ip := net.ParseIP(host); ip != nil {
			ips = []string{ip.String()}
		} else {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			addrs, err := net.DefaultResolver.LookupHost(rctx, host)
			cancel()
			if err != nil {
				if c.limit.allow("resolve "+host, time.Now()) {
					c.log.Info("cluster seed does not resolve yet", "seed", s, "error", err)
				}
				continue
			}
			ips = addrs
		}
		for _, ip := range ips {
			a := net.JoinHostPort(ip, strconv.Itoa(port))
			if seen[a] || len(out) >= maxSeeds {
				continue
			}
			seen[a] = true
			if c.isMemberAddr(a) {
				continue
			}
			c.mu.Lock()
			gen := c.leaveGen
			c.mu.Unlock()
			if g, ok := joined[a]; ok && g == gen {
				continue
			}
			out = append(out, a)
		}
	}
	return out
}

// isMemberAddr reports whether addr is this node's or an alive member's
// gossip address.
func (c *Cluster) isMemberAddr(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rec := range c.members {
		if rec.addr == addr && rec.alive {
			return true
		}
	}
	return false
}
