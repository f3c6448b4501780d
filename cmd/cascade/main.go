// Command cascade runs a Cascade node. With no arguments it runs the
// all-in-one node (origin and edge in one process); `cascade --help` lists
// every configuration key.
package main

import "os"

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}
