// Package servicecidr keeps a node's conflist in step with the cluster's
// Service CIDRs: it list-and-watches the networking.k8s.io/v1 ServiceCIDR
// objects from inside a pod, with the standard library alone (a client-go
// would triple the installer image for one resource), and rewrites
// macvlan-host-route's viaNode to hold their union beside the CIDRs the
// user listed.
//
// One job a file: client.go reaches the API server, status.go reads its
// refusals, objects.go and events.go decode what it sends, union.go turns
// ServiceCIDRs into prefixes viaNode may hold, watch.go is the
// list-and-watch loop, retry.go paces and logs its failures, pods.go reads
// the pods' families and subnets from the conflist's ipam, conflist.go
// rewrites a conflist (each plugin taking the pods' families: the ipam's,
// else those of its own viaNode), keeper.go writes the rewritten conflist
// on every change.
package servicecidr
