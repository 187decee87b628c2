package main

import (
	"runtime"
	"syscall"
	"time"
)

// Go's own timers wake up to about a millisecond late on Linux (median
// ~0.5 ms on the benchmark's VMs): the netpoller sleeps in epoll_wait,
// whose timeout is in whole milliseconds. In the open loop that lateness is
// added to every target's latency and is larger than what is measured. A
// locked OS thread sleeping in nanosleep, with its timer slack at 1 ns,
// wakes within tens of microseconds.

const prSetTimerslack = 29

// preciseSleeper must be called on the goroutine that will sleep.
func preciseSleeper() func(time.Duration) {
	runtime.LockOSThread()
	syscall.RawSyscall(syscall.SYS_PRCTL, prSetTimerslack, 1, 0)
	return func(d time.Duration) {
		if d <= 0 {
			return
		}
		ts := syscall.NsecToTimespec(int64(d))
		for syscall.Nanosleep(&ts, &ts) == syscall.EINTR {
		}
	}
}
