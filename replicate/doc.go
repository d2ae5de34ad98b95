// Package replicate is the peer link between the two nodes of a resource.
package replicate
