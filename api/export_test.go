package api

// RecvPoolReuses is how many receive buffers streams have recycled so far.
func RecvPoolReuses() int64 { return recvPoolReuses.Load() }
