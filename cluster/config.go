package cluster

// Config is the cluster configuration (config key "cluster").
type Config struct {
	// Secret authorises relay reads between nodes (RTSP user "cascade",
	// this as password) and will key the gossip encryption. Empty leaves
	// relay reads open, which a node logs.
	Secret string `yaml:"secret"`
}
