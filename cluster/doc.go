// Package cluster joins Cascade nodes into one CDN over gossip
// (hashicorp/memberlist): who is alive, what each node is (origin or edge,
// addresses, region, load), which node carries which stream, and where a
// viewer, a publisher or a relay should go. There is no central store: every
// node holds the whole picture and answers for the whole cluster.
//
// What lives where:
//
//   - config.go: Config (key "cluster"), its defaults and validation, the
//     gossip key derived from cluster.secret, and the timing profiles.
//   - cluster.go: Cluster, started with Start, and its API: load,
//     draining, Announce and Withdraw, Members, View, placement for this
//     node, Leave and Close.
//   - maintain.go: the background work: metadata refresh and heartbeat
//     (rate-limited by cluster size), snapshot and push/pull repair,
//     expiry and gauges. join.go: joining seeds with backoff.
//   - delegate.go: the memberlist.Delegate and EventDelegate, and what the
//     node does with each message and membership event.
//   - meta.go: node metadata (Meta, Load) and its compact, versioned
//     encoding, which always fits memberlist's 512 bytes.
//   - directory.go: the stream directory, with per-owner (epoch, seq)
//     versions; message.go: its broadcasts, snapshots and push/pull state;
//     wire.go: the bounded binary reader and writer under both.
//   - member.go: Member and View, the JSON of GET /v1/cluster.
//   - placement.go: pure placement: PlaceViewer, PlacePublisher, PickEdge,
//     PickOrigin, and the relay Tree (rendezvous hashing).
//   - metrics.go and log.go: Prometheus metrics, and memberlist's log
//     lines in slog, with refused peers counted.
//
// docs/cluster.md describes the design, the measured convergence and the
// plan for a million viewers.
package cluster
