package bench

// Combine returns a Target whose connections interleave those of targets (t0's first, t1's
// first, ..., t0's second, ...), so that ClosedLoop's caller c, which uses Client(c), spreads
// callers evenly over several servers, as Envoy spreads Checks over purser replicas. Closing
// the combined Target closes nothing: close the originals.
func Combine(targets ...*Target) *Target {
	out := &Target{}
	for i := 0; ; i++ {
		added := false
		for _, t := range targets {
			if i < len(t.clients) {
				out.clients = append(out.clients, t.clients[i])
				added = true
			}
		}
		if !added {
			return out
		}
	}
}
