// Command bansshee is the operator CLI and the reconciler: ban, unban, list, status, targets,
// limit, unlimit, serve, keys.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/bansshee/bansshee/controller"
	"github.com/bansshee/bansshee/internal/cli"
)

var version = "dev"

// Exit codes.
const (
	exitOK           = 0
	exitFailure      = 1 // AWS or runtime failure
	exitUsage        = 2 // bad flags, bad input, refused: nothing was written
	exitNotConverged = 3 // written, but some instances did not get it (in --timeout, or delivery failed)
)

type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	cli.TuneGC(2 << 30) // GOGC 400, a soft limit of 2 GiB or half the host's memory: see cli.TuneGC
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the CLI with args and returns the exit code (tests call it directly).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "bansshee: %v\n", err)
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, controller.ErrRefused), isUsage(err):
		return exitUsage
	case errors.Is(err, controller.ErrUndelivered):
		return exitNotConverged
	}
	return exitFailure
}
