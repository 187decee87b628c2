//go:build !linux

package main

import "time"

// preciseSleeper: elsewhere, Go's own timers (see sleep_linux.go).
func preciseSleeper() func(time.Duration) { return time.Sleep }
