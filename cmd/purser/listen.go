package main

import (
	"errors"
	"fmt"
	"net"
	"syscall"
)

// listen opens a TCP listener for the address of a flag. A port another process holds is
// reported in one sentence naming the port and how to choose another, not as a chain of
// socket errors.
func listen(addr, flagName, envVar string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err == nil {
		return l, nil
	}
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, exitError{code: 1, msg: fmt.Sprintf("%s is already in use (another purser, `make run` or `make demo` still running?): "+
			"stop that process, or choose another address with -%s or %s", addr, flagName, envVar)}
	}
	return nil, fmt.Errorf("listen on %s (-%s): %w", addr, flagName, err)
}
