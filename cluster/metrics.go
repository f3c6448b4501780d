package cluster

import "github.com/prometheus/client_golang/prometheus"

// Label values, listed so every series exists from the start.
var (
	memberStates = []string{string(StateAlive), string(StateSuspect), string(StateDead)}
	badReasons   = []string{
		reasonDecode, reasonVersion, reasonStale, reasonGone, reasonLimit,
		reasonConflict, reasonMeta, reasonKey, reasonLabel,
	}
	gossipKinds = []string{kindNameEntry, kindNameState, kindNameMeta, kindNameResync, kindNameSnapshot}
)

// Reasons of cascade_cluster_bad_messages_total.
const (
	reasonDecode   = "decode"   // malformed message or state
	reasonVersion  = "version"  // unknown message or metadata version
	reasonStale    = "stale"    // older than what is known (replay, late broadcast)
	reasonGone     = "gone"     // from a node that died or left in that run
	reasonLimit    = "limit"    // over a size or count bound
	reasonConflict = "conflict" // a claim about this node it did not make (corrected)
	reasonMeta     = "meta"     // a member whose metadata does not decode
	reasonKey      = "key"      // gossip that does not decrypt with our key, or is plain
	reasonLabel    = "label"    // gossip of another cluster label
)

const (
	kindNameEntry    = "entry"
	kindNameState    = "state"
	kindNameMeta     = "meta"
	kindNameResync   = "resync"
	kindNameSnapshot = "snapshot"
)

type metrics struct {
	members *prometheus.GaugeVec   // state
	gossip  *prometheus.CounterVec // direction, kind
	bad     *prometheus.CounterVec // reason
	streams prometheus.Gauge
	entries prometheus.Gauge
	joins   *prometheus.CounterVec // result
	flaps   prometheus.Counter
}

// newMetrics builds the metrics and registers them with reg, if not nil.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		members: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "cascade_cluster_members",
			Help: "Cluster members as this node sees them, by state (alive, suspect: no load report lately, dead: gone in the last minute)."}, []string{"state"}),
		gossip: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_cluster_gossip_messages_total",
			Help: "Cluster messages handled, by direction (in, out) and kind (entry: stream directory broadcast, state: push/pull, meta: node metadata, resync: a request for a snapshot, snapshot: one node's whole part sent to a node that missed changes)."}, []string{"direction", "kind"}),
		bad: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_cluster_bad_messages_total",
			Help: "Cluster messages and members refused or ignored, by reason."}, []string{"reason"}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cascade_cluster_streams",
			Help: "Distinct streams carried by live members, in this node's directory."}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{Name: "cascade_cluster_directory_entries",
			Help: "(member, stream) entries of live members in this node's directory."}),
		joins: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cascade_cluster_joins_total",
			Help: "Join attempts to seeds, by result (ok, error)."}, []string{"result"}),
		flaps: prometheus.NewCounter(prometheus.CounterOpts{Name: "cascade_cluster_flaps_total",
			Help: "Members found flapping (rejoining too often) and held out of placement."}),
	}
	for _, s := range memberStates {
		m.members.WithLabelValues(s)
	}
	for _, r := range badReasons {
		m.bad.WithLabelValues(r)
	}
	for _, d := range []string{"in", "out"} {
		for _, k := range gossipKinds {
			m.gossip.WithLabelValues(d, k)
		}
	}
	m.joins.WithLabelValues("ok")
	m.joins.WithLabelValues("error")
	if reg != nil {
		for _, c := range []prometheus.Collector{m.members, m.gossip, m.bad, m.streams, m.entries, m.joins, m.flaps} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
