// Package cluster will hold gossip membership (hashicorp/memberlist), node
// metadata and load, the stream directory, and the choice of edge or parent
// behind WHIP/WHEP redirects.
//
// Not built yet (issue 6): today `cascade` runs one all-in-one node.
package cluster
