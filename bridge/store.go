package bridge

// StateLocks is how many maildrop locks the state store must be able to
// hold at once (stores.Options.MaxLocks): one per connection
// limits.max_connections allows, so that the store is never what refuses a
// session the limits admit; 0 (the driver's default) when that limit is off.
func StateLocks(cfg Config) int {
	return max(cfg.Limits.MaxConnections, 0)
}
