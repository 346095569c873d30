package awstest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// Dynalite is a second DynamoDB: dynalite (npm), an implementation written from DynamoDB's
// documentation, run as a process. The ledger tests run against it as well as against kumo, and a
// difference between the two (conditional writes, errors, paging) is a failure to explain.
type Dynalite struct {
	URL string
	cmd *exec.Cmd
}

// DynaliteAvailable reports why dynalite cannot run here, or nil.
func DynaliteAvailable() error {
	if _, err := exec.LookPath("dynalite"); err != nil {
		return errors.New("dynalite not found (npm install -g dynalite@4; .ci/deps.sh installs it)")
	}
	return nil
}

// StartDynalite starts an in-memory dynalite on a free loopback port and waits until it answers.
func StartDynalite() (*Dynalite, error) {
	if err := DynaliteAvailable(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	// Tables become ACTIVE at once (dynalite's default is 500 ms of CREATING, as DynamoDB's).
	cmd := exec.Command("dynalite", "--port", strconv.Itoa(port), "--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start dynalite: %w", err)
	}
	d := &Dynalite{URL: fmt.Sprintf("http://127.0.0.1:%d", port), cmd: cmd}
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return d, nil
		}
		if time.Now().After(deadline) {
			d.Close()
			return nil, fmt.Errorf("dynalite did not listen within 20 s: %w", err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval
	}
}

// Close stops dynalite.
func (d *Dynalite) Close() {
	if d.cmd != nil && d.cmd.Process != nil {
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		_ = d.cmd.Wait()
	}
}

// UseDynamoDB sends every DynamoDB request the front server receives to url (dynalite) instead
// of kumo; the other services stay on kumo.
func (e *Env) UseDynamoDB(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil {
		return err
	}
	p := httputil.NewSingleHostReverseProxy(u)
	p.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) }
	e.mu.Lock()
	e.ddb = p
	e.mu.Unlock()
	return nil
}
